"""Parent side of training: describe a run (``TrainSpec``), run it in a child process, collect the result.

The child (``python -m retrain.train_worker SPEC_JSON``) talks back only through files: JSON progress
lines in ``progress_path`` and ``report.json`` beside the adapter. A crash, NaN or OOM in training ends
the child, never the serving process. The child writes into ``<output_dir>.partial``; only a run that
finished cleanly is renamed to ``output_dir``, so nothing half-trained ever sits at the final location.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

log = logging.getLogger(__name__)

NAN_EXIT_CODE = 3  # the worker's exit code when the loss became NaN/inf
REPORT = "report.json"
_PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Hyperparameters copied from Settings by from_settings (same names there).
HYPERPARAMETERS = (
    "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "learning_rate", "num_epochs", "max_steps",
    "batch_size", "preference_min_pairs", "preference_learning_rate", "early_stopping_patience", "seed",
)


class TrainingFailed(RuntimeError):
    """The training child did not produce an adapter and report; the message says why."""


@dataclass
class TrainSpec:
    """Everything the training child needs; travels as JSON on its command line."""

    run_id: str
    base_model: str  # path or hub id
    snapshot_dir: str  # sft_train.jsonl, sft_heldout.jsonl, kto_train.jsonl, pref_*.jsonl, manifest.json
    output_dir: str  # where the adapter (and report.json) end up
    progress_path: str
    quantization: str = "auto"
    parent_adapter: str | None = None  # start from these LoRA weights; None = a new LoRA
    production_adapter: str | None = None  # the gate's comparison; None = the base model
    reference_path: str | None = None  # None = the reference set shipped in retrain/reference/
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N" (as seen by the app); the child sees only this GPU
    precision: str = "auto"  # "auto" | "bf16" | "fp16" | "fp32" (see serving.hardware.resolve_precision)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: str = "all-linear"
    learning_rate: float = 2e-4
    num_epochs: float = 3.0
    max_steps: int = -1
    batch_size: int = 8
    preference_min_pairs: int = 8
    preference_learning_rate: float = 5e-5
    early_stopping_patience: int = 2
    seed: int = 42
    # Scale-out (retrain.launch): processes in all, machines, strategy; 1 process = a plain child as before.
    processes: int = 1
    num_machines: int = 1
    machine_rank: int = 0
    main_process_ip: str = ""
    main_process_port: int = 29500
    strategy: str = "ddp"  # "ddp" | "fsdp" | "deepspeed"
    zero_stage: int = 2
    accelerate_config: str | None = None
    keep_effective_batch: bool = True
    what_changed_prompts: int = 3  # held-out prompts both adapters answer for the run's "what changed" panel
    debug_inject_nan_at_step: int | None = None  # tests: poison the LoRA weights at this SFT step

    @classmethod
    def from_settings(cls, settings, **fields_: object) -> TrainSpec:
        """A spec with the hyperparameters, quantization and device of ``settings``; ``fields_`` win."""
        values = {name: getattr(settings, name) for name in HYPERPARAMETERS}
        values.update(quantization=settings.quantization, device=settings.train_device, precision=settings.precision,
                      processes=settings.train_processes, num_machines=settings.train_num_machines,
                      main_process_ip=settings.train_main_process_ip,
                      main_process_port=settings.train_main_process_port, strategy=settings.train_strategy,
                      zero_stage=settings.train_zero_stage, keep_effective_batch=settings.train_keep_effective_batch,
                      accelerate_config=str(settings.train_accelerate_config) if settings.train_accelerate_config
                      else None)
        values.update(fields_)
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TrainSpec:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown TrainSpec fields: {sorted(unknown)}")
        return cls(**data)

    @property
    def distributed(self) -> bool:
        return self.processes > 1 or self.num_machines > 1

    def batch_plan(self) -> tuple[int, int]:
        """``(per-device batch, gradient accumulation)`` for ``processes`` processes.

        The single-process recipe's effective batch (``batch_size``) is kept, so a run's result does not
        depend on how many GPUs the box has; where it does not divide, the nearest effective batch is used
        (the model card records it). With ``keep_effective_batch`` off, ``batch_size`` is per process.
        """
        if not self.keep_effective_batch or self.processes == 1:
            return self.batch_size, 1
        per_device = max(1, self.batch_size // self.processes)
        accumulation = max(1, round(self.batch_size / (per_device * self.processes)))
        return per_device, accumulation

    @property
    def staging_dir(self) -> Path:
        """Where the child writes; renamed to ``output_dir`` only after a clean finish."""
        out = Path(self.output_dir)
        return out.with_name(out.name + ".partial")

    @property
    def log_path(self) -> Path:
        """The child's stdout and stderr."""
        return Path(self.progress_path).with_suffix(".log")


@dataclass
class TrainOutcome:
    adapter_dir: Path
    report: dict  # {"candidate": {...}, "production": {...}, "train": {...}}


class _ProgressReader:
    """Yields complete new JSON lines of the progress file (the child may be mid-write)."""

    def __init__(self, path: Path):
        self.path, self.offset, self.last = path, 0, {}

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        end = chunk.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        out = []
        for line in chunk[: end + 1].splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    log.warning("unreadable progress line in %s", self.path)
        if out:
            self.last = out[-1]
        return out


def _child_env(spec: TrainSpec) -> dict:
    from serving.hardware import resolve_device, visible_devices_for

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PROJECT_ROOT), env.get("PYTHONPATH")) if p)
    # Exactly the GPUs asked for: with several visible to one process, Trainer wraps the model in
    # nn.DataParallel and TRL's trainers refuse to start. Several training processes are accelerate's
    # job (one GPU each, from the training device on), not an accident of what `--gpus all` makes visible.
    first = resolve_device(spec.device)
    if spec.distributed and first != "cpu":
        local = max(1, spec.processes // spec.num_machines)
        index = int(first.partition(":")[2])
        env["CUDA_VISIBLE_DEVICES"] = ",".join(visible_devices_for(resolve_device(f"cuda:{index + i}"))
                                               for i in range(local))
    else:
        env["CUDA_VISIBLE_DEVICES"] = visible_devices_for(first)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def _command(spec: TrainSpec) -> list[str]:
    """One process as a plain child; several through ``retrain.launch`` (accelerate's launcher)."""
    if spec.distributed:
        return [sys.executable, "-m", "retrain.launch", spec.to_json()]
    return [sys.executable, "-m", "retrain.train_worker", spec.to_json()]


def _stderr_tail(path: Path, lines: int = 5) -> str:
    try:
        tail = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return " | ".join(tail)


def _stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_training(
    spec: TrainSpec,
    on_progress: Callable[[dict], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    poll_s: float = 0.5,
) -> TrainOutcome:
    """Train in a child process and return the adapter and its evaluation report; raises ``TrainingFailed``.

    ``on_progress`` gets every progress line, and first ``{"stage": "started", "pid": ...}`` (the child's
    pid). ``should_cancel`` is polled; when it returns True the child is stopped and the run fails.
    """
    staging, final = spec.staging_dir, Path(spec.output_dir)
    progress = Path(spec.progress_path)
    for path in (staging, final):
        shutil.rmtree(path, ignore_errors=True)
    progress.parent.mkdir(parents=True, exist_ok=True)
    progress.write_text("")
    staging.parent.mkdir(parents=True, exist_ok=True)
    reader = _ProgressReader(progress)

    if spec.num_machines > 1:
        from retrain.launch import announce

        announce(spec)
    with spec.log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            _command(spec),
            stdout=log_file, stderr=subprocess.STDOUT, cwd=_PROJECT_ROOT, env=_child_env(spec),
        )
    log.info("run %s: training child started, pid %d", spec.run_id, proc.pid)
    try:
        if on_progress:
            on_progress({"stage": "started", "pid": proc.pid, "run_id": spec.run_id})
        while True:
            rc = proc.poll()
            for line in reader.read():
                if on_progress:
                    on_progress(line)
            if rc is not None:
                break
            if should_cancel and should_cancel():
                _stop(proc)
                raise TrainingFailed("training cancelled")
            time.sleep(poll_s)
        rc = proc.returncode
        if rc < 0:
            raise TrainingFailed(f"training process killed by signal {signal.Signals(-rc).name}")
        if rc == NAN_EXIT_CODE:
            raise TrainingFailed(reader.last.get("error") or "training loss became NaN or infinite")
        if rc != 0:
            detail = reader.last.get("error") or _stderr_tail(spec.log_path)
            raise TrainingFailed(f"training process exited with code {rc}: {detail}")
        report_path = staging / REPORT
        if not report_path.is_file():
            raise TrainingFailed("training process finished without writing report.json")
        report = json.loads(report_path.read_text(encoding="utf-8"))
        os.replace(staging, final)
    except BaseException:
        if proc.poll() is None:  # e.g. the caller was interrupted: never leave a training orphan
            _stop(proc)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("run %s: training finished, adapter at %s", spec.run_id, final)
    return TrainOutcome(adapter_dir=final, report=report)
