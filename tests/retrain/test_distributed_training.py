"""Training under accelerate with two processes (gloo on the CPU): the same recipe gives the same result as
one process, only rank 0 writes, and a rank that dies fails the run cleanly with no process left behind."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from retrain.launch import accelerate_args
from retrain.training import TrainingFailed, run_training
from tests.retrain.test_training import make_spec, teaching_snapshot
from tests.web.conftest import wait_for

RECIPE = dict(num_epochs=3, batch_size=8, device="cpu", seed=11)


def _processes_of(run_id: str) -> list[int]:
    """Pids whose command line names this run (the launcher and every rank carry its spec)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                if f'"run_id": "{run_id}"'.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _rank_of(pid: int) -> int | None:
    try:
        env = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [e.split(b"=", 1)[1] for e in env if e.startswith(b"RANK=")]
    return int(ranks[0]) if ranks else None


@pytest.mark.slow
def test_two_processes_match_one_and_only_rank_zero_writes(demo_model_dir, tmp_path):
    snap = teaching_snapshot(tmp_path / "snap")
    one = run_training(make_spec(tmp_path, demo_model_dir.model, snap, name="one", **RECIPE))
    spec = make_spec(tmp_path, demo_model_dir.model, snap, name="two", processes=2, **RECIPE)
    two = run_training(spec)

    assert one.report["train"]["world_size"] == 1 and two.report["train"]["world_size"] == 2
    # per-device 4 x 2 processes: the single-process effective batch of 8, same steps per epoch
    assert one.report["train"]["effective_batch"] == two.report["train"]["effective_batch"] == 8
    assert one.report["train"]["steps"] == two.report["train"]["steps"]
    card = (two.adapter_dir / "README.md").read_text()
    assert "- world_size: 2" in card and "- strategy: ddp" in card and "- effective_batch: 8" in card
    progress = Path(spec.progress_path).read_text().splitlines()
    assert sum('"stage": "done"' in line for line in progress) == 1  # rank 1 wrote nothing
    a, b = one.report["candidate"]["heldout_loss"], two.report["candidate"]["heldout_loss"]
    assert abs(a - b) <= 0.15 * max(a, b), (a, b)  # the data order differs (a distributed sampler)
    assert not _processes_of(spec.run_id)


@pytest.mark.slow
def test_a_killed_rank_fails_the_run_and_leaves_no_process(demo_model_dir, tmp_path):
    spec = make_spec(tmp_path, demo_model_dir.model, teaching_snapshot(tmp_path / "snap"), name="rankkill",
                     processes=2, **{**RECIPE, "num_epochs": 200})
    killed = threading.Event()

    def on_progress(event: dict) -> None:
        if event.get("stage") == "sft" and event.get("step", 0) >= 2 and not killed.is_set():
            rank1 = [p for p in _processes_of(spec.run_id) if _rank_of(p) == 1]
            assert rank1, "rank 1 not found"
            os.kill(rank1[0], signal.SIGKILL)
            killed.set()

    # Either the launcher names the killed rank, or rank 0 got there first with its own error (gloo:
    # "Connection reset by peer"); both fail the run.
    with pytest.raises(TrainingFailed, match="training process (failed|exited with code)"):
        run_training(spec, on_progress=on_progress)
    assert killed.is_set()
    assert not Path(spec.output_dir).exists() and not spec.staging_dir.exists()
    wait_for(lambda: not _processes_of(spec.run_id), 20, "every rank of the failed run to stop")


def test_launch_arguments(monkeypatch):
    spec = make_spec(Path("/tmp"), Path("/m"), Path("/s"), processes=4, num_machines=2, machine_rank=1,
                     main_process_ip="10.0.0.5", main_process_port=29555, strategy="deepspeed", zero_stage=3)
    args = accelerate_args(spec, cpu=False)
    joined = " ".join(args[:-1])
    assert "--num_processes 4 --num_machines 2 --machine_rank 1 --main_process_port 29555" in joined
    assert "--main_process_ip 10.0.0.5" in joined and "--use_deepspeed --zero_stage 3" in joined
    assert args[-3:-1] == ["--module", "retrain.train_worker"]
    with pytest.raises(ValueError, match="needs GPUs"):
        accelerate_args(make_spec(Path("/tmp"), Path("/m"), Path("/s"), processes=2, strategy="fsdp"), cpu=True)
