"""Publish a trained adapter under its final name, atomically, with its self-describing manifest."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

MANIFEST = "tuneloop.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"


class AdapterExists(FileExistsError):
    """An adapter with this name is already published; versions are never overwritten."""


class NotAnAdapter(ValueError):
    """The source directory holds no PEFT adapter (no adapter_config.json / weights)."""


def _check_name(name: str) -> None:
    if not name or name.startswith(".") or "/" in name or "\\" in name or name in ("production", "base"):
        raise ValueError(f"invalid adapter name {name!r}")


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def chat_template_hash(adapter_dir: Path) -> str | None:
    """sha256 of the chat template the adapter was trained with (saved beside its weights)."""
    path = Path(adapter_dir) / CHAT_TEMPLATE_FILE
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def read_manifest(adapter_dir: str | Path) -> dict | None:
    """The adapter's manifest, or None for a directory without one (incomplete or not ours)."""
    path = Path(adapter_dir) / MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def publish_adapter(src_dir: str | Path, adapters_dir: str | Path, name: str, card_fields: dict) -> Path:
    """Copy ``src_dir`` to ``adapters_dir/<name>`` and write its manifest last; returns the final path.

    The copy goes to ``.tmp-<name>`` first and is renamed in one step, so a reader never sees a half-written
    adapter under its final name. ``card_fields`` (parent, base_model, snapshot_id, snapshot_hash, run_id,
    hyperparameters, gate, ...) go into the manifest. Raises ``AdapterExists`` rather than overwrite.
    """
    _check_name(name)
    src, root = Path(src_dir), Path(adapters_dir)
    if not (src / "adapter_config.json").is_file():
        raise NotAnAdapter(f"{src} holds no adapter_config.json")
    final, tmp = root / name, root / f".tmp-{name}"
    if final.exists():
        raise AdapterExists(f"adapter {name!r} already exists at {final}")
    root.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)  # leftover of a publish that crashed midway
    try:
        shutil.copytree(src, tmp)
        manifest = {
            **card_fields,
            "name": name,
            "created_at": datetime.now(UTC).isoformat(),
            "chat_template_hash": chat_template_hash(tmp) or card_fields.get("chat_template_hash"),
        }
        _write_json_atomic(tmp / MANIFEST, manifest)  # last file in: its presence means the copy is complete
        if final.exists():  # rename onto an empty directory would succeed on POSIX; re-check just before
            raise AdapterExists(f"adapter {name!r} already exists at {final}")
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("adapter %s published at %s (parent %s)", name, final, card_fields.get("parent"))
    return final
