"""What every bench script shares: the machine's name and the line appended to bench/RESULTS.md."""

from __future__ import annotations

import datetime as dt
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = "# Bench results\n\nOne line per run, newest last. `make bench` runs them all.\n\n"


def machine() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({torch.get_num_threads()} threads)"


def append_result(bench: str, text: str) -> None:
    """Append one dated line naming the bench and the machine; never rewrites earlier lines."""
    if not RESULTS.exists():
        RESULTS.write_text(HEADER)
    with RESULTS.open("a") as f:
        f.write(f"- {dt.date.today().isoformat()} {bench}: machine={machine()}; {text}\n")
    print(f"wrote a line to {RESULTS}")
