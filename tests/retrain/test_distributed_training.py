"""Training under accelerate with two processes (gloo on the CPU), DDP, FSDP and DeepSpeed ZeRO-3: the same
recipe gives the same result as one process, only rank 0 writes, and a rank that dies fails the run
cleanly with no process left behind."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from retrain.fsdp import check_sharded
from retrain.launch import accelerate_args
from retrain.training import TrainingFailed, TrainOutcome, run_training
from retrain.zero import check_enabled
from tests.retrain.test_training import make_spec, teaching_snapshot
from tests.web.conftest import wait_for

RECIPE = dict(num_epochs=3, batch_size=8, device="cpu", seed=11)


@pytest.fixture(scope="module")
def one_process(demo_model_dir, tmp_path_factory) -> tuple[Path, TrainOutcome]:
    """The teaching snapshot and the single-process run on it, the baseline both strategies must match."""
    tmp = tmp_path_factory.mktemp("one")
    snap = teaching_snapshot(tmp / "snap")
    return snap, run_training(make_spec(tmp, demo_model_dir.model, snap, name="one", **RECIPE))


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
def test_two_processes_match_one_and_only_rank_zero_writes(demo_model_dir, one_process, tmp_path):
    snap, one = one_process
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


# Each rank holds a part of every parameter: the LoRA is gathered from the parts after each stage (SFT,
# then KTO here). The log lines are the engines' own: the guards in retrain.fsdp / retrain.zero already
# fail a run the engine did not take.
SHARDED = [pytest.param("fsdp", 0, ("fsdp_utils", "Loading model from"), id="fsdp"),
           pytest.param("deepspeed", 3, ("DeepSpeed",), id="deepspeed-zero3")]


@pytest.mark.slow
@pytest.mark.parametrize(("strategy", "zero_stage", "evidence"), SHARDED)
def test_sharded_training_matches_one_process(demo_model_dir, one_process, tmp_path, strategy, zero_stage, evidence):
    from peft import PeftModel

    from serving.adapters import base_modules_of, check_adapter_dir
    from serving.model_loading import load_base_model

    snap, one = one_process
    spec = make_spec(tmp_path, demo_model_dir.model, snap, name=strategy, processes=2, strategy=strategy,
                     zero_stage=zero_stage, **RECIPE)
    two = run_training(spec)

    train = two.report["train"]
    assert (train["world_size"], train["strategy"], train["effective_batch"]) == (2, strategy, 8)
    assert train["steps"] == one.report["train"]["steps"] and train["stages"] == ["sft", "kto"]
    card = (two.adapter_dir / "README.md").read_text()
    assert "- world_size: 2" in card and f"- strategy: {strategy}" in card and "- effective_batch: 8" in card
    log = spec.log_path.read_text()
    assert all(line in log for line in evidence)
    progress = Path(spec.progress_path).read_text().splitlines()
    assert sum('"stage": "done"' in line for line in progress) == 1  # published once, by rank 0
    assert sorted(p.name for p in two.adapter_dir.iterdir()) == sorted(p.name for p in one.adapter_dir.iterdir())

    # The adapter was gathered whole from the parts: the server's checks pass and it loads as a PEFT adapter
    # with every tensor of the single-process one, and it is the model rank 0 evaluated.
    base, _ = load_base_model(str(demo_model_dir.model), "none")
    check_adapter_dir(strategy, two.adapter_dir, adapters_dir=tmp_path, base_model_name_or_path=str(
        demo_model_dir.model), base_modules=base_modules_of(base))
    from safetensors.torch import load_file

    mine, theirs = load_file(two.adapter_dir / "adapter_model.safetensors"), load_file(
        one.adapter_dir / "adapter_model.safetensors")
    assert mine.keys() == theirs.keys() and all(mine[k].shape == theirs[k].shape for k in mine)
    assert all(mine[k].abs().sum() > 0 for k in mine if "lora_B" in k)  # trained, not the zero init
    PeftModel.from_pretrained(base, str(two.adapter_dir))

    a, b = one.report["candidate"]["heldout_loss"], two.report["candidate"]["heldout_loss"]
    assert abs(a - b) <= 0.15 * max(a, b), (a, b)  # the data order differs (a distributed sampler)
    assert not _processes_of(spec.run_id)


def test_a_trainer_the_strategy_did_not_take_is_refused(demo_model_dir, tmp_path):
    # What accelerate 1.15 builds when FSDP is asked for on a device it does not shard for (the CPU, left
    # alone by retrain.fsdp.allow_on_cpu): a plain trainer, which then wraps the model in DDP, without a
    # word. A run asked to shard must fail rather than train unsharded under the name fsdp (or deepspeed).
    from transformers import Trainer, TrainingArguments

    from serving.model_loading import load_base_model

    model, _ = load_base_model(str(demo_model_dir.model), "none")
    trainer = Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none"))
    with pytest.raises(RuntimeError, match="did not enable FSDP"):
        check_sharded(trainer)
    with pytest.raises(RuntimeError, match="did not enable DeepSpeed"):
        check_enabled(trainer)


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
    args = accelerate_args(spec)
    joined = " ".join(args[:-1])
    assert "--num_processes 4 --num_machines 2 --machine_rank 1 --main_process_port 29555" in joined
    assert "--main_process_ip 10.0.0.5" in joined and "--use_deepspeed --zero_stage 3" in joined
    assert "--deepspeed_multinode_launcher standard" in joined  # each machine's own launcher, as train-node runs it
    assert args[-3:-1] == ["--module", "retrain.train_worker"]


def test_fsdp_launch_arguments_parse_into_an_fsdp2_plugin(monkeypatch):
    """The arguments accelerate's own parser takes, and the FSDP settings each rank then reads."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    spec = make_spec(Path("/tmp"), Path("/m"), Path("/s"), processes=2, strategy="fsdp")
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(accelerate_args(spec)))
    env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP" and env["FSDP_STATE_DICT_TYPE"] == "FULL_STATE_DICT"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.state_dict_type.name == "FULL_STATE_DICT" and not plugin.cpu_ram_efficient_loading
