"""The dynamic model: conditional computation that skips work for real.

A gated model with data-dependent gates (`DependentGate`) *masks* the channels its gates switch off:
they are computed, then multiplied by zero. The dynamic model computes, for each input, only the
channels the gates keep: the gated layer runs its kept filters only, its batch norms the kept
channels only, and each consuming convolution only the matching input channels. A group whose gate
keeps nothing costs nothing but the gate (the consumer's output is its bias alone).

Exactness: for every input, the dynamic model's output equals the gated model's in the same
inference mode (threshold at tau), within the one tolerance of `cut`. It runs one input at a time
(batch 1): the kept channels differ from input to input. A larger batch runs as a loop.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .gates import DependentGate, GateSet
from .graph import ChannelGraph

__all__ = ["DynamicModel", "dynamic_model"]


class _Context:
    """The kept channel indices of each dependent group, for the input being run."""

    def __init__(self):
        self.kept: dict[int, torch.Tensor] = {}
        self.sizes: dict[int, int] = {}


class _DynamicConv(nn.Module):
    """A conv that consumes a dependent group (compact input: only its kept channels) and/or
    produces one (its gate decides, from the full-width input, which output filters to run)."""

    def __init__(self, conv: nn.Conv2d, ctx: _Context, *, consumes: int | None, produces: int | None,
                 gate: DependentGate | None, tau: float):
        super().__init__()
        self.conv, self.ctx, self.consumes, self.produces, self.gate, self.tau = conv, ctx, consumes, produces, gate, tau

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != 1:
            return torch.cat([self(x[i:i + 1]) for i in range(x.shape[0])])
        c = self.conv
        w, b = c.weight, c.bias
        if self.consumes is not None:
            kept_in = self.ctx.kept[self.consumes]
            w = w.index_select(1, kept_in)
        if self.produces is not None:
            pooled = x.flatten(2).mean(-1)
            if self.consumes is not None:  # the gate reads the full-width (masked) input
                full = pooled.new_zeros(1, self.ctx.sizes[self.consumes])
                full[:, self.ctx.kept[self.consumes]] = pooled
                pooled = full
            kept = torch.nonzero(self.gate.mask_from(pooled, "threshold", tau=self.tau)[0]).flatten()
            self.ctx.kept[self.produces] = kept
            w = w.index_select(0, kept)
            b = b.index_select(0, kept) if b is not None else None
        if w.shape[1] == 0:  # every input channel switched off: the output is the bias alone
            h, wd = _out_size(c, x)
            out = x.new_zeros(1, w.shape[0], h, wd)
            return out + b.view(1, -1, 1, 1) if b is not None else out
        if w.shape[0] == 0:
            h, wd = _out_size(c, x)
            return x.new_zeros(1, 0, h, wd)
        return F.conv2d(x, w, b, c.stride, c.padding, c.dilation, c.groups)


def _out_size(c: nn.Conv2d, x: torch.Tensor) -> tuple[int, int]:
    out = []
    for i, n in enumerate(x.shape[2:]):
        k, s, p, d = c.kernel_size[i], c.stride[i], c.padding[i], c.dilation[i]
        out.append((n + 2 * p - d * (k - 1) - 1) // s + 1)
    return out[0], out[1]


class _DynamicBN(nn.Module):
    """A batch norm (eval statistics) over the kept channels of a dependent group only."""

    def __init__(self, bn: nn.BatchNorm2d, ctx: _Context, group: int):
        super().__init__()
        self.bn, self.ctx, self.group = bn, ctx, group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn, k = self.bn, self.ctx.kept[self.group]
        if k.numel() == 0:  # nothing kept: nothing to normalise
            return x
        pick = (lambda t: t.index_select(0, k) if t is not None else None)  # noqa: E731
        return F.batch_norm(x, pick(bn.running_mean), pick(bn.running_var), pick(bn.weight), pick(bn.bias),
                            False, 0.0, bn.eps)


class DynamicModel(nn.Module):
    """`model` with each dependent group's layers replaced by their dynamic versions (eval only).

    `kept_history` (when `record` is on) lists, per input run, the kept count of each group."""

    def __init__(self, model: nn.Module, ctx: _Context, groups: list[int]):
        super().__init__()
        self.model, self.ctx, self.groups = model, ctx, groups
        self.record = False
        self.kept_history: list[dict[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != 1:
            return torch.cat([self(x[i:i + 1]) for i in range(x.shape[0])])
        self.ctx.kept.clear()
        out = self.model(x)
        if self.record:
            self.kept_history.append({g: int(self.ctx.kept[g].numel()) for g in self.groups if g in self.ctx.kept})
        return out


def dynamic_model(model: nn.Module, graph: ChannelGraph, gates: GateSet) -> DynamicModel:
    """The dynamic twin of a gated `model` (its `gates` attached) in eval mode, threshold at the
    gates' tau. The static groups must keep every channel: cut a static plan first."""
    if gates._fixed is not None and any(bool((m == 0).any()) for m in gates._fixed):
        raise ValueError("the dynamic model runs on a model without static pruning: cut the static plan first")
    if not gates.dependent:
        raise ValueError("no data-dependent gates: the slim model of `cut` is the deployed one")
    gates.detach_()  # the gate hooks stay on the gated model, not on its twin
    try:
        twin = copy.deepcopy(model).eval()
    finally:
        gates.attach_(model)
    mods = dict(twin.named_modules())
    ctx = _Context()
    consumes: dict[str, int] = {}
    produces: dict[str, int] = {}
    bns: dict[str, int] = {}
    for gi in gates.dependent:
        g = graph.groups[gi]
        ctx.sizes[gi] = g.size
        for s in g.sites:
            if s.role in ("in", "out") and (s.layer_idxs != list(range(g.size)) or s.root_idxs != list(range(g.size))):
                raise ValueError(f"group {g.name}: {s.module} does not map its channels one to one")
            if s.role == "out":
                produces[s.module] = gi
            elif s.role == "in":
                if not isinstance(mods[s.module], nn.Conv2d):
                    raise ValueError(f"group {g.name}: the dynamic model runs conv consumers only, not {s.module}")
                consumes[s.module] = gi
            elif s.role == "chan":
                bns[s.module] = gi
    gate_of = {gi: copy.deepcopy(gates.gates[gi]).eval() for gi in gates.dependent}
    for name in set(consumes) | set(produces):
        gi = produces.get(name)
        _replace(twin, name, _DynamicConv(mods[name], ctx, consumes=consumes.get(name), produces=gi,
                                          gate=gate_of.get(gi), tau=gates.tau))
    for name, gi in bns.items():
        _replace(twin, name, _DynamicBN(mods[name], ctx, gi))
    return DynamicModel(twin, ctx, list(gates.dependent)).eval()


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)
