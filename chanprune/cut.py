"""Cut: remove a plan's channels from a gated model and check that nothing changed.

One function for every caller (export, check, the examples and the benchmarks): pin the plan's
masks on the gates (the frozen gated model), run it, cut a copy under the plan (`surgery`), run the
copy, and compare the two with chanprune's one tolerance. The model handed in is left as it was,
gates detached.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from .export import DEFAULT_ATOL, DEFAULT_RTOL, max_abs_diff, within_tolerance
from .gates import GateSet
from .graph import ChannelGraph
from .plan import PrunePlan
from .surgery import apply_plan_

__all__ = ["CutResult", "cut"]


@dataclass
class CutResult:
    slim: nn.Module  # the physically smaller model, in eval mode
    plan: PrunePlan
    inputs: torch.Tensor  # what parity was checked on
    gated_output: torch.Tensor
    slim_output: torch.Tensor
    max_abs_diff: float
    exact: bool  # |slim - gated| <= atol + rtol * max|gated|
    tolerance: dict


def cut(model: nn.Module, graph: ChannelGraph, plan: PrunePlan, inputs: torch.Tensor, *,
        gates: GateSet | None = None, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL) -> CutResult:
    """Cut `plan` out of a copy of `model` and compare it with the model frozen under `plan`.

    Args:
        model: the dense model `graph` was found on (with `gates` attached, or none).
        inputs: a batch to compare on; its first example also drives the surgery's shape tracing.
        gates: the model's gates; pinned to the plan for the comparison, then detached. Without
            them, fresh gates are attached for the comparison.
    """
    plan.validate(graph)
    gates = (gates or GateSet(graph)).attach_(model)
    was_training = model.training
    model.eval()
    try:
        gates.fix_(plan.keep_masks(graph))
        with torch.no_grad():
            y_gated = model(inputs)
    finally:
        gates.fix_(None)
        gates.detach_()
        model.train(was_training)
    slim = apply_plan_(copy.deepcopy(model), plan, inputs[:1], graph=graph).eval()
    with torch.no_grad():
        y_slim = slim(inputs)
    diff = max_abs_diff(y_slim, y_gated)
    exact = within_tolerance(diff, float(y_gated.abs().max()), atol=atol, rtol=rtol)
    return CutResult(slim, plan, inputs, y_gated, y_slim, diff, exact, {"atol": atol, "rtol": rtol})
