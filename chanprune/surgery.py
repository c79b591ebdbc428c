"""Apply a plan: physically remove channels (act). The model must be the dense architecture."""
from __future__ import annotations

import torch
from torch import nn

from ._channel_ops import ChannelBarrier, ChannelPart, ChannelSplit
from .errors import PlanError
from .graph import ChannelGraph, build_dependency_graph, find_groups
from .plan import PrunePlan

__all__ = ["apply_plan_", "ZeroChannels", "ConstantOutput", "EmptyPool"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _static_pad(conv: nn.Module, ndim: int) -> tuple[int, ...]:
    """Extra padding a conv subclass applies before convolving (EfficientNet's static same pad)."""
    static = getattr(conv, "static_padding", None)
    sp = getattr(static, "padding", None)
    if isinstance(sp, tuple) and len(sp) == 2 * ndim:  # (left, right, top, bottom): last dim first
        return tuple(sp[2 * (ndim - 1 - d)] + sp[2 * (ndim - 1 - d) + 1] for d in range(ndim))
    return (0,) * ndim


class ZeroChannels(nn.Module):
    """Stands in for a layer whose every output channel was removed: returns an empty (B, 0, ...)
    tensor of the right spatial size and computes nothing."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.is_conv = isinstance(layer, _CONV)
        if self.is_conv:
            nd = len(layer.kernel_size)
            pad = layer.padding
            if pad == "same":
                self.same = True
                pad = (0,) * nd
            else:
                self.same = False
                pad = (0,) * nd if pad == "valid" else tuple(pad)
            extra = _static_pad(layer, nd)
            self.geometry = [(layer.kernel_size[d], layer.stride[d], layer.dilation[d], 2 * pad[d] + extra[d])
                             for d in range(nd)]

    def out_spatial(self, x: torch.Tensor) -> list:
        if self.same:
            return list(x.shape[2:])
        return [(x.shape[2 + d] + p - dil * (k - 1) - 1) // s + 1 for d, (k, s, dil, p) in enumerate(self.geometry)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.is_conv:  # linear: (..., 0)
            return x.new_zeros((*x.shape[:-1], 0))
        return x.new_zeros((x.shape[0], 0, *self.out_spatial(x)))


class ConstantOutput(nn.Module):
    """Stands in for a conv/linear whose every input channel was removed: its output is its bias
    (or zero) everywhere, so it is emitted without computing anything.

    With `broadcast` set (`apply_plan_` sets it where the model's output is unchanged by it, such as
    a residual branch that ends in a batch norm and an add), a conv's stand-in returns the constant
    as (1, C, 1, ...) in eval mode and lets the consumer broadcast it: the exported graph then adds
    a constant instead of computing the shape, expanding and normalizing a full tensor (on
    ResNet-20 with one branch removed that was 0.25 ms of a 0.8 ms batch-1 run). In training mode
    it returns the full tensor (batch norm needs more than one value per channel there).
    """

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.is_conv = isinstance(layer, _CONV)
        out = layer.out_channels if self.is_conv else layer.out_features
        value = layer.bias.detach().clone() if layer.bias is not None else torch.zeros(out)
        self.register_buffer("value", value)
        self.geometry = ZeroChannels(layer) if self.is_conv else None
        self.broadcast = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.is_conv:
            return self.value.expand(*x.shape[:-1], self.value.numel()).contiguous()  # in-place ops may follow
        if self.broadcast and not self.training:
            return self.value.view(1, -1, *([1] * (x.dim() - 2)))
        spatial = self.geometry.out_spatial(x)
        return self.value.view(1, -1, *([1] * (x.dim() - 2))).expand(x.shape[0], self.value.numel(), *spatial).contiguous()


class EmptyPool(nn.Module):
    """Stands in for a pooling layer whose input has no channels left (onnxruntime rejects pooling
    an empty tensor): pools a single zero channel to learn the output size, returns it empty."""

    def __init__(self, pool: nn.Module):
        super().__init__()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probe = self.pool(x.new_zeros((1, 1, *x.shape[2:])))
        return x.new_zeros((x.shape[0], 0, *probe.shape[2:]))


_POOLS = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
          nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.MaxPool1d,
          nn.MaxPool2d, nn.MaxPool3d)


def _collapse_empty_pools_(model: nn.Module, example_inputs: torch.Tensor) -> list[str]:
    """Replace pooling layers that receive zero channels (found by one forward pass)."""
    empty: list[str] = []
    hooks = [m.register_forward_pre_hook(
        lambda mod, a, name=name: empty.append(name) if a and torch.is_tensor(a[0]) and a[0].dim() > 2 and a[0].shape[1] == 0 else None)
        for name, m in model.named_modules() if isinstance(m, _POOLS)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_inputs)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    for name in dict.fromkeys(empty):
        _set_module(model, name, EmptyPool(model.get_submodule(name)))
    return empty


@torch.no_grad()
def _broadcast_constants_(model: nn.Module, example_inputs: torch.Tensor) -> list[ConstantOutput]:
    """Let each conv `ConstantOutput` broadcast where the model's output stays the same (checked
    one stand-in at a time, on a random batch of two shaped like `example_inputs`)."""
    consts = [m for m in model.modules() if isinstance(m, ConstantOutput) and m.is_conv]
    if not consts:
        return []
    was_training = model.training
    model.eval()
    x = torch.randn(2, *example_inputs.shape[1:], generator=torch.Generator().manual_seed(0)).to(example_inputs)
    done = []
    try:
        ref = model(x)
        for m in consts:
            m.broadcast = True
            try:
                out = model(x)
                ok = (torch.is_tensor(out) and torch.is_tensor(ref) and out.shape == ref.shape
                      and torch.allclose(out, ref, rtol=1e-5, atol=1e-6))
            except RuntimeError:
                ok = False
            m.broadcast = ok
            if ok:
                done.append(m)
    finally:
        model.train(was_training)
    return done


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def _collapse_zero_width_(model: nn.Module) -> list[str]:
    """Replace layers left with zero channels by their exact, computation-free equivalents."""
    changed = []
    for name, m in list(model.named_modules()):
        new = None
        if isinstance(m, _CONV) and m.out_channels == 0:
            new = ZeroChannels(m)
        elif isinstance(m, _CONV) and m.in_channels == 0:
            new = ConstantOutput(m)
        elif isinstance(m, nn.Linear) and m.out_features == 0:
            new = ZeroChannels(m)
        elif isinstance(m, nn.Linear) and m.in_features == 0:
            new = ConstantOutput(m)
        elif isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.PReLU)) and _width(m) == 0:
            new = nn.Identity()
        if new is not None:
            _set_module(model, name, new)
            changed.append(name)
    return changed


def _width(m: nn.Module) -> int:
    for a in ("num_features", "num_channels", "num_parameters"):
        if hasattr(m, a):
            return getattr(m, a)
    return -1


def apply_plan_(model: nn.Module, plan: PrunePlan, example_inputs: torch.Tensor, *,
                graph: ChannelGraph | None = None) -> nn.Module:
    """Remove the channels `plan` drops from `model`, in place, and return it.

    Every drop of every group is mapped by torch-pruning (through residual adds, concatenations,
    flattens) on the dense model first; then each layer is cut once with the union of its indices,
    so no index goes stale. Layers left with no channels are replaced by `ZeroChannels` /
    `ConstantOutput` / `Identity`, which reproduce them exactly at no cost.

    Args:
        model: the dense model the plan was made for (modified in place).
        plan: the plan; validated against the model's groups first.
        example_inputs: an input batch for tracing.
        graph: the model's `find_groups` result, if already at hand.
    """
    import torch_pruning as tp

    graph = graph or find_groups(model, example_inputs)
    plan.validate(graph)
    DG = build_dependency_graph(model, example_inputs)
    mods = dict(model.named_modules())
    work: dict[tuple, list] = {}
    for gp in plan.groups:
        drop = sorted(set(range(gp.size)) - set(gp.keep))
        if not drop:
            continue
        root = mods[gp.name]
        pruner = DG.get_pruner_of_module(root)
        group = DG.get_pruning_group(root, pruner.prune_out_channels, drop)
        for item in group.items:
            key = (id(item.dep.target), item.dep.handler)
            entry = work.setdefault(key, [item.dep.target, item.dep, set()])
            entry[2].update(int(i) for i in item.idxs)
    dummy = (tp.ops._ElementWiseOp, tp.ops._ConcatOp, tp.ops._SplitOp, tp.ops._ReshapeOp, tp.ops._OutputOp,
             tp.ops._UnbindOp, tp.ops._ExpandOp, tp.ops._SliceOp, ChannelBarrier, ChannelSplit,
             ChannelPart)
    with torch.no_grad():
        for node, dep, idxs in work.values():
            target = node.module
            if isinstance(target, dummy):
                continue
            idxs = sorted(idxs)
            if isinstance(target, nn.Parameter):
                name = DG._param_to_name[target]
                parent_name, _, attr = name.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                setattr(parent, attr, dep(idxs))  # the Dependency sets the parameter's pruning dim
            else:
                try:
                    dep(idxs)
                except PlanError:
                    raise
                except Exception as e:
                    raise PlanError(f"cannot cut {DG._module2name.get(target, target)}: {type(e).__name__}: {e}") from e
    if _collapse_zero_width_(model):
        _collapse_empty_pools_(model, example_inputs)
        _broadcast_constants_(model, example_inputs)
    return model
