"""FSDP for the training child (``train_strategy=fsdp``): LoRA on a base sharded across the ranks.

Done the way peft's and TRL's FSDP guides do it, with FSDP2 (``fully_shard``; FSDP1 is deprecated in
transformers 5): accelerate wraps each decoder layer (``TRANSFORMER_BASED_WRAP``, the classes the model
names in ``_no_split_modules``), the base stays frozen, and only the LoRA weights train. A 4-bit base
stores its weights in the compute dtype (``bnb_4bit_quant_storage``, ``serving.model_loading``) because
FSDP shards only float tensors.

After a stage the LoRA weights are gathered from the shards on every rank (``gather_adapter``): the
adapter is saved from those, never by ``save_pretrained`` of a sharded model, and the next stage and rank
0's evaluation run on an unsharded model rebuilt from them.
"""

from __future__ import annotations

import logging

log = logging.getLogger("retrain.fsdp")

# accelerate's launcher flags (it passes them on to each rank as FSDP_* variables). FULL_STATE_DICT: a
# checkpoint (the best epoch, reloaded at the end) holds whole tensors, which a LoRA's few weights
# afford; reshard after forward: full sharding (ZeRO-3-like), the point of FSDP for a large base.
LAUNCH_ARGS = ["--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
               "--fsdp_state_dict_type", "FULL_STATE_DICT", "--fsdp_reshard_after_forward", "true",
               "--fsdp_cpu_ram_efficient_loading", "false"]


def allow_on_cpu(args) -> None:
    """Let accelerate apply FSDP to CPU processes (gloo), as it does on GPUs.

    accelerate 1.15 picks FSDP only for accelerator devices (``AcceleratorState``: the FSDP branch is
    reached from MULTI_GPU/XPU/NPU/..., not MULTI_CPU); on CPU it drops the FSDP plugin without a word and
    the Trainer wraps the model in DDP. torch's FSDP2 itself runs on a CPU device mesh over gloo, so the
    one missing step is that choice: the process-wide state says "several devices" before the Trainer
    builds its Accelerator. Only the state's type changes (the device stays the CPU, the backend gloo).
    ``args`` is the stage's TrainingArguments: reading ``args.device`` sets the state up first (it resets
    any earlier one).
    """
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    if args.device.type != "cpu":
        return
    state = PartialState()
    if state.distributed_type == DistributedType.MULTI_CPU:
        state._shared_state["distributed_type"] = DistributedType.MULTI_GPU


def check_sharded(trainer) -> None:
    """Raise unless the Trainer really shards the model (a silent DDP run would claim FSDP)."""
    if not getattr(trainer, "is_fsdp_enabled", False):
        raise RuntimeError("train_strategy=fsdp, but accelerate did not enable FSDP for this process "
                           f"(distributed type {trainer.accelerator.distributed_type})")


def gather_adapter(model, adapter_name: str = "default") -> dict:
    """The LoRA weights of a sharded PeftModel, whole, on every rank (a collective: all ranks call it).

    Only the trainable LoRA tensors are gathered (``DTensor.full_tensor``), not the base: the whole state
    dict that ``trainer.save_model`` would assemble on rank 0 holds the full base, which FSDP is used
    because it does not fit. Returned in the key format ``set_peft_model_state_dict`` takes.
    """
    from peft import get_peft_model_state_dict
    from torch.distributed.tensor import DTensor

    whole = {}
    for name, param in model.named_parameters():
        if "lora_" in name and f".{adapter_name}." in name:  # same order on every rank: collectives pair up
            tensor = param.full_tensor() if isinstance(param, DTensor) else param
            whole[name] = tensor.detach().to("cpu", copy=True)
    return get_peft_model_state_dict(model, state_dict=whole, adapter_name=adapter_name)
