"""`check`: will this model prune exactly? Random plan -> gated vs slim -> ONNX vs slim."""
from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .cost import FlopsCost
from .cut import cut
from .export import DEFAULT_ATOL, DEFAULT_RTOL, export_onnx, max_abs_diff, onnx_session, run_onnx, within_tolerance
from .freeze import random_plan
from .gates import attach_gates
from .graph import ChannelGraph, find_groups
from .measure.flops import count_flops, count_params

__all__ = ["CheckReport", "check_model", "collapsible_groups", "perturb_batchnorm_"]


@dataclass
class CheckReport:
    arch: str
    input_shape: list[int]
    exact: bool
    max_abs_diff: float
    onnx_max_abs_diff: float | None
    tolerance: dict
    flops_dense: int
    flops_slim: int
    flops_predicted: float
    params_dense: int
    params_slim: int
    groups: int
    gated_channels: int
    kept_channels: int
    zero_width_groups: int
    gated_flops_fraction: float
    unsupported: list[dict] = field(default_factory=list)
    heads: list[str] = field(default_factory=list)
    onnx_error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def perturb_batchnorm_(model: nn.Module, *, seed: int = 0) -> nn.Module:
    """Give batch norms non-trivial statistics and affine terms, as a trained model has: with the
    default (0 mean, unit variance, zero shift) a removed branch leaves a zero constant behind, and
    a bug that drops the constant would go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    m.bias.copy_(torch.rand(n, generator=g) - 0.5)
    return model


def collapsible_groups(model: nn.Module, graph: ChannelGraph, x: torch.Tensor, *, limit: int = 1,
                       tries: int = 8) -> list[str]:
    """Groups that can be removed whole while the output still depends on the input (a residual
    branch, one branch of a concat): removing a group of a plain chain makes everything after it
    constant, which would make any comparison downstream of it vacuous. Tried from the middle of
    the network outwards, at most `tries` groups."""
    heads = set(graph.heads)
    cands = [i for i, g in enumerate(graph.groups) if not any(s.module in heads for s in g.consumers)]
    mid = (len(cands) - 1) / 2
    cands = [i for _, i in sorted((abs(pos - mid), i) for pos, i in enumerate(cands))]
    x2 = torch.randn_like(x)
    gates = attach_gates(model, graph)
    found: list[str] = []
    try:
        for gi in cands[:tries]:
            masks = [torch.ones(g.size) for g in graph.groups]
            masks[gi] = torch.zeros(graph.groups[gi].size)
            gates.fix_(masks)
            with torch.no_grad():
                y1, y2 = model(x), model(x2)
            # a constant network computes the same bits for any input; anything else depends on it
            if not torch.equal(y1, y2):
                found.append(graph.groups[gi].name)
                if len(found) >= limit:
                    break
    finally:
        gates.detach_()
    return found


def check_model(model: nn.Module, *, arch: str, input_shape: list[int], keep: float = 0.5, seed: int = 0,
                zero_width: int = 1, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL, onnx: bool = True,
                ignored: tuple[str, ...] = ()) -> CheckReport:
    """Gate `model`, cut a random plan that keeps about `keep` of each group and removes
    `zero_width` groups whole (where the model has such groups), and compare outputs."""
    model = model.eval()
    torch.manual_seed(seed)
    x = torch.randn(*input_shape)
    graph = find_groups(model, x, ignored=ignored)
    flops = FlopsCost(model, x, graph)
    zero = collapsible_groups(model, graph, x, limit=zero_width) if zero_width else []
    plan = random_plan(graph, keep=keep, seed=seed, zero=tuple(zero), arch=arch, input_shape=list(input_shape))
    res = cut(model, graph, plan, x, atol=atol, rtol=rtol)
    slim, diff, exact = res.slim, res.max_abs_diff, res.exact
    onnx_diff, onnx_error = None, None
    if onnx:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = export_onnx(slim, x, Path(tmp) / "slim.onnx")
                xb = torch.randn(2, *input_shape[1:])  # a different batch: the batch axis is dynamic
                with torch.no_grad():
                    ref = slim(xb)
                onnx_diff = max_abs_diff(run_onnx(onnx_session(path), xb), ref)
                exact = exact and within_tolerance(onnx_diff, float(ref.abs().max()), atol=atol, rtol=rtol)
            except Exception as e:  # report, never hide: the verdict is "not exact"
                onnx_error = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                exact = False
    return CheckReport(
        arch=arch, input_shape=list(input_shape), exact=exact, max_abs_diff=diff, onnx_max_abs_diff=onnx_diff,
        tolerance={"atol": atol, "rtol": rtol},
        flops_dense=int(flops.dense()), flops_slim=count_flops(slim, x).total, flops_predicted=flops.plan_cost(plan),
        params_dense=count_params(model), params_slim=count_params(slim), groups=len(graph.groups),
        gated_channels=graph.num_channels, kept_channels=plan.kept_channels,
        zero_width_groups=len(plan.zero_width_groups), gated_flops_fraction=flops.gated_fraction,
        unsupported=graph.unsupported, heads=graph.heads, onnx_error=onnx_error)
