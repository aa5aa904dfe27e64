"""Run every benchmark in bench/ and append its figures to bench/RESULTS.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["serving.py", "feedback.py", "retrain.py", "retrain_training.py", "load.py", "ui_chat.py", "continual.py"]


def main() -> int:
    failed = []
    for name in SCRIPTS:
        script = HERE / name
        if not script.exists():
            print(f"== {name}: missing, skipped")
            continue
        print(f"== {name}", flush=True)
        rc = subprocess.call([sys.executable, str(script), "--write-results", *sys.argv[1:]], cwd=HERE.parent)
        if rc:
            failed.append(name)
    print("failed: " + ", ".join(failed) if failed else "all benchmarks ran")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
