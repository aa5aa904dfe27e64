"""Which device and which floating-point precision a model runs in: chosen from settings and the hardware.

One place for both, because serving and training must agree (the gate's numbers come from the training
device) and because the library defaults are wrong for the GPUs people rent: a process sees every GPU
that is visible to it (TRL's trainers refuse to start with several), and
``torch.cuda.is_bf16_supported()`` counts emulation by default, so T4 and V100 cards pass it and then run
bf16 emulated or fail in kernels. ``including_emulation=False`` asks for native support (compute
capability 8.0 and up).
"""

from __future__ import annotations

import os
import re
from typing import Literal

Precision = Literal["bf16", "fp16", "fp32"]
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DEVICE_PATTERN = r"^(auto|cpu|cuda|cuda:\d{1,3})$"


def cuda_device_count() -> int:
    """GPUs this process can see (0 without torch's CUDA build or a driver). Does not initialise CUDA."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(setting: str) -> str:
    """``auto`` -> ``cuda:0`` with a GPU, else ``cpu``; ``cuda`` -> ``cuda:0``; ``cuda:N`` checked against
    what is visible. Raises ``ValueError`` for a GPU that is not there."""
    if not re.match(DEVICE_PATTERN, setting):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, not {setting!r}")
    if setting == "cpu":
        return "cpu"
    count = cuda_device_count()
    if setting == "auto":
        return "cuda:0" if count else "cpu"
    index = int(setting.partition(":")[2] or 0)
    if index >= count:
        raise ValueError(f"device {setting!r} asked for, but {count} GPU(s) are visible")
    return f"cuda:{index}"


def device_index(device: str) -> int | None:
    """The CUDA index of a resolved device, None for the CPU."""
    return int(device.partition(":")[2] or 0) if device.startswith("cuda") else None


def visible_devices_for(device: str) -> str:
    """The ``CUDA_VISIBLE_DEVICES`` value that makes a child process see exactly ``device`` (as its GPU 0).

    Indices are relative to what this process sees, so an outer ``CUDA_VISIBLE_DEVICES=2,3`` with
    ``cuda:1`` gives ``3``. The CPU gives ``""``: the loader picks CUDA whenever it sees one.
    """
    index = device_index(device)
    if index is None:
        return ""
    outer = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if "CUDA_VISIBLE_DEVICES" in os.environ and index < len(outer):
        return outer[index]
    return str(index)


def native_bf16(device: str) -> bool:
    """Whether ``device`` computes in bf16 natively (not emulated)."""
    index = device_index(device)
    if index is None:
        return False
    import torch

    with torch.cuda.device(index):
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))


def resolve_precision(setting: str, device: str) -> Precision:
    """``auto``: bf16 where the GPU has it natively, fp16 (with loss scaling in training) on older GPUs,
    fp32 on the CPU. An explicit setting wins on a GPU; the CPU always computes in fp32 (bitsandbytes and
    the trainers' mixed precision are GPU features)."""
    if setting not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {setting!r}")
    if device_index(device) is None:
        return "fp32"
    if setting != "auto":
        return setting  # type: ignore[return-value]
    return "bf16" if native_bf16(device) else "fp16"


def torch_dtype(precision: Precision):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
