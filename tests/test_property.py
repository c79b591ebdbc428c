"""Property: any plan that respects the groups' structure cuts exactly (slim == frozen gated model),
and survives a JSON round trip unchanged."""
from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chanprune.check import perturb_batchnorm_
from chanprune.gates import attach_gates
from chanprune.graph import find_groups
from chanprune.plan import GroupPlan, PrunePlan
from chanprune.surgery import ConstantOutput, apply_plan_
from tests import nets

INPUT_SHAPE = [2, 3, 16, 16]
_CACHE: dict = {}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The nets are tiny: a second intra-op thread buys nothing, and on a busy 2-core machine its
    spinning makes each example ~30x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def net(name: str):
    """(model with non-trivial batch norms, its graph, an input batch), built once per net."""
    if name not in _CACHE:
        torch.manual_seed(0)
        model = perturb_batchnorm_(nets.NETS[name]().eval(), seed=1)
        x = torch.randn(*INPUT_SHAPE, generator=torch.Generator().manual_seed(2))
        graph = find_groups(model, x)
        assert graph.groups, f"{name}: no gateable group"
        _CACHE[name] = (model, graph, x)
    return _CACHE[name]


def keep_strategy(group) -> st.SearchStrategy[list[int]]:
    """Any subset of the group's channels (possibly empty); for a grouped conv, the same number of
    channels from every part of its partition."""
    if group.partition is None:
        return st.sets(st.integers(0, group.size - 1), max_size=group.size).map(sorted)
    smallest = min(len(part) for part in group.partition)

    def per_part(k):
        return st.tuples(*[st.permutations(part).map(lambda p, k=k: p[:k]) for part in group.partition])

    return st.integers(0, smallest).flatmap(per_part).map(lambda parts: sorted(i for p in parts for i in p))


def probs_strategy(size: int):
    # plans store probabilities to 6 decimals; a stored plan must read back unchanged
    return st.none() | st.lists(st.floats(0, 1).map(lambda p: round(p, 6)), min_size=size, max_size=size)


@st.composite
def plans(draw, graph, name):
    groups = [GroupPlan(g.name, g.size, draw(keep_strategy(g)), draw(probs_strategy(g.size)))
              for g in graph.groups]
    tau = draw(st.none() | st.floats(0, 1).map(lambda t: round(t, 3)))
    return PrunePlan(groups, arch=f"tests.nets:{name}", input_shape=list(INPUT_SHAPE), tau=tau,
                     meta={"drawn": True})


@pytest.mark.parametrize("name", sorted(nets.NETS))
@settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_plans_cut_exactly(name, data):
    dense, graph, x = net(name)
    plan = data.draw(plans(graph, name), label="plan")

    # the plan is well-formed and round-trips through JSON unchanged
    plan.validate(graph)
    assert PrunePlan.from_json(plan.to_json()) == plan
    for g, gp in zip(graph.groups, plan.groups):
        if g.partition is not None:
            assert len({sum(1 for r in part if r in set(gp.keep)) for part in g.partition}) == 1

    model = copy.deepcopy(dense)
    slim = copy.deepcopy(model)  # before any gate touches the model
    gates = attach_gates(model, graph).fix_(plan.keep_masks(graph))
    try:
        with torch.no_grad():
            gated = model(x)
    finally:
        gates.detach_()
    with torch.no_grad():
        assert torch.equal(model(x), dense(x))  # detached: the model is dense again

    apply_plan_(slim, plan, x, graph=graph)
    slim.eval()
    with torch.no_grad():
        out = slim(x)
    assert out.shape == gated.shape
    torch.testing.assert_close(out, gated, atol=1e-5, rtol=1e-4)

    # every root that keeps channels has exactly those outputs (as a constant if its inputs are gone)
    mods = dict(slim.named_modules())
    for g, gp in zip(graph.groups, plan.groups):
        if not gp.keep:
            continue
        root = mods[g.name]
        if isinstance(root, ConstantOutput):
            width = root.value.numel()
        else:
            width = getattr(root, "out_channels", getattr(root, "out_features", None))
        assert width == len(gp.keep), (g.name, width, len(gp.keep))
