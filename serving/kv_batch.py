"""The running batch's KV cache: rows that join, leave and take prompt chunks in one forward per step.

What a step feeds follows vLLM's V1 scheduler and SGLang's mixed chunked prefill
(``vllm/v1/core/sched/scheduler.py``): one forward holds the running requests' next tokens and the
waiting requests' prompt tokens, out of a per-step prompt budget, a long prompt split in chunks over
steps. Those engines pack the step's tokens ragged, one flat sequence, and let paged attention keep
each request to its own blocks. This module does the same on transformers' own ``DynamicCache`` and
SDPA: the tokens of all rows that share an adapter are packed into one sequence of the batch (a
*lane*), their keys and values stay packed in that lane's cache, and a 4-D mask built each step lets a
token see only its own row's columns, causally. Position ids are given per token (real tokens only, as
``generate()`` derives them), so every row computes what it computes alone. A lane per adapter keeps
peft's per-sequence ``adapter_names`` working: the mixed-adapter forward runs one LoRA per lane.

Why not a dense ``[rows, longest chunk]`` input, each row's tokens right-aligned after masked padding
(TGI's left-padded ``CausalLMBatch`` with the prompt fed into the decode step)? Every decoding row then
computes the chunk's width in padding: on the demo model (1 CPU thread) a step of 30 decoding rows and
two 19-token prompts took 41 ms dense, against 10 ms for the decode step plus 8 ms for a separate
prefill. Packed, the step computes only real tokens (plus the padding that evens the lanes).

A leaving row's columns become holes (masked); ``keep`` gathers every lane's live columns into a fresh
layout once holes are half the width, and trims columns that are holes in every lane.

transformers' paged continuous batching (``generate_batch``) was not used: it brings its own scheduler
and attention kernels, while this worker needs peft's ``adapter_names``, per-row stop strings, seeds and
constraints inside its own loop. The 4-D mask needs the ``sdpa`` or ``eager`` attention (transformers'
default), not flash-attention 2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class RunningBatch:
    """Rows in one forward: lanes (one per adapter) of packed keys and values, and which row owns each column."""

    def __init__(self, device, pad_id: int):
        import torch
        from transformers import DynamicCache

        self.cache = DynamicCache()  # per layer: keys/values [lanes, kv_heads, width, head_dim]
        self.owner = torch.zeros((0, 0), dtype=torch.long, device=device)  # [lanes, width]: row id, -1 hole
        self.device = device
        self.pad_id = pad_id
        self.lanes: list[str] = []  # each lane's key (the rows' adapter)
        self.row_ids: list[int] = []  # per row, in the worker's row order: its id in ``owner``
        self.row_lanes: list[int] = []  # per row: its lane
        self.positions: list[int] = []  # per row: the position id its next token gets
        self._next_id = 0
        self.compactions = 0  # for tests and the bench

    @property
    def rows(self) -> int:
        return len(self.row_ids)

    @property
    def width(self) -> int:
        return self.owner.shape[1]

    def _layers(self):
        return [layer for layer in self.cache.layers if getattr(layer, "keys", None) is not None
                and layer.keys.numel() > 0]

    def add_rows(self, lanes: list[str]) -> None:
        """Append rows with nothing in the cache yet, each in the lane of its key (a new lane if none)."""
        import torch

        for key in lanes:
            if key not in self.lanes:
                self.lanes.append(key)
                for layer in self._layers():
                    k, v = layer.keys, layer.values
                    layer.keys = torch.cat([k, k.new_zeros((1, *k.shape[1:]))])
                    layer.values = torch.cat([v, v.new_zeros((1, *v.shape[1:]))])
                self.owner = torch.cat([self.owner, self.owner.new_full((1, self.width), -1)])
            self.row_lanes.append(self.lanes.index(key))
            self.row_ids.append(self._next_id)
            self._next_id += 1
            self.positions.append(0)

    def step(self, model, feeds: list[list[int]], lane_adapters: list[str] | None = None) -> torch.Tensor:
        """Feed each row its tokens (one for a decoding row, a prompt chunk, or none) in one forward.

        ``lane_adapters``: peft's ``adapter_names``, one per lane (None: the active adapter for all).
        Returns the logits after each row's last fed token, [rows, vocab] (a row fed nothing gets junk).
        """
        import torch

        lanes = len(self.lanes)
        ids: list[list[int]] = [[] for _ in range(lanes)]
        owner: list[list[int]] = [[] for _ in range(lanes)]
        pos: list[list[int]] = [[] for _ in range(lanes)]
        last: list[tuple[int, int] | None] = []  # per row: (lane, column in the lane's step) of its last token
        for r, feed in enumerate(feeds):
            lane = self.row_lanes[r]
            ids[lane] += feed
            owner[lane] += [self.row_ids[r]] * len(feed)
            pos[lane] += range(self.positions[r], self.positions[r] + len(feed))
            last.append((lane, len(ids[lane]) - 1) if feed else None)
            self.positions[r] += len(feed)
        n = max(len(x) for x in ids)
        pad = [n - len(x) for x in ids]  # lanes are left-padded to the longest
        ids_t = torch.tensor([[self.pad_id] * p + x for p, x in zip(pad, ids, strict=True)], device=self.device)
        new_owner = torch.tensor([[-1] * p + x for p, x in zip(pad, owner, strict=True)], device=self.device)
        pos_t = torch.tensor([[0] * p + x for p, x in zip(pad, pos, strict=True)], device=self.device)
        owner_t = torch.cat([self.owner, new_owner], dim=1)
        # A token sees the columns of its own row up to itself: earlier steps' columns all precede this
        # step's, and this step's tokens of one row are contiguous and in order.
        col = torch.arange(owner_t.shape[1], device=self.device)
        see = (owner_t[:, None, :] == new_owner[:, :, None]) & (col[None, None, :] <= (self.width + torch.arange(
            n, device=self.device))[None, :, None])
        # Padding queries see nothing; their outputs are never read, and the dtype's minimum (not -inf)
        # keeps their softmax finite.
        dtype = model.get_input_embeddings().weight.dtype
        mask = torch.zeros(see.shape, dtype=dtype, device=self.device).masked_fill_(~see, torch.finfo(dtype).min)
        keep = torch.zeros((lanes, n), dtype=torch.bool)
        for x in last:
            if x is not None:
                keep[x[0], pad[x[0]] + x[1]] = True
        kwargs = {} if lane_adapters is None else {"adapter_names": lane_adapters}
        out = model(input_ids=ids_t, attention_mask=mask[:, None], position_ids=pos_t, cache=self.cache,
                    use_cache=True, logits_to_keep=keep.to(self.device), **kwargs)
        self.owner = owner_t
        # logits_to_keep as a boolean [lanes, n] returns the kept positions flattened, lane by lane.
        kept = sorted(x for x in last if x is not None)
        where = {x: i for i, x in enumerate(kept)}
        index = [where[x] if x is not None else 0 for x in last]
        return out.logits.reshape(-1, out.logits.shape[-1]).index_select(
            0, torch.tensor(index, device=out.logits.device))

    def keep(self, indices: list[int]) -> None:
        """Keep only the rows at ``indices`` (in that order); the others' columns become holes."""
        import torch

        gone = [self.row_ids[i] for i in set(range(self.rows)) - set(indices)]
        self.row_ids = [self.row_ids[i] for i in indices]
        self.row_lanes = [self.row_lanes[i] for i in indices]
        self.positions = [self.positions[i] for i in indices]
        if gone:
            self.owner = self.owner.masked_fill(torch.isin(self.owner, torch.tensor(gone, device=self.device)), -1)
        used = sorted(set(self.row_lanes))
        if len(used) < len(self.lanes):  # a lane with no row left goes
            self.lanes = [self.lanes[i] for i in used]
            self.row_lanes = [used.index(lane) for lane in self.row_lanes]
            idx = torch.tensor(used, dtype=torch.long, device=self.device)
            self.owner = self.owner.index_select(0, idx)
            for layer in self._layers():
                layer.keys = layer.keys.index_select(0, idx)
                layer.values = layer.values.index_select(0, idx)
        live = (self.owner >= 0).sum(-1)
        if self.lanes and self.width > 2 * int(live.max()):
            self.compact()

    def compact(self) -> None:
        """Move every lane's live columns, in order, to the right of a layout as wide as the fullest lane."""
        live = self.owner >= 0
        width = int(live.sum(-1).max()) if self.lanes else 0
        # A stable sort of the 0/1 liveness puts each lane's holes first, then its live columns in order.
        order = live.long().argsort(dim=-1, stable=True)[:, self.width - width:]
        self.owner = self.owner.gather(1, order)
        for layer in self._layers():
            k = layer.keys
            index = order[:, None, :, None].expand(k.shape[0], k.shape[1], width, k.shape[3])
            layer.keys = k.gather(2, index)
            layer.values = layer.values.gather(2, index)
        self.compactions += 1
