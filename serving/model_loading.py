"""Load the base model and its tokenizer for local serving, with the quantization the machine allows."""

from __future__ import annotations

import logging
from pathlib import Path

from serving.errors import ModelUnavailable

log = logging.getLogger(__name__)

QUANTIZATIONS = ("auto", "4bit", "8bit", "none")


def _looks_like_path(model: str) -> bool:
    # A hub id is "name" or "org/name"; anything else (absolute, ./, ~, deeper) is meant as a directory.
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or Path(model).exists()


def _unavailable(model: str, reason: str) -> ModelUnavailable:
    return ModelUnavailable(
        f"cannot load base model {model!r}: {reason}. "
        "Pass --model PATH to a local model directory, or --demo to serve the offline demo model."
    )


def resolve_quantization(quantization: str, cuda: bool) -> str:
    """The concrete quantization ``auto`` means on this machine: 4-bit on CUDA, none on CPU."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, not {quantization!r}")
    if quantization == "auto":
        return "4bit" if cuda else "none"
    return quantization


def _model_kwargs(quantization: str, device: str, precision: str, shard: bool = False) -> dict:
    import torch
    from transformers import BitsAndBytesConfig

    from serving.hardware import device_index, torch_dtype

    index = device_index(device)
    # FSDP (training only) places the shards itself: a full-precision base stays in CPU RAM until then.
    placement = {"device_map": {"": index}} if index is not None and not (shard and quantization == "none") else {}
    dtype = torch_dtype(precision)
    if quantization == "4bit":
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            # The compute dtype follows the hardware: bf16 emulated on a T4/V100 is slow or fails in kernels.
            bnb_4bit_compute_dtype=dtype if index is not None else torch.float32,
            bnb_4bit_use_double_quant=True,
            # FSDP shards only float tensors: 4-bit weights packed in the compute dtype (bitsandbytes' and
            # peft's FSDP-QLoRA guides); uint8 packing otherwise.
            **({"bnb_4bit_quant_storage": dtype} if shard and index is not None else {}),
        )
        # Sharded: the unquantized rest (embeddings, norms) in the same dtype, as those guides load it.
        return {"quantization_config": config, **({"dtype": dtype} if shard else {}), **placement}
    if quantization == "8bit":
        return {"quantization_config": BitsAndBytesConfig(load_in_8bit=True), **placement}
    return {"dtype": dtype, **placement}


def load_base_model(model: str, quantization: str = "auto", device: str = "auto", precision: str = "auto",
                    shard: bool = False):
    """Load ``(model, tokenizer)`` for generation; raises ``ModelUnavailable`` when it cannot be had.

    ``device`` and ``precision`` are settings (``serving.hardware`` resolves them: one GPU, never
    whatever happens to be visible; bf16 only where the GPU has it natively). The tokenizer pads on the
    left (batched generation appends on the right) and always has a pad token. ``shard``: loaded for FSDP
    training (``retrain.fsdp``).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from serving.hardware import resolve_device, resolve_precision

    if _looks_like_path(model) and not Path(model).expanduser().is_dir():
        raise _unavailable(model, "no such directory")
    device = resolve_device(device)
    dtype = resolve_precision(precision, device)
    quant = resolve_quantization(quantization, device != "cpu")
    source = str(Path(model).expanduser()) if _looks_like_path(model) else model
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        lm = AutoModelForCausalLM.from_pretrained(source, **_model_kwargs(quant, device, dtype, shard))
    except (OSError, ValueError) as exc:
        # OSError covers hub-offline, not-cached, missing files and HTTP errors (HfHubHTTPError is one);
        # ValueError covers malformed repo ids (HFValidationError). Both mean "no model here" to a user.
        log.debug("base model load failed", exc_info=True)
        raise _unavailable(model, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        # Padding only fills masked positions, so reusing eos is harmless and needs no new embedding row.
        tokenizer.pad_token = tokenizer.eos_token
    lm.eval()
    log.info("base model loaded: %s quantization=%s device=%s precision=%s", model, quant, lm.device, dtype)
    return lm, tokenizer
