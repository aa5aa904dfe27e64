"""The running batch's KV cache: left-padded rows that join and leave between decode steps.

This follows the transformers path of TGI (``server/text_generation_server/models/causal_lm.py``,
``CausalLMBatch.concatenate`` and ``.filter``), on transformers' own ``DynamicCache`` layers:

- every row's keys and values sit right-aligned in one left-padded cache, with a 0/1 padding mask;
- a joining group is prefilled on its own, then both caches are left-padded to the longer width and
  concatenated on the batch axis;
- a leaving row is dropped with an index-select, and the columns that are padding for every row left
  are trimmed off the left.

No running row's keys and values are ever recomputed; joins and leaves cost one copy of the cache.

Joining costs a prefill forward of its own. Feeding newcomers' prompts in the decoding rows' forward
(vLLM's and SGLang's mixed chunked prefill) was built and measured on the demo model (2 CPU threads,
issue 15; commits 4e35649 and da1e0a3 of branch ``i15``; ``bench/RESULTS.md``) and lost, so it is
not used:
- dense, each row's tokens right-aligned after masked padding in a ``[rows, longest chunk]`` input:
  every decoding row computes the chunk's width. A step of 30 decoding rows and two 19-token prompts
  took 41 ms (1 thread) against 10 ms for the decode step plus 8 ms for a separate prefill;
  ``bench/load.py`` (admitting at every step, quiet machine) 0.60x / 0.55x static's TTFT p50 / p95 and
  0.74x its tokens/s, against 0.42x / 0.43x and 0.83x for this layout.
- packed, the rows of one adapter in one sequence with a 4-D mask keeping each row to its own columns
  (what paged attention does without padding): 13 ms for that step, but every step's attention and
  mask then span all rows' columns (quadratic in the batch); in-process (32 closed-loop clients,
  1 thread) 104-118 ms TTFT p50 and ~440 tok/s against 54-58 ms and 555-609 tok/s for this layout;
  ``bench/load.py`` 0.47x / 0.48x static's TTFT and 0.88x its tokens/s (quiet machine).
Without varlen attention (a kernel that reads each row's own columns) the fused step pays either in
padding or in attention; this layout keeps decode steps at ``[rows, 1]``. Under contention the larger
fused tensors also run on torch's intra-op threads, which stall when other processes share the cores
(both fused layouts fell to 0.46-0.48x static's tokens/s on a loaded machine).

transformers' paged continuous batching (``generate_batch``) was not used: it brings its own scheduler
and attention kernels, while this worker needs peft's per-row ``adapter_names``, per-row stop strings,
seeds and constraints inside its own loop.
"""

from __future__ import annotations

import functools
import inspect
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@functools.cache
def _cache_kwarg(model_class: type) -> str:
    """The name a causal LM's ``forward`` takes its KV cache by: ``cache`` since transformers 5.24,
    ``past_key_values`` before it and in remote-code models written for older versions.

    A name the model does not know lands in its ``**kwargs`` and is ignored without a word: every step then
    sees only its newest token, and the answers are fluent-looking garbage (the image served that on 5.23).
    """
    params = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _forward(model, ids, mask, positions, cache, adapter_names):
    kwargs = {} if adapter_names is None else {"adapter_names": adapter_names}
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PeftModel: the model under it
    kwargs[_cache_kwarg(type(base))] = cache
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1,
                **kwargs)
    return out.logits[:, -1, :]


class RunningBatch:
    """Rows decoding together: one left-padded ``DynamicCache``, its padding mask, each row's next position."""

    def __init__(self, cache, mask: torch.Tensor, positions: torch.Tensor):
        self.cache = cache  # per layer: keys/values [rows, kv_heads, width, head_dim]
        self.mask = mask  # [rows, width]: 1 where a real token's keys and values are
        self.positions = positions  # [rows]: the position id the row's next token gets

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    @property
    def width(self) -> int:
        return self.mask.shape[1]

    @classmethod
    def prefill(cls, model, prompts: list[list[int]], pad_id: int, device, adapter_names=None):
        """Run ``prompts`` (left-padded together) through ``model``: ``(batch, last-position logits)``."""
        import torch
        from transformers import DynamicCache

        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        ids, mask = ids.to(device), mask.to(device)
        # Positions count real tokens only, as generate() derives them, so a padded row sees the same
        # rotary positions as when it runs alone.
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        cache = DynamicCache()
        logits = _forward(model, ids, mask, positions, cache, adapter_names)
        if cache.get_seq_length() != width:
            # The model did not write its keys and values into our cache: decoding on would be garbage.
            raise RuntimeError(f"{type(model).__name__} did not fill the KV cache passed to it "
                               f"({cache.get_seq_length()} of {width} positions); this transformers version "
                               "or model code takes it under another name")
        return cls(cache, mask, mask.sum(-1)), logits

    def decode(self, model, tokens: list[int], adapter_names=None) -> torch.Tensor:
        """Feed each row its next token; returns the logits for the token after it, [rows, vocab]."""
        import torch

        ids = torch.tensor(tokens, dtype=torch.long, device=self.mask.device)[:, None]
        mask = torch.cat([self.mask, self.mask.new_ones((self.rows, 1))], dim=-1)
        logits = _forward(model, ids, mask, self.positions[:, None], self.cache, adapter_names)
        self.mask = mask
        self.positions = self.positions + 1
        return logits

    def _layers(self):
        return [layer for layer in self.cache.layers if getattr(layer, "keys", None) is not None
                and layer.keys.numel() > 0]

    def keep(self, indices: list[int]) -> None:
        """Keep only the rows at ``indices`` (in that order) and trim the padding no row needs any more."""
        import torch

        idx = torch.tensor(indices, dtype=torch.long, device=self.mask.device)
        mask = self.mask.index_select(0, idx)
        # The first column some kept row still attends to; everything left of it is padding for all.
        start = int(mask.any(dim=0).int().argmax()) if len(indices) else 0
        self.mask = mask[:, start:]
        self.positions = self.positions.index_select(0, idx)
        for layer in self._layers():
            layer.keys = layer.keys.index_select(0, idx)[:, :, start:]
            layer.values = layer.values.index_select(0, idx)[:, :, start:]

    def join(self, other: RunningBatch) -> None:
        """Append ``other``'s rows after this batch's, left-padding the narrower cache to the wider."""
        import torch
        import torch.nn.functional as F

        width = max(self.width, other.width)

        def widen(t, extra):  # pad dim -2 (the sequence axis of keys/values) on the left
            return F.pad(t, (0, 0, extra, 0)) if extra else t

        mine, theirs = self._layers(), other._layers()
        if len(mine) != len(theirs):
            raise RuntimeError("cannot join caches with different layer counts")
        a, b = width - self.width, width - other.width
        for x, y in zip(mine, theirs, strict=True):
            x.keys = torch.cat([widen(x.keys, a), widen(y.keys, b)], dim=0)
            x.values = torch.cat([widen(x.values, a), widen(y.values, b)], dim=0)
        self.mask = torch.cat([F.pad(self.mask, (a, 0)), F.pad(other.mask, (b, 0))], dim=0)
        self.positions = torch.cat([self.positions, other.positions])
