"""DeepSpeed ZeRO for the training child (``train_strategy=deepspeed``, ``train_zero_stage``).

accelerate builds the DeepSpeed config from the launcher's ``--zero_stage`` and the Trainer fills its
"auto" values (batch sizes, learning rate), as TRL's DeepSpeed guide runs it. Stages 0-2 partition only the
optimizer state and gradients: every rank still holds the whole model, so rank 0 evaluates and saves the
adapter as under DDP. Stage 3 partitions the parameters too: after a stage the LoRA weights are gathered
(``gather_adapter``) and an unsharded model is rebuilt from them, as under FSDP (``retrain.fsdp``).

Runs on the CPU as well: DeepSpeed's CPU accelerator talks over gloo, and accelerate selects DeepSpeed
for CPU processes (unlike FSDP).
"""

from __future__ import annotations


def launch_args(zero_stage: int, num_machines: int) -> list[str]:
    args = ["--use_deepspeed", "--zero_stage", str(zero_stage)]
    if num_machines > 1:
        # Each machine runs its own launcher (`train-node`), as under DDP: torchrun per machine, not
        # DeepSpeed's pdsh fan-out from machine 0.
        args += ["--deepspeed_multinode_launcher", "standard"]
    return args


def partitions_parameters(zero_stage: int) -> bool:
    """Whether a rank holds only a part of each parameter (ZeRO-3)."""
    return zero_stage >= 3


def check_enabled(trainer) -> None:
    """Raise unless the Trainer really runs under DeepSpeed (never a silent DDP run named deepspeed)."""
    if not getattr(trainer, "is_deepspeed_enabled", False):
        raise RuntimeError("train_strategy=deepspeed, but accelerate did not enable DeepSpeed for this process "
                           f"(distributed type {trainer.accelerator.distributed_type})")


def gather_adapter(model, adapter_name: str = "default") -> dict:
    """The LoRA weights of a ZeRO-3 partitioned PeftModel, whole, on every rank (all ranks call it)."""
    import deepspeed
    from peft import get_peft_model_state_dict

    named = [(n, p) for n, p in model.named_parameters() if "lora_" in n and f".{adapter_name}." in n]
    with deepspeed.zero.GatheredParameters([p for _, p in named]):
        whole = {n: p.detach().to("cpu", copy=True) for n, p in named}
    return get_peft_model_state_dict(model, state_dict=whole, adapter_name=adapter_name)


def stop_partitioning_new_models() -> None:
    """Load the next model whole: once a ZeRO-3 trainer has run, transformers builds every new model
    partitioned (``zero.Init``, a collective the ranks that already left would never join). The next
    stage's trainer partitions the rebuilt model itself, as it did the first."""
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
