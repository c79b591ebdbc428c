"""Channel gates, one per channel group: the `Gate` interface, its registry, and the Gumbel and
trainable kinds.

The exactness rule: a group's mask multiplies its channels at the *input of every layer that
consumes them* (forward pre-hooks), so a channel that is off is invisible to the rest of the
network and can be cut from producers and consumers without changing the output.
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import Registry
from .graph import ChannelGraph

__all__ = ["Gate", "GumbelGate", "TrainableGate", "BlockGate", "DependentGate", "StaticDependentGate", "trainable_gate",
           "GateSet", "attach_gates", "register_gate", "make_gate", "gate_kind", "list_gates", "dependent_sites",
           "EVAL_MODES", "GRANULARITIES"]

EVAL_MODES = ("threshold", "stochastic")
# channel: a decision per channel; layer: one per gated group, for the inner group of a residual
# block the whole branch (AIG's granularity, Veit and Belongie 2018; the paper's Table 4)
GRANULARITIES = ("channel", "layer")


class Gate(nn.Module):
    """One group's gate: a keep-probability per channel and a way to draw hard masks.

    A kind implements `probs()`, `sample(batch)` (a hard 0/1 mask of shape (batch, C) whose
    gradient reaches the gate's parameters) and `config()` (the JSON settings that rebuild it;
    its parameters travel in the state dict). Inference modes (`mask`): "threshold" keeps
    p > tau, the same for every input; "stochastic" draws a sample.

    `input_dependent` gates (conditional computation) compute their mask from the input of the
    layer they gate, inside the forward pass; the data-independent ones are drawn once per forward
    pass, before the first layer runs, and shared by every consumer of the group.
    """

    kind: str = ""
    input_dependent: bool = False

    @property
    def num_channels(self) -> int:
        raise NotImplementedError

    def probs(self) -> torch.Tensor:
        raise NotImplementedError

    def margins(self) -> torch.Tensor:
        """Per channel, a score in the order of `probs()` that does not saturate: a polarized gate's
        probability is 1.0 or 0.0 in float32, so ranking by it ties. By default the log-odds of
        `probs()` in float64 (a kind with logits gives them unsaturated)."""
        p = self.probs().detach().double()
        return torch.logit(p, eps=1e-15)

    def sample(self, batch: int) -> torch.Tensor:
        raise NotImplementedError

    def config(self) -> dict:
        return {}

    def network_parameters(self) -> list[nn.Parameter]:
        """The parameters of a gate network (a data-dependent gate's MLP), which learn at their own
        step size; the rest of a gate's parameters are logits. None by default."""
        return []

    def init_from_scores_(self, scores: torch.Tensor) -> None:
        """Start from an importance score per channel (higher: keep), where the kind can."""
        raise NotImplementedError(f"gate kind {self.kind!r} cannot start from importance scores")

    def bound_(self, limit: float) -> None:
        """Keep the gate's logits within `limit` of the even odds (after each learning step), so that a
        polarized gate still has a gradient and can be reopened or closed later. Nothing by default."""

    def mask(self, mode: str, *, batch: int = 1, tau: float = 0.5) -> torch.Tensor:
        """The mask in inference mode `mode`: (1, C) for "threshold", (batch, C) for "stochastic"."""
        if mode == "threshold":
            return (self.probs() > tau).float().unsqueeze(0)
        if mode == "stochastic":
            return self.sample(batch)
        raise ValueError(f"unknown gate inference mode {mode!r}; choose one of {EVAL_MODES}")


_GATES: Registry[Gate] = Registry("gate kind", "kind")


def register_gate(kind: str):
    """Register a `Gate` class under `kind` (the value of `learn --gate`)."""
    return _GATES.register(kind)


def list_gates() -> list[str]:
    return _GATES.names()


def gate_kind(kind: str) -> type[Gate]:
    """The class registered under `kind`."""
    return _GATES.get(kind)


def make_gate(kind: str, num_channels: int, **config) -> Gate:
    return _GATES.get(kind)(num_channels, **config)


@register_gate("gumbel")
class GumbelGate(Gate):
    """Two logits (w0, w1) per channel; p = sigmoid(w1 - w0).

    `sample(b)` draws a hard Z in {0, 1} of shape (b, C) with the straight-through Gumbel-softmax
    trick at temperature 1 (Herrmann et al. 2020, 3.2): Z in the forward pass, the soft sample's
    gradient in the backward pass. Initialised nearly open, at the authors' logits [0.1, 4].
    """

    def __init__(self, num_channels: int, *, init: tuple[float, float] = (0.1, 4.0), temperature: float = 1.0):
        super().__init__()
        self.init, self.temperature = (float(init[0]), float(init[1])), float(temperature)
        self.logits = nn.Parameter(torch.tensor([self.init], dtype=torch.float32).repeat(num_channels, 1))

    @property
    def num_channels(self) -> int:
        return self.logits.shape[0]

    def probs(self) -> torch.Tensor:
        return torch.sigmoid(self.logits[:, 1] - self.logits[:, 0])

    def margins(self) -> torch.Tensor:
        return (self.logits[:, 1] - self.logits[:, 0]).detach().double()

    def sample(self, batch: int) -> torch.Tensor:
        logits = self.logits.unsqueeze(0).expand(batch, -1, -1)
        return F.gumbel_softmax(logits, tau=self.temperature, hard=True, dim=-1)[..., 1]

    def config(self) -> dict:
        return {"init": list(self.init), "temperature": self.temperature}

    @torch.no_grad()
    def bound_(self, limit: float) -> None:
        """The logit gap w1 - w0 clamped to [-limit, limit] about its midpoint (p unchanged inside).
        Unbounded, Adam's constant step drives polarized gaps past 20, where sigmoid' < 1e-8: the
        budget's gradient vanishes and no lambda can move the gate again."""
        mid = self.logits.mean(1)
        half = (self.logits[:, 1] - self.logits[:, 0]).clamp(-limit, limit) / 2
        self.logits[:, 0] = mid - half
        self.logits[:, 1] = mid + half

    @torch.no_grad()
    def init_from_scores_(self, scores: torch.Tensor, *, spread: float = 1.0) -> None:
        """Logit gap w1 - w0 = the authors' gap + `spread` x the z-score of log(score) in the group:
        still nearly open on average, the least important channels closest to the threshold."""
        s = torch.log(scores.float().clamp_min(1e-12))
        z = (s - s.mean()) / s.std().clamp_min(1e-6) if s.numel() > 1 else torch.zeros_like(s)
        gap = (self.init[1] - self.init[0]) + spread * z.clamp(-3, 3)
        self.logits[:, 0] = self.init[0]
        self.logits[:, 1] = self.init[0] + gap.to(self.logits.device)


def _sigmoid_slope(w: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(w)
    return s * (1 - s)


# Gradient-shaping functions K(w) of the trainable gate: its derivative is K (see TrainableGate).
SHAPES = {"sigmoid": _sigmoid_slope, "constant": torch.ones_like}


def trainable_gate(w: torch.Tensor, *, M: float, shape: str = "sigmoid") -> torch.Tensor:
    """Kim et al.'s trainable gate function of `w`: the value is exactly step(w) = 1[w > 0], the
    derivative is that of step(w) + s_M(w) * K(w), i.e. K(w) + s_M(w) * K'(w).

    s_M(w) = (M w - floor(M w)) / M is the sawtooth (period 1/M, values in [0, 1/M), slope 1 almost
    everywhere). The shaped term enters as `f - f.detach()`, which is exactly zero in the forward
    pass, while autograd differentiates `f` itself (floor's derivative is 0).
    """
    k = SHAPES[shape](w)
    shaped = (M * w - torch.floor(M * w)) / M * k
    return (w > 0).to(w.dtype) + (shaped - shaped.detach())


@register_gate("trainable")
class TrainableGate(Gate):
    """One real weight w per channel; the gate is the trainable gate function of w (Kim et al.,
    "Plug-in, Trainable Gate for Streamlining Arbitrary Neural Networks", AAAI 2020).

    The paper makes a step function trainable by adding a sawtooth of period 1/M times a
    gradient-shaping function K: g(w) = step(w) + s_M(w) K(w). Its value is within max|K|/M of the
    step and its derivative is K(w) + s_M(w) K'(w), which tends to K(w) as M grows.

    Here the value is the step itself, exactly 0 or 1, and the gradient is the derivative of the
    paper's g, computed by autograd (`trainable_gate`: the detach trick rather than a custom autograd
    function, so that K and its derivative come from one formula). An exactly binary forward pass
    means the gated network during learning *is* the network that freezing keeps and the cut
    reproduces (chanprune's parity rule compares the two), and that `probs()`, the step, is 1 for
    open and 0 for closed gates: `freeze` at any tau in [0, 1) keeps exactly the open ones, and
    `polarization` reports them all polarized, which is the truth for a gate whose training value
    is already binary.

    The gate is deterministic: `sample(b)` repeats one mask b times.

    Settings (chanprune's choices, not numbers taken from the paper):
        shape: "sigmoid", K(w) = sigmoid'(w): the gate back-propagates like a sigmoid gate
            p = sigmoid(w) while forwarding its hard threshold; "constant", K = 1, is the plain
            straight-through estimator.
        M: 1e5. The forward value does not depend on it; the gradient differs from K by at most
            max|K'| / M (1e-6 for the sigmoid shape).
        init: each w is drawn uniformly from (0, init], init = 2: every gate starts open, at
            spread-out margins. The spread is what lets the budget work with deterministic gates:
            from one common w every gate gets the same budget push, Adam (whose step does not depend
            on the gradient's scale) moves them in lockstep and they all close in the same step. On
            digits with ResNet-20 at target 0.5, w = 2 everywhere fell below a cost ratio of 0.03
            within a few epochs at every gate lr tried (0.01 to 1.0); w ~ U(0, 2] held 0.51 at the
            default gate lr 1.0 (tuned for the Gumbel logits, whose scale sigmoid'(w) shares), so the
            trainable gate needs no learning rate of its own. The draw uses torch's global
            generator, as nn.Linear's initialisation does.
    """

    def __init__(self, num_channels: int, *, M: float = 1e5, shape: str = "sigmoid", init: float = 2.0):
        super().__init__()
        if shape not in SHAPES:
            raise ValueError(f"unknown gradient shape {shape!r}; choose one of {', '.join(SHAPES)}")
        if not M > 0:
            raise ValueError(f"M must be > 0, got {M}")
        if not init > 0:
            raise ValueError(f"init must be > 0 (the gates start open), got {init}")
        self.M, self.shape, self.init = float(M), shape, float(init)
        self.weight = nn.Parameter(self.init * (1 - torch.rand(num_channels)))  # U(0, init]

    @property
    def num_channels(self) -> int:
        return self.weight.shape[0]

    def probs(self) -> torch.Tensor:
        return (self.weight > 0).to(self.weight.dtype)

    def margins(self) -> torch.Tensor:
        return self.weight.detach().double()

    def sample(self, batch: int) -> torch.Tensor:
        return trainable_gate(self.weight, M=self.M, shape=self.shape).unsqueeze(0).expand(batch, -1)

    def config(self) -> dict:
        return {"M": self.M, "shape": self.shape, "init": self.init}


@register_gate("dependent")
class DependentGate(Gate):
    """A data-dependent gate (conditional computation, Herrmann et al. 2020, section 3.3): the keep
    decision for each output channel of a layer is computed, per input, from that layer's input.

    The gate network is the paper's: a global average pool over the image, a 1d convolution over
    channels (kernel 1: a linear map) to `hidden` features, batch norm, ReLU, and a second 1d
    convolution to two logits per channel. Sampling is the straight-through Gumbel-softmax of the
    static gate. It starts nearly open: the last layer's weights are zero and its bias holds the
    static gate's initial logits [0.1, 4], so every channel begins at p = 0.98 whatever the input.

    It has no input-free decision: `probs()` is 1 for every channel (a static plan keeps them all;
    the dynamic model decides per input) and `sample`/`mask` need the layer's input
    (`sample_from`, `mask_from`). `GateSet` calls them from a pre-hook on the gated layer.
    """

    input_dependent = True

    def __init__(self, num_channels: int, *, in_channels: int, hidden: int | None = None,
                 init: tuple[float, float] = (0.1, 4.0), temperature: float = 1.0, granularity: str = "channel"):
        super().__init__()
        if in_channels < 1 or num_channels < 1:
            raise ValueError(f"a dependent gate needs channels in and out, got {in_channels} -> {num_channels}")
        if granularity not in GRANULARITIES:
            raise ValueError(f"unknown granularity {granularity!r}; choose one of {GRANULARITIES}")
        self.in_channels, self.temperature = int(in_channels), float(temperature)
        self.granularity = granularity
        self.hidden = int(hidden or max(16, in_channels // 4))
        self.init = (float(init[0]), float(init[1]))
        self.register_buffer("_size", torch.tensor(int(num_channels)), persistent=False)
        units = num_channels if granularity == "channel" else 1
        self.fc1 = nn.Linear(self.in_channels, self.hidden, bias=False)
        self.bn = nn.BatchNorm1d(self.hidden)
        self.fc2 = nn.Linear(self.hidden, 2 * units)
        with torch.no_grad():
            self.fc2.weight.zero_()
            self.fc2.bias.copy_(torch.tensor(self.init).repeat(units))

    @property
    def num_channels(self) -> int:
        return int(self._size)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, U, 2) logits from the layer input x (B, C_in, ...): U is the channel count, or 1 for
        layer granularity (one decision for the whole group: a residual block's branch)."""
        pooled = x.flatten(2).mean(-1) if x.dim() > 2 else x
        h = F.relu(self.bn(self.fc1(pooled)))
        return self.fc2(h).view(x.shape[0], -1, 2)

    def _channels(self, z: torch.Tensor) -> torch.Tensor:
        return z if z.shape[1] == self.num_channels else z.expand(-1, self.num_channels)

    def probs_from(self, x: torch.Tensor) -> torch.Tensor:
        l = self.logits(x)
        return self._channels(torch.sigmoid(l[..., 1] - l[..., 0]))

    def sample_from(self, x: torch.Tensor) -> torch.Tensor:
        return self._channels(F.gumbel_softmax(self.logits(x), tau=self.temperature, hard=True, dim=-1)[..., 1])

    def mask_from(self, x: torch.Tensor, mode: str, *, tau: float = 0.5) -> torch.Tensor:
        """(B, C) masks in inference mode `mode` (threshold at tau, or a stochastic draw)."""
        if mode == "threshold":
            return (self.probs_from(x) > tau).to(x.dtype)
        if mode == "stochastic":
            return self.sample_from(x)
        raise ValueError(f"unknown gate inference mode {mode!r}; choose one of {EVAL_MODES}")

    def probs(self) -> torch.Tensor:
        return torch.ones(self.num_channels, device=self.fc2.bias.device)

    def sample(self, batch: int) -> torch.Tensor:
        return torch.ones(batch, self.num_channels, device=self.fc2.bias.device)

    def config(self) -> dict:
        return {"in_channels": self.in_channels, "hidden": self.hidden, "init": list(self.init),
                "temperature": self.temperature, "granularity": self.granularity}

    def network_parameters(self) -> list[nn.Parameter]:
        return [*self.fc1.parameters(), *self.bn.parameters(), *self.fc2.parameters()]


@register_gate("static+dependent")
class StaticDependentGate(DependentGate):
    """Static pruning and conditional computation learned together: a data-independent Gumbel gate
    (`static`, one per channel, or per branch at layer granularity) times a data-dependent one.
    A channel runs for an input when both keep it. `probs()` is the static gate's: the static plan a
    cut would remove first; the dependent gate then decides per input among what is left. The
    budget counts each input's own cost, so both parts learn to meet it."""

    def __init__(self, num_channels: int, *, in_channels: int, hidden: int | None = None,
                 init: tuple[float, float] = (0.1, 4.0), temperature: float = 1.0, granularity: str = "channel"):
        super().__init__(num_channels, in_channels=in_channels, hidden=hidden, init=init, temperature=temperature,
                         granularity=granularity)
        self.static = GumbelGate(self.fc2.out_features // 2, init=init, temperature=temperature)

    def probs(self) -> torch.Tensor:
        return self._channels(self.static.probs().unsqueeze(0))[0]

    def margins(self) -> torch.Tensor:
        return self._channels(self.static.margins().unsqueeze(0))[0]

    def sample_from(self, x: torch.Tensor) -> torch.Tensor:
        return super().sample_from(x) * self._channels(self.static.sample(x.shape[0]))

    def mask_from(self, x: torch.Tensor, mode: str, *, tau: float = 0.5) -> torch.Tensor:
        z = super().mask_from(x, mode, tau=tau)  # stochastic: `sample_from` draws the static part too
        return z * (self.probs() > tau).to(x.dtype).unsqueeze(0) if mode == "threshold" else z

    def bound_(self, limit: float) -> None:
        self.static.bound_(limit)


class _OpenGate(Gate):
    """The gate of a group that a dependent gate set leaves static and open (a residual stream)."""

    def __init__(self, num_channels: int):
        super().__init__()
        self.register_buffer("_ones", torch.ones(num_channels), persistent=False)

    @property
    def num_channels(self) -> int:
        return self._ones.numel()

    def probs(self) -> torch.Tensor:
        return self._ones

    def sample(self, batch: int) -> torch.Tensor:
        return self._ones.unsqueeze(0).expand(batch, -1)


def dependent_sites(model: nn.Module, graph: ChannelGraph) -> dict[str, int]:
    """The groups a data-dependent gate can control, each with its gated layer's input channels.

    Such a group is a plain chain inside a block: one producing conv (not grouped), batch norms,
    and consuming convs or linears, nothing else (no residual add: the residual stream stays
    static, as in the paper). The gate sits on the producer and reads the producer's input."""
    mods = dict(model.named_modules())
    out = {}
    for g in graph.groups:
        if g.partition:
            continue
        producers = [s for s in g.sites if s.role == "out"]
        others = [s for s in g.sites if s.role != "out"]
        if len(producers) != 1:
            continue
        p = mods.get(producers[0].module)
        if not isinstance(p, nn.Conv2d) or p.groups != 1:
            continue
        ok = all((s.role == "chan" and isinstance(mods.get(s.module), nn.BatchNorm2d)) or
                 (s.role == "in" and isinstance(mods.get(s.module), (nn.Conv2d, nn.Linear))
                  and getattr(mods.get(s.module), "groups", 1) == 1) for s in others)
        if ok and any(s.role == "in" for s in others):
            out[g.name] = int(p.in_channels)
    return out


class BlockGate(Gate):
    """One gate per block of `block` channels: kept counts are multiples of the block by construction.

    Wraps a gate of any kind over ceil(C / block) blocks. `assign[c]` is channel c's block; by default
    consecutive channels, after `rank_(scores)` the channels ranked by an importance score (the top
    `block` channels form block 0, and so on), so a block holds channels of like importance. The
    last block holds the remainder when C is not a multiple of the block. `assign` is a buffer: it
    travels in the state dict, and a resumed or exported run rebuilds the same blocks.
    """

    input_dependent = False

    def __init__(self, inner: Gate, num_channels: int, block: int):
        super().__init__()
        if block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        self.inner, self.block = inner, block
        self.kind = inner.kind
        self.register_buffer("assign", torch.arange(num_channels) // block)

    @property
    def num_channels(self) -> int:
        return int(self.assign.numel())

    @property
    def num_blocks(self) -> int:
        return self.inner.num_channels

    def probs(self) -> torch.Tensor:
        return self.inner.probs()[self.assign]

    def margins(self) -> torch.Tensor:
        return self.inner.margins()[self.assign]

    def sample(self, batch: int) -> torch.Tensor:
        return self.inner.sample(batch)[:, self.assign]

    def mask(self, mode: str, *, batch: int = 1, tau: float = 0.5) -> torch.Tensor:
        return self.inner.mask(mode, batch=batch, tau=tau)[:, self.assign]

    def config(self) -> dict:
        return self.inner.config()

    def units(self) -> list[list[int]]:
        """The channels of each block."""
        out: list[list[int]] = [[] for _ in range(self.num_blocks)]
        for c, b in enumerate(self.assign.tolist()):
            out[b].append(c)
        return out

    def bound_(self, limit: float) -> None:
        self.inner.bound_(limit)

    def rank_(self, scores: torch.Tensor) -> None:
        """Blocks of channels ranked by `scores` (higher first); ties by index."""
        order = torch.argsort(scores.detach().float().cpu(), descending=True, stable=True)
        assign = torch.empty_like(self.assign)
        assign[order.to(assign.device)] = torch.arange(self.num_channels, device=assign.device) // self.block
        self.assign.copy_(assign)

    def init_from_scores_(self, scores: torch.Tensor) -> None:
        s = scores.detach().float().cpu()
        per_block = torch.zeros(self.num_blocks).index_add_(0, self.assign.cpu(), s)
        per_block /= torch.bincount(self.assign.cpu(), minlength=self.num_blocks).clamp(min=1)
        self.inner.init_from_scores_(per_block)


def blockable(group) -> bool:
    """Groups whose kept counts a block can align: not those with equal counts per part (grouped convs)."""
    return not group.partition


class GateSet(nn.Module):
    """The gates of one model, and the hooks that apply them.

    In training mode every forward draws one sample per example, shared by all consumers of a group.
    In eval mode the gates follow `mode` ("threshold" at `tau`, or "stochastic").
    `fix_(plan)` pins fixed keep-masks: the frozen gated model that a slim model must reproduce.
    `kind` and `config` choose the gate (a registered kind and its settings); `config["block"]`
    N > 1 gates blocks of N channels (`BlockGate`) in every group without parts, so that kept counts
    are multiples of N (or the whole group) by construction. `config["essential"]` names the groups
    that must keep at least one channel (`find_essential_`): where a sample or a threshold closes all
    of such a group, its most probable unit (channel or block) stays open.
    """

    def __init__(self, graph: ChannelGraph, *, kind: str = "gumbel", tau: float = 0.5, mode: str = "threshold",
                 config: dict | None = None):
        super().__init__()
        if not 0.0 <= tau <= 1.0:
            raise ValueError(f"tau must be in [0, 1], got {tau}")
        if mode not in EVAL_MODES:
            raise ValueError(f"unknown gate inference mode {mode!r}; choose one of {EVAL_MODES}")
        self.graph = graph
        self.names = [g.name for g in graph.groups]
        self.kind, self.config = kind, dict(config or {})
        settings = {k: v for k, v in self.config.items()
                    if k not in ("block", "essential", "dependent", "granularity", "layers")}
        self.block = int(self.config.get("block", 1))
        if self.block < 1:
            raise ValueError(f"block must be >= 1, got {self.block}")
        self.granularity = self.config.get("granularity", "channel")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"unknown granularity {self.granularity!r}; choose one of {GRANULARITIES}")

        dependent = dict(self.config.get("dependent") or {})
        if _GATES.get(kind).input_dependent and not dependent:
            raise ValueError(f"gate kind {kind!r} depends on the input: config['dependent'] must name the groups "
                             "it controls (dependent_sites)")
        # static gates at layer granularity: one gate over each of these groups, the others open
        layers = set(self.config.get("layers") or [])
        if self.granularity == "layer" and not _GATES.get(kind).input_dependent and not layers:
            raise ValueError("static gates at layer granularity: config['layers'] must name the groups they "
                             "gate whole (dependent_sites)")

        def gate(g):
            if _GATES.get(kind).input_dependent:
                if g.name not in dependent:
                    return _OpenGate(g.size)
                return make_gate(kind, g.size, in_channels=dependent[g.name], granularity=self.granularity,
                                 **settings)
            if self.granularity == "layer":
                return BlockGate(make_gate(kind, 1, **settings), g.size, g.size) if g.name in layers else _OpenGate(g.size)
            if self.block > 1 and blockable(g):
                return BlockGate(make_gate(kind, -(-g.size // self.block), **settings), g.size, self.block)
            return make_gate(kind, g.size, **settings)

        self.gates = nn.ModuleList(gate(g) for g in graph.groups)
        unknown = (set(self.config.get("essential", [])) | set(dependent) | layers) - set(self.names)
        if unknown:
            raise ValueError(f"group {sorted(unknown)[0]!r} is not a group of this graph")
        # per dependent gate: (group index, the module it gates: the group's producer)
        self._dependent = [(i, next(s.module for s in g.sites if s.role == "out"))
                           for i, (g, gate_) in enumerate(zip(graph.groups, self.gates)) if gate_.input_dependent]
        self.mode = mode
        self.tau = tau
        # True: the model trains under the gates' threshold decisions (data-dependent gates: each
        # input's own, from a gate network in eval mode), not samples (`learn --dependent-finetune`)
        self.deterministic = False
        self._fixed: list[torch.Tensor] | None = None
        self._z: list[torch.Tensor] | None = None
        self._handles: list = []
        self._sites = self._consumer_index(graph)

    @staticmethod
    def _consumer_index(graph: ChannelGraph) -> dict[str, list[tuple[int, torch.Tensor, torch.Tensor, int]]]:
        sites: dict[str, list] = {}
        for gi, g in enumerate(graph.groups):
            for s in g.consumers:
                sites.setdefault(s.module, []).append(
                    (gi, torch.tensor(s.layer_idxs, dtype=torch.long), torch.tensor(s.root_idxs, dtype=torch.long), s.channels))
        return sites

    # ------------------------------------------------------------------ attach / detach
    def attach_(self, model: nn.Module) -> "GateSet":
        """Register the hooks on `model` (the model the graph was found on, or a copy of it)."""
        self.detach_()
        mods = dict(model.named_modules())
        missing = [n for n in self._sites if n not in mods]
        if missing:
            raise ValueError(f"model has no module {missing[0]!r}: gates belong to another architecture")
        self._handles.append(model.register_forward_pre_hook(self._begin))
        for name, entries in self._sites.items():
            self._handles.append(mods[name].register_forward_pre_hook(self._make_hook(entries)))
        for gi, name in self._dependent:  # after the input masks: the gate reads the masked input
            if name not in mods:
                raise ValueError(f"model has no module {name!r}: gates belong to another architecture")
            self._handles.append(mods[name].register_forward_pre_hook(self._make_dependent_hook(gi)))
        return self

    def detach_(self) -> "GateSet":
        for h in self._handles:
            h.remove()
        self._handles = []
        return self

    # ------------------------------------------------------------------ modes
    def fix_(self, keep_masks: list[torch.Tensor] | None) -> "GateSet":
        """Pin per-group 0/1 keep masks (a frozen plan); None unpins."""
        if keep_masks is not None:
            if len(keep_masks) != len(self.gates):
                raise ValueError(f"expected {len(self.gates)} masks, got {len(keep_masks)}")
            keep_masks = [m.float().reshape(1, -1) for m in keep_masks]
        self._fixed = keep_masks
        return self

    def probs(self) -> list[torch.Tensor]:
        return [g.probs() for g in self.gates]

    def margins(self) -> list[torch.Tensor]:
        """Per group, `Gate.margins()`: the gates' order without float32's saturation."""
        return [g.margins() for g in self.gates]

    def units(self) -> list[list[list[int]] | None]:
        """Per group, the channel blocks that move together (None: each channel on its own)."""
        return [g.units() if isinstance(g, BlockGate) else None for g in self.gates]

    def bound_(self, limit: float | None) -> "GateSet":
        """Every gate's logits within `limit` (`Gate.bound_`); None or 0: unbounded."""
        if limit:
            for g in self.gates:
                g.bound_(float(limit))
        return self

    def rank_blocks_(self, scores: list[torch.Tensor]) -> "GateSet":
        """Form each group's blocks from channels ranked by `scores` (one tensor per group)."""
        for g, s in zip(self.gates, scores):
            if isinstance(g, BlockGate):
                g.rank_(s)
        return self

    def essential(self) -> list[bool]:
        """Per group: must it keep a channel (`find_essential_`)?"""
        names = set(self.config.get("essential", []))
        return [n in names for n in self.names]

    @torch.no_grad()
    def find_essential_(self, model: nn.Module, example_inputs: torch.Tensor) -> list[str]:
        """Mark the groups without which the output no longer depends on the input (a residual
        stream, the classifier's input): with only that group closed, two random inputs give the
        same output. Closing such a group leaves a constant network, so it keeps at least one unit.
        A residual branch's inner group is not one: the block becomes the identity. One forward pass
        of two inputs per group; `model` must carry these gates. Returns the names, also kept in
        `config["essential"]` (and so in the checkpoint)."""
        was_training, fixed, mode = model.training, self._fixed, self.mode
        x = torch.randn(2, *example_inputs.shape[1:], generator=torch.Generator().manual_seed(0))
        x = x.to(example_inputs.device, example_inputs.dtype)
        found = []
        try:
            model.eval()
            ones = [torch.ones(g.num_channels) for g in self.gates]
            self.fix_(ones)
            dense = model(x)
            spread = float((dense[0] - dense[1]).abs().max()) if torch.is_tensor(dense) else 0.0
            if spread > 0:  # relative to how much two inputs differ: random weights can shrink outputs to 1e-10
                for i, name in enumerate(self.names):
                    self.fix_([torch.zeros_like(m) if j == i else m for j, m in enumerate(ones)])
                    out = model(x)
                    if float((out[0] - out[1]).abs().max()) <= 1e-6 * spread:
                        found.append(name)
        finally:
            self._fixed, self.mode = fixed, mode
            model.train(was_training)
        self.config["essential"] = found
        return found

    def _floor_(self, z: list[torch.Tensor]) -> list[torch.Tensor]:
        """Open the most probable unit of an essential group in every row where all of it is closed
        (a constant added to the sample: the gradient on the sample is unchanged)."""
        for i, ess in enumerate(self.essential()):
            if not ess:
                continue
            empty = (z[i].detach().sum(dim=1, keepdim=True) == 0).to(z[i].dtype)
            if not bool(empty.any()):
                continue
            g = self.gates[i]
            with torch.no_grad():
                top = int(torch.argmax(g.probs().detach()))
                unit = (g.assign == g.assign[top]) if isinstance(g, BlockGate) else (
                    torch.arange(g.num_channels, device=z[i].device) == top)
            z[i] = z[i] + empty * unit.to(z[i].device, z[i].dtype).unsqueeze(0)
        return z

    @torch.no_grad()
    def threshold_masks(self, tau: float | None = None) -> list[torch.Tensor]:
        """Per group, the 0/1 mask of channels with p > tau (default: the gates' tau), essential
        groups floored as in a forward pass: what `freeze` keeps."""
        t = self.tau if tau is None else tau
        return [m.squeeze(0) for m in self._floor_([(p.detach() > t).float().unsqueeze(0) for p in self.probs()])]

    def current(self) -> list[torch.Tensor] | None:
        """The masks used by the last forward pass, (B or 1, C) per group (differentiable)."""
        return self._z

    def _begin(self, module, args):
        batch = args[0].shape[0] if args and torch.is_tensor(args[0]) and args[0].dim() > 0 else 1
        if self._fixed is not None:
            self._z = [m.to(_device(self.gates[i])) for i, m in enumerate(self._fixed)]
        elif module.training and not self.deterministic:
            self._z = self._floor_([g.sample(batch) for g in self.gates])
        else:
            mode = "threshold" if self.deterministic else self.mode
            with torch.no_grad():
                self._z = self._floor_([g.mask(mode, batch=batch, tau=self.tau) for g in self.gates])

    def _make_hook(self, entries):
        def hook(module, args):
            z = self._z
            if z is None or not args:
                return None
            x = args[0]
            channels = entries[0][3]
            b = max(z[gi].shape[0] for gi, *_ in entries)
            mask = x.new_ones(b, channels)
            for gi, li, ri, _ in entries:
                zg = z[gi].to(x.dtype)
                mask[:, li.to(x.device)] = zg[:, ri.to(x.device)].expand(b, -1)
            if isinstance(module, nn.Linear):
                mask = mask.view(b, *([1] * (x.dim() - 2)), channels)
            else:
                mask = mask.view(b, channels, *([1] * (x.dim() - 2)))
            return (x * mask, *args[1:])

        return hook


    def _make_dependent_hook(self, gi: int):
        gate = self.gates[gi]

        def hook(module, args):
            if self._z is None or not args:
                return None
            x = args[0]
            # the gate network's batch norm follows the model's mode, unless it decides as deployed
            training = module.training and not self.deterministic
            if gate.training != training:
                gate.train(training)
            if training:
                z = gate.sample_from(x)
            else:
                with torch.no_grad():
                    z = gate.mask_from(x, "threshold" if self.deterministic else self.mode, tau=self.tau)
            if self._fixed is not None:
                z = z * self._fixed[gi].to(z.device, z.dtype)
            self._z[gi] = z
            return None

        return hook

    @property
    def dependent(self) -> list[int]:
        """The indices of the groups whose gates depend on the input."""
        return [gi for gi, _ in self._dependent]


def _device(gate: Gate) -> torch.device:
    """Where a gate's tensors live (any kind: its first parameter or buffer)."""
    t = next(itertools.chain(gate.parameters(), gate.buffers()), None)
    return t.device if t is not None else torch.device("cpu")


def attach_gates(model: nn.Module, graph: ChannelGraph, **kwargs) -> GateSet:
    """One gate per group of `graph` (Gumbel unless `kind` says otherwise), hooked into `model`."""
    return GateSet(graph, **kwargs).attach_(model)
