"""Training child: ``python -m retrain.train_worker SPEC_JSON``.

Loads the base (4-bit + ``prepare_model_for_kbit_training`` on CUDA, full precision on CPU), starts from
the parent adapter or a new LoRA, anchors the SFT set with the parent's own answers to the shipped general
prompts (self-distillation replay, ``retrain.distill``), runs SFT (completion-only loss, early stopping on
held-out loss), then a DPO stage on preference pairs and a KTO stage on the remaining unpaired thumbs when
there is enough of each, saves the adapter with a model card, evaluates candidate and production (and
their answers to the canary facts, ``retrain.canary_facts``, and to earlier runs' lessons,
``retrain.lesson_check``), and writes ``report.json``. It talks to the parent only through the progress
file and the output directory (see ``retrain.training``). Exit codes: 0 done, ``NAN_EXIT_CODE`` NaN/inf loss, 1 error.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import sys
import threading
import time
import traceback
from pathlib import Path

from retrain.artifacts import CHAT_TEMPLATE_FILE
from retrain.canary_facts import answer_facts, broken_facts, load_facts, suspects
from retrain.evaluate import completion_text, evaluate, load_reference, read_jsonl, sample_answers
from retrain.lesson_check import answer_probes, probe_rows
from retrain.training import NAN_EXIT_CODE, REPORT, TrainSpec
from serving.chat_format import render_prompt

log = logging.getLogger("retrain.train_worker")


class LossNotFinite(RuntimeError):
    """The training loss became NaN or infinite."""


def rank() -> int:
    """This process's global rank under accelerate/torchrun (0 when training alone)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


class Progress:
    """Appends one JSON line per event to the progress file (the parent polls it); rank 0 only."""

    def __init__(self, path: str):
        self.path = Path(path)

    def write(self, **event) -> None:
        if rank() != 0:
            return
        event["time"] = time.time()
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")
            f.flush()


def _callbacks(progress: Progress, stage: str, inject_nan_at: int | None):
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        """Reports every logged step and aborts on a NaN/inf loss (transformers would train on)."""

        def __init__(self):
            self.started = time.monotonic()

        def on_step_begin(self, args, state, control, model=None, **kwargs):
            if inject_nan_at is not None and state.global_step + 1 == inject_nan_at:
                import torch

                with torch.no_grad():
                    for p in model.parameters():
                        if p.requires_grad:
                            p.fill_(float("nan"))

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            loss, eval_loss = logs.get("loss"), logs.get("eval_loss")
            for value in (loss, eval_loss):
                if value is not None and not math.isfinite(value):
                    progress.write(stage=stage, step=state.global_step, total_steps=state.max_steps, loss=loss,
                                   error=f"{stage} loss became {value} at step {state.global_step}")
                    raise LossNotFinite(f"{stage} loss became {value} at step {state.global_step}")
            elapsed = time.monotonic() - self.started
            done = max(state.global_step, 1)
            eta = elapsed / done * max(state.max_steps - state.global_step, 0)
            progress.write(stage=stage, step=state.global_step, total_steps=state.max_steps,
                           loss=loss, eval_loss=eval_loss, eta_s=round(eta, 1))

    return [ProgressCallback()]


def _sharded(spec: TrainSpec) -> bool:
    """Whether each rank holds only a part of the model's parameters (FSDP, ``retrain.fsdp``; ZeRO-3,
    ``retrain.zero``): the trained LoRA must then be gathered before it is evaluated or saved."""
    from retrain.zero import partitions_parameters

    return spec.distributed and (spec.strategy == "fsdp" or (
        spec.strategy == "deepspeed" and partitions_parameters(spec.zero_stage)))


def _load_base(spec: TrainSpec, for_training: bool = True):
    """``(model, tokenizer, quantized, device)``; the same loader serving uses, so training sees the served
    base. ``device`` is where training computes (an FSDP base may still sit in CPU RAM: ``fully_shard``
    moves each rank's shard there).

    The parent made exactly the training GPU visible (or none), so "auto" is that one GPU here. Under
    accelerate each rank loads its own copy (4-bit too) on its own GPU, as peft and TRL document for
    multi-GPU QLoRA.
    """
    import torch

    from serving.hardware import resolve_device
    from serving.model_loading import load_base_model

    device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if spec.distributed and torch.cuda.is_available() else "auto"
    model, tokenizer = load_base_model(spec.base_model, spec.quantization, device, spec.precision,
                                       shard=for_training and _sharded(spec))
    quantized = bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))
    if quantized:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    return model, tokenizer, quantized, resolve_device(device)


def _unsharded(spec: TrainSpec, model, keep: bool, for_training: bool):
    """Under FSDP or ZeRO-3, after a stage: the trained LoRA gathered from the parts (every rank takes part)
    on a freshly loaded, unsharded base, for the next stage or rank 0's evaluation; ``None`` unless ``keep``.
    Otherwise: ``model`` itself (every rank holds it whole).
    """
    if not _sharded(spec):
        return model
    import gc

    import torch
    from peft import set_peft_model_state_dict

    from retrain import fsdp, zero

    adapter = (fsdp if spec.strategy == "fsdp" else zero).gather_adapter(model)
    if spec.strategy == "deepspeed":
        zero.stop_partitioning_new_models()
    del model
    gc.collect()  # the sharded model (and the trainer's cycles) before a second base is loaded
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if not keep:
        return None
    base, _, _, _ = _load_base(spec, for_training=for_training)
    model = _peft_model(spec, base)
    result = set_peft_model_state_dict(model, adapter)
    if result.unexpected_keys:
        raise RuntimeError(f"gathered adapter has unexpected keys: {result.unexpected_keys[:3]}")
    return model


def _peft_model(spec: TrainSpec, base):
    from peft import LoraConfig, PeftModel, get_peft_model

    if spec.parent_adapter:
        return PeftModel.from_pretrained(base, spec.parent_adapter, is_trainable=True)
    targets = spec.lora_target_modules
    config = LoraConfig(
        r=spec.lora_r, lora_alpha=spec.lora_alpha, lora_dropout=spec.lora_dropout, task_type="CAUSAL_LM",
        target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()],
    )
    return get_peft_model(base, config)


def _rendered(tokenizer, rows: list[dict], label: bool = False) -> list[dict]:
    # Pre-rendered with serving's renderer, so the trained prompt is byte for byte the served one;
    # TRL then treats these as plain prompt/completion text and puts the loss on the completion only.
    out = []
    for r in rows:
        item = {"prompt": render_prompt(tokenizer, r["prompt"]),
                "completion": completion_text(tokenizer, r["prompt"], r["completion"][-1]["content"])}
        if label:
            item["label"] = bool(r["label"])
        out.append(item)
    return out


def _keep_adapter_fp32(model) -> None:
    """Cast the trainable (LoRA) weights back to fp32 after a TRL trainer is built.

    For a quantized base TRL casts them to bf16 (the QLoRA paper's recipe), even on hardware without
    bf16; KTO's small updates (lr 5e-5) then sit below bf16's resolution for typical LoRA weights and
    are lost, and fp16 loss scaling needs fp32 master weights anyway. The base stays 4-bit and the
    matmuls still run in the compute dtype under autocast; only the few LoRA weights are fp32.
    """
    import torch

    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()


def _before_trainer(spec: TrainSpec, args) -> None:
    if spec.distributed and spec.strategy == "fsdp":
        from retrain.fsdp import allow_on_cpu

        allow_on_cpu(args)


def _after_trainer(spec: TrainSpec, trainer) -> None:
    if spec.distributed and spec.strategy == "fsdp":
        from retrain.fsdp import check_sharded

        check_sharded(trainer)
    elif spec.distributed and spec.strategy == "deepspeed":
        from retrain.zero import check_enabled

        check_enabled(trainer)
    _keep_adapter_fp32(trainer.model)


def _common_args(spec: TrainSpec, out: Path, precision: str, quantized: bool) -> dict:
    per_device, accumulation = spec.batch_plan()
    return dict(
        output_dir=str(out),
        per_device_train_batch_size=per_device,
        per_device_eval_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        # LoRA leaves most parameters frozen; DDP's search for unused ones only costs a pass (and fails
        # with gradient checkpointing).
        ddp_find_unused_parameters=False if spec.distributed else None,
        logging_steps=1,
        logging_nan_inf_filter=False,  # a NaN must reach our callback, not be averaged away
        report_to="none",
        seed=spec.seed,
        data_seed=spec.seed,
        use_cpu=precision == "fp32",  # fp32 is the CPU's (resolve_precision); a GPU run is bf16 or fp16
        bf16=precision == "bf16",
        fp16=precision == "fp16",  # with the Trainer's loss scaling
        gradient_checkpointing=quantized,
        # transformers refuses FSDP and DeepSpeed with save_only_model when the best epoch is reloaded at
        # the end; the optimizer state they then save too is the LoRA's only.
        save_only_model=not (spec.distributed and spec.strategy in ("fsdp", "deepspeed")),
        disable_tqdm=True,
        max_length=1024,
        dataloader_num_workers=0,
        include_num_input_tokens_seen=True,
    )


def _sft(spec, model, tokenizer, train, heldout, progress, precision, quantized, work: Path):
    from datasets import Dataset
    from transformers import EarlyStoppingCallback
    from trl import SFTConfig, SFTTrainer

    evaluating = bool(heldout)
    args = SFTConfig(
        **_common_args(spec, work / "sft", precision, quantized),
        learning_rate=spec.learning_rate,
        num_train_epochs=spec.num_epochs,
        max_steps=spec.max_steps,
        completion_only_loss=True,
        eval_strategy="epoch" if evaluating else "no",
        save_strategy="epoch" if evaluating else "no",
        save_total_limit=2 if evaluating else None,
        load_best_model_at_end=evaluating,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
    )
    callbacks = _callbacks(progress, "sft", spec.debug_inject_nan_at_step)
    if evaluating and spec.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=spec.early_stopping_patience))
    _before_trainer(spec, args)
    trainer = SFTTrainer(
        model=model, args=args, processing_class=tokenizer, callbacks=callbacks,
        train_dataset=Dataset.from_list(_rendered(tokenizer, train)),
        eval_dataset=Dataset.from_list(_rendered(tokenizer, heldout)) if evaluating else None,
    )
    _after_trainer(spec, trainer)
    result = trainer.train()
    return trainer.model, result, trainer.state


def _greedy(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, batch_size: int = 16):
    """``[(text, finished)]``: greedy answers to ``prompts``, rendered as serving renders them."""
    import torch

    model.eval()
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    out = []
    try:
        for start in range(0, len(prompts), batch_size):
            texts = [render_prompt(tokenizer, p) for p in prompts[start:start + batch_size]]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            with torch.no_grad():
                gen = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
            for row in gen[:, batch["input_ids"].shape[1]:].tolist():
                finished = tokenizer.eos_token_id in row
                if finished:
                    row = row[: row.index(tokenizer.eos_token_id)]
                out.append((tokenizer.decode(row, skip_special_tokens=True), finished))
    finally:
        tokenizer.padding_side = side
    return out


def _anchors(spec: TrainSpec, model, tokenizer, sft_train: list[dict], answers: list[str]) -> list[dict]:
    """Self-distillation rows for this attempt (see ``retrain.distill``); generated by ``model`` as loaded,
    none that say one of ``answers`` (the training rows' answers: ``retrain.distill.drop_spills``)."""
    from retrain.distill import (
        anchor_count,
        drop_spills,
        generate_anchors,
        load_or_generate,
        load_prompts,
        pick,
    )

    if not spec.distill_cache_path or spec.distill_ratio <= 0:
        return []
    n_replay = sum(str(r.get("source_id", "")).startswith("replay:") for r in sft_train)
    n_new = len(sft_train) - n_replay
    if anchor_count(n_new, n_replay, spec.distill_ratio, spec.distill_scale, 1) == 0:
        return []  # enough replay already: no need to generate
    rows = drop_spills(load_or_generate(spec.distill_cache_path, lambda: generate_anchors(
        lambda prompts: _greedy(model, tokenizer, prompts, spec.distill_max_new_tokens),
        load_prompts(), spec.system_prompt)), answers)
    return pick(rows, anchor_count(n_new, n_replay, spec.distill_ratio, spec.distill_scale, len(rows)), spec.seed)


def _dpo(spec, model, tokenizer, rows, progress, precision, quantized, work: Path):
    # Pairs (a correction over the answer it replaced, an arena winner over the loser) carry more than two
    # unpaired thumbs: DPO (Rafailov et al. 2023) trains on the contrast directly. Its reference is the
    # SFT result (TRL copies the adapter as "ref"), so DPO refines what SFT taught instead of undoing it.
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    data = [{"prompt": render_prompt(tokenizer, r["prompt"]),
             "chosen": completion_text(tokenizer, r["prompt"], r["chosen"][-1]["content"]),
             "rejected": completion_text(tokenizer, r["prompt"], r["rejected"][-1]["content"])} for r in rows]
    args = DPOConfig(
        **_common_args(spec, work / "dpo", precision, quantized),
        learning_rate=spec.dpo_learning_rate,
        # A few dozen pairs need more than one pass on the demo model (fp32 = the CPU; a GPU run is bf16/fp16).
        num_train_epochs=1 if precision != "fp32" or len(rows) >= 64 else 3,
        beta=spec.dpo_beta,
        # Plus the NLL of the chosen answer (RPO, Pang et al. 2024): DPO alone may lower both answers'
        # likelihood as long as the gap grows, which drags down everyday text the rejected answers resemble.
        loss_type=["sigmoid", "sft"],
        save_strategy="no",
    )
    _before_trainer(spec, args)
    trainer = DPOTrainer(model=model, args=args, processing_class=tokenizer, train_dataset=Dataset.from_list(data),
                         callbacks=_callbacks(progress, "dpo", None))
    _after_trainer(spec, trainer)
    result = trainer.train()
    model = trainer.model
    if _sharded(spec):
        return model, result  # train() gathers the "default" adapter; the sharded "ref" copy goes with it
    if "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")
    model.set_adapter("default")
    return model, result


def _kto_ready(spec: TrainSpec, rows: list[dict]) -> bool:
    labels = {bool(r["label"]) for r in rows}
    return len(rows) >= max(spec.preference_min_pairs, 2) and labels == {True, False}


def _kto(spec, model, tokenizer, rows, progress, precision, quantized, work: Path):
    # KTO rather than DPO: ratings arrive as unpaired thumbs up/down (every rated answer is usable),
    # while DPO needs chosen/rejected pairs, which only corrections and arena votes give.
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    rows = list(rows)
    random.Random(spec.seed).shuffle(rows)  # KTO samples sequentially (its KL pairing); mix the labels here
    n_good = sum(bool(r["label"]) for r in rows)
    n_bad = len(rows) - n_good
    args = KTOConfig(
        **_common_args(spec, work / "kto", precision, quantized),
        learning_rate=spec.preference_learning_rate,
        num_train_epochs=1,
        save_strategy="no",
        # Weigh the rarer label up, within the 1:1..4:3 band the KTO paper recommends.
        desirable_weight=1.0,
        undesirable_weight=min(max(n_good / max(n_bad, 1), 1.0), 4 / 3),
    )
    _before_trainer(spec, args)
    trainer = KTOTrainer(
        model=model, args=args, processing_class=tokenizer,
        train_dataset=Dataset.from_list(_rendered(tokenizer, rows, label=True)),
        callbacks=_callbacks(progress, "kto", None),
    )
    _after_trainer(spec, trainer)
    result = trainer.train()
    model = trainer.model
    if _sharded(spec):
        return model, result  # as in _dpo
    if "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")  # TRL's frozen copy of the SFT adapter; not part of the result
    model.set_adapter("default")
    return model, result


def _effective_batch(spec: TrainSpec) -> int:
    per_device, accumulation = spec.batch_plan()
    return per_device * world_size() * accumulation


def _model_card(spec: TrainSpec, manifest: dict, counts: dict, metrics: dict, train: dict) -> str:
    hyper = {k: getattr(spec, k) for k in (
        "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "learning_rate", "num_epochs", "max_steps",
        "batch_size", "preference_learning_rate", "dpo_learning_rate", "dpo_beta", "distill_ratio", "distill_scale",
        "early_stopping_patience", "seed")}
    lines = [
        "---", "library_name: peft", f"base_model: {spec.base_model}", "tags: [tuneloop, lora]", "---", "",
        f"# Tuneloop adapter (run {spec.run_id})", "",
        "LoRA adapter fine-tuned by Tuneloop from its users' ratings. Training data stays on the server; "
        "this card holds counts and metrics only.", "",
        f"- Base model: `{spec.base_model}`",
        f"- Parent adapter: `{spec.parent_adapter or 'none (new LoRA)'}`",
        f"- Attempt: {spec.attempt} of run `{spec.run_id}` (learning rate {spec.learning_rate:g}, "
        f"{spec.num_epochs:g} epochs, self-distillation anchors x{spec.distill_scale:g})",
        f"- Snapshot: `{manifest.get('id') or manifest.get('snapshot_id') or 'unknown'}`"
        f" (hash `{manifest.get('content_hash') or manifest.get('hash') or 'unknown'}`)",
        "- Examples: " + ", ".join(f"{k} {v}" for k, v in counts.items()), "",
        "## Hyperparameters", "", *[f"- {k}: {v}" for k, v in hyper.items()], "",
        "## Training", "", *[f"- {k}: {v}" for k, v in train.items()], "",
        "## Evaluation", "",
        "| metric | candidate | production |", "|---|---|---|",
        *[f"| {k} | {metrics['candidate'].get(k)} | {metrics['production'].get(k)} |" for k in metrics["candidate"]],
        "",
    ]
    return "\n".join(lines)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


def train(spec: TrainSpec) -> dict:
    """The whole child job; returns the report it wrote."""
    from transformers import set_seed

    started = time.monotonic()
    set_seed(spec.seed)
    progress = Progress(spec.progress_path)
    out = spec.staging_dir
    out.mkdir(parents=True, exist_ok=True)
    work = out / "_work"
    snap = Path(spec.snapshot_dir)
    data = {name: read_jsonl(snap / f"{name}.jsonl")
            for name in ("sft_train", "sft_heldout", "kto_train", "pref_train", "pref_heldout", "lessons")}
    manifest_path = snap / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    probes = probe_rows(data.pop("lessons"))  # asked, never trained on here
    counts = {k: len(v) for k, v in data.items()} | {"lesson_probes": len(probes)}
    if not data["sft_train"]:
        raise ValueError("snapshot has no sft_train examples")

    progress.write(stage="loading", step=0)
    base, tokenizer, quantized, device = _load_base(spec)
    from serving.hardware import resolve_precision

    cuda = device.startswith("cuda")
    precision = resolve_precision(spec.precision, device)
    model = _peft_model(spec, base)
    log.info("run %s: training on %s, examples %s", spec.run_id, device, counts)

    # The stages this run has data for, decided up front: under FSDP or ZeRO-3 a rank rebuilds an unsharded
    # model after a stage only if it still needs one (the next stage, or rank 0's evaluation).
    run_dpo = len(data["pref_train"]) >= spec.min_dpo_pairs
    kto_rows = data["kto_train"]
    if run_dpo:
        # A correction's two KTO rows restate the pair DPO trains on; KTO keeps the unpaired thumbs.
        paired = {r.get("source_id") for r in data["pref_train"]} - {None}
        kto_rows = [r for r in kto_rows if r.get("source_id") not in paired]
    run_kto = _kto_ready(spec, kto_rows)

    def after_stage(model, more: bool):
        return _unsharded(spec, model, keep=more or rank() == 0, for_training=more)

    answers = [r["completion"][-1]["content"] for r in data["sft_train"] + data["kto_train"]]
    answers += [r[side][-1]["content"] for r in data["pref_train"] for side in ("chosen", "rejected")]
    anchors = _anchors(spec, model, tokenizer, data["sft_train"], answers)
    counts["distill_anchors"] = len(anchors)
    model, sft_result, sft_state = _sft(
        spec, model, tokenizer, data["sft_train"] + anchors, data["sft_heldout"], progress, precision, quantized, work)
    model = after_stage(model, run_dpo or run_kto)
    steps, final_loss = sft_state.global_step, sft_result.training_loss
    tokens = int(getattr(sft_state, "num_input_tokens_seen", 0) or 0)
    stages = ["sft"]
    if run_dpo:
        progress.write(stage="dpo", step=steps)
        model, dpo_result = _dpo(spec, model, tokenizer, data["pref_train"], progress, precision, quantized, work)
        model = after_stage(model, run_kto)
        steps += dpo_result.global_step
        stages.append("dpo")
    if run_kto:
        progress.write(stage="kto", step=steps)
        model, kto_result = _kto(spec, model, tokenizer, kto_rows, progress, precision, quantized, work)
        model = after_stage(model, False)
        steps += kto_result.global_step
        stages.append("kto")
    if not math.isfinite(final_loss):
        raise LossNotFinite(f"final training loss is {final_loss}")
    if rank() != 0:
        return {}  # the ranks hold the same weights now; rank 0 evaluates and writes the adapter

    progress.write(stage="evaluating", step=steps)
    reference = load_reference(spec.reference_path)
    facts = load_facts(spec.canary_facts_path or None) if spec.canary_facts_path is not None else []
    ask = lambda prompts: [t for t, _ in _greedy(model, tokenizer, prompts, 48)]  # noqa: E731
    model.eval()
    candidate = evaluate(model, tokenizer, data["sft_heldout"], data["pref_heldout"], reference)
    shown = data["sft_heldout"][: spec.what_changed_prompts]  # the run's "what changed" panel
    candidate_says = sample_answers(model, tokenizer, [r["prompt"] for r in shown])
    cand_facts = answer_facts(ask, facts)
    cand_lessons = answer_probes(ask, probes)
    if spec.production_adapter:
        model.load_adapter(spec.production_adapter, adapter_name="production")
        model.set_adapter("production")
        production = evaluate(model, tokenizer, data["sft_heldout"], data["pref_heldout"], reference)
        production_says = sample_answers(model, tokenizer, [r["prompt"] for r in shown])
        prod_facts = answer_facts(ask, facts)
        prod_lessons = answer_probes(ask, probes)
        model.set_adapter("default")
        model.delete_adapter("production")
    else:
        with model.disable_adapter():
            production = evaluate(model, tokenizer, data["sft_heldout"], data["pref_heldout"], reference)
            production_says = sample_answers(model, tokenizer, [r["prompt"] for r in shown])
            prod_facts = answer_facts(ask, facts)
            prod_lessons = answer_probes(ask, probes)
    by_id = {f.id: f for f in facts}
    # Held-out rows too: a row saying the same thing goes to review whether or not this split trained on it.
    taught = data["sft_train"] + data["sft_heldout"] + [
        {"prompt": r["prompt"], "completion": r["chosen"], "source_id": r.get("source_id")} for r in data["pref_train"]]
    canary = {"candidate": cand_facts, "production": prod_facts,
              "suspects": {b["id"]: suspects(by_id[b["id"]], b["candidate"], taught)
                           for b in broken_facts(cand_facts, prod_facts)}}
    train_info = {"steps": steps, "final_loss": final_loss, "wall_s": round(time.monotonic() - started, 2),
                  "tokens": tokens, "device": device, "quantized": quantized, "precision": precision,
                  "world_size": world_size(), "strategy": spec.strategy if spec.distributed else "single process",
                  "effective_batch": _effective_batch(spec), "stages": stages, "distill_anchors": len(anchors),
                  "dpo_pairs": len(data["pref_train"]) if "dpo" in stages else 0}
    if cuda:
        import torch

        train_info["peak_gpu_mem_bytes"] = torch.cuda.max_memory_allocated()
    samples = [{"prompt": r["prompt"], "wanted": r["completion"][-1]["content"], "candidate": c, "production": p}
               for r, c, p in zip(shown, candidate_says, production_says, strict=True)]
    lessons = {"probes": [{k: p[k] for k in ("id", "question", "expected")} for p in probes],
               "candidate": cand_lessons, "production": prod_lessons}
    report = {"candidate": candidate, "production": production, "train": train_info, "samples": samples,
              "canary_facts": canary, "lessons": lessons}

    shutil.rmtree(work, ignore_errors=True)
    model.save_pretrained(out, selected_adapters=["default"])
    (out / CHAT_TEMPLATE_FILE).write_text(tokenizer.chat_template or "", encoding="utf-8")
    (out / "README.md").write_text(
        _model_card(spec, manifest, counts, {"candidate": candidate, "production": production}, train_info),
        encoding="utf-8")
    _write_json(out / REPORT, report)  # last: its presence means the adapter is complete
    progress.write(stage="done", step=steps, total_steps=steps, loss=final_loss)
    return report


def exit_with_parent(poll_s: float = 1.0) -> None:
    """End this process soon after the app that started it dies.

    A ``kill -9`` of the app runs no clean-up, and an orphaned training child would go on holding the
    GPU and racing the restarted app's own run. Polling ``getppid`` rather than
    ``prctl(PR_SET_PDEATHSIG)``: the prctl fires when the *thread* that forked us exits, and is Linux-only,
    while a reparented child sees a new parent pid on every POSIX system.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        log.error("the process that started this training run (pid %d) is gone; stopping", parent)
        os._exit(1)  # nobody is left to read a result; the staging dir is never renamed into place

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = TrainSpec.from_json(argv[1])
    exit_with_parent()
    try:
        train(spec)
    except LossNotFinite as exc:
        log.error("run %s: %s", spec.run_id, exc)
        _report_failure(spec, str(exc))
        return NAN_EXIT_CODE
    except Exception as exc:
        traceback.print_exc()
        _report_failure(spec, f"{type(exc).__name__}: {exc}")
        return 1
    return 0


def _report_failure(spec: TrainSpec, error: str) -> None:
    if rank() != 0:
        return  # rank 0 or the launcher says why the run failed
    remove_staging(spec)
    Progress(spec.progress_path).write(stage="failed", error=error)


def remove_staging(spec: TrainSpec) -> None:
    # The partial output is never used; removing it first frees the room a disk-full failure needs to say so.
    shutil.rmtree(spec.staging_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
