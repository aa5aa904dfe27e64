"""Serving: the base model, LoRA adapters as hot-swappable slots, and the backends that generate."""
