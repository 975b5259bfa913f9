"""Losses on tuples (query, positive, N negatives), registered by name and composable with extra terms.

The main term is the triplet margin loss of the MSLS thesis (eq. 4.4) on squared Euclidean distances of
L2-normalised descriptors, summed over the N negatives and averaged over the tuples:

    L(q, p, n) = max(0, ||q - p||^2 - ||q - n||^2 + m),   m = 0.1.

Extra terms (e.g. StructVPR's distillation) are added as ``(weight, term)`` pairs of a
:class:`CompositeLoss`; every term sees the model outputs and the tuple layout and returns a scalar.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from vpr_training.config import LossConfig


@dataclass(frozen=True)
class TupleLayout:
    """How a batch of tuples is laid out along dim 0: B queries, B positives, then B*N negatives (tuple-major)."""

    tuples: int
    negatives: int

    @property
    def images(self) -> int:
        return self.tuples * (2 + self.negatives)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B*(2+N), ...) -> queries (B, ...), positives (B, ...), negatives (B, N, ...)."""
        if x.shape[0] != self.images:
            raise ValueError(f"expected {self.images} rows for {self.tuples} tuples x (2 + {self.negatives}), "
                             f"got {x.shape[0]}")
        b = self.tuples
        return x[:b], x[b:2 * b], x[2 * b:].reshape(b, self.negatives, *x.shape[1:])


class LossTerm(Protocol):
    def __call__(self, outputs: dict[str, torch.Tensor], layout: TupleLayout,
                 extras: dict[str, Any]) -> torch.Tensor: ...


class TripletMarginLoss:
    """Eq. 4.4 summed over negatives, mean over tuples.

    Shape:
        outputs[descriptor]: (B*(2+N), P) L2-normalised; returns a scalar.
    """

    def __init__(self, margin: float = 0.1, squared: bool = True, descriptor: str = "global") -> None:
        self.margin, self.squared, self.descriptor = margin, squared, descriptor

    def distances(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d2 = ((a - b) ** 2).sum(-1)
        return d2 if self.squared else d2.clamp_min(1e-12).sqrt()

    def __call__(self, outputs: dict[str, torch.Tensor], layout: TupleLayout,
                 extras: dict[str, Any] | None = None) -> torch.Tensor:
        q, p, n = layout.split(outputs[self.descriptor].float())
        d_pos = self.distances(q, p)                    # (B,)
        d_neg = self.distances(q.unsqueeze(1), n)       # (B, N)
        return torch.relu(d_pos.unsqueeze(1) - d_neg + self.margin).sum(1).mean()


LOSSES: dict[str, Callable[[LossConfig], LossTerm]] = {
    "triplet": lambda cfg: TripletMarginLoss(cfg.margin, cfg.squared, cfg.descriptor),
}


class CompositeLoss:
    """``main + sum_i weight_i * term_i``; returns the total and every part (for logging)."""

    def __init__(self, main: LossTerm, extra: Sequence[tuple[float, str, LossTerm]] = ()) -> None:
        self.main = main
        self.extra = list(extra)

    def add(self, weight: float, name: str, term: LossTerm) -> None:
        self.extra.append((weight, name, term))

    def __call__(self, outputs: dict[str, torch.Tensor], layout: TupleLayout,
                 extras: dict[str, Any] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        extras = extras or {}
        total = self.main(outputs, layout, extras)
        parts = {"main": float(total.detach())}
        for weight, name, term in self.extra:
            value = term(outputs, layout, extras)
            parts[name] = float(value.detach())
            total = total + weight * value
        parts["total"] = float(total.detach())
        return total, parts


def build_loss(config: LossConfig) -> CompositeLoss:
    if config.name not in LOSSES:
        raise ValueError(f"loss {config.name!r} is not one of {sorted(LOSSES)}")
    return CompositeLoss(LOSSES[config.name](config))
