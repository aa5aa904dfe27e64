"""Retraining: training sets from feedback (pii, clean, dedup, split, dataset), then train, gate, promote.

Importing the package does no work; import the module you need (``retrain.dataset.build_training_set``).
"""

from retrain.pii import scrub, scrub_messages

__all__ = ["scrub", "scrub_messages"]
