"""A full disk while a retrain writes its training set, trains its adapter or publishes it: the run fails with a
clear error, nothing half-written is left where it could be used, serving and production are untouched, and
the next run after space comes back works.

The disks are real: a small tmpfs mounted on each of the data dir's ``datasets``, ``runs`` and ``adapters``
(as a user who gives them their own volumes would have), filled with a file until a few KB are left.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from tests.retrain.test_closed_loop import TRAIN_QUESTIONS, teach
from tests.web.conftest import add_users, seed_data_dir, start_app

pytestmark = pytest.mark.slow
HI = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
# The gate is not under test here: let every trained adapter through, so the publishing step is reached.
OPEN_GATE = {"gate_max_loss_ratio": 1000.0, "gate_min_pref_accuracy": 0.0, "gate_max_ppl_rise": 1000.0}


@contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path``: a real filesystem that runs out of space (needs root)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tuneloop-test", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}): the disk-full tests need root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=False)


@contextmanager
def filled(disk: Path, leave: int) -> Iterator[None]:
    """``disk`` filled by one file until about ``leave`` bytes are free, for the duration."""
    filler = disk / ".filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while f.write(b"\0" * (1 << 16)):
                pass
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    try:
        yield
    finally:
        filler.unlink()


def test_a_full_disk_fails_the_run_cleanly_and_nothing_half_written_is_used(tmp_path, demo_model_dir):
    data_dir = tmp_path / "data"
    with ExitStack() as disks:
        datasets = disks.enter_context(small_disk(data_dir / "datasets", "1m"))
        runs = disks.enter_context(small_disk(data_dir / "runs", "32m"))
        adapters = disks.enter_context(small_disk(data_dir / "adapters", "2m"))
        seed_data_dir(data_dir, demo_model_dir)  # the demo adapters go onto the small adapters disk
        tokens = add_users(data_dir, ("admin", "ann", "ben", "cat"))
        app = start_app(data_dir, temperature=0.0, retrain_min_examples=1, heldout_fraction=0.2, num_epochs=2.0,
                        **OPEN_GATE)
        try:
            teach(app, tokens, TRAIN_QUESTIONS[:8])
            with app.client(tokens["admin"], timeout=600) as c:

                def retrain() -> dict:
                    run = c.post("/v1/admin/retrain", json={"wait": True, "promote": "auto"}).json()["run"]
                    print(f"\nrun {run['status']}: {run['error']}")
                    return run

                def nothing_changed() -> None:
                    assert c.get("/v1/adapters").json()["production"] == "base"
                    served = {m["id"] for m in c.get("/v1/models").json()["data"]}
                    assert served == {"base", "production", "demo-a", "demo-b"}, served
                    assert c.post("/v1/chat/completions", json=HI).status_code == 200

                # 1. Writing the training set.
                with filled(datasets, leave=0):
                    run = retrain()
                assert run["status"] == "failed", run
                assert run["error"].startswith("build training set failed") and "No space left" in run["error"], run
                assert list(datasets.iterdir()) == []  # the temp dir is gone and no snapshot appeared
                assert app.ctx.store.list_snapshots() == []
                nothing_changed()

                # 2. Training: checkpoints and the adapter are written into the run's dir.
                with filled(runs, leave=64 * 1024):
                    run = retrain()
                assert run["status"] == "failed" and "No space left on device" in run["error"], run
                assert not [p for p in (runs / run["id"]).iterdir() if p.name.startswith("adapter")]
                nothing_changed()

                # 3. Publishing the trained adapter into the adapters dir.
                with filled(adapters, leave=64 * 1024):
                    run = retrain()
                assert run["status"] == "failed", run
                assert run["error"].startswith("publish failed") and "No space left" in run["error"], run
                assert sorted(p.name for p in adapters.iterdir()) == ["demo-a", "demo-b"]  # no v1, no .tmp-v1
                assert app.ctx.store.get_adapter("v1") is None
                assert not (runs / run["id"] / "adapter").exists()
                nothing_changed()

                # With room again, the next run goes through and its adapter answers.
                run = retrain()
                assert run["status"] == "succeeded", run
                assert c.get("/v1/adapters").json()["production"] == run["adapter"]
                r = c.post("/v1/chat/completions", json={**HI, "model": run["adapter"]})
                assert r.status_code == 200, r.text
        finally:
            app.stop()
