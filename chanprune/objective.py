"""The learning objective: cross-entropy plus the budget term, and the lambda that weighs it.

L = CE + lambda * (t - rate)^2, with rate = cost(Z) / cost(dense) for one hard straight-through
sample Z per example, averaged over the batch (so that Property 1 of Herrmann et al. 2020,
E[L_B] = (t - E[Q])^2 + Var(Q), drives the gates to polarize). With the `channels` cost this is the
paper's batch activation loss (t - mean Z)^2.

With a `Distill` teacher (the dense model the run started from), the task term is
(1 - w) * CE + w * T^2 * KL(teacher_T || student_T) (Hinton et al. 2015), in learning and in
fine-tuning alike.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .cost import Cost

LAM_MAX = 1e6  # lambda's ceiling (the largest a committed run reached: about 4e4)

__all__ = ["budget_loss", "BudgetObjective", "CrossEntropy", "Distill"]


def budget_loss(cost: Cost, masks: list[torch.Tensor], target: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(t - rate)^2 and the rate: the batch mean of the cost ratio under `masks`."""
    rate = torch.as_tensor(cost.ratio_of(masks)).mean()
    return (target - rate) ** 2, rate


class Distill:
    """Knowledge distillation from a fixed teacher: its logits on the same (augmented) batch.

    The teacher runs in eval mode without gradients; its batch-norm statistics stay its own.
    """

    def __init__(self, teacher: torch.nn.Module, *, temperature: float = 4.0, weight: float = 0.5):
        if temperature <= 0 or not 0.0 <= weight <= 1.0:
            raise ValueError(f"distillation needs temperature > 0 and weight in [0, 1], got {temperature}, {weight}")
        self.teacher, self.temperature, self.weight = teacher.eval(), float(temperature), float(weight)
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def __call__(self, logits: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t = self.teacher(inputs)
        T = self.temperature
        return F.kl_div(F.log_softmax(logits / T, 1), F.log_softmax(t / T, 1), reduction="batchmean",
                        log_target=True) * T * T


def task_loss(logits: torch.Tensor, y: torch.Tensor, inputs: torch.Tensor | None,
              distill: Distill | None) -> tuple[torch.Tensor, dict]:
    """CE, or CE mixed with the teacher's term; and the figures to log."""
    ce = F.cross_entropy(logits, y)
    if distill is None or inputs is None or distill.weight == 0.0:
        return ce, {"ce": ce.detach()}
    kd = distill(logits, inputs)
    return (1 - distill.weight) * ce + distill.weight * kd, {"ce": ce.detach(), "kd": kd.detach()}


class CrossEntropy:
    """Plain training: the loss is the cross-entropy (mixed with a teacher's term under `distill`)."""

    def __init__(self, distill: Distill | None = None):
        self.distill = distill

    def __call__(self, logits: torch.Tensor, y: torch.Tensor, masks=None, *, inputs=None) -> tuple[torch.Tensor, dict]:
        return task_loss(logits, y, inputs, self.distill)

    def update(self, stats: dict) -> None:
        pass


class BudgetObjective:
    """CE + lambda * (t - rate)^2, where lambda follows dual ascent.

    The squared penalty alone settles where the classifier's pull balances it, above the target; a
    lambda that grows with the excess (and shrinks back to its floor `lam` below target) does not.

    `side` is where the last step's rate stood (+1 above the target, -1 at or below, 0 before the
    first step), and `crossed` whether that step moved it across the target: `fit` restarts the
    gates' momentum there.

    `reward` (a cost and its weight w) subtracts w * that cost's ratio under the same masks: with a
    latency budget and the FLOPs cost, among plans of about the same latency the gates lean to those
    that keep more FLOPs (efficiency = speedup x FLOPs ratio), where the task term does not object.
    """

    def __init__(self, cost: Cost, target: float, *, lam: float = 5.0, lam_rate: float = 0.05,
                 distill: Distill | None = None, reward: tuple[Cost, float] | None = None):
        self.cost, self.target, self.floor, self.rate = cost, target, lam, lam_rate
        self.lam = lam
        self.distill = distill
        self.reward = reward if reward is not None and reward[1] != 0.0 else None
        self.side, self.crossed = 0, False

    def __call__(self, logits: torch.Tensor, y: torch.Tensor, masks: list[torch.Tensor], *,
                 inputs=None) -> tuple[torch.Tensor, dict]:
        task, stats = task_loss(logits, y, inputs, self.distill)
        penalty, rate = budget_loss(self.cost, masks, self.target)
        loss = task + self.lam * penalty
        if self.reward is not None:
            other, weight = self.reward
            kept = torch.as_tensor(other.ratio_of(masks)).mean()
            loss = loss - weight * kept
            stats = {**stats, "reward": kept.detach()}
        return loss, {**stats, "rate": rate.detach()}

    def update(self, stats: dict) -> None:
        """One dual-ascent step on lambda after an optimizer step."""
        excess = (float(stats["rate"]) - self.target) / max(self.target, 1e-3)
        # capped: a run of a few steps far above its target (auto's rate is large there) would otherwise
        # overflow lambda to inf within steps and end in an infinite loss
        self.lam = min(max(LAM_MAX, self.floor), max(self.floor, self.lam * math.exp(min(self.rate * excess, 50.0))))
        side = 1 if excess > 0 else -1
        self.crossed, self.side = self.side != 0 and side != self.side, side
