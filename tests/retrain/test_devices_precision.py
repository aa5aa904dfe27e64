"""The training child on the GPUs people have, checked on the CPU by faking what torch reports: it sees
exactly one GPU however many are visible to the app, picks its precision from the hardware, and saves
fp32 LoRA weights even where TRL trains a quantized base's adapter in bf16."""

from __future__ import annotations

import contextlib
import json
import textwrap

import pytest

from retrain.train_worker import _common_args
from retrain.training import TrainSpec, _child_env, run_training
from settings import Settings
from tests.retrain.test_training import make_spec, teaching_snapshot


@pytest.fixture
def two_gpus(monkeypatch):
    import torch

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "device", lambda index: contextlib.nullcontext())


def _spec(device: str, precision: str = "auto") -> TrainSpec:
    return TrainSpec.from_settings(Settings(train_device=device, precision=precision), run_id="r", base_model="m",
                                   snapshot_dir="s", output_dir="o", progress_path="p.jsonl")


def test_child_sees_exactly_the_training_gpu(two_gpus):
    assert _child_env(_spec("auto"))["CUDA_VISIBLE_DEVICES"] == "0"
    assert _child_env(_spec("cuda:1"))["CUDA_VISIBLE_DEVICES"] == "1"  # serving on 0, training on 1
    assert _child_env(_spec("cpu"))["CUDA_VISIBLE_DEVICES"] == ""


def test_precision_setting_reaches_the_trainer_flags(tmp_path):
    assert _spec("cpu", "fp16").precision == "fp16"
    flags = {p: _common_args(_spec("cpu"), tmp_path, p, quantized=True) for p in ("bf16", "fp16", "fp32")}
    assert (flags["bf16"]["bf16"], flags["bf16"]["fp16"], flags["bf16"]["use_cpu"]) == (True, False, False)
    assert (flags["fp16"]["bf16"], flags["fp16"]["fp16"], flags["fp16"]["use_cpu"]) == (False, True, False)
    assert (flags["fp32"]["bf16"], flags["fp32"]["fp16"], flags["fp32"]["use_cpu"]) == (False, False, True)


# In the child: the Trainer's n_gpu counts the GPUs the child can see, as it does on a CUDA box (there,
# several visible GPUs make SFTTrainer raise "does not support nn.DataParallel").
_FAKE_GPUS_SITECUSTOMIZE = textwrap.dedent("""
    import os
    import transformers.training_args as _ta

    def _visible_gpus(self):
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        return 2 if visible is None else len([d for d in visible.split(",") if d.strip()])

    _ta.TrainingArguments.n_gpu = property(_visible_gpus)
""")


@pytest.mark.slow
def test_qlora_run_with_two_gpus_visible_completes_with_fp32_adapter(demo_model_dir, two_gpus, tmp_path,
                                                                     monkeypatch):
    from safetensors.torch import load_file

    fake = tmp_path / "fake-gpus"
    fake.mkdir()
    (fake / "sitecustomize.py").write_text(_FAKE_GPUS_SITECUSTOMIZE)
    monkeypatch.setenv("PYTHONPATH", str(fake))
    spec = make_spec(tmp_path, demo_model_dir.model, teaching_snapshot(tmp_path / "snap"), device="auto",
                     quantization="4bit", max_steps=2, num_epochs=1, preference_min_pairs=4)
    outcome = run_training(spec)

    weights = load_file(outcome.adapter_dir / "adapter_model.safetensors")
    assert weights and {str(v.dtype) for v in weights.values()} == {"torch.float32"}
    train = outcome.report["train"]
    assert train["quantized"] is True and train["precision"] == "fp32"  # the CPU child computes in fp32
    assert "- precision: fp32" in (outcome.adapter_dir / "README.md").read_text()
    progress = [json.loads(line) for line in open(spec.progress_path) if line.strip()]
    assert any(p.get("stage") == "kto" for p in progress)  # KTO's bf16-sized updates are the ones kept in fp32
