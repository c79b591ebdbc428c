"""The learning objective: cross-entropy plus the budget term, and the lambda that weighs it.

L = CE + lambda * (t - rate)^2, with rate = cost(Z) / cost(dense) for one hard straight-through
sample Z per example, averaged over the batch (so that Property 1 of Herrmann et al. 2020,
E[L_B] = (t - E[Q])^2 + Var(Q), drives the gates to polarize). With the `channels` cost this is the
paper's batch activation loss (t - mean Z)^2.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .cost import Cost

__all__ = ["budget_loss", "BudgetObjective", "CrossEntropy"]


def budget_loss(cost: Cost, masks: list[torch.Tensor], target: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(t - rate)^2 and the rate: the batch mean of the cost ratio under `masks`."""
    rate = torch.as_tensor(cost.ratio_of(masks)).mean()
    return (target - rate) ** 2, rate


class CrossEntropy:
    """Plain training: the loss is the cross-entropy."""

    def __call__(self, logits: torch.Tensor, y: torch.Tensor, masks=None) -> tuple[torch.Tensor, dict]:
        ce = F.cross_entropy(logits, y)
        return ce, {"ce": ce.detach()}

    def update(self, stats: dict) -> None:
        pass


class BudgetObjective:
    """CE + lambda * (t - rate)^2, where lambda follows dual ascent.

    The squared penalty alone settles where the classifier's pull balances it, above the target; a
    lambda that grows with the excess (and shrinks back to its floor `lam` below target) does not.
    """

    def __init__(self, cost: Cost, target: float, *, lam: float = 5.0, lam_rate: float = 0.05):
        self.cost, self.target, self.floor, self.rate = cost, target, lam, lam_rate
        self.lam = lam

    def __call__(self, logits: torch.Tensor, y: torch.Tensor, masks: list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        ce = F.cross_entropy(logits, y)
        penalty, rate = budget_loss(self.cost, masks, self.target)
        return ce + self.lam * penalty, {"ce": ce.detach(), "rate": rate.detach()}

    def update(self, stats: dict) -> None:
        """One dual-ascent step on lambda after an optimizer step."""
        excess = (float(stats["rate"]) - self.target) / max(self.target, 1e-3)
        self.lam = max(self.floor, self.lam * math.exp(self.rate * excess))
