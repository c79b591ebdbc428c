import copy

import pytest
import torch

from chanprune.check import collapsible_groups, perturb_batchnorm_
from chanprune.errors import PlanError
from chanprune.freeze import random_plan
from chanprune.gates import attach_gates
from chanprune.graph import find_groups
from chanprune.plan import GroupPlan, PrunePlan
from chanprune.surgery import ConstantOutput, EmptyPool, ZeroChannels, apply_plan_
from tests import nets

X = torch.randn(3, 3, 16, 16)


def gated_and_slim(model, plan, graph, x=X):
    slim = copy.deepcopy(model)
    gates = attach_gates(model, graph).fix_(plan.keep_masks(graph))
    with torch.no_grad():
        gated = model(x)
    gates.detach_()
    apply_plan_(slim, plan, x, graph=graph)
    with torch.no_grad():
        return gated, slim(x), slim


@pytest.mark.parametrize("name", list(nets.NETS))
@pytest.mark.parametrize("keep", [0.25, 0.5, 0.9])
def test_slim_equals_gated(name, keep):
    model = perturb_batchnorm_(nets.NETS[name]().eval())
    graph = find_groups(model, X)
    plan = random_plan(graph, keep=keep, seed=3)
    gated, slim_out, slim = gated_and_slim(model, plan, graph)
    torch.testing.assert_close(slim_out, gated, atol=1e-5, rtol=1e-4)
    if plan.kept_channels < plan.total_channels:
        assert sum(p.numel() for p in slim.parameters()) < sum(p.numel() for p in model.parameters())


def test_whole_residual_branch_gated_off_collapses_exactly():
    model = perturb_batchnorm_(nets.Residual().eval())
    graph = find_groups(model, X)
    zero = collapsible_groups(model, graph, X, limit=2)
    assert len(zero) >= 1
    plan = random_plan(graph, keep=0.5, seed=0, zero=tuple(zero))
    assert len(plan.zero_width_groups) >= 1
    gated, slim_out, slim = gated_and_slim(model, plan, graph)
    torch.testing.assert_close(slim_out, gated, atol=1e-5, rtol=1e-4)
    kinds = {type(m) for m in slim.modules()}
    assert ZeroChannels in kinds and ConstantOutput in kinds  # nothing of the branch is computed
    # the branch's output is now a per-channel constant: the block is identity plus that constant
    assert not torch.allclose(slim_out[0], slim_out[1])


def test_zero_width_before_pooling_uses_empty_pool():
    model = perturb_batchnorm_(nets.SqueezeExcite().eval())
    graph = find_groups(model, X)
    stem = next(g for g in graph.groups if ("stem.0", "out") in {(s.module, s.role) for s in g.sites})
    plan = random_plan(graph, keep=0.5, seed=0, zero=(stem.name,))
    gated, slim_out, slim = gated_and_slim(model, plan, graph)
    torch.testing.assert_close(slim_out, gated, atol=1e-5, rtol=1e-4)
    assert isinstance(slim.pool, EmptyPool)


def test_every_group_zero_width_is_a_constant_network():
    model = perturb_batchnorm_(nets.Concat().eval())
    graph = find_groups(model, X)
    plan = random_plan(graph, keep=0.5, zero=tuple(g.name for g in graph.groups))
    gated, slim_out, slim = gated_and_slim(model, plan, graph)
    torch.testing.assert_close(slim_out, gated, atol=1e-5, rtol=1e-4)
    assert sum(p.numel() for n, p in slim.named_parameters() if not n.startswith("fc")) == 0


def test_grouped_conv_keeps_equal_counts_per_group():
    model = perturb_batchnorm_(nets.Grouped().eval())
    graph = find_groups(model, X)
    plan = random_plan(graph, keep=0.5, seed=1)
    gated, slim_out, slim = gated_and_slim(model, plan, graph)
    torch.testing.assert_close(slim_out, gated, atol=1e-5, rtol=1e-4)
    assert slim.g[0].groups == 4 and slim.g[0].in_channels == 8 and slim.g[0].out_channels == 8


def test_grouped_conv_with_uneven_plan_is_refused():
    model = nets.Grouped().eval()
    graph = find_groups(model, X)
    feed = next(g for g in graph.groups if g.name == "a.0")
    plan = PrunePlan([GroupPlan(feed.name, feed.size, [0, 1, 2, 4])])  # 3 in conv group 0, 1 in group 1
    with pytest.raises(PlanError, match="equal"):
        apply_plan_(copy.deepcopy(model), plan, X, graph=graph)


def test_plan_for_another_model_is_refused_before_cutting():
    model = nets.Chain().eval()
    plan = PrunePlan([GroupPlan("layer9.conv", 8, [0])])
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(PlanError, match="not a channel group"):
        apply_plan_(model, plan, X)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_keep_everything_changes_nothing():
    model = nets.Depthwise().eval()
    graph = find_groups(model, X)
    plan = random_plan(graph, keep=1.0)
    slim = apply_plan_(copy.deepcopy(model), plan, X, graph=graph)
    with torch.no_grad():
        assert torch.equal(slim(X), model(X))
