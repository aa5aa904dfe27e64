"""The one interface the UI, the API and the retrain loop use to generate; they never import torch."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from serving.types import AdapterInfo, ChatStream, Message, SamplingParams


@runtime_checkable
class Backend(Protocol):
    base_model: str

    def stream_chat(self, messages: list[Message], adapter: str, params: SamplingParams) -> ChatStream:
        """Validate and start one chat completion; raises a ``serving.errors`` error before any token."""
        ...

    def list_adapters(self) -> list[AdapterInfo]:
        """Loaded adapters, ``base`` and the ``production`` alias."""
        ...

    def load_adapter(self, name: str, path: Path) -> AdapterInfo:
        """Check and load a PEFT adapter directory under ``name``; requests in flight are not disturbed."""
        ...

    def unload_adapter(self, name: str) -> None:
        """Unload ``name`` once the requests using it have finished."""
        ...

    def set_alias(self, alias: str, target: str) -> None:
        """Point ``alias`` (``production``) at a loaded adapter or ``base``; new requests see it at once."""
        ...

    def resolve(self, name: str) -> str:
        """The concrete adapter an adapter name or alias means now; raises ``UnknownAdapter``."""
        ...

    def health(self) -> dict:
        """A small dict for ``/healthz``: at least ``ok`` (bool)."""
        ...

    def close(self) -> None:
        """Stop workers and free the model."""
        ...
