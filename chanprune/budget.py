"""The FLOPs cost model: a plan's (or a gate sample's) FLOPs, differentiable in the masks.

Built once from fvcore's per-layer count of the dense model and the channel groups: a conv or
linear costs coef * kept_in * kept_out (a depthwise conv and per-channel layers such as batch
norm or pooling: coef * kept), everything else is constant. It predicts fvcore's count of the
slim model (the tests hold it to 0.5% on random plans).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .graph import ChannelGraph
from .measure.flops import count_flops

__all__ = ["CostModel"]

_CHANNEL_PRESERVING = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AvgPool1d,
                       nn.AvgPool2d, nn.AvgPool3d, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d)


@dataclass
class _Count:
    """kept(z) = ungated + sum over gated channels of z; `total` is the dense count."""

    total: int
    ungated: int
    parts: list[tuple[int, torch.Tensor]]  # (group index, root indices, one per layer channel)

    def __call__(self, z: list[torch.Tensor]) -> torch.Tensor | float:
        out = float(self.ungated)
        for gi, ri in self.parts:
            out = out + z[gi][..., ri.to(z[gi].device)].sum(-1)
        return out


@dataclass
class _Term:
    module: str
    flops: float
    inp: _Count | None
    out: _Count | None

    def __call__(self, z):
        v = self.flops
        if self.inp is not None:
            v = v * (self.inp(z) / self.inp.total)
        if self.out is not None:
            v = v * (self.out(z) / self.out.total)
        return v


class CostModel:
    """FLOPs(Z) for one model, input shape and channel graph."""

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, graph: ChannelGraph):
        report = count_flops(model, example_inputs)
        self.dense = float(report.total)
        self.unsupported_ops = report.unsupported
        mods = dict(model.named_modules())
        sites: dict[tuple[str, str], list] = {}
        for gi, g in enumerate(graph.groups):
            for s in g.sites:
                sites.setdefault((s.module, s.role), []).append((gi, s))

        def count(module: str, role: str) -> _Count | None:
            found = sites.get((module, role))
            if not found:
                return None
            total = found[0][1].channels
            gated = sum(len(s.layer_idxs) for _, s in found)
            return _Count(total, total - gated, [(gi, torch.tensor(s.root_idxs, dtype=torch.long)) for gi, s in found])

        producer_of = _producers(model, example_inputs, {m for m, r in sites if r in ("out", "dw", "chan")})
        self.terms: list[_Term] = []
        for name, f in report.by_module.items():
            m = mods.get(name)
            is_layer = isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))
            if not f or m is None or (next(m.children(), None) is not None and not is_layer):
                continue  # parents aggregate their children; their own functional ops stay constant
            per_channel = count(name, "dw") or count(name, "chan")
            inp, out = count(name, "in"), count(name, "out")
            if per_channel is None and isinstance(m, _CHANNEL_PRESERVING) and name in producer_of:
                src = producer_of[name]
                per_channel = count(src, "out") or count(src, "dw") or count(src, "chan")
            if per_channel is not None:
                self.terms.append(_Term(name, float(f), None, per_channel))
            elif inp is not None or out is not None:
                self.terms.append(_Term(name, float(f), inp, out))
        self.constant = self.dense - sum(t.flops for t in self.terms)
        self.gated_fraction = (sum(t.flops for t in self.terms) / self.dense) if self.dense else 0.0

    def flops(self, z: list[torch.Tensor]) -> torch.Tensor | float:
        """FLOPs with group masks `z` (each (C,) or (B, C), 0/1 or soft); per example when batched."""
        total = self.constant
        for t in self.terms:
            total = total + t(z)
        return total

    def ratio(self, z: list[torch.Tensor]) -> torch.Tensor | float:
        return self.flops(z) / self.dense

    def plan_flops(self, plan, graph: ChannelGraph) -> float:
        return float(self.flops(plan.keep_masks(graph)))


def _producers(model: nn.Module, example_inputs: torch.Tensor, known: set[str]) -> dict[str, str]:
    """For each channel-preserving leaf (pooling, upsampling): the nearest known layer upstream
    whose channels it carries, found by walking autograd's graph along first inputs."""
    fn2name: dict = {}
    inputs: dict[str, object] = {}
    hooks = []
    for name, m in model.named_modules():
        if name in known:
            hooks.append(m.register_forward_hook(
                lambda mod, i, o, name=name: fn2name.__setitem__(o.grad_fn, name) if torch.is_tensor(o) else None))
        elif isinstance(m, _CHANNEL_PRESERVING):
            hooks.append(m.register_forward_pre_hook(
                lambda mod, a, name=name: inputs.__setitem__(name, a[0].grad_fn) if a and torch.is_tensor(a[0]) else None))
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            model(example_inputs)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    out = {}
    for name, fn in inputs.items():
        for _ in range(64):
            if fn is None:
                break
            if fn in fn2name:
                out[name] = fn2name[fn]
                break
            nxt = [f for f, _ in fn.next_functions if f is not None]
            fn = nxt[0] if nxt else None
    return out
