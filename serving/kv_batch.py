"""The running batch's KV cache: left-padded rows that join, leave and take prompt chunks in one forward.

The layout follows the transformers path of TGI (``server/text_generation_server/models/causal_lm.py``,
``CausalLMBatch.concatenate`` and ``.filter``), on transformers' own ``DynamicCache`` layers: every row's
keys and values sit in one dense cache ``[rows, kv_heads, width, head_dim]`` with a 0/1 mask over its
columns; a leaving row is dropped with an index-select, and columns that are padding for every row left
are trimmed off the left. No running row's keys and values are ever recomputed.

What a step feeds follows vLLM's V1 scheduler and SGLang's mixed chunked prefill
(``vllm/v1/core/sched/scheduler.py``: one forward per step holds the running requests' next tokens and
the waiting requests' prompt tokens, out of a per-step token budget, a long prompt split in chunks over
steps). Those engines pack the step's tokens ragged into paged attention; on a dense cache the step is
a ``[rows, P]`` input, P the longest chunk fed: each row's tokens are right-aligned in the last columns,
the columns before them are masked padding, position ids count real tokens only (as ``generate()``
derives them), so every row computes what it computes alone. A newcomer enters as a row whose cache
columns are all masked. The price of fusing is that each decoding row leaves P-1 masked holes in its
cache; ``compact`` gathers every row's real columns into a fresh left-padded layout when the holes
reach half the width (and ``keep``, which copies the cache anyway, drops whole-pad columns).

transformers' paged continuous batching (``generate_batch``) was not used: it brings its own scheduler
and attention kernels, while this worker needs peft's per-row ``adapter_names``, per-row stop strings,
seeds and constraints inside its own loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def _forward(model, ids, mask, positions, cache, adapter_names):
    kwargs = {} if adapter_names is None else {"adapter_names": adapter_names}
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                logits_to_keep=1, **kwargs)
    return out.logits[:, -1, :]


class RunningBatch:
    """Rows in one forward: a left-padded ``DynamicCache``, its padding mask, each row's next position."""

    def __init__(self, cache, mask: torch.Tensor, positions: torch.Tensor, pad_id: int):
        self.cache = cache  # per layer: keys/values [rows, kv_heads, width, head_dim]
        self.mask = mask  # [rows, width]: 1 where a real token's keys and values are
        self.positions = positions  # [rows]: the position id the row's next token gets
        self.pad_id = pad_id
        self.compactions = 0  # for tests and the bench

    @classmethod
    def empty(cls, device, pad_id: int) -> RunningBatch:
        import torch
        from transformers import DynamicCache

        return cls(DynamicCache(), torch.zeros((0, 0), dtype=torch.long, device=device),
                   torch.zeros(0, dtype=torch.long, device=device), pad_id)

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    @property
    def width(self) -> int:
        return self.mask.shape[1]

    def _layers(self):
        return [layer for layer in self.cache.layers if getattr(layer, "keys", None) is not None
                and layer.keys.numel() > 0]

    def add_rows(self, n: int) -> None:
        """Append ``n`` rows with nothing in their cache yet (all their columns masked); a step feeds them."""
        import torch

        for layer in self._layers():
            k, v = layer.keys, layer.values
            layer.keys = torch.cat([k, k.new_zeros((n, *k.shape[1:]))])
            layer.values = torch.cat([v, v.new_zeros((n, *v.shape[1:]))])
        self.mask = torch.cat([self.mask, self.mask.new_zeros((n, self.width))])
        self.positions = torch.cat([self.positions, self.positions.new_zeros(n)])

    def step(self, model, feeds: list[list[int]], adapter_names=None) -> torch.Tensor:
        """Feed each row its tokens (one for a decoding row, a prompt chunk, or none); one forward.

        Returns the logits after each row's last fed token, [rows, vocab] (a row fed nothing gets junk).
        """
        import torch

        device = self.mask.device
        width = max(len(f) for f in feeds)
        if width == 1 and all(feeds):  # every row decodes: no padding to build
            ids = torch.tensor(feeds, dtype=torch.long, device=device)
            new = self.mask.new_ones((self.rows, 1))
            positions = self.positions[:, None]
        else:
            ids = torch.tensor([[self.pad_id] * (width - len(f)) + f for f in feeds], dtype=torch.long, device=device)
            lens = torch.tensor([len(f) for f in feeds], dtype=torch.long, device=device)
            # Column c of row r holds the row's token number c - (width - len) of this step.
            offset = torch.arange(width, device=device)[None, :] - (width - lens)[:, None]
            new = (offset >= 0).long()
            positions = (self.positions[:, None] + offset).masked_fill(new == 0, 0)
        mask = torch.cat([self.mask, new], dim=-1)
        logits = _forward(model, ids, mask, positions, self.cache, adapter_names)
        self.mask = mask
        self.positions = self.positions + new.sum(-1)
        if width > 1:
            self._compact_if_sparse()
        return logits

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
        self._compact_if_sparse()

    def _compact_if_sparse(self) -> None:
        # Attention reads every column, holes included: gather once the holes are half the width, so the
        # width stays under twice the longest row whatever the admissions (each a copy of the cache).
        if self.rows and self.width > 2 * int(self.mask.sum(-1).max()):
            self.compact()

    def compact(self) -> None:
        """Move every row's real columns, in order, to the right of a layout as wide as the longest row."""
        longest = int(self.mask.sum(-1).max()) if self.rows else 0
        # A stable sort of the 0/1 mask puts each row's pad columns first, then its real ones in order.
        order = self.mask.argsort(dim=-1, stable=True)[:, self.width - longest:]
        self.mask = self.mask.gather(1, order)
        for layer in self._layers():
            k = layer.keys
            index = order[:, None, :, None].expand(k.shape[0], k.shape[1], longest, k.shape[3])
            layer.keys = k.gather(2, index)
            layer.values = layer.values.gather(2, index)
        self.compactions += 1
