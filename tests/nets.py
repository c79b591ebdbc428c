"""Tiny nets, one per graph shape the surgeon must cut exactly (fvcore's ThreeNet, Torch-Pruning's
test_concat). Each builder takes keyword-only `num_classes`; inputs are (N, 3, 16, 16)."""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


def _cbr(cin, cout, k=3, s=1, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Chain(nn.Module):
    """conv-bn-relu chain, linear head."""

    def __init__(self, *, num_classes=5, in_channels=3):
        super().__init__()
        self.features = nn.Sequential(_cbr(in_channels, 8), _cbr(8, 16, s=2), _cbr(16, 12))
        self.fc = nn.Linear(12, num_classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


class Residual(nn.Module):
    """Two residual adds sharing one stream: the stream's channels form one group."""

    def __init__(self, *, num_classes=5):
        super().__init__()
        self.stem = _cbr(3, 8)
        self.b1 = nn.Sequential(_cbr(8, 6), nn.Conv2d(6, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8))
        self.b2 = nn.Sequential(_cbr(8, 10), nn.Conv2d(10, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8))
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.b1(x))
        x = F.relu(x + self.b2(x))
        return self.fc(x.mean((2, 3)))


class Concat(nn.Module):
    """Two branches concatenated; a conv consumes the concat (index mapping through cat)."""

    def __init__(self, *, num_classes=5):
        super().__init__()
        self.a = _cbr(3, 6)
        self.b = _cbr(3, 4, k=1)
        self.mix = _cbr(10, 8)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.mix(torch.cat([self.a(x), self.b(x)], 1)).mean((2, 3)))


class Depthwise(nn.Module):
    """Inverted residual: expand 1x1 -> depthwise 3x3 -> project 1x1, with a residual add."""

    def __init__(self, *, num_classes=5):
        super().__init__()
        self.stem = _cbr(3, 8)
        self.expand = _cbr(8, 24, k=1)
        self.dw = _cbr(24, 24, groups=24)
        self.project = nn.Sequential(nn.Conv2d(24, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.project(self.dw(self.expand(x)))
        return self.fc(x.mean((2, 3)))


class Grouped(nn.Module):
    """A ResNeXt-style grouped conv (4 groups) between two 1x1 convs."""

    def __init__(self, *, num_classes=5):
        super().__init__()
        self.a = _cbr(3, 16, k=1)
        self.g = _cbr(16, 16, groups=4)
        self.b = _cbr(16, 8, k=1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.b(self.g(self.a(x))).mean((2, 3)))


class FlattenHead(nn.Module):
    """A linear head on flattened feature maps (each channel is H*W inputs of the linear)."""

    def __init__(self, *, num_classes=5):
        super().__init__()
        self.features = nn.Sequential(_cbr(3, 8, s=2), _cbr(8, 6, s=2))
        self.hidden = nn.Linear(6 * 4 * 4, 20)
        self.fc = nn.Linear(20, num_classes)

    def forward(self, x):
        return self.fc(F.relu(self.hidden(self.features(x).flatten(1))))


class ConvHead(nn.Module):
    """A conv (not a linear) as the classifier, as in SqueezeNet."""

    def __init__(self, *, num_classes=5):
        super().__init__()
        self.features = nn.Sequential(_cbr(3, 8), _cbr(8, 12))
        self.classifier = nn.Conv2d(12, num_classes, 1)

    def forward(self, x):
        return self.classifier(self.features(x)).mean((2, 3))


class SqueezeExcite(nn.Module):
    """A squeeze-and-excitation multiply on the expanded channels."""

    def __init__(self, *, num_classes=5):
        super().__init__()
        self.stem = _cbr(3, 16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(16, 4, 1)
        self.fc2 = nn.Conv2d(4, 16, 1)
        self.out = _cbr(16, 8, k=1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = x * torch.sigmoid(self.fc2(F.relu(self.fc1(self.pool(x)))))
        return self.fc(self.out(x).mean((2, 3)))


class LayerScale(nn.Module):
    """A block with a free per-channel parameter (ConvNeXt's layer scale) on a residual branch."""

    def __init__(self, *, num_classes=5):
        super().__init__()
        self.stem = _cbr(3, 8)
        self.branch = nn.Sequential(_cbr(8, 12), nn.Conv2d(12, 8, 1))
        self.gamma = nn.Parameter(torch.rand(1, 8, 1, 1) + 0.5)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.gamma * self.branch(x)
        return self.fc(x.mean((2, 3)))


class PermuteLayerNorm(nn.Module):
    """permute -> LayerNorm -> Linear inside a block (ConvNeXt): the LayerNorm's channels cannot be
    cut exactly and must be reported; the MLP's hidden channels can."""

    def __init__(self, *, num_classes=5):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1)
        self.norm = nn.LayerNorm(8)
        self.mlp1 = nn.Linear(8, 32)
        self.mlp2 = nn.Linear(32, 8)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.stem(x)
        y = self.mlp2(F.gelu(self.mlp1(self.norm(x.permute(0, 2, 3, 1))))).permute(0, 3, 1, 2)
        return self.fc((x + y).mean((2, 3)))


def channel_shuffle(x, groups):
    """ShuffleNetV2's shuffle, as torchvision writes it."""
    b, c, h, w = x.shape
    x = x.view(b, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(b, c, h, w)


class Shuffle(nn.Module):
    """ShuffleNetV2 in small: a stride-2 block whose two branches both read the stem, then a stride-1
    block that chunks the channels in two and transforms one half; each block concatenates and
    shuffles. The shuffled channels stay ungated; the stem's and each branch's inner channels, and
    the last conv's, are gated."""

    def __init__(self, *, num_classes=5):
        super().__init__()
        self.stem = _cbr(3, 8)
        self.left = nn.Sequential(nn.Conv2d(8, 8, 3, 2, 1, groups=8, bias=False), nn.BatchNorm2d(8), _cbr(8, 4, k=1))
        self.right = nn.Sequential(_cbr(8, 6, k=1), nn.Conv2d(6, 6, 3, 2, 1, groups=6, bias=False), nn.BatchNorm2d(6),
                                   _cbr(6, 4, k=1))
        self.inner = nn.Sequential(_cbr(4, 6, k=1), nn.Conv2d(6, 6, 3, 1, 1, groups=6, bias=False), nn.BatchNorm2d(6),
                                   _cbr(6, 4, k=1))
        self.last = _cbr(8, 12, k=1)
        self.fc = nn.Linear(12, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = channel_shuffle(torch.cat([self.left(x), self.right(x)], 1), 2)
        a, b = x.chunk(2, dim=1)
        x = channel_shuffle(torch.cat([a, self.inner(b)], 1), 2)
        return self.fc(self.last(x).mean((2, 3)))


class Chunk(nn.Module):
    """A conv's channels chunked in two, as in YOLOv8's C2f: the second half goes through a conv and,
    with the first, straight into the concatenation after it (one part read by two layers, one
    layer reading both parts, in reverse order). A chunk splits whatever width it gets into equal
    parts, so the conv keeps equal counts in both halves."""

    def __init__(self, *, num_classes=5):
        super().__init__()
        self.stem = _cbr(3, 8)
        self.b = _cbr(4, 6)
        self.mix = _cbr(14, 8, k=1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        a, b = self.stem(x).chunk(2, dim=1)
        return self.fc(self.mix(torch.cat([self.b(b), b, a], 1)).mean((2, 3)))


class FixedSplit(nn.Module):
    """A split whose sizes are written in the code: cutting the conv before it would change them."""

    def __init__(self, *, num_classes=5):
        super().__init__()
        self.stem = _cbr(3, 8)
        self.b = _cbr(5, 6)
        self.fc = nn.Linear(3 + 6, num_classes)

    def forward(self, x):
        a, b = self.stem(x).split([3, 5], dim=1)
        return self.fc(torch.cat([a, self.b(b)], 1).mean((2, 3)))


class ModuleShuffle(nn.Module):
    """torch's own `nn.ChannelShuffle` between two convs."""

    def __init__(self, *, num_classes=5):
        super().__init__()
        self.a = _cbr(3, 8)
        self.shuffle = nn.ChannelShuffle(2)
        self.b = _cbr(8, 6)
        self.fc = nn.Linear(6, num_classes)

    def forward(self, x):
        return self.fc(self.b(self.shuffle(self.a(x))).mean((2, 3)))


class HiddenMix(nn.Module):
    """Mixes channels with a functional op no module owns (centring over channels): gating at the
    consumers misses it, so the slim model cannot match. `check` must say NOT EXACT."""

    def __init__(self, *, num_classes=5):
        super().__init__()
        self.a = _cbr(3, 8)
        self.b = _cbr(8, 6)
        self.c = _cbr(6, 6)
        self.fc = nn.Linear(6, num_classes)

    def forward(self, x):
        y = self.a(x)
        y = y - y.mean(1, keepdim=True)
        return self.fc(self.c(self.b(y)).mean((2, 3)))


NETS = {
    "chain": Chain, "residual": Residual, "concat": Concat, "depthwise": Depthwise, "grouped": Grouped,
    "flatten_head": FlattenHead, "conv_head": ConvHead, "squeeze_excite": SqueezeExcite,
    "layer_scale": LayerScale, "permute_layernorm": PermuteLayerNorm, "shuffle": Shuffle, "chunk": Chunk,
}


def chain(num_classes=5):
    return Chain(num_classes=num_classes)


def gray_chain(num_classes=5):
    """A user factory whose stem takes one channel, and that takes no `in_channels`."""
    return Chain(num_classes=num_classes, in_channels=1)


def hidden_mix(num_classes=5):
    return HiddenMix(num_classes=num_classes)


def not_a_model(num_classes=5):
    return "this is not a module"


def slow_bn_chain(num_classes=5):
    """`chain` with TensorFlow-style batch norms (momentum 0.01, as EfficientNet-Lite's)."""
    m = Chain(num_classes=num_classes)
    for b in m.modules():
        if isinstance(b, nn.BatchNorm2d):
            b.momentum = 0.01
    return m
