"""The image's locks are complete for the image's platform: the Dockerfile installs them with ``--no-deps``,
so anything a resolution with dependencies adds would be missing in the image (as torch's CUDA libraries
were: `import torch` failed in every container)."""

from __future__ import annotations

import os
import platform
import re
import sys
from pathlib import Path

import pytest

from container.lock import TORCH_CPU_INDEX, canonical, missing_pins, reachable, read_lock, resolve

ROOT = Path(__file__).resolve().parents[2]
CUDA_ONLY = re.compile(r"^(nvidia-|cuda-|triton$)")

linux_x86 = pytest.mark.skipif(sys.platform != "linux" or platform.machine() != "x86_64",
                               reason="environment markers are evaluated on this machine: Linux x86_64 only")


@pytest.fixture(scope="module")
def pypi():
    if not reachable("https://pypi.org/simple/pip/", timeout=10):
        pytest.skip("PyPI is unreachable (the check resolves against the index)")


def test_cpu_lock_is_the_cuda_lock_without_cuda_and_with_cpu_torch():
    cuda, cpu = read_lock(ROOT / "requirements.lock"), read_lock(ROOT / "requirements-cpu.lock")
    expected = {n: (v + "+cpu" if n == "torch" else v) for n, v in cuda.items() if not CUDA_ONLY.match(n)}
    assert cpu == expected, "run `make requirements-cpu.lock`"
    assert cuda["torch"] and "+" not in cuda["torch"]  # PyPI's torch: the CUDA build


def test_cuda_lock_pins_torchs_cuda_libraries_of_one_cuda_major():
    cuda = read_lock(ROOT / "requirements.lock")
    for lib in ("nvidia-cublas", "nvidia-cudnn-cu13", "nvidia-nccl-cu13", "nvidia-cuda-runtime", "triton"):
        assert lib in cuda, lib
    # torch 2.13's PyPI wheel is built for CUDA 13: every -cuNN wheel and cuda-toolkit must say 13 too.
    assert cuda["cuda-toolkit"].startswith("13.")
    assert {n.rsplit("-cu", 1)[1] for n in cuda if re.search(r"-cu\d+$", n)} == {"13"}


@pytest.mark.slow
@linux_x86
def test_cuda_lock_is_complete_and_the_old_one_was_not(tmp_path, pypi):
    """Resolving the lock with its dependencies adds nothing; against that same resolution the lock as it
    was (without torch's CUDA wheels) misses exactly those. Resolves against PyPI once (metadata only)."""
    lock = ROOT / "requirements.lock"
    report = resolve(lock, [], [])
    assert missing_pins(lock, report) == []

    old = tmp_path / "old.lock"
    old.write_text("\n".join(line for line in lock.read_text().splitlines()
                             if not CUDA_ONLY.match(canonical(line.split("==")[0])) and line != "setuptools==84.2.1"))
    missing = {canonical(p.split("==")[0]) for p in missing_pins(old, report)}
    assert {"nvidia-cublas", "nvidia-cudnn-cu13", "nvidia-nccl-cu13", "triton", "cuda-toolkit"} <= missing
    assert missing == {n for n in read_lock(lock) if CUDA_ONLY.match(n)} | {"setuptools"}


def _cpu_torch_sources() -> list[str]:
    """Folders holding torch's +cpu wheel: the wheelhouse, or this machine's pip find-links."""
    folders = [str(ROOT / "wheelhouse" / "cpu")] + os.environ.get("PIP_FIND_LINKS", "").split()
    return [f for f in folders if list(Path(f).glob("torch-*+cpu-*.whl"))]


@pytest.mark.slow
@linux_x86
def test_cpu_lock_is_complete(pypi):
    find_links = _cpu_torch_sources()
    extra = [] if find_links else [TORCH_CPU_INDEX]
    if not find_links and not reachable(TORCH_CPU_INDEX + "/torch/", timeout=10):
        pytest.skip("no torch +cpu wheel here and PyTorch's CPU index is unreachable (`make wheelhouse-cpu`)")
    lock = ROOT / "requirements-cpu.lock"
    assert missing_pins(lock, resolve(lock, find_links, extra)) == []
