"""Several training processes: ``python -m retrain.launch SPEC_JSON`` runs ``retrain.train_worker`` under
accelerate's launcher (``accelerate launch``), the engine TRL's trainers are built to run under.

This process is the one the app starts, watches and stops, as it does a single training child: it dies
with the app (``exit_with_parent``), and each rank does the same with it, so a ``kill -9`` of the app leaves
no rank behind; a failed rank makes torchrun's agent stop the others, and the run fails with the rank's
error. Only rank 0 writes progress, evaluation and the adapter (``retrain.train_worker``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from retrain import fsdp, zero
from retrain.train_worker import Progress, exit_with_parent, remove_staging
from retrain.training import TrainSpec

log = logging.getLogger("retrain.launch")

# Written into the run's directory (on storage every training machine shares) when a run spans machines:
# the other machines' `python app.py train-node` picks it up and starts its ranks.
LAUNCH_SPEC = "launch-spec.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_args(spec: TrainSpec) -> list[str]:
    """The ``accelerate launch`` arguments for ``spec`` (the Trainer sets mixed precision itself)."""
    # One machine: any free port (two apps on one box must not collide); several: the agreed one.
    port = spec.main_process_port if spec.num_machines > 1 else _free_port()
    args = ["--num_processes", str(spec.processes), "--num_machines", str(spec.num_machines),
            "--machine_rank", str(spec.machine_rank), "--main_process_port", str(port),
            "--mixed_precision", "no", "--dynamo_backend", "no"]
    if spec.main_process_ip:
        args += ["--main_process_ip", spec.main_process_ip]
    if spec.accelerate_config:
        args = ["--config_file", spec.accelerate_config, *args]
    if spec.strategy == "fsdp":
        args += fsdp.LAUNCH_ARGS  # torchrun starts the ranks, on the CPU too (retrain.fsdp)
    elif spec.strategy == "deepspeed":
        args += zero.launch_args(spec.zero_stage, spec.num_machines)
    else:
        # accelerate's torchrun launcher; on the CPU it starts the processes too, and the Trainer
        # (use_cpu) joins them over gloo.
        args += ["--multi_gpu"]
    return [*args, "--module", "retrain.train_worker", spec.to_json()]


def _already_failed(spec: TrainSpec) -> bool:
    """Whether rank 0 already wrote why it failed (a NaN loss, a disk full): that reason is the better one."""
    try:
        lines = Path(spec.progress_path).read_text(encoding="utf-8").strip().splitlines()
        return bool(lines) and json.loads(lines[-1]).get("stage") == "failed"
    except (OSError, ValueError):
        return False


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = TrainSpec.from_json(argv[1])
    exit_with_parent()
    from accelerate.commands.launch import launch_command, launch_command_parser

    try:
        args = launch_command_parser().parse_args(
            accelerate_args(spec))
        launch_command(args)
    except SystemExit as exc:
        if exc.code in (0, None):
            return 0
        return _failed(spec, exc)
    except Exception as exc:
        return _failed(spec, exc)
    return 0


def _failed(spec: TrainSpec, exc: BaseException) -> int:
    """Record why (torchrun's ChildFailedError names the rank and its exit code or signal); exit code 1."""
    detail = str(exc).strip().splitlines()
    reason = next((line.strip() for line in detail if "exitcode" in line or "Signal" in line),
                  detail[0] if detail else type(exc).__name__)
    log.error("run %s: a training process failed: %s", spec.run_id, reason)
    if spec.machine_rank == 0 and not _already_failed(spec):  # the app's machine owns the run's files
        remove_staging(spec)
        Progress(spec.progress_path).write(stage="failed", error=f"a training process failed: {reason}")
    return 1


def announce(spec: TrainSpec) -> None:
    """Publish a multi-machine run's spec for the other machines (atomically: they poll for it)."""
    path = Path(spec.progress_path).with_name(LAUNCH_SPEC)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(spec.to_json(), encoding="utf-8")
    os.replace(tmp, path)


def join(runs_dir: Path, machine_rank: int, should_stop: Callable[[], bool] = lambda: False,
         poll_s: float = 2.0) -> int:
    """Another training machine's loop: start this machine's ranks of every run the app announces.

    Runs announced before this machine joined are left alone (they started without it). Returns the
    number of runs taken part in, when ``should_stop`` says so.
    """
    from retrain.training import _child_env

    if machine_rank < 1:
        raise ValueError("train-node is for the other machines: --machine-rank 1 and up (0 is the app's)")
    seen = set(runs_dir.glob(f"*/{LAUNCH_SPEC}"))
    joined = 0
    log.info("waiting for training runs in %s as machine %d", runs_dir, machine_rank)
    while not should_stop():
        for path in sorted(set(runs_dir.glob(f"*/{LAUNCH_SPEC}")) - seen):
            seen.add(path)
            spec = TrainSpec.from_json(path.read_text(encoding="utf-8"))
            spec.machine_rank = machine_rank
            log.info("run %s: starting this machine's %d rank(s)", spec.run_id, spec.processes // spec.num_machines)
            rc = subprocess.call([sys.executable, "-m", "retrain.launch", spec.to_json()], env=_child_env(spec))
            log.info("run %s: this machine's ranks ended with code %d", spec.run_id, rc)
            joined += 1
        time.sleep(poll_s)
    return joined


if __name__ == "__main__":
    sys.exit(main(sys.argv))
