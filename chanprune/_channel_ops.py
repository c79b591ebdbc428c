"""Ops on the channel axis that torch-pruning cannot follow: channel shuffles, chunks and splits.

torch-pruning follows channels through autograd's graph. There a channel shuffle (ShuffleNetV2's
`view(B, g, C/g, H, W) -> transpose(1, 2) -> view(B, C, H, W)`) is two views and a transpose: it
takes the transpose for an element-wise op and the 5-D views for flattens, and fails
(ZeroDivisionError) or maps the indices wrongly; `F.channel_shuffle` and `F.pixel_shuffle` it takes
for element-wise ops. A `chunk` and a `split` are the same `SplitBackward0` to it, although a chunk's
sizes follow the width it is given and a split's are fixed in the model's code, and with torch
2.x it sizes the parts from the layers they feed and pairs them with those layers in the order it
happened to find them.

So chanprune records these ops while torch-pruning traces the model (a `TorchFunctionMode` over
the very forward pass whose autograd graph torch-pruning reads), names each one after the module
that ran it, and hands torch-pruning a graph in which:
- a reshape or shuffle of the channel axis is a `ChannelBarrier`: a channel group may reach it
  but never crosses it, and `graph.find_groups` reports every group that reaches one, naming the
  op. The channels that do not reach a shuffle (ShuffleNetV2's branch interiors, its first and
  last convs) are gated as usual;
- a chunk or split is a `ChannelSplit` with its traced part sizes, and one `ChannelPart` node per
  part between it and the layers that read that part (autograd's edges say which). A chunk cuts
  exactly when every part keeps the same number of channels, which the group's partition asks for
  (as it does for grouped convolutions). Splits with fixed sizes, unequal chunks, and chunks whose
  parts cannot be told apart are barriers too.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["ChannelOp", "ChannelBarrier", "ChannelSplit", "ChannelPart", "channel_ops_graph"]

_RESHAPES = {"view", "reshape", "flatten", "unflatten"}
_SHUFFLES = {"channel_shuffle", "native_channel_shuffle", "pixel_shuffle", "pixel_unshuffle"}
_SPLITS = {"chunk", "split", "split_with_sizes", "tensor_split", "unbind"}
_PASS_THROUGH = ("Clone", "Transpose", "Permute")  # autograd nodes between the two views of a shuffle


@dataclass
class ChannelOp:
    """One call that reshapes, shuffles or splits the channel axis, as traced."""

    kind: str  # "shuffle", "reshape" (channels split into groups, merged, or moved into space), "chunk" or "split"
    where: str  # the innermost module running when the model called it ("" for the model's own forward)
    detail: str  # the call, with the traced shapes
    sizes: list[int] | None = None  # chunk/split: the channels of each part, in output order
    exact: bool = False  # a chunk that cuts exactly under equal kept counts per part
    why: str = ""  # why a chunk does not

    @property
    def location(self) -> str:
        return f"in {self.where}" if self.where else "in the model's forward"

    @property
    def part_offsets(self) -> list[int]:
        out = [0]
        for n in self.sizes or []:
            out.append(out[-1] + n)
        return out

    def reason(self) -> str:
        """Why a channel group that reaches this op is not gated."""
        if self.kind == "shuffle":
            return (f"channel shuffle {self.location} ({self.detail}): it interleaves the channels of the "
                    "tensors concatenated before it, so a cut on one side would need the same cut on the other")
        if self.kind == "reshape":
            return f"reshape of the channel axis {self.location} ({self.detail}): its sizes are fixed in the model's code"
        if self.kind == "chunk":
            return f"{self.detail} {self.location}: {self.why}"
        return f"{self.detail} {self.location}: the sizes it splits the channels into are fixed in the model's code"


class ChannelBarrier(nn.Module):
    """Stands in the dependency graph for a reshape or shuffle of the channel axis; no group crosses it.

    It knows its channels where a side is a channel axis (`in_channels` before a split into
    groups, `out_channels` after a merge, both for a shuffle), so that torch-pruning can still size
    the concatenations next to it.
    """

    def __init__(self, op: ChannelOp, in_channels: int | None, out_channels: int | None):
        super().__init__()
        self.op, self.in_channels, self.out_channels = op, in_channels, out_channels

    def __repr__(self) -> str:
        return f"ChannelBarrier({self.op.kind} {self.op.location})"


class _Recorder(TorchFunctionMode):
    """Records the channel ops of one forward pass, keyed by the autograd node of their output."""

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []  # the modules running, innermost last
        self.ops: dict = {}  # grad_fn -> ChannelOp
        self.channels: dict = {}  # grad_fn of a reshape or shuffle -> (channels in, channels out), None off the channel axis
        self.direction: dict = {}  # grad_fn of a reshape -> "split" or "merge"

    def forward(self, model: nn.Module, example_inputs):
        def enter(name):
            return lambda mod, args: self.stack.append(name)

        def leave(mod, args, out):
            self.stack.pop()  # and return None: a forward hook that returns a value replaces the output

        hooks = []
        for name, m in model.named_modules():
            if name:
                hooks += [m.register_forward_pre_hook(enter(name)), m.register_forward_hook(leave)]
        try:
            with self:
                out = model(example_inputs)
        finally:
            for h in hooks:
                h.remove()
            self.stack.clear()
        self._name_shuffles()
        return out

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        x = args[0] if args else None
        if torch.is_tensor(x) and x.dim() >= 2 and (name in _RESHAPES or name in _SHUFFLES or name in _SPLITS):
            where = self.stack[-1] if self.stack else ""
            if name in _SPLITS:
                self._record_split(name, x, args, kwargs, out, where)
            elif torch.is_tensor(out) and out.grad_fn is not None:
                self._record_reshape(name, x, out, where)
        return out

    def _record_reshape(self, name: str, x: torch.Tensor, out: torch.Tensor, where: str) -> None:
        c_in, c_out = int(x.shape[1]), int(out.shape[1]) if out.dim() >= 2 else None
        if name in _SHUFFLES:
            kind = "shuffle" if "channel" in name else "reshape"
            self.ops[out.grad_fn] = ChannelOp(kind, where, f"{name} {_shape(x.shape)} -> {_shape(out.shape)}")
            self.channels[out.grad_fn] = (c_in, c_out)
            return
        direction = _channel_reshape(tuple(x.shape), tuple(out.shape))
        if direction:
            self.ops[out.grad_fn] = ChannelOp("reshape", where, f"{name} {_shape(x.shape)} -> {_shape(out.shape)}")
            self.direction[out.grad_fn] = direction
            self.channels[out.grad_fn] = (c_in, None) if direction == "split" else (None, c_out)

    def _record_split(self, name, x, args, kwargs, out, where) -> None:
        dim = kwargs.get("dim", (args[1] if len(args) > 1 else 0) if name == "unbind" else (args[2] if len(args) > 2 else 0))
        if not isinstance(dim, int) or dim % x.dim() != 1 or not isinstance(out, (tuple, list)) or not out:
            return
        if not torch.is_tensor(out[0]) or out[0].grad_fn is None:
            return
        sizes = [int(t.shape[1]) if t.dim() == x.dim() else 1 for t in out]
        what = f"chunk({args[1] if len(args) > 1 else kwargs.get('chunks', len(out))})" if name == "chunk" else name
        self.ops[out[0].grad_fn] = ChannelOp("chunk" if name == "chunk" else "split", where,
                                             f"{what} of {x.shape[1]} channels into {sizes}", sizes)

    def _name_shuffles(self) -> None:
        """A split of the channel axis, a transpose or permute, and the merge back: one shuffle."""
        for fn, op in list(self.ops.items()):
            if self.direction.get(fn) != "merge":
                continue
            transposed, cur = False, fn
            for _ in range(4):
                nxt = [f for f, _ in cur.next_functions if f is not None]
                if len(nxt) != 1:
                    break
                cur = nxt[0]
                if self.direction.get(cur) == "split":
                    if transposed:
                        split = self.ops[cur]
                        detail = f"{split.detail}, transpose, {op.detail.split(' ')[0]} back"
                        for o in (op, split):
                            o.kind, o.where, o.detail = "shuffle", split.where, detail
                    break
                if not type(cur).__name__.startswith(_PASS_THROUGH):
                    break
                transposed = transposed or not type(cur).__name__.startswith("Clone")


def _shape(s) -> str:
    return "(" + ", ".join(str(int(d)) for d in s) + ")"


def _channel_reshape(a: tuple, b: tuple) -> str | None:
    """"split" when shape `b` splits `a`'s channel axis in two, (B, C, ...) -> (B, g, C/g, ...);
    "merge" for the way back; None for anything else (flattens too, which torch-pruning maps)."""
    if len(b) == len(a) + 1 and a[0] == b[0] and b[1] * b[2] == a[1] and b[3:] == a[2:] and b[1] > 1 and b[2] > 1:
        return "split"
    if len(a) == len(b) + 1 and a[0] == b[0] and a[1] * a[2] == b[1] and a[3:] == b[2:] and a[1] > 1 and a[2] > 1:
        return "merge"
    return None


class ChannelSplit(nn.Module):
    """Stands in the dependency graph for a chunk or split of the channel axis (`op`)."""

    def __init__(self, op: ChannelOp):
        super().__init__()
        self.op, self.in_channels, self.out_channels = op, sum(op.sizes), None

    def __repr__(self) -> str:
        return f"ChannelSplit({self.op.detail} {self.op.location})"


class ChannelPart(nn.Module):
    """One part of a `ChannelSplit` in the dependency graph, between the split and the layers that
    read that part: the index mappings stay in the order torch-pruning applies them (a
    concatenation's, then the split's, on the way back)."""

    def __init__(self, split: ChannelSplit, index: int):
        super().__init__()
        self.index, self.start = index, split.op.part_offsets[index]
        self.channels = self.in_channels = self.out_channels = split.op.sizes[index]

    def __repr__(self) -> str:
        return f"ChannelPart({self.index}: {self.channels} channels)"


def channel_ops_graph():
    """A torch-pruning `DependencyGraph` that records the channel ops of the forward pass it traces
    (`.channel_ops`: the graph node's module -> `ChannelOp`), turns reshapes and shuffles of the
    channel axis into `ChannelBarrier`s, and chunks and splits into `ChannelSplit`s with one
    `ChannelPart` per part, sized and ordered as traced."""
    import torch_pruning as tp
    from torch_pruning.dependency.index_mapping import _SplitIndexMapping
    from torch_pruning.dependency.node import Node

    class SizedPruner(tp.ops.DummyPruner):
        """Index mapping only; the channels a node holds, for torch-pruning to size concatenations."""

        def get_in_channels(self, layer):
            return layer.in_channels

        def get_out_channels(self, layer):
            return layer.out_channels

    class ChannelOpsGraph(tp.DependencyGraph):
        def __init__(self):
            super().__init__()
            for cls in (ChannelBarrier, ChannelSplit, ChannelPart):
                self.register_customized_layer(cls, SizedPruner())
            self.channel_ops: dict = {}

        def _trace(self, model, example_inputs, forward_fn, output_transform):
            if forward_fn is not None:
                raise NotImplementedError("the channel-op graph traces the model's own forward")
            recorder = _Recorder()
            module2node = super()._trace(model, example_inputs, recorder.forward, output_transform)
            ops_free = (tp.ops._ReshapeOp, tp.ops._ElementWiseOp, tp.ops._SplitOp)  # nodes of no module
            marked = {}
            for module, node in module2node.items():
                op = recorder.ops.get(node.grad_fn)
                if op is not None and isinstance(module, ops_free):
                    if op.kind in ("shuffle", "reshape"):
                        module = ChannelBarrier(op, *recorder.channels[node.grad_fn])
                    else:
                        module = ChannelSplit(op)
                    node.module, node.module_class, node.type = module, type(module), tp.ops.OPTYPE.CUSTOMIZED
                    self.channel_ops[module] = op
                marked[module] = node
                if isinstance(module, ChannelSplit):
                    for part in _insert_parts_(node, Node):
                        marked[part.module] = part
            return marked

        def _build_dependency(self, module2node):
            super()._build_dependency(module2node)
            for node in module2node.values():
                if isinstance(node.module, ChannelBarrier) or (isinstance(node.module, ChannelSplit) and not node.module.op.exact):
                    node.dependencies = []  # reached as one item and reported, never crossed
                elif isinstance(node.module, ChannelSplit):
                    for dep in node.dependencies:
                        if isinstance(dep.target.module, ChannelPart):
                            part = dep.target.module
                            dep.index_mapping[0] = _SplitIndexMapping([part.start, part.start + part.channels], reverse=False)
                elif isinstance(node.module, ChannelPart):
                    part = node.module
                    for dep in node.dependencies:
                        if isinstance(dep.target.module, ChannelSplit):
                            dep.index_mapping[0] = _SplitIndexMapping([part.start, part.start + part.channels], reverse=True)

    return ChannelOpsGraph()


def _insert_parts_(node, Node) -> list:
    """Put a `ChannelPart` node between the split `node` and each layer that reads a part, one per
    part (shared by the layers that read it); autograd's edges say which part each layer reads.
    A chunk whose parts cannot all be told apart this way stays unsupported."""
    split: ChannelSplit = node.module
    op = split.op
    parts: dict[int, object] = {}
    unknown = []
    for out in dict.fromkeys(node.outputs):
        nrs = [nr for fn, nr in getattr(out.grad_fn, "next_functions", ()) if fn is node.grad_fn]
        slots = [i for i, n in enumerate(out.inputs) if n is node]
        if len(nrs) != len(slots) or not nrs:
            unknown.append(out)
            continue
        for i, nr in zip(slots, nrs):
            if nr not in parts:
                parts[nr] = Node(module=ChannelPart(split, nr), grad_fn=node.grad_fn)
                parts[nr].type = node.type
                parts[nr].add_input(node)
            out.inputs[i] = parts[nr]
            parts[nr].add_output(out)
    node.outputs = [parts[nr] for nr in sorted(parts)] + [o for o in node.outputs if o in unknown]
    if op.kind == "chunk":
        if unknown:
            op.why = "chanprune cannot tell which of its parts each layer reads"
        elif len(set(op.sizes)) != 1:
            op.why = "its parts are unequal, so no cut keeps them in proportion"
        else:
            op.exact = True
    return list(parts.values())
