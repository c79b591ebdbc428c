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

__all__ = ["CutResult", "cut", "SlimTwin"]


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


class SlimTwin:
    """A slim model cut from a gated model, whose weights can be written back into it.

    Fine-tuning under a frozen plan changes only what the plan keeps, so it can run on the slim
    model (cheaper per step) while the gated model stays the source of truth: `write_back_()` puts
    every slim weight and statistic where it came from, and the gated model, frozen under the plan,
    computes what the slim one does. Where each slim value came from is traced once, by cutting a
    float64 copy whose entries hold their own flat positions (the surgeon only selects entries).
    """

    def __init__(self, model: nn.Module, graph: ChannelGraph, plan: PrunePlan, inputs: torch.Tensor):
        self.model, self.plan = model, plan
        probe, self.origins = self._trace(model, graph, plan, inputs[:1])
        dtype = next((t.dtype for t in model.state_dict().values() if t.is_floating_point()), torch.float32)
        self.slim = probe.to(dtype)  # the one cut: its entries are positions until `_gather_` fills them
        self._gather_()

    @staticmethod
    def _trace(model, graph, plan, x) -> tuple[nn.Module, dict[str, tuple[str, torch.Tensor]]]:
        """The cut float64 copy, and for each of its floating entries (gated tensor, flat indices)."""
        probe = copy.deepcopy(model).double()
        full = {k: v for k, v in probe.state_dict().items() if v.is_floating_point()}
        names, offsets, n = [], [], 0
        with torch.no_grad():
            for k, v in full.items():
                v.copy_(torch.arange(n, n + v.numel(), dtype=torch.float64).view_as(v))
                names.append(k)
                offsets.append(n)
                n += v.numel()
            cut_probe = apply_plan_(probe, plan, x.double(), graph=graph)
        starts = torch.tensor(offsets, dtype=torch.float64)
        origins = {}
        for k, v in cut_probe.state_dict().items():
            if not v.is_floating_point():
                continue
            ids = v.flatten()
            if ids.numel() == 0:
                continue
            owner = int(torch.searchsorted(starts, ids[:1], right=True)[0]) - 1
            local = ids - starts[owner]
            src = full[names[owner]]
            if (ids != ids.round()).any() or local.min() < 0 or local.max() >= src.numel():
                raise ValueError(f"slim {k!r} is not a selection of one gated tensor")
            origins[k] = (names[owner], local.long())
        return cut_probe, origins

    @torch.no_grad()
    def _gather_(self) -> None:
        """Fill the slim model from the gated one: the inverse of `write_back_`."""
        src = self.model.state_dict()
        dst = self.slim.state_dict()
        for k, (name, idx) in self.origins.items():
            dst[k].copy_(src[name].view(-1)[idx].view_as(dst[k]))

    @torch.no_grad()
    def write_back_(self) -> nn.Module:
        """Copy the slim model's weights and statistics into the gated model; returns it."""
        dst = self.model.state_dict()
        src = self.slim.state_dict()
        for k, (name, idx) in self.origins.items():
            dst[name].view(-1)[idx] = src[k].flatten().to(dst[name].dtype)
        for k, v in src.items():
            if not v.is_floating_point() and k in dst and dst[k].shape == v.shape:
                dst[k].copy_(v)  # e.g. batch norm's num_batches_tracked
        return self.model

    def full_state(self, _slim: nn.Module | None = None) -> dict:
        """The gated model's state dict with the slim weights written back (for checkpoints)."""
        return self.write_back_().state_dict()
