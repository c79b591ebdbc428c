"""Channel groups: which channels must be kept or removed together, found by torch-pruning.

A `ChannelGroup` is one gate's worth of channels: the output channels of a root conv/linear and
every channel tied to them (residual adds, concat slices, depthwise pairs, batch norms). Each group
lists its *sites*: where its channels live in each layer, in that layer's own indices and in the
root's. Sites of role "in" are the consumers: the layers that mix channels, where the gate masks.
"""
from __future__ import annotations

import bisect
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from ._channel_ops import ChannelPart, channel_ops_graph
from .errors import UnsupportedModelError

__all__ = ["Site", "ChannelGroup", "ChannelGraph", "find_groups", "build_dependency_graph", "run_hooked"]

# Roles of a site: "in" (a channel-mixing layer's inputs: the gate masks here), "out" (a
# conv/linear's outputs), "dw" (a depthwise conv: channel in = channel out), "chan" (a per-channel
# layer such as batch norm), "param" (a free per-channel nn.Parameter such as a layer scale).


@dataclass
class Site:
    module: str
    role: str  # "in", "out", "dw", "chan" or "param" (above)
    layer_idxs: list[int]
    root_idxs: list[int]
    channels: int  # the layer's channel count along this dimension (dense)


@dataclass
class ChannelGroup:
    name: str  # the root module; its output channels are the gate's channels
    size: int
    sites: list[Site]
    # Equal kept counts are required in each part (grouped convolutions keep their group structure,
    # chunks split whatever width they get into equal parts).
    partition: list[list[int]] | None = None

    @property
    def consumers(self) -> list[Site]:
        return [s for s in self.sites if s.role == "in"]


@dataclass
class ChannelGraph:
    groups: list[ChannelGroup]
    heads: list[str]
    unsupported: list[dict] = field(default_factory=list)  # {"name", "reason"}
    ignored: list[str] = field(default_factory=list)

    def group(self, name: str) -> ChannelGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    @property
    def num_channels(self) -> int:
        return sum(g.size for g in self.groups)


def _grouped_conv_pruner():
    """torch-pruning's ConvPruner slices a grouped conv's inputs with one index list for every group,
    which is wrong unless the kept pattern repeats; this one gathers per group (equal counts)."""
    from torch_pruning.pruner import function as F

    class GroupedConvPruner(F.ConvPruner):
        def prune_in_channels(self, layer, idxs):
            if layer.groups == 1:
                return super().prune_in_channels(layer, idxs)
            g = layer.groups
            ig, og = layer.in_channels // g, layer.out_channels // g
            drop = set(int(i) for i in idxs)
            per = [[c - j * ig for c in range(j * ig, (j + 1) * ig) if c not in drop] for j in range(g)]
            counts = {len(p) for p in per}
            if len(counts) != 1:
                from .errors import PlanError

                raise PlanError(f"grouped conv with {g} groups must keep equal channels per group, got {sorted(len(p) for p in per)}")
            k = counts.pop()
            idx = torch.tensor([per[o // og] for o in range(layer.out_channels)], dtype=torch.long).reshape(layer.out_channels, k)
            w = layer.weight.detach()
            gather_idx = idx.view(layer.out_channels, k, *([1] * (w.dim() - 2))).expand(-1, -1, *w.shape[2:])
            layer.weight = nn.Parameter(torch.gather(w, 1, gather_idx.to(w.device)).contiguous(), requires_grad=layer.weight.requires_grad)
            layer.in_channels = g * k
            return layer

        prune_out_channels = F.ConvPruner.prune_out_channels

    return GroupedConvPruner()


def build_dependency_graph(model: nn.Module, example_inputs: torch.Tensor):
    """A torch-pruning DependencyGraph with a grouped-conv-exact pruner, in which channel shuffles
    are barriers no group crosses and chunks are sized and ordered as traced (`_channel_ops`); the
    model's mode is kept."""
    import torch_pruning as tp

    was_training = model.training
    DG = channel_ops_graph()
    DG.REGISTERED_PRUNERS[tp.ops.OPTYPE.CONV] = _grouped_conv_pruner()
    pruners = [p for p in (*DG.REGISTERED_PRUNERS.values(), *DG.CUSTOMIZED_PRUNERS.values()) if p is not None]
    DG._in_channel_pruning_fn = {p.prune_in_channels for p in pruners}
    DG._out_channel_pruning_fn = {p.prune_out_channels for p in pruners}
    try:
        with torch.enable_grad(), warnings.catch_warnings():
            # torch-pruning warns about free nn.Parameters (layer scales); it prunes them along the
            # channel dimension, which is what we want, and we report what we cannot handle.
            warnings.simplefilter("ignore")
            DG.build_dependency(model, example_inputs=example_inputs, verbose=False)
    except Exception as e:  # torch-pruning raises anything from asserts to ZeroDivisionError
        raise UnsupportedModelError(
            f"torch-pruning could not trace this model ({type(e).__name__}: {e}); "
            "data-dependent reshapes are not supported yet") from e
    finally:
        model.train(was_training)
    return DG


def find_heads(model: nn.Module, example_inputs: torch.Tensor) -> list[str]:
    """Conv/linear layers whose outputs reach the model output without passing another such layer.

    Their output channels are the predictions and are never gated (a conv classifier included).
    """
    producers: dict = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            hooks.append(m.register_forward_hook(
                lambda mod, i, o, name=name: producers.__setitem__(o.grad_fn, name) if torch.is_tensor(o) and o.grad_fn is not None else None))
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            out = model(example_inputs)
    except (RuntimeError, ValueError, IndexError) as e:
        from .errors import ChanpruneError

        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ChanpruneError(f"the model does not run on an input of shape {list(example_inputs.shape)}: "
                             f"{first[:300]}") from e
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    outs = _tensors(out)
    heads, seen, stack = [], set(), [t.grad_fn for t in outs if t.grad_fn is not None]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if fn in producers:
            if producers[fn] not in heads:
                heads.append(producers[fn])
            continue
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return heads


def run_hooked(model: nn.Module, x: torch.Tensor, handles: list) -> None:
    """One forward pass without autograd under the hooks whose `handles` are given; they are removed after."""
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()


def _tensors(out) -> list[torch.Tensor]:
    if torch.is_tensor(out):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    return []


def _classify(module, handler, DG) -> tuple[str | None, str | None]:
    """(role, unsupported reason) of one torch-pruning group item."""
    import torch_pruning as tp

    ops = tp.ops
    channel_op = DG.channel_ops.get(module)
    if channel_op is not None:  # a shuffle, chunk or split on channels, named where the model runs it
        return None, (None if channel_op.exact else channel_op.reason())  # an exact chunk: equal counts per part
    if isinstance(module, ChannelPart):
        return None, None  # index mapping only
    if isinstance(module, nn.Parameter):
        return "param", None
    if isinstance(module, ops._OutputOp):
        return None, "its channels reach the model output directly"
    if isinstance(module, (ops._ElementWiseOp, ops._ConcatOp, ops._ReshapeOp)):
        return None, None  # index mapping only; torch-pruning carries the indices through
    if isinstance(module, ops._SplitOp):
        return None, "split/chunk on channels: the split sizes are fixed in the model's code"
    if isinstance(module, (ops._UnbindOp, ops._ExpandOp, ops._SliceOp)):
        return None, f"{type(module).__name__[1:-2].lower()} on channels is not supported yet"
    is_in = DG.is_in_channel_pruning_fn(handler)
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        if module.transposed:
            return None, "transposed convolutions are not supported yet"
        if module.groups == module.out_channels and module.out_channels > 1 and module.groups == module.in_channels:
            return "dw", None
        if module.groups > 1 and module.groups == module.out_channels:
            return None, "depthwise conv with a channel multiplier is not supported yet"
        return ("in" if is_in and not DG.is_out_channel_pruning_fn(handler) else "out"), None
    if isinstance(module, nn.Linear):
        return ("in" if not DG.is_out_channel_pruning_fn(handler) else "out"), None
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d,
                           nn.InstanceNorm2d, nn.InstanceNorm3d, nn.PReLU)):
        return "chan", None
    if isinstance(module, nn.GroupNorm):
        if module.num_groups == module.num_channels:
            return "chan", None
        return None, "GroupNorm normalizes across channels: removing one changes the others"
    if isinstance(module, nn.LayerNorm):
        return None, "LayerNorm normalizes across channels: removing one changes the others"
    return None, f"{type(module).__name__} consumes channels in a way chanprune cannot cut exactly yet"


def find_groups(model: nn.Module, example_inputs: torch.Tensor, *, ignored: tuple[str, ...] = ()) -> ChannelGraph:
    """Find the gateable channel groups of `model` (decide only; the model is not changed).

    Args:
        model: the dense model.
        example_inputs: one input batch (shape and dtype matter, values do not).
        ignored: module names whose output channels stay ungated (the heads always are).
    """
    names = {m: n for n, m in model.named_modules()}
    for n in ignored:
        if n not in dict(model.named_modules()):
            raise ValueError(f"--ignore {n!r}: no module of that name in the model")
    heads = find_heads(model, example_inputs)
    DG = build_dependency_graph(model, example_inputs)
    skip = [model.get_submodule(n) for n in (*heads, *ignored)]
    groups, unsupported = [], []
    for tg in DG.get_all_groups(ignored_layers=skip, root_module_types=(nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
        root_mod = tg[0].dep.target.module
        root = names.get(root_mod, str(root_mod))
        sites, reasons, chunks = [], [], []
        for item in tg.items:
            mod = item.dep.target.module
            op = DG.channel_ops.get(mod)
            if op is not None and op.exact:  # a chunk: its parts keep equal counts (see _partition)
                chunks.append((op, [int(i) for i in item.idxs], [int(i) for i in item.root_idxs]))
            role, reason = _classify(mod, item.dep.handler, DG)
            if reason:
                # a channel op's reason says where the model runs it; other ops go by their graph node
                label = DG._module2name.get(mod) or (None if op is not None else item.dep.target.name)
                reasons.append(f"{label}: {reason}" if label else reason)
            if role is None:
                continue
            if role == "param":
                mname = DG._param_to_name.get(mod, "?")
                channels = mod.shape[item.dep.target.pruning_dim]
            else:
                mname = names[mod]
                channels = _channels(mod, role)
            sites.append(Site(mname, role, [int(i) for i in item.idxs], [int(i) for i in item.root_idxs], int(channels)))
        size = len(tg[0].idxs)
        if reasons:
            unsupported.append({"name": root, "reason": "; ".join(dict.fromkeys(reasons))})
            continue
        partition, reason = _partition(model, sites, chunks, size)
        if reason:
            unsupported.append({"name": root, "reason": reason})
            continue
        groups.append(ChannelGroup(root, size, _merge_sites(sites), partition))
    order = {n: i for i, n in enumerate(names.values())}
    groups.sort(key=lambda g: order.get(g.name, len(order)))  # network order, for people reading plans
    return ChannelGraph(groups, heads, unsupported, list(ignored))


def _channels(mod: nn.Module, role: str) -> int:
    if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return mod.in_channels if role == "in" else mod.out_channels
    if isinstance(mod, nn.Linear):
        return mod.in_features if role == "in" else mod.out_features
    if isinstance(mod, nn.PReLU):
        return mod.num_parameters
    if isinstance(mod, nn.GroupNorm):
        return mod.num_channels
    return getattr(mod, "num_features", 0)


def _merge_sites(sites: list[Site]) -> list[Site]:
    """One site per (module, role): torch-pruning can list a layer twice (e.g. the same add)."""
    merged: dict[tuple[str, str], Site] = {}
    for s in sites:
        key = (s.module, s.role)
        if key in merged:
            m = merged[key]
            seen = set(m.layer_idxs)
            for li, ri in zip(s.layer_idxs, s.root_idxs):
                if li not in seen:
                    m.layer_idxs.append(li)
                    m.root_idxs.append(ri)
                    seen.add(li)
        else:
            merged[key] = Site(s.module, s.role, list(s.layer_idxs), list(s.root_idxs), s.channels)
    return list(merged.values())


def _partition(model: nn.Module, sites: list[Site], chunks: list, size: int) -> tuple[list[list[int]] | None, str | None]:
    """Root-index parts that must keep equal counts: the conv groups of the grouped convs a group
    touches and the parts of the chunks it passes through (a chunk splits whatever width it gets
    into equal parts). Where several split it, their common refinement, whose parts must again be
    of one size and fall evenly into every split's parts."""
    splits: list[tuple[str, list[list[int]]]] = []
    for s in sites:
        if s.role not in ("in", "out"):
            continue
        mod = model.get_submodule(s.module)
        g = getattr(mod, "groups", 1)
        if g == 1:
            continue
        per = s.channels // g
        buckets: dict[int, list[int]] = {}
        for li, ri in zip(s.layer_idxs, s.root_idxs):
            buckets.setdefault(li // per, []).append(ri)
        p = sorted(sorted(b) for b in buckets.values())
        if len(buckets) != g or len({len(b) for b in p}) != 1:
            return None, f"{s.module}: a grouped conv sees this group unevenly"
        splits.append((s.module, p))
    for op, layer_idxs, root_idxs in chunks:
        off = op.part_offsets
        parts: list[list[int]] = [[] for _ in op.sizes]
        for li, ri in zip(layer_idxs, root_idxs):
            parts[bisect.bisect_right(off, li) - 1].append(ri)
        if len({len(p) for p in parts}) != 1 or sorted(r for p in parts for r in p) != list(range(size)):
            return None, (f"{op.detail} {op.location}: this group's channels fall unevenly into its parts, "
                          "so no cut keeps the parts equal")
        splits.append((f"{op.detail} {op.location}", sorted(sorted(p) for p in parts)))
    if not splits:
        return None, None
    if any(sorted(r for part in p for r in part) != list(range(size)) for _, p in splits):
        return None, f"{splits[0][0]}: sees only some of these channels, so equal counts per part cannot be kept"
    label: dict[int, tuple] = {}
    for _, p in splits:
        for j, part in enumerate(p):
            for r in part:
                label[r] = (*label.get(r, ()), j)
    atoms: dict[tuple, list[int]] = {}
    for r in sorted(label):
        atoms.setdefault(label[r], []).append(r)
    even = len({len(a) for a in atoms.values()}) == 1 and all(
        len({sum(1 for key in atoms if key[i] == j) for j in range(len(p))}) == 1 for i, (_, p) in enumerate(splits))
    if not even:
        names = " and ".join(dict.fromkeys(n for n, _ in splits))
        return None, f"{names} split these channels into parts that no equal-count cut fits"
    return sorted(atoms.values()), None
