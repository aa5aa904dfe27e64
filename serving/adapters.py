"""Adapter state's one owner: checks adapter directories, counts in-flight users, and keeps the aliases.

The model itself is only touched by the generation worker; this manager asks it to load or drop an
adapter (``apply_load``/``apply_unload``) and keeps the bookkeeping that request threads read.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from serving.errors import AdapterInUse, AdapterRejected, UnknownAdapter
from serving.types import BASE, PRODUCTION, AdapterInfo

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
RESERVED = frozenset({BASE, PRODUCTION})
ALIASES = frozenset({PRODUCTION})
_PEFT_PREFIX = "base_model.model."

# Base module name -> shape facts: ("linear", in, out) or ("embedding", num, dim), or ("param", *shape).
BaseModules = dict[str, tuple]


def base_modules_of(model) -> BaseModules:
    """The shapes of the modules a LoRA adapter may target, read from the unwrapped base model."""
    import torch

    shapes: BaseModules = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Embedding):
            shapes[name] = ("embedding", module.num_embeddings, module.embedding_dim)
        elif hasattr(module, "in_features") and hasattr(module, "out_features"):
            # Covers nn.Linear and bitsandbytes' Linear4bit/Linear8bitLt (which keep the logical shape).
            shapes[name] = ("linear", module.in_features, module.out_features)
    for name, param in model.named_parameters():
        shapes.setdefault(name, ("param", *param.shape))
    return shapes


def check_name(name: str) -> None:
    """Refuse names that are not ``[A-Za-z0-9][A-Za-z0-9._-]{0,63}`` or that are reserved."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or ".." in name:
        raise AdapterRejected(f"adapter {name!r} refused: the name must match {NAME_RE.pattern} (no '/' or '..')")
    if name in RESERVED:
        raise AdapterRejected(f"adapter {name!r} refused: {name!r} is a reserved name")


def _tensor_fits(name: str, key: str, shape: tuple[int, ...], base: BaseModules) -> None:
    # peft saves "base_model.model.<module>.lora_A.weight" with the adapter name stripped.
    inner = key.removeprefix(_PEFT_PREFIX)
    for part, kind in (("lora_A", "a"), ("lora_B", "b"), ("lora_embedding_A", "ea"), ("lora_embedding_B", "eb")):
        marker = f".{part}."
        if marker in inner or inner.endswith(f".{part}"):
            module = inner.split(marker)[0] if marker in inner else inner.rsplit(".", 1)[0]
            facts = base.get(module)
            if facts is None:
                raise AdapterRejected(f"adapter {name!r} refused: it targets {module!r}, which the base model lacks")
            if facts[0] == "linear" and kind in ("a", "b") and len(shape) == 2:
                ok = shape[1] == facts[1] if kind == "a" else shape[0] == facts[2]
            elif facts[0] == "embedding" and kind in ("ea", "eb") and len(shape) == 2:
                ok = shape[1] == facts[1] if kind == "ea" else shape[0] == facts[2]
            else:
                ok = False
            if not ok:
                raise AdapterRejected(
                    f"adapter {name!r} refused: {key} has shape {list(shape)}, which does not fit the base "
                    f"module {module!r} {list(facts[1:])} (an adapter for another base model?)"
                )
            return
    # modules_to_save and other full tensors must match the base parameter they replace.
    param = inner.replace(".modules_to_save.", ".")
    facts = base.get(param)
    if facts is None or facts[0] != "param" or tuple(facts[1:]) != tuple(shape):
        raise AdapterRejected(f"adapter {name!r} refused: tensor {key} does not fit the base model")


def check_adapter_dir(
    name: str, path: Path, *, adapters_dir: Path, base_model_name_or_path: str, base_modules: BaseModules
) -> dict:
    """Check an adapter directory against the served base before loading; returns its adapter_config.

    Raises ``AdapterRejected`` naming the adapter and the reason.
    """
    from safetensors import safe_open

    check_name(name)
    root = Path(adapters_dir).resolve()
    resolved = Path(path).resolve()
    if not resolved.is_relative_to(root):
        raise AdapterRejected(f"adapter {name!r} refused: {path} is outside the adapters directory {adapters_dir}")
    if not resolved.is_dir():
        raise AdapterRejected(f"adapter {name!r} refused: {path} is not a directory")
    config_path = resolved / "adapter_config.json"
    if not config_path.is_file():
        raise AdapterRejected(f"adapter {name!r} refused: adapter_config.json is missing")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise AdapterRejected(f"adapter {name!r} refused: adapter_config.json is unreadable ({exc})") from exc
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        kind = config.get("peft_type") if isinstance(config, dict) else None
        raise AdapterRejected(f"adapter {name!r} refused: peft_type is {kind!r}, only LORA is served")
    weights = resolved / "adapter_model.safetensors"
    if not weights.is_file():
        # Pickled .bin weights can run code on load; only safetensors is accepted.
        found = " (only a pickle adapter_model.bin, which is not accepted)" if (resolved / "adapter_model.bin").exists() else ""
        raise AdapterRejected(f"adapter {name!r} refused: adapter_model.safetensors is missing{found}")
    try:
        with safe_open(str(weights), framework="pt") as f:
            keys = list(f.keys())
            shapes = {}
            for key in keys:
                # Reading every tensor (not only the header) catches files cut short after the header.
                shapes[key] = tuple(f.get_tensor(key).shape)
    except AdapterRejected:
        raise
    except Exception as exc:  # safetensors raises its own SafetensorError and OSError on bad files
        raise AdapterRejected(f"adapter {name!r} refused: adapter_model.safetensors is corrupt ({exc})") from exc
    if not keys:
        raise AdapterRejected(f"adapter {name!r} refused: adapter_model.safetensors holds no tensors")
    for key, shape in shapes.items():
        _tensor_fits(name, key, shape, base_modules)
    wanted = config.get("base_model_name_or_path")
    if wanted and wanted != base_model_name_or_path:
        # Demo and retrained adapters record a local path that moves with the data dir, so the structure
        # check above decides; a differing name is only worth a warning.
        log.warning("adapter %s was trained on %r, serving %r; shapes fit, loading it", name, wanted, base_model_name_or_path)
    return config


@dataclass
class _Slot:
    path: str | None
    in_flight: int = 0
    retiring: bool = False
    meta: dict | None = None


class AdapterManager:
    """Loaded adapters, the ``production`` alias and in-flight counts, behind one lock.

    ``apply_load(name, path)`` / ``apply_unload(name)`` change the model; they are called without the
    lock held and return once the generation worker has applied the change between batches.
    """

    def __init__(
        self,
        adapters_dir: Path,
        *,
        base_model_name_or_path: str,
        base_modules: BaseModules,
        apply_load: Callable[[str, Path], None],
        apply_unload: Callable[[str], None],
    ):
        self.adapters_dir = Path(adapters_dir)
        self.base_model_name_or_path = base_model_name_or_path
        self._base_modules = base_modules
        self._apply_load = apply_load
        self._apply_unload = apply_unload
        self._cond = threading.Condition()
        self._slots: dict[str, _Slot] = {BASE: _Slot(path=None)}
        self._aliases: dict[str, str] = {PRODUCTION: BASE}
        self._busy: set[str] = set()  # names being loaded or unloaded right now

    # --- request path -------------------------------------------------------------------------
    def resolve(self, name: str) -> str:
        """The concrete adapter ``name`` means now; raises ``UnknownAdapter``."""
        with self._cond:
            return self._resolve_locked(name)

    def _resolve_locked(self, name: str) -> str:
        concrete = self._aliases.get(name, name)
        slot = self._slots.get(concrete)
        if slot is None or slot.retiring:
            raise UnknownAdapter(f"no adapter named {name!r} is loaded")
        return concrete

    def acquire(self, name: str) -> str:
        """Resolve ``name`` and count one in-flight user of it; pair with ``release`` in ``finally``."""
        with self._cond:
            concrete = self._resolve_locked(name)
            self._slots[concrete].in_flight += 1
            return concrete

    def release(self, concrete: str) -> None:
        with self._cond:
            slot = self._slots.get(concrete)
            if slot is not None and slot.in_flight > 0:
                slot.in_flight -= 1
            self._cond.notify_all()

    # --- admin path -----------------------------------------------------------------------------
    def check_adapter_dir(self, name: str, path: Path) -> dict:
        return check_adapter_dir(
            name,
            path,
            adapters_dir=self.adapters_dir,
            base_model_name_or_path=self.base_model_name_or_path,
            base_modules=self._base_modules,
        )

    def load(self, name: str, path: Path) -> AdapterInfo:
        """Check ``path`` and load it under ``name``; refuses a name already loaded."""
        check_name(name)
        with self._cond:
            if name in self._slots or name in self._busy:
                raise AdapterRejected(f"adapter {name!r} refused: an adapter of that name is already loaded")
            self._busy.add(name)
        try:
            config = self.check_adapter_dir(name, path)
            started = time.perf_counter()
            self._apply_load(name, Path(path).resolve())
            meta = {"r": config.get("r"), "base_model_name_or_path": config.get("base_model_name_or_path")}
            with self._cond:
                self._slots[name] = _Slot(path=str(Path(path).resolve()), meta=meta)
            log.info("adapter loaded: %s from %s in %.3fs", name, path, time.perf_counter() - started)
        finally:
            with self._cond:
                self._busy.discard(name)
        return self._info(name)

    def unload(self, name: str, timeout_s: float = 30.0) -> None:
        """Stop new requests on ``name``, wait for in-flight ones (``AdapterInUse`` on timeout), drop it."""
        if name in RESERVED:
            raise AdapterInUse(f"{name!r} cannot be unloaded")
        with self._cond:
            slot = self._slots.get(name)
            if slot is None or slot.retiring:
                raise UnknownAdapter(f"no adapter named {name!r} is loaded")
            pointing = [alias for alias, target in self._aliases.items() if target == name]
            if pointing:
                raise AdapterInUse(f"adapter {name!r} is what {pointing[0]!r} points at; re-point it first")
            slot.retiring = True
            if not self._cond.wait_for(lambda: slot.in_flight == 0, timeout=timeout_s):
                slot.retiring = False
                raise AdapterInUse(f"adapter {name!r} still has {slot.in_flight} request(s) after {timeout_s:.0f}s")
        try:
            self._apply_unload(name)
        except BaseException:
            with self._cond:
                slot.retiring = False
            raise
        with self._cond:
            del self._slots[name]
        log.info("adapter unloaded: %s", name)

    def set_alias(self, alias: str, target: str) -> None:
        """Point ``alias`` at a loaded adapter or ``base``, atomically for new requests."""
        if alias not in ALIASES:
            raise UnknownAdapter(f"{alias!r} is not an alias (aliases: {sorted(ALIASES)})")
        with self._cond:
            concrete = self._resolve_locked(target)
            previous = self._aliases.get(alias)
            self._aliases[alias] = concrete
        log.info("alias %s: %s -> %s", alias, previous, concrete)

    def list(self) -> list[AdapterInfo]:
        with self._cond:
            names = [n for n, s in self._slots.items() if not s.retiring]
            return [self._info_locked(n) for n in names]

    def names(self) -> list[str]:
        with self._cond:
            return [n for n, s in self._slots.items() if not s.retiring]

    def _info(self, name: str) -> AdapterInfo:
        with self._cond:
            return self._info_locked(name)

    def _info_locked(self, name: str) -> AdapterInfo:
        slot = self._slots[name]
        aliases = tuple(sorted(a for a, t in self._aliases.items() if t == name))
        return AdapterInfo(name=name, path=slot.path, aliases=aliases, in_flight=slot.in_flight, meta=dict(slot.meta or {}))
