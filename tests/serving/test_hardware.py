"""Device and precision choices on the GPUs people have, checked on the CPU by faking what torch reports:
several GPUs visible, cards with and without native bf16."""

from __future__ import annotations

import contextlib

import pytest

from serving.hardware import resolve_device, resolve_precision, visible_devices_for


@pytest.fixture
def gpus(monkeypatch):
    """Make torch report ``n`` GPUs, each with or without native bf16."""
    import torch

    def fake(n: int, native_bf16: bool = True) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "device", lambda index: contextlib.nullcontext())
        # Emulated bf16 (what T4/V100 report by default) counts only when emulation is asked for.
        monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                            lambda including_emulation=True: native_bf16 or including_emulation)

    return fake


def test_devices_resolve_to_one_gpu_or_the_cpu(gpus):
    gpus(2)
    assert resolve_device("auto") == "cuda:0"
    assert resolve_device("cuda") == "cuda:0"
    assert resolve_device("cuda:1") == "cuda:1"
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="2 GPU"):
        resolve_device("cuda:2")
    gpus(0)
    assert resolve_device("auto") == "cpu"
    with pytest.raises(ValueError, match="0 GPU"):
        resolve_device("cuda")
    for bad in ("gpu", "cuda:-1", "cuda:0,1", "cuda:0; rm -rf /"):
        with pytest.raises(ValueError, match="device must be"):
            resolve_device(bad)


def test_a_child_sees_exactly_its_gpu(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_devices_for("cuda:1") == "1"
    assert visible_devices_for("cpu") == ""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")  # e.g. a scheduler gave the app GPUs 4 and 5
    assert visible_devices_for("cuda:0") == "4"
    assert visible_devices_for("cuda:1") == "5"


def test_precision_follows_native_bf16(gpus):
    gpus(1, native_bf16=True)
    assert resolve_precision("auto", "cuda:0") == "bf16"
    gpus(1, native_bf16=False)  # a T4 or V100: bf16 only emulated
    assert resolve_precision("auto", "cuda:0") == "fp16"
    assert resolve_precision("bf16", "cuda:0") == "bf16"  # an explicit setting wins on a GPU
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "fp32"  # the CPU always computes in fp32
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp8", "cuda:0")


def test_loader_places_the_model_on_the_chosen_gpu_in_its_precision(gpus):
    import torch

    gpus(2, native_bf16=False)
    kwargs = hardware_kwargs("4bit", "cuda:1", "fp16")
    assert kwargs["device_map"] == {"": 1}
    assert kwargs["quantization_config"].bnb_4bit_compute_dtype == torch.float16
    assert hardware_kwargs("none", "cuda:0", "bf16") == {"dtype": torch.bfloat16, "device_map": {"": 0}}
    assert hardware_kwargs("none", "cpu", "fp32") == {"dtype": torch.float32}


def test_a_base_loaded_for_fsdp_is_placed_by_fsdp_and_stores_4bit_in_the_compute_dtype():
    import torch

    # Full precision: left in CPU RAM, so the whole base never has to fit one GPU (FSDP moves the shards).
    assert hardware_kwargs("none", "cuda:0", "bf16", shard=True) == {"dtype": torch.bfloat16}
    # 4-bit: on the rank's GPU, packed in bf16, since FSDP shards only float tensors.
    kwargs = hardware_kwargs("4bit", "cuda:1", "bf16", shard=True)
    assert kwargs["device_map"] == {"": 1} and kwargs["dtype"] == torch.bfloat16
    assert kwargs["quantization_config"].bnb_4bit_quant_storage == torch.bfloat16
    assert hardware_kwargs("4bit", "cuda:1", "bf16")["quantization_config"].bnb_4bit_quant_storage == torch.uint8


def hardware_kwargs(quantization: str, device: str, precision: str, shard: bool = False) -> dict:
    from serving.model_loading import _model_kwargs

    return _model_kwargs(quantization, device, precision, shard)

