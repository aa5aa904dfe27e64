"""Choose each row's next token: its own constraint, temperature, top_p and random stream.

Every row draws from its own ``torch.Generator`` (seeded by the request, or at random), so a seeded
request gets the same answer whatever else shares its batch. The draw is one uniform number per row
turned into a token by inverse CDF, so the rows' sampling is still done together on the device.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from serving.types import GREEDY_BELOW, TokenConstraint

if TYPE_CHECKING:
    import torch


class RowSampler:
    """How one request picks tokens."""

    def __init__(self, temperature: float, top_p: float, seed: int | None = None,
                 constraint: TokenConstraint | None = None):
        import torch

        self.greedy = temperature < GREEDY_BELOW
        self.temperature = temperature
        self.top_p = top_p
        self.constraint = constraint
        # On the CPU whatever the model's device: the same seed then gives the same draws everywhere.
        self.generator = torch.Generator()
        self.generator.manual_seed(secrets.randbits(63) if seed is None else seed)

    def uniform(self) -> float:
        import torch

        return float(torch.rand((), generator=self.generator))


def choose(logits: torch.Tensor, samplers: list[RowSampler]) -> list[int]:
    """One token per row of ``logits`` [rows, vocab]; a row whose constraint allows nothing gets -1."""
    import torch

    scores = logits.float()
    if any(s.constraint is not None for s in samplers):
        scores = scores.clone()
        for i, s in enumerate(samplers):
            if s.constraint is not None:
                scores[i] = s.constraint.mask(scores[i])
    chosen = scores.argmax(dim=-1)
    # Rows with top_p < 1 sort their vocabulary; the others draw in vocabulary order (no sort per step).
    # The split depends on each row's own top_p only, so batch-mates never change a row's draw.
    for rows, nucleus in (([i for i, s in enumerate(samplers) if not s.greedy and s.top_p < 1], True),
                          ([i for i, s in enumerate(samplers) if not s.greedy and s.top_p >= 1], False)):
        if rows:
            idx = torch.tensor(rows, device=scores.device)
            chosen[idx] = _draw(scores.index_select(0, idx), [samplers[i] for i in rows], nucleus)
    dead = torch.isneginf(scores).all(dim=-1) | torch.isnan(scores).any(dim=-1)
    chosen = chosen.masked_fill(dead, -1)
    return chosen.tolist()


def _draw(scores: torch.Tensor, samplers: list[RowSampler], nucleus: bool) -> torch.Tensor:
    """Sample one token per row by inverse CDF on each row's own uniform draw."""
    import torch

    temps = torch.tensor([s.temperature for s in samplers], device=scores.device)[:, None]
    scaled = scores / temps
    order = None
    if nucleus:
        top_p = torch.tensor([s.top_p for s in samplers], device=scores.device)[:, None]
        scaled, order = torch.sort(scaled, descending=True, dim=-1)
    probs = torch.softmax(scaled, dim=-1)
    if nucleus:
        # Keep the smallest prefix whose mass reaches top_p (the token that crosses it stays).
        probs = probs.masked_fill((probs.cumsum(dim=-1) - probs) >= top_p, 0.0)
    cdf = probs.cumsum(dim=-1)
    u = torch.tensor([s.uniform() for s in samplers], device=scores.device, dtype=cdf.dtype)[:, None]
    # right=True: a zero-probability token (masked, or cut by top_p) is never picked, even for u == 0.
    pos = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_(max=cdf.shape[-1] - 1)
    return (pos if order is None else order.gather(1, pos))[:, 0]
