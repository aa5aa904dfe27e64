"""Importing the store does no work and pulls in no ML stack (the web layer imports it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_store_import_is_light():
    code = ("import sys, feedback.store, feedback.export, feedback.schema; "
            "heavy = [m for m in ('torch', 'transformers', 'datasets', 'pyarrow') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
