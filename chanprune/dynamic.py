"""The dynamic model: conditional computation that skips work for real.

A gated model with data-dependent gates (`DependentGate`) *masks* the channels its gates switch off:
they are computed, then multiplied by zero. The dynamic model computes, for each input, only the
channels the gates keep: the gated layer runs its kept filters only, its batch norms the kept
channels only, and each consuming convolution only the matching input channels. A group whose gate
keeps nothing costs nothing but the gate (the consumer's output is its bias alone).

Exactness: for every input, the dynamic model's output equals the gated model's in the same
inference mode (threshold at tau), within the one tolerance of `cut`. It runs one input at a time
(batch 1): the kept channels differ from input to input. A larger batch runs as a loop.

`onnx_dynamic_model` builds the same model in a form the ONNX exporter can trace, batch 1, in one
of two ways (`ONNX_WAYS`):
  gather: the gate's kept channels become indices (NonZero) that gather the kept filters of the
      producing conv, its batch norm's statistics and the matching input channels of the consumers
      (Gather on the weights, then Conv with those weights as a graph input). Every group gets one
      all-zero spare channel, so that a gate that keeps nothing still runs a conv of width 1 and the
      output stays exact without control flow. The price: the weights are no longer constants, so
      onnxruntime can neither pre-pack them nor move the conv to its blocked (NCHWc) layout.
  if: layer granularity only (one decision per residual branch): the producing and the consuming
      convs each sit in an ONNX `If`, with the batch norm that follows each folded in; the branch
      that runs holds the conv with constant weights, the other a tensor of zeros (the producer) or
      the consumer's folded bias alone. `export_onnx` moves those weights into the branch that uses
      them: onnxruntime blocks (NCHWc) and pre-packs a conv inside an If only when its weights are
      initializers of the branch itself, not of the main graph.
"""
from __future__ import annotations

import copy
import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .gates import DependentGate, GateSet
from .graph import ChannelGraph

__all__ = ["DynamicModel", "dynamic_model", "onnx_dynamic_model", "ONNX_WAYS"]

ONNX_WAYS = ("gather", "if")


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
        self.conv, self.ctx, self.consumes, self.produces = conv, ctx, consumes, produces
        self.decide = _Decision(gate, tau) if gate is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != 1:
            return torch.cat([self(x[i:i + 1]) for i in range(x.shape[0])])
        c = self.conv
        w, b = c.weight, c.bias
        if self.consumes is not None:
            kept_in = self.ctx.kept[self.consumes]
            if kept_in.numel() != w.shape[1]:  # all kept (a branch that runs whole): no copy
                w = w.index_select(1, kept_in)
        if self.produces is not None:
            pooled = x.flatten(2).mean(-1)
            if self.consumes is not None:  # the gate reads the full-width (masked) input
                full = pooled.new_zeros(1, self.ctx.sizes[self.consumes])
                full[:, self.ctx.kept[self.consumes]] = pooled
                pooled = full
            keep = self.decide(pooled)[0]
            kept = torch.nonzero(keep.expand(self.ctx.sizes[self.produces])).flatten()
            self.ctx.kept[self.produces] = kept
            if kept.numel() != w.shape[0]:
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


class _Decision(nn.Module):
    """A dependent gate's threshold decision in the fewest ops, for the dynamic models: the gate
    network's batch norm folded into its first linear map, each unit's two logits folded into one
    difference d, and sigmoid(d) > tau taken as d > log(tau / (1 - tau)). (B, U) booleans from the
    pooled input (B, C_in), U the gate's units (channels, or 1 per branch); the static part of a
    static+dependent gate is a constant. The same decisions as `gate.mask_from(x, "threshold")`, but
    where d lies within float rounding of the threshold. In onnxruntime: ReduceMean, two Gemm (the
    first fused with its ReLU) and Greater, against a dozen nodes for the gate as trained."""

    def __init__(self, gate: DependentGate, tau: float):
        super().__init__()
        bn, hidden = gate.bn, gate.hidden
        scale, shift = _bn_affine(bn)
        b1 = gate.fc1.bias.detach() if gate.fc1.bias is not None else torch.zeros(bn.num_features)
        self.register_buffer("w1", gate.fc1.weight.detach() * scale.view(-1, 1))
        self.register_buffer("b1", b1 * scale + shift)
        w2, b2 = gate.fc2.weight.detach().view(-1, 2, hidden), gate.fc2.bias.detach().view(-1, 2)
        self.register_buffer("w2", w2[:, 1] - w2[:, 0])
        self.register_buffer("b2", b2[:, 1] - b2[:, 0])
        self.threshold = math.log(tau) - math.log1p(-tau) if 0 < tau < 1 else (-math.inf if tau <= 0 else math.inf)
        static = getattr(gate, "static", None)
        self.register_buffer("static", static.probs().detach() > tau if static is not None else None)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        keep = F.linear(F.relu(F.linear(pooled, self.w1, self.b1)), self.w2, self.b2) > self.threshold
        return keep & self.static if self.static is not None else keep


def _out_size(c: nn.Conv2d, x: torch.Tensor) -> tuple[int, int]:
    return _out_hw(x, list(c.kernel_size), list(c.stride), list(c.padding), list(c.dilation))


def _out_hw(x: torch.Tensor, kernel: list[int], stride: list[int], padding: list[int],
            dilation: list[int]) -> tuple[int, int]:
    """A 2d conv's output height and width for input x (scriptable: `_if_conv` calls it)."""
    return _conv_hw(x.shape[2], x.shape[3], kernel, stride, padding, dilation)


def _conv_hw(h: int, w: int, kernel: list[int], stride: list[int], padding: list[int],
             dilation: list[int]) -> tuple[int, int]:
    """A 2d conv's output height and width for an h x w input (scriptable)."""
    return ((h + 2 * padding[0] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1,
            (w + 2 * padding[1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1)


class _DynamicBN(nn.Module):
    """A batch norm (eval statistics) over the kept channels of a dependent group only."""

    def __init__(self, bn: nn.BatchNorm2d, ctx: _Context, group: int):
        super().__init__()
        self.bn, self.ctx, self.group = bn, ctx, group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn, k = self.bn, self.ctx.kept[self.group]
        if k.numel() == 0:  # nothing kept: nothing to normalise
            return x
        if k.numel() == bn.num_features:
            return bn(x)
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
    twin, mods, consumes, produces, bns, gate_of = _twin(model, graph, gates)
    ctx = _Context()
    ctx.sizes.update({gi: graph.groups[gi].size for gi in gates.dependent})
    for name in set(consumes) | set(produces):
        gi = produces.get(name)
        _replace(twin, name, _DynamicConv(mods[name], ctx, consumes=consumes.get(name), produces=gi,
                                          gate=gate_of.get(gi), tau=gates.tau))
    for name, gi in bns.items():
        _replace(twin, name, _DynamicBN(mods[name], ctx, gi))
    return DynamicModel(twin, ctx, list(gates.dependent)).eval()


def _twin(model: nn.Module, graph: ChannelGraph, gates: GateSet):
    """A copy of `model` without the gate hooks, with the modules of each dependent group by role
    (producing conv, consuming convs, batch norms: name -> group index) and a copy of each gate."""
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
    roles: dict[str, dict[str, int]] = {"out": {}, "in": {}, "chan": {}}
    for gi in gates.dependent:
        g = graph.groups[gi]
        for s in g.sites:
            if s.role in ("in", "out"):
                if s.layer_idxs != list(range(g.size)) or s.root_idxs != list(range(g.size)):
                    raise ValueError(f"group {g.name}: {s.module} does not map its channels one to one")
                m = mods[s.module]
                if not isinstance(m, nn.Conv2d) or m.groups != 1:
                    raise ValueError(f"group {g.name}: the dynamic model runs plain convs only, not {s.module}")
            roles[s.role][s.module] = gi
    gate_of = {gi: copy.deepcopy(gates.gates[gi]).eval() for gi in gates.dependent}
    return twin, mods, roles["in"], roles["out"], roles["chan"], gate_of


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


# ---------------------------------------------------------------------------------------------- ONNX
class _Traced:
    """What the traced modules of one forward pass share: per dependent group, the kept channel
    indices (gather, with the spare channel last) or the on/off decision (if)."""

    def __init__(self):
        self.idx: dict[int, torch.Tensor] = {}
        self.on: dict[int, torch.Tensor] = {}


def _spare(t: torch.Tensor, dim: int, value: float = 0.0) -> torch.Tensor:
    """`t` with one more channel along `dim`, filled with `value` (the spare channel)."""
    shape = list(t.shape)
    shape[dim] = 1
    return torch.cat([t.detach(), torch.full(shape, value, dtype=t.dtype)], dim)


class _GatherConv(nn.Module):
    def __init__(self, conv: nn.Conv2d, tr: _Traced, *, consumes: int | None, produces: int | None,
                 gate: DependentGate | None, tau: float):
        super().__init__()
        self.tr, self.consumes, self.produces = tr, consumes, produces
        self.decide = _Decision(gate, tau) if gate is not None else None
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.out_channels = conv.out_channels
        w = conv.weight.detach()
        b = conv.bias.detach() if conv.bias is not None else torch.zeros(w.shape[0])
        if produces is not None:
            w, b = _spare(w, 0), _spare(b, 0)
            self.register_buffer("spare", torch.tensor([conv.out_channels], dtype=torch.long))
        if consumes is not None:
            w = _spare(w, 1)
        self.register_buffer("w", w)
        self.register_buffer("b", b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.w, self.b
        if self.consumes is not None:
            w = w.index_select(1, self.tr.idx[self.consumes])
        if self.produces is not None:
            keep = self.decide(x.mean((2, 3)))[0].expand(self.out_channels)
            idx = torch.cat([torch.nonzero(keep).flatten(), self.spare])
            self.tr.idx[self.produces] = idx
            w, b = w.index_select(0, idx), b.index_select(0, idx)
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation)


class _GatherBN(nn.Module):
    def __init__(self, bn: nn.BatchNorm2d, tr: _Traced, group: int):
        super().__init__()
        self.tr, self.group, self.eps = tr, group, bn.eps
        n = bn.num_features
        self.register_buffer("mean", _spare(bn.running_mean, 0))
        self.register_buffer("var", _spare(bn.running_var, 0, 1.0))
        self.register_buffer("weight", _spare(bn.weight if bn.weight is not None else torch.ones(n), 0))
        self.register_buffer("bias", _spare(bn.bias if bn.bias is not None else torch.zeros(n), 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.tr.idx[self.group]
        return F.batch_norm(x, self.mean.index_select(0, k), self.var.index_select(0, k),
                            self.weight.index_select(0, k), self.bias.index_select(0, k), False, 0.0, self.eps)


def _if_conv(x: torch.Tensor, on: torch.Tensor, w: torch.Tensor, b: torch.Tensor, stride: list[int],
             padding: list[int], dilation: list[int], kernel: list[int], out_channels: int,
             consumes: bool) -> torch.Tensor:
    """The conv when the branch is on; else, of its output's shape, zeros (the producer) or its bias
    alone (a consumer: its inputs are all off). Scripted, it is an ONNX `If`; the off branch reads
    the weights' shape from constants, so that only the conv's branch uses them."""
    if bool(on):
        return F.conv2d(x, w, b, stride, padding, dilation)
    h, wd = _out_hw(x, kernel, stride, padding, dilation)
    if consumes:
        return b.view(1, -1, 1, 1).expand(x.shape[0], out_channels, h, wd).contiguous()
    return torch.zeros([x.shape[0], out_channels, h, wd], dtype=x.dtype)


_SCRIPTED: dict = {}


def _scripted(fn):
    if fn not in _SCRIPTED:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.script's deprecation notice: it is the exporter's way to If
            _SCRIPTED[fn] = torch.jit.script(fn)
    return _SCRIPTED[fn]


class _IfConv(nn.Module):
    """A gated conv of the `if` way, with the batch norm that follows it (if any) folded in: the
    branch then holds the block's work, and onnxruntime fuses and blocks (NCHWc) it there. When off,
    the producer's output is unused (its consumer is off too) and the consumer's is its folded bias:
    the batch norm of its bias, as in the gated model."""

    def __init__(self, conv: nn.Conv2d, tr: _Traced, *, consumes: int | None, produces: int | None,
                 gate: DependentGate | None, tau: float, bn: nn.BatchNorm2d | None = None):
        super().__init__()
        self.tr, self.consumes, self.produces = tr, consumes, produces
        self.decide = _Decision(gate, tau) if gate is not None else None
        self.stride, self.padding, self.dilation = list(conv.stride), list(conv.padding), list(conv.dilation)
        self.kernel, self.out_channels = list(conv.kernel_size), conv.out_channels
        w, b = _folded(conv, bn)
        self.register_buffer("w", w)
        self.register_buffer("b", b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.produces is not None:
            self.tr.on[self.produces] = self.decide(x.mean((2, 3)))  # (1, 1): the If takes it as it is
        on = self.tr.on[self.produces if self.produces is not None else self.consumes]
        branch = _scripted(_if_conv) if torch.jit.is_tracing() else _if_conv
        return branch(x, on, self.w, self.b, self.stride, self.padding, self.dilation, self.kernel, self.out_channels,
                      self.produces is None)


def _bn_affine(bn: nn.BatchNorm1d | nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """An eval-mode batch norm as y = x * scale + shift, per channel."""
    n = bn.num_features
    gamma = bn.weight.detach() if bn.weight is not None else torch.ones(n)
    beta = bn.bias.detach() if bn.bias is not None else torch.zeros(n)
    scale = gamma / torch.sqrt(bn.running_var + bn.eps)
    return scale, beta - bn.running_mean * scale


def _fold_bn(w: torch.Tensor, b: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """The conv's weight and bias with the (eval-mode) batch norm after it folded in."""
    scale, shift = _bn_affine(bn)
    return w * scale.view(-1, 1, 1, 1), b * scale + shift


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A copy of the conv's weight and bias (zeros when it has none), the batch norm after it folded in."""
    w = conv.weight.detach().clone()
    b = conv.bias.detach().clone() if conv.bias is not None else torch.zeros(conv.out_channels)
    return _fold_bn(w, b, bn) if bn is not None else (w, b)


def _bn_after(model: nn.Module, convs: set[str]) -> dict[str, str]:
    """Conv name -> the BatchNorm2d that takes that conv's output and nothing else, for the `convs`
    whose output goes to such a batch norm alone (torch.fx; nothing where the model does not trace)."""
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception:  # a model fx cannot trace keeps its batch norms outside the If: slower, still exact
        return {}
    mods = dict(model.named_modules())
    calls = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    out = {}
    for n in gm.graph.nodes:
        if n.op == "call_module" and n.target in convs and len(n.users) == 1:
            (u,) = n.users
            if (u.op == "call_module" and isinstance(mods.get(u.target), nn.BatchNorm2d)
                    and calls.count(u.target) == 1 and u.args[0] is n):
                out[n.target] = u.target
    return out


def _if_branch(x: torch.Tensor, on: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, s1: list[int], p1: list[int],
               d1: list[int], k1: list[int], relu: bool, w2: torch.Tensor, b2: torch.Tensor, s2: list[int],
               p2: list[int], d2: list[int], k2: list[int], out_channels: int) -> torch.Tensor:
    """A whole gated branch, producer to consumer, when on (one If, both convs in its branch, the ReLU
    between them fused there by onnxruntime); else the consumer's folded bias alone, of its output's
    shape (the gated model's output when the branch is off). Scripted, it is one ONNX `If`."""
    if bool(on):
        h = F.conv2d(x, w1, b1, s1, p1, d1)
        if relu:
            h = F.relu(h)
        return F.conv2d(h, w2, b2, s2, p2, d2)
    h1, wd1 = _out_hw(x, k1, s1, p1, d1)
    h2, wd2 = _conv_hw(h1, wd1, k2, s2, p2, d2)
    return b2.view(1, -1, 1, 1).expand(x.shape[0], out_channels, h2, wd2).contiguous()


class _IfBranch(nn.Module):
    """One dependent group's whole branch at layer granularity (producer, its batch norm and ReLU,
    consumer, its batch norm) as one If: batch norms folded, the decision from the producer's input."""

    def __init__(self, producer: nn.Conv2d, bn1: nn.BatchNorm2d | None, relu: bool, consumer: nn.Conv2d,
                 bn2: nn.BatchNorm2d | None, gate: DependentGate, tau: float):
        super().__init__()
        self.decide = _Decision(gate, tau)
        self.relu, self.out_channels = relu, consumer.out_channels
        for i, (conv, bn) in enumerate(((producer, bn1), (consumer, bn2)), 1):
            w, b = _folded(conv, bn)
            self.register_buffer(f"w{i}", w)
            self.register_buffer(f"b{i}", b)
            setattr(self, f"geometry{i}", [list(conv.stride), list(conv.padding), list(conv.dilation),
                                           list(conv.kernel_size)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        on = self.decide(x.mean((2, 3)))  # (1, 1): the If takes it as it is
        branch = _scripted(_if_branch) if torch.jit.is_tracing() else _if_branch
        return branch(x, on, self.w1, self.b1, *self.geometry1, self.relu, self.w2, self.b2, *self.geometry2,
                      self.out_channels)


def _whole_branches(model: nn.Module, produces: dict[str, int], consumes: dict[str, int], gate_of: dict, tau: float):
    """`model` as an fx GraphModule with each dependent group's branch (producer -> [batch norm] ->
    [ReLU] -> consumer -> [batch norm], nothing else) replaced by one `_IfBranch`, and the groups that
    did not match that pattern (they keep a per-conv If); (model, set()) where fx cannot trace it."""
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception:
        return model, set()
    mods = dict(model.named_modules())
    calls = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    is_mod = (lambda n, cls: n.op == "call_module" and isinstance(mods.get(n.target), cls))  # noqa: E731
    is_relu = (lambda n: is_mod(n, nn.ReLU) or (n.op == "call_function" and n.target in (F.relu, torch.relu))  # noqa: E731
               or (n.op == "call_method" and n.target == "relu"))
    by_producer = {n.target: n for n in gm.graph.nodes if n.op == "call_module" and n.target in produces}
    done = set()
    for name, gi in produces.items():
        node = by_producer.get(name)
        consumers = [c for c, g in consumes.items() if g == gi]
        if node is None or len(consumers) != 1 or calls.count(name) != 1 or calls.count(consumers[0]) != 1:
            continue
        chain, cur, bn1, relu = [node], node, None, False
        while len(cur.users) == 1:
            (u,) = cur.users
            if u.args[0] is not cur or len(u.args) != 1 or u.kwargs:
                break
            if is_mod(u, nn.BatchNorm2d) and bn1 is None and not relu and calls.count(u.target) == 1:
                bn1 = u
            elif is_relu(u) and not relu:
                relu = True
            else:
                break
            chain.append(u)
            cur = u
        (u,) = cur.users if len(cur.users) == 1 else (None,)
        if u is None or u.op != "call_module" or u.target != consumers[0] or u.args[0] is not cur or len(u.args) != 1:
            continue
        chain.append(u)
        end, bn2 = u, None
        if len(u.users) == 1:
            (v,) = u.users
            if is_mod(v, nn.BatchNorm2d) and calls.count(v.target) == 1 and v.args[0] is u and len(v.args) == 1:
                end, bn2 = v, v
                chain.append(v)
        sub = f"if_branch_{gi}"
        gm.add_submodule(sub, _IfBranch(mods[name], mods[bn1.target] if bn1 else None, relu, mods[consumers[0]],
                                        mods[bn2.target] if bn2 else None, gate_of[gi], tau))
        with gm.graph.inserting_after(end):
            new = gm.graph.call_module(sub, (node.args[0],))
        end.replace_all_uses_with(new)
        for n in reversed(chain):
            gm.graph.erase_node(n)
        done.add(gi)
    gm.graph.lint()
    gm.recompile()
    return gm, done


class _OnnxDynamic(nn.Module):
    def __init__(self, model: nn.Module, tr: _Traced):
        super().__init__()
        self.model, self.tr = model, tr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.tr.idx.clear()
        self.tr.on.clear()
        return self.model(x)


def onnx_dynamic_model(model: nn.Module, graph: ChannelGraph, gates: GateSet, way: str = "gather") -> nn.Module:
    """The dynamic twin of a gated `model` in a form `torch.onnx.export` traces (TorchScript exporter,
    batch 1; `way` in `ONNX_WAYS`, see the module's docstring). Exact against the gated model in the
    threshold mode, input by input, as `dynamic_model` is."""
    if way not in ONNX_WAYS:
        raise ValueError(f"unknown way {way!r}; choose one of {ONNX_WAYS}")
    if way == "if" and gates.granularity != "layer":
        raise ValueError("the `if` way decides whole branches: it needs gates at layer granularity")
    twin, mods, consumes, produces, bns, gate_of = _twin(model, graph, gates)
    tr = _Traced()
    both = set(consumes) & set(produces)
    if both:
        raise ValueError(f"{sorted(both)[0]} both consumes and produces a dependent group: not supported in ONNX")
    convs = set(consumes) | set(produces)
    if way == "if":
        twin, whole = _whole_branches(twin, produces, consumes, gate_of, gates.tau)
        mods = {**mods, **dict(twin.named_modules())}
        convs = {c for c in convs if produces.get(c, consumes.get(c)) not in whole}
        folded = _bn_after(twin, convs) if convs else {}
        for name in convs:
            gi = produces.get(name)
            bn = folded.get(name)
            _replace(twin, name, _IfConv(mods[name], tr, consumes=consumes.get(name), produces=gi,
                                         gate=gate_of.get(gi), tau=gates.tau, bn=mods[bn] if bn else None))
            if bn:
                _replace(twin, bn, nn.Identity())
        return _OnnxDynamic(twin, tr).eval()
    for name in convs:
        gi = produces.get(name)
        _replace(twin, name, _GatherConv(mods[name], tr, consumes=consumes.get(name), produces=gi,
                                         gate=gate_of.get(gi), tau=gates.tau))
    if way == "gather":
        for name, gi in bns.items():
            _replace(twin, name, _GatherBN(mods[name], tr, gi))
    return _OnnxDynamic(twin, tr).eval()
