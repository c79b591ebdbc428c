import copy

import pytest
import torch
from torch import nn

from chanprune.cost import ChannelsCost, FlopsCost, list_costs, make_cost, register_cost
from chanprune.freeze import random_plan
from chanprune.graph import find_groups
from chanprune.measure import count_flops
from chanprune.surgery import apply_plan_
from chanprune.zoo import build_model
from tests import nets

X = torch.randn(1, 3, 16, 16)


def test_fvcore_conv_closed_form():
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=False)
    assert count_flops(conv, torch.zeros(1, 4, 8, 8)).total == 6 * 8 * 8 * 4 * 9
    grouped = nn.Conv2d(4, 6, 3, padding=1, groups=2, bias=False)
    assert count_flops(grouped, torch.zeros(1, 4, 8, 8)).total == 6 * 8 * 8 * 2 * 9
    assert count_flops(nn.Linear(5, 7), torch.zeros(2, 5)).total == 2 * 5 * 7


def test_chain_cost_is_bilinear_in_kept_channels():
    model = nets.Chain().eval()
    graph = find_groups(model, X)
    cm = FlopsCost(model, X, graph)
    assert cm.gated_fraction == pytest.approx(1.0)
    z = [torch.ones(g.size) for g in graph.groups]
    assert float(cm.predict(z)) == pytest.approx(cm.dense())
    mid = next(i for i, g in enumerate(graph.groups) if g.name == "features.1.0")
    z[mid] = torch.zeros(16)
    z[mid][:4] = 1
    # conv 8->16 (8x8 out, 3x3): 8*16*64*9 -> a quarter; conv 16->12: a quarter; bn 16 ch: a quarter
    saved = 0.75 * (8 * 16 * 64 * 9 + 16 * 12 * 64 * 9 + 2 * 16 * 64)
    assert float(cm.predict(z)) == pytest.approx(cm.dense() - saved)


@pytest.mark.parametrize("name", list(nets.NETS))
def test_predicted_equals_fvcore_on_tiny_nets(name):
    model = nets.NETS[name]().eval()
    graph = find_groups(model, X)
    cm = FlopsCost(model, X, graph)
    for seed in range(3):
        plan = random_plan(graph, keep=0.2 + 0.3 * seed, seed=seed)
        slim = apply_plan_(copy.deepcopy(model), plan, X, graph=graph)
        assert cm.plan_cost(plan) == pytest.approx(count_flops(slim, X).total, rel=5e-3)


class _NormAct(nn.BatchNorm2d):
    """A batch norm that holds its activation, as timm's BatchNormAct2d does."""

    def __init__(self, n):
        super().__init__(n)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(super().forward(x))


def test_a_batch_norm_with_children_is_still_gated():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), _NormAct(8), nn.Conv2d(8, 6, 3), _NormAct(6),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)).eval()
    graph = find_groups(model, X)
    cm = FlopsCost(model, X, graph)
    assert cm.gated_fraction == pytest.approx(1.0)
    plan = random_plan(graph, keep=0.5, seed=0)
    slim = apply_plan_(copy.deepcopy(model), plan, X, graph=graph)
    assert cm.plan_cost(plan) == pytest.approx(count_flops(slim, X).total, rel=1e-6)


@pytest.mark.parametrize("arch", ["resnet20", "mobilenet_v2", "densenet121", "efficientnet_b0"])
def test_predicted_equals_fvcore_on_zoo_models(arch):
    model = build_model(arch, num_classes=10)
    x = torch.randn(1, 3, 32, 32)
    graph = find_groups(model, x)
    cm = FlopsCost(model, x, graph)
    for seed in range(2):
        plan = random_plan(graph, keep=0.3 + 0.4 * seed, seed=seed)
        slim = apply_plan_(copy.deepcopy(model), plan, x, graph=graph)
        assert cm.plan_cost(plan) == pytest.approx(count_flops(slim, x).total, rel=5e-3)


def test_cost_is_differentiable_per_example():
    model = nets.Residual().eval()
    graph = find_groups(model, X)
    cm = FlopsCost(model, X, graph)
    z = [torch.full((4, g.size), 0.5, requires_grad=True) for g in graph.groups]
    f = cm.ratio_of(z)
    assert f.shape == (4,)
    f.sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in z)


@pytest.mark.parametrize("arch", ["resnet18", "resnet20", "mobilenet_v2", "vgg11_bn", "densenet121", "efficientnet_lite0"])
def test_fvcore_agrees_with_torch_flop_counter(arch):
    """fvcore's last release is from 2022: hold its conv/linear count to torch's own counter
    (which counts a multiply-add as 2 FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(arch, num_classes=10)
    x = torch.randn(1, 3, 32, 32)
    report = count_flops(model, x)
    fv = sum(v for k, v in report.by_operator.items() if k in ("conv", "linear", "addmm", "matmul", "mm", "bmm"))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    assert fv == counter.get_total_flops() // 2


def test_cost_registry_builds_by_name_and_refuses_duplicates():
    model = nets.Residual().eval()
    graph = find_groups(model, X)
    assert {"flops", "channels"} <= set(list_costs())
    flops = make_cost("flops", model, X, graph)
    assert isinstance(flops, FlopsCost) and flops.name == "flops"
    assert flops.describe()["name"] == "flops" and flops.describe()["dense"] == flops.dense()
    with pytest.raises(ValueError, match="flops"):
        make_cost("no-such-cost", model, X, graph)
    with pytest.raises(ValueError, match="already registered"):
        register_cost("flops")(FlopsCost)


def test_channels_cost_is_the_share_of_gated_channels_kept():
    model = nets.Residual().eval()
    graph = find_groups(model, X)
    cost = make_cost("channels", model, X, graph)
    assert isinstance(cost, ChannelsCost) and cost.dense() == graph.num_channels
    plan = random_plan(graph, keep=0.5, seed=1)
    assert cost.ratio(plan) == pytest.approx(plan.kept_channels / plan.total_channels)
    z = [torch.zeros(3, g.size) for g in graph.groups]
    z[0][1] = 1.0  # the second example keeps all of group 0
    assert cost.ratio_of(z).tolist() == pytest.approx([0.0, graph.groups[0].size / graph.num_channels, 0.0])
    assert cost.floor() == 0.0
