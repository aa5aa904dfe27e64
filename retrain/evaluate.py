"""Score a model (base or base + adapter) on held-out answers, held-out preference pairs and the
fixed general reference set. The gate compares these numbers between candidate and production."""

from __future__ import annotations

import json
import math
from pathlib import Path

from serving.chat_format import render_completion, render_prompt

REFERENCE_PATH = Path(__file__).parent / "reference" / "general.jsonl"


def load_reference(path: str | Path | None = None) -> list[dict]:
    """The general reference conversations (``{"messages": [...]}``, last message the assistant's)."""
    return read_jsonl(path or REFERENCE_PATH)


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSON-lines file; a missing file is an empty list (a snapshot may lack a split)."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def completion_text(tokenizer, prompt: list[dict], answer: str) -> str:
    """What the model must generate for ``answer``: the rendered completion cut after the end-of-turn token.

    Serving stops at eos, so anything the template puts after it (ChatML's newline) is never generated;
    training and scoring on it would only add noise.
    """
    text = render_completion(tokenizer, prompt, answer)
    eos = tokenizer.eos_token
    if eos and eos in text:
        text = text[: text.rindex(eos) + len(eos)]
    return text


# Completion tokens scored per lm_head call: the chunk's fp32 logits (chunk x vocabulary) are the largest
# tensor evaluation makes, 155 MB at 256 tokens of Qwen2.5's 151,936-token vocabulary.
NLL_CHUNK_TOKENS = 256
# Configs whose models transform the lm_head output (soft-capping, scaling): scored through the model's own
# forward, one row at a time and only at completion positions, so the transform is never re-implemented here.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def completion_nll(model, tokenizer, prompts: list[list[dict]], answers: list[str], batch_size: int = 8,
                   chunk_tokens: int = NLL_CHUNK_TOKENS):
    """Per example ``(summed negative log-likelihood, completion tokens)`` of ``answer`` after ``prompt``.

    Prompt and completion are tokenized apart and joined, as serving does (it tokenizes the prompt and
    then generates), so the scored tokens are exactly the ones the model would have to produce.

    Memory: the full logits of a batch are batch x sequence x vocabulary floats (2.3 GB for 4 answers of
    1,000 tokens with a 152k vocabulary, and ``log_softmax`` copies them). Instead the decoder's last
    hidden states are kept (hidden size, not vocabulary, per token), and lm_head runs over the completion
    positions only, ``chunk_tokens`` at a time, with ``logsumexp`` per chunk.
    """
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[tuple[float, int]] = []
    model.eval()
    device = next(model.parameters()).device
    per_row = _has_logit_transform(model)
    for start in range(0, len(prompts), 1 if per_row else batch_size):
        rows = []
        for prompt, answer in zip(prompts[start:start + batch_size], answers[start:start + batch_size], strict=True):
            p_ids = tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
            c_ids = tokenizer(completion_text(tokenizer, prompt, answer), add_special_tokens=False)["input_ids"]
            rows.append((p_ids, c_ids))
        if per_row:
            rows = rows[:1]
        width = max(len(p) + len(c) for p, c in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for i, (p, c) in enumerate(rows):  # right padding: positions stay 0..n as in training
            ids[i, : len(p) + len(c)] = torch.tensor(p + c)
            mask[i, : len(p) + len(c)] = 1
            labels[i, len(p): len(p) + len(c)] = torch.tensor(c)
        target = labels[:, 1:]  # the token at t+1 is predicted from position t
        row_of, pos_of = (target != -100).nonzero(as_tuple=True)
        tokens = target[row_of, pos_of].to(device)
        nll = torch.zeros(len(rows), dtype=torch.float64)
        with torch.no_grad():
            for chunk, logits in _completion_logits(model, ids.to(device), mask.to(device), row_of.to(device),
                                                    pos_of.to(device), per_row, chunk_tokens):
                picked = logits.gather(-1, tokens[chunk, None]).squeeze(-1)
                lp = (picked - torch.logsumexp(logits, dim=-1)).double().cpu()
                nll.index_add_(0, row_of[chunk], -lp)
        counts = torch.bincount(row_of, minlength=len(rows))
        out.extend((float(nll[i]), int(counts[i])) for i in range(len(rows)))
    return out


def _has_logit_transform(model) -> bool:
    config = getattr(model, "config", None)
    return any(getattr(config, name, None) not in (None, 1, 1.0) for name in _LOGIT_TRANSFORMS)


def _completion_logits(model, ids, mask, rows, positions, per_row: bool, chunk_tokens: int):
    """Yield ``(slice, fp32 logits)`` for the scored ``(rows, positions)``, at most ``chunk_tokens`` at a time."""
    if per_row:  # one row; the model applies its own logit transform, at the completion positions only
        for s in range(0, len(positions), chunk_tokens):
            chunk = slice(s, s + chunk_tokens)
            keep = positions[chunk].to(ids.device)
            yield chunk, model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits[0].float()
        return
    # get_decoder() is the transformer without lm_head; LoRA layers sit inside it, so an active adapter
    # (and peft's disable_adapter()) applies here exactly as in a full forward.
    hidden = model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    head = model.get_output_embeddings()
    for s in range(0, len(positions), chunk_tokens):
        chunk = slice(s, s + chunk_tokens)
        yield chunk, head(hidden[rows[chunk], positions[chunk]]).float()


def _mean_token_loss(scores: list[tuple[float, int]]) -> float | None:
    tokens = sum(n for _, n in scores)
    return sum(s for s, _ in scores) / tokens if tokens else None


def evaluate(model, tokenizer, sft_heldout: list[dict], pref_heldout: list[dict], reference: list[dict]) -> dict:
    """``heldout_loss``, ``pref_accuracy`` and ``reference_ppl`` of ``model``; a metric is None without data."""
    heldout = completion_nll(
        model, tokenizer, [r["prompt"] for r in sft_heldout], [r["completion"][-1]["content"] for r in sft_heldout])
    pref_accuracy = None
    if pref_heldout:
        prompts = [r["prompt"] for r in pref_heldout]
        chosen = completion_nll(model, tokenizer, prompts, [r["chosen"][-1]["content"] for r in pref_heldout])
        rejected = completion_nll(model, tokenizer, prompts, [r["rejected"][-1]["content"] for r in pref_heldout])
        # Summed log-likelihood (lower NLL = more likely), as DPO/KTO-style preference accuracy counts it.
        pref_accuracy = sum(c[0] < r[0] for c, r in zip(chosen, rejected, strict=True)) / len(pref_heldout)
    ref = completion_nll(
        model, tokenizer, [r["messages"][:-1] for r in reference], [r["messages"][-1]["content"] for r in reference])
    ref_loss = _mean_token_loss(ref)
    return {
        "heldout_loss": _mean_token_loss(heldout),
        "heldout_examples": len(sft_heldout),
        "pref_accuracy": pref_accuracy,
        "pref_pairs": len(pref_heldout),
        "reference_ppl": math.exp(ref_loss) if ref_loss is not None else None,
        "reference_examples": len(reference),
    }


def sample_answers(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int = 64) -> list[str]:
    """Greedy answers of ``model`` to a few prompts: what an admin reads in a run's "what changed" panel."""
    import torch

    answers = []
    device = next(model.parameters()).device
    for prompt in prompts:
        ids = tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device),
                                 max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        answers.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
    return answers
