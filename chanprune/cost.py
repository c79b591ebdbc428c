"""The cost a budget constrains: an interface, a registry, and two kinds.

A `Cost` is built for one model, input shape and channel graph. It predicts the cost of a set of
group masks (differentiable, per example when the masks are batched), knows the dense model's
cost, and prices a plan. The budget loss, the projection onto a target (`freeze.round_plan`) and
the reports take any cost; a checkpoint records the cost's name and description.

- `flops` (the default): fvcore's count, predicted bilinearly. Built once from fvcore's per-layer
  count of the dense model and the channel groups: a conv or linear costs coef * kept_in * kept_out
  (a depthwise conv and per-channel layers such as batch norm or pooling: coef * kept), everything
  else is constant. It predicts fvcore's count of the slim model (the tests hold it to 0.5% on
  random plans).
- `channels`: the paper's batch activation loss, the share of gated channels kept (t - mean Z)^2.
- `latency`: milliseconds on a backend, from a latency table (`measure.lut`, made by `chanprune
  profile`): each gated layer's time is bilinear in its expected kept input and output channels,
  so the expected latency under the gates is differentiable (ProxylessNAS / FBNet take the same
  expectation over a table). With several batch sizes the ratio is their mean.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ._registry import Registry
from .graph import ChannelGraph
from .measure.flops import count_flops
from .measure.lut import LatencyTable
from .plan import PrunePlan

__all__ = ["Cost", "FlopsCost", "ChannelsCost", "LatencyCost", "register_cost", "make_cost", "list_costs"]

Masks = list[torch.Tensor]


class Cost(ABC):
    """What a budget constrains, as a function of the group masks.

    Subclasses take `(model, example_inputs, graph)` and set `name` (the registry key).
    """

    name: str = ""

    def __init__(self, graph: ChannelGraph):
        self.graph = graph

    @abstractmethod
    def predict(self, masks: Masks) -> torch.Tensor | float:
        """The cost under `masks` (one per group: (C,) or (B, C), 0/1 or soft); per example when batched."""

    @abstractmethod
    def dense(self) -> float:
        """The cost with every channel kept."""

    def ratio_of(self, masks: Masks) -> torch.Tensor | float:
        """`predict(masks) / dense()`: what a target is a fraction of."""
        return self.predict(masks) / self.dense()

    def plan_cost(self, plan: PrunePlan) -> float:
        return float(self.predict(plan.keep_masks(self.graph)))

    def ratio(self, plan: PrunePlan) -> float:
        """A plan's predicted cost as a fraction of the dense model's."""
        return self.plan_cost(plan) / self.dense()

    def floor(self) -> float:
        """The ratio with every gated channel removed: no target below it is reachable."""
        return float(self.ratio_of([torch.zeros(g.size) for g in self.graph.groups]))

    def describe(self) -> dict:
        """JSON description recorded in checkpoints and reports."""
        return {"name": self.name, "dense": self.dense()}


_COSTS: Registry[Cost] = Registry("cost", "name")


def register_cost(name: str):
    """Register a `Cost` class under `name` (the value of `learn --budget`)."""
    return _COSTS.register(name)


def list_costs() -> list[str]:
    return _COSTS.names()


def make_cost(name: str, model: nn.Module, example_inputs: torch.Tensor, graph: ChannelGraph, **options) -> Cost:
    """The registered cost `name` for `model` (dense, no gates attached) at `example_inputs`;
    `options` go to the cost (the latency cost's `lut`)."""
    return _COSTS.get(name)(model, example_inputs, graph, **options)


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


def _site_counts(graph: ChannelGraph):
    """count(module, role) -> the kept count of that layer dimension as a function of the masks."""
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

    return count


@register_cost("flops")
class FlopsCost(Cost):
    """fvcore's FLOPs of one model, input shape and channel graph, as a function of the masks."""

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, graph: ChannelGraph):
        super().__init__(graph)
        report = count_flops(model, example_inputs)
        self._dense = float(report.total)
        mods = dict(model.named_modules())
        count = _site_counts(graph)
        self.terms: list[_Term] = []
        for name, f in report.by_module.items():
            m = mods.get(name)
            # A batch norm with children is still one layer: timm's BatchNormAct2d holds its
            # activation, which fvcore does not count, so its count is the norm's own.
            is_layer = isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.modules.batchnorm._BatchNorm))
            if not f or m is None or isinstance(m, _CHANNEL_PRESERVING) or (next(m.children(), None) is not None and not is_layer):
                continue  # parents aggregate their children; pooling is traced below
            per_channel = count(name, "dw") or count(name, "chan")
            inp, out = count(name, "in"), count(name, "out")
            if per_channel is not None:
                self.terms.append(_Term(name, float(f), None, per_channel))
            elif inp is not None or out is not None:
                self.terms.append(_Term(name, float(f), inp, out))
        for f, src in _per_channel_ops(model, example_inputs, {s.module for g in graph.groups for s in g.sites
                                                                if s.role in ("out", "dw", "chan")}):
            c = src and (count(src, "chan") or count(src, "dw") or count(src, "out"))
            if c:
                self.terms.append(_Term(f"{src}->pool", f, None, c))
        self.constant = self._dense - sum(t.flops for t in self.terms)
        self.gated_fraction = (sum(t.flops for t in self.terms) / self._dense) if self._dense else 0.0

    def dense(self) -> float:
        return self._dense

    def predict(self, masks: Masks) -> torch.Tensor | float:
        total = self.constant
        for t in self.terms:
            total = total + t(masks)
        return total

    def describe(self) -> dict:
        return {**super().describe(), "unit": "fvcore FLOPs (one multiply-add = one FLOP)",
                "gated_fraction": self.gated_fraction}


@register_cost("channels")
class ChannelsCost(Cost):
    """The paper's batch activation loss: the number of gated channels kept (Herrmann et al. 2020, 3.2)."""

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, graph: ChannelGraph):
        super().__init__(graph)
        self._dense = float(graph.num_channels)

    def dense(self) -> float:
        return self._dense

    def predict(self, masks: Masks) -> torch.Tensor | float:
        total: torch.Tensor | float = 0.0
        for z in masks:
            total = total + z.sum(-1)
        return total

    def describe(self) -> dict:
        return {**super().describe(), "unit": "gated channels kept"}



@register_cost("latency")
class LatencyCost(Cost):
    """Expected latency from a latency table: sum over the table's layers of ms(kept in, kept out),
    calibrated to whole-model timings; `dense()` is the table's dense prediction at its first batch
    size, and `ratio_of` the mean over the batch sizes of latency / dense latency."""

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, graph: ChannelGraph, *,
                 lut: LatencyTable | str | None = None, batch_sizes: list[int] | None = None):
        super().__init__(graph)
        if lut is None:
            raise ValueError("the latency budget needs a latency table: pass --lut FILE (made by chanprune profile) "
                             "or --lut auto")
        self.table = lut if isinstance(lut, LatencyTable) else LatencyTable.load(lut)
        self.batch_sizes = list(batch_sizes or self.table.batch_sizes)
        missing = [b for b in self.batch_sizes if str(b) not in self.table.calibration]
        if missing:
            raise ValueError(f"the latency table has no batch size {missing[0]} (it has {self.table.batch_sizes})")
        mods = dict(model.named_modules())
        absent = [t.module for t in self.table.layers if t.module not in mods]
        if absent:
            raise ValueError(f"the latency table's layer {absent[0]!r} is not in this model: "
                             f"a table of another architecture ({self.table.arch})")
        count = _site_counts(graph)
        self.layers = []  # (layer table, in count or None, out count or None, {batch: tensors})
        for t in self.table.layers:
            if t.kind == "dw":
                c = count(t.module, "dw") or count(t.module, "in") or count(t.module, "out")
                self.layers.append((t, c, c))
            else:
                self.layers.append((t, count(t.module, "in"), count(t.module, "out")))
        ones = [torch.ones(g.size) for g in graph.groups]
        self._dense_by_batch = {b: float(self._ms(ones, b)) for b in self.batch_sizes}
        self._dense = self._dense_by_batch[self.batch_sizes[0]]

    def _ms(self, masks: Masks, batch: int):
        cal = self.table.calibration[str(batch)]
        total = 0.0
        for t, cin, cout in self.layers:
            kin = cin(masks) if cin is not None else float(t.channels_in)
            kout = cout(masks) if cout is not None else float(t.channels_out)
            total = total + t.at(kin, kout, batch)
        return cal["scale"] * total + cal["offset_ms"]

    def dense(self) -> float:
        return self._dense

    def predict(self, masks: Masks) -> torch.Tensor | float:
        ratios = [self._ms(masks, b) / self._dense_by_batch[b] for b in self.batch_sizes]
        out = sum(ratios) / len(ratios) * self._dense
        if torch.is_tensor(out) and masks and torch.is_tensor(masks[0]):
            out = out.to(masks[0].dtype if masks[0].is_floating_point() else torch.float32)
        return out

    def speedup(self, masks: Masks) -> dict[str, float]:
        """Predicted dense / masked latency, per batch size."""
        return {str(b): float(self._dense_by_batch[b] / self._ms(masks, b)) for b in self.batch_sizes}

    def describe(self) -> dict:
        return {**super().describe(), "unit": f"ms on {self.table.backend} at batch {self.batch_sizes[0]}",
                "backend": self.table.backend, "batch_sizes": self.batch_sizes, "block": self.table.block,
                "dense_ms": {str(b): v for b, v in self._dense_by_batch.items()},
                "machine": self.table.machine, "threads": self.table.threads}


class _PerChannelOps(TorchFunctionMode):
    """Records the per-channel ops fvcore counts (adaptive average pooling, upsampling) whether a
    module or the forward code calls them, with fvcore's own count and the autograd node of the
    input, so that their cost can follow the channels they carry."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[float, object]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is F.adaptive_avg_pool2d and args and torch.is_tensor(args[0]) and args[0].dim() >= 3:
            self.calls.append((float(args[0].numel()), args[0].grad_fn))
        elif func is F.interpolate and args and torch.is_tensor(args[0]) and torch.is_tensor(out):
            mode = kwargs.get("mode", args[3] if len(args) > 3 else "nearest")
            scale = {"nearest": 1.0, "bilinear": 4.0}.get(mode)
            if scale and out.dim() == 4:
                self.calls.append((scale * out.numel(), args[0].grad_fn))
        return out


def _per_channel_ops(model: nn.Module, example_inputs: torch.Tensor, known: set[str]) -> list[tuple[float, str | None]]:
    """(fvcore FLOPs, nearest known layer upstream) of each per-channel op, found by walking
    autograd's graph along first inputs from the op's input to a layer of a channel group."""
    fn2name: dict = {}
    hooks = []
    for name, m in model.named_modules():
        if name in known:
            hooks.append(m.register_forward_hook(
                lambda mod, i, o, name=name: fn2name.__setitem__(o.grad_fn, name) if torch.is_tensor(o) else None))
    was_training = model.training
    model.eval()
    mode = _PerChannelOps()
    try:
        with torch.enable_grad(), mode:
            model(example_inputs)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    out = []
    for flops, fn in mode.calls:
        src = None
        for _ in range(64):
            if fn is None:
                break
            if fn in fn2name:
                src = fn2name[fn]
                break
            nxt = [f for f, _ in fn.next_functions if f is not None]
            fn = nxt[0] if nxt else None
        out.append((flops, src))
    return out
