"""`PrunePlan`: serialisation round trips, strict parsing, validation against a real graph; `freeze`."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from chanprune.errors import ArtifactError, PlanError
from chanprune.freeze import freeze, polarization
from chanprune.graph import find_groups
from chanprune.plan import PLAN_FORMAT, PLAN_SCHEMA_VERSION, GroupPlan, PrunePlan
from tests import nets

_GRAPHS: dict = {}


def graph_of(name: str):
    """`find_groups` of one tests.nets net, traced once per session."""
    if name not in _GRAPHS:
        model = nets.NETS[name]().eval()
        _GRAPHS[name] = find_groups(model, torch.randn(2, 3, 16, 16))
    return _GRAPHS[name]


def partitioned_group(graph):
    groups = [g for g in graph.groups if g.partition is not None]
    assert groups, "the Grouped net must have a group that feeds or is a grouped conv"
    return groups[0]


def sample_plan() -> PrunePlan:
    return PrunePlan(
        groups=[
            GroupPlan("features.0.0", 4, [0, 2], [0.9, 0.125, 0.75, 0.0]),
            GroupPlan("features.1.0", 3, [], None),
            GroupPlan("layer.x", 2, [0, 1], [1.0, 0.5]),
        ],
        arch="tests.nets:chain",
        input_shape=[1, 3, 16, 16],
        tau=0.5,
        meta={"seed": 3, "note": "hand-made", "nested": {"a": [1, 2]}},
    )


def valid_dict() -> dict:
    return sample_plan().to_dict()


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("plan", [
    pytest.param(sample_plan(), id="full"),
    pytest.param(PrunePlan([GroupPlan("a", 1, [0])]), id="minimal"),
    pytest.param(PrunePlan([]), id="no-groups"),
    pytest.param(PrunePlan([GroupPlan("a", 5, [])], tau=0, meta={}), id="zero-width-int-tau"),
])
def test_dict_and_json_round_trip(plan):
    d = plan.to_dict()
    assert d["format"] == PLAN_FORMAT and d["schema_version"] == PLAN_SCHEMA_VERSION
    assert PrunePlan.from_dict(d) == plan
    text = plan.to_json()
    assert json.loads(text) == d  # JSON types only
    back = PrunePlan.from_json(text)
    assert back == plan
    assert back.to_json() == text
    for g, h in zip(plan.groups, back.groups):
        assert h.probs == g.probs and h.keep == g.keep and h.size == g.size
    assert back.tau == plan.tau and back.input_shape == plan.input_shape and back.meta == plan.meta


def test_round_trip_of_a_frozen_plan_with_arbitrary_probs_is_stable():
    graph = graph_of("chain")
    gen = torch.Generator().manual_seed(1)
    probs = [torch.rand(g.size, generator=gen) for g in graph.groups]
    plan = freeze(graph, probs, tau=0.5, arch="chain", input_shape=[1, 3, 16, 16])
    back = PrunePlan.from_json(plan.to_json())
    assert [g.keep for g in back.groups] == [g.keep for g in plan.groups]
    for g, h in zip(plan.groups, back.groups):  # probs are stored to 6 decimals
        assert len(h.probs) == g.size
        assert max(abs(a - b) for a, b in zip(g.probs, h.probs)) <= 5e-7
    assert back.tau == 0.5 and back.arch == "chain" and back.input_shape == [1, 3, 16, 16]
    assert PrunePlan.from_json(back.to_json()) == back  # a fixed point after one trip


def test_keep_is_sorted_on_load_and_masks_follow_graph_order():
    d = valid_dict()
    d["groups"][0]["keep"] = [2, 0]
    plan = PrunePlan.from_dict(d)
    assert plan.group("features.0.0").keep == [0, 2]
    graph = graph_of("chain")
    masks = PrunePlan([GroupPlan("features.1.0", 16, [1, 3])]).keep_masks(graph)
    assert [m.numel() for m in masks] == [g.size for g in graph.groups]
    for g, m in zip(graph.groups, masks):
        if g.name == "features.1.0":
            assert m.nonzero().flatten().tolist() == [1, 3]
        else:
            assert bool(m.eq(1).all())  # groups the plan omits keep everything


# ----------------------------------------------------------------------------- strict parsing
def _mutate(fn):
    d = valid_dict()
    fn(d)
    return d


def _set_group(key, value, i=0):
    def fn(d):
        d["groups"][i][key] = value
    return fn


BAD_DICTS = {
    "not-a-dict": ([1, 2, 3], "format"),
    "missing-format": (_mutate(lambda d: d.pop("format")), "format"),
    "wrong-format": (_mutate(lambda d: d.update(format="chanprune.slim/1")), "format"),
    "missing-schema-version": (_mutate(lambda d: d.pop("schema_version")), "schema_version"),
    "future-schema-version": (_mutate(lambda d: d.update(schema_version=2)), "schema_version"),
    "string-schema-version": (_mutate(lambda d: d.update(schema_version="1")), "schema_version"),
    "groups-missing": (_mutate(lambda d: d.pop("groups")), "groups"),
    "groups-dict": (_mutate(lambda d: d.update(groups={"a": 1})), "groups"),
    "groups-string": (_mutate(lambda d: d.update(groups="a")), "groups"),
    "group-not-object": (_mutate(lambda d: d["groups"].append([1])), "group 3"),
    "name-missing": (_mutate(lambda d: d["groups"][0].pop("name")), "name"),
    "name-empty": (_mutate(_set_group("name", "")), "name"),
    "name-int": (_mutate(_set_group("name", 7)), "name"),
    "size-zero": (_mutate(_set_group("size", 0)), "size"),
    "size-negative": (_mutate(_set_group("size", -4)), "size"),
    "size-float": (_mutate(_set_group("size", 4.0)), "size"),
    "size-bool": (_mutate(_set_group("size", True)), "size"),
    "size-missing": (_mutate(lambda d: d["groups"][0].pop("size")), "size"),
    "keep-missing": (_mutate(lambda d: d["groups"][0].pop("keep")), "keep"),
    "keep-not-list": (_mutate(_set_group("keep", "0,1")), "keep"),
    "keep-out-of-range-high": (_mutate(_set_group("keep", [0, 4])), "keep"),
    "keep-out-of-range-negative": (_mutate(_set_group("keep", [-1])), "keep"),
    "keep-duplicated": (_mutate(_set_group("keep", [1, 1])), "keep"),
    "keep-float": (_mutate(_set_group("keep", [0, 1.0])), "keep"),
    "keep-string": (_mutate(_set_group("keep", ["0"])), "keep"),
    "keep-bool": (_mutate(_set_group("keep", [True])), "keep"),
    "keep-null": (_mutate(_set_group("keep", [None])), "keep"),
    "probs-too-short": (_mutate(_set_group("probs", [0.1, 0.2, 0.3])), "probs"),
    "probs-too-long": (_mutate(_set_group("probs", [0.1] * 5)), "probs"),
    "probs-not-list": (_mutate(_set_group("probs", 0.5)), "probs"),
    "probs-strings": (_mutate(_set_group("probs", ["a", "b", "c", "d"])), "probs"),
    "input-shape-not-list": (_mutate(lambda d: d.update(input_shape="1x3x16x16")), "input_shape"),
    "input-shape-zero": (_mutate(lambda d: d.update(input_shape=[1, 0, 16, 16])), "input_shape"),
    "tau-string": (_mutate(lambda d: d.update(tau="0.5")), "tau"),
    "meta-list": (_mutate(lambda d: d.update(meta=[1])), "meta"),
}


@pytest.mark.parametrize("d,needle", list(BAD_DICTS.values()), ids=list(BAD_DICTS))
def test_from_dict_rejects(d, needle):
    with pytest.raises(ArtifactError, match=needle) as info:
        PrunePlan.from_dict(d)
    assert isinstance(info.value, ValueError)
    with pytest.raises(ArtifactError):  # the same through JSON text
        PrunePlan.from_json(json.dumps(d))


@pytest.mark.parametrize("version", [0, 2, 99, None], ids=lambda v: f"v{v}")
def test_unknown_schema_version_names_the_supported_one(version):
    d = valid_dict()
    d["schema_version"] = version
    with pytest.raises(ArtifactError) as info:
        PrunePlan.from_dict(d)
    msg = str(info.value)
    assert repr(version) in msg
    assert f"reads {PLAN_SCHEMA_VERSION}" in msg


def test_from_dict_does_not_mutate_its_input():
    d = valid_dict()
    d["groups"][0]["keep"] = [2, 0]
    before = copy.deepcopy(d)
    PrunePlan.from_dict(d)
    assert d == before


@pytest.mark.parametrize("text", [
    pytest.param("", id="empty"),
    pytest.param("{", id="truncated"),
    pytest.param("not json at all", id="prose"),
    pytest.param("{'format': 'chanprune.plan'}", id="single-quotes"),
    pytest.param(valid_dict().__repr__(), id="python-repr"),
    pytest.param("[]", id="json-list"),
    pytest.param("null", id="json-null"),
    pytest.param('"chanprune.plan"', id="json-string"),
])
def test_from_json_rejects_invalid_text(text):
    with pytest.raises(ArtifactError):
        PrunePlan.from_json(text)


# ----------------------------------------------------------------------------- validate(graph)
def full_plan(graph) -> PrunePlan:
    return PrunePlan([GroupPlan(g.name, g.size, list(range(g.size))) for g in graph.groups])


@pytest.mark.parametrize("net", sorted(nets.NETS))
def test_validate_accepts_plans_that_fit(net):
    graph = graph_of(net)
    plan = full_plan(graph)
    assert plan.validate(graph) is plan
    empty = PrunePlan([])
    assert empty.validate(graph) is empty
    # an empty plan keeps everything: one all-ones mask per group
    masks = empty.keep_masks(graph)
    assert graph.groups and [m.numel() for m in masks] == [g.size for g in graph.groups]
    assert all(bool((m == 1).all()) for m in masks)


@pytest.mark.parametrize("net", ["chain", "residual", "grouped"])
def test_validate_rejects_unknown_group(net):
    graph = graph_of(net)
    plan = full_plan(graph)
    plan.groups.append(GroupPlan("no.such.layer", 4, [0]))
    with pytest.raises(PlanError, match="no.such.layer"):
        plan.validate(graph)


@pytest.mark.parametrize("net", ["chain", "residual", "grouped"])
@pytest.mark.parametrize("delta", [-1, 1], ids=["smaller", "larger"])
def test_validate_rejects_size_mismatch(net, delta):
    graph = graph_of(net)
    g = graph.groups[0]
    plan = PrunePlan([GroupPlan(g.name, g.size + delta, [0])])
    with pytest.raises(PlanError, match="size") as info:
        plan.validate(graph)
    assert isinstance(info.value, ValueError)
    assert str(g.size) in str(info.value)


def test_validate_rejects_out_of_range_keep_built_in_code():
    graph = graph_of("chain")
    g = graph.groups[0]
    with pytest.raises(PlanError, match="range"):
        PrunePlan([GroupPlan(g.name, g.size, [0, g.size])]).validate(graph)


def test_validate_grouped_conv_needs_equal_counts_per_conv_group():
    graph = graph_of("grouped")
    g = partitioned_group(graph)
    assert len(g.partition) > 1 and sum(len(p) for p in g.partition) == g.size
    # one channel from every conv group: fine; zero from every conv group: fine
    even = sorted(p[0] for p in g.partition)
    PrunePlan([GroupPlan(g.name, g.size, even)]).validate(graph)
    PrunePlan([GroupPlan(g.name, g.size, [])]).validate(graph)
    # every channel of the first conv group and none of the others: unequal
    uneven = sorted(g.partition[0])
    with pytest.raises(PlanError, match="grouped conv"):
        PrunePlan([GroupPlan(g.name, g.size, uneven)]).validate(graph)
    # equal totals are not enough: 2 + 0 + 1 + 1
    p = g.partition
    lopsided = sorted([p[0][0], p[0][1], p[2][0], p[3][0]])
    with pytest.raises(PlanError):
        PrunePlan([GroupPlan(g.name, g.size, lopsided)]).validate(graph)


# ----------------------------------------------------------------------------- freeze
def _probs(graph, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(g.size, generator=gen) for g in graph.groups]


@pytest.mark.parametrize("net", ["chain", "residual", "concat", "depthwise", "squeeze_excite"])
@pytest.mark.parametrize("tau", [0.0, 0.3, 0.5, 0.9, 1.0])
def test_freeze_keeps_exactly_p_above_tau(net, tau):
    graph = graph_of(net)
    probs = _probs(graph)
    plan = freeze(graph, probs, tau=tau, arch=net, input_shape=[1, 3, 16, 16])
    assert plan.tau == tau and plan.arch == net and plan.input_shape == [1, 3, 16, 16]
    assert [g.name for g in plan.groups] == [g.name for g in graph.groups]
    for g, p, gp in zip(graph.groups, probs, plan.groups):
        assert g.partition is None
        assert gp.size == g.size
        assert gp.keep == [i for i in range(g.size) if float(p[i]) > tau]
        assert gp.probs == pytest.approx([float(x) for x in p])
    plan.validate(graph)


def test_freeze_threshold_is_strict():
    graph = graph_of("chain")
    probs = [torch.full((g.size,), 0.5) for g in graph.groups]
    probs[0][0] = 0.75
    plan = freeze(graph, probs, tau=0.5)
    assert plan.groups[0].keep == [0]
    assert all(gp.keep == [] for gp in plan.groups[1:])
    assert plan.zero_width_groups == [g.name for g in graph.groups[1:]]


@pytest.mark.parametrize("tau", [0.2, 0.5, 0.8])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_freeze_partitioned_group_keeps_equal_counts(tau, seed):
    graph = graph_of("grouped")
    probs = _probs(graph, seed)
    plan = freeze(graph, probs, tau=tau)
    plan.validate(graph)
    for g, p, gp in zip(graph.groups, probs, plan.groups):
        above = [i for i in range(g.size) if float(p[i]) > tau]
        if g.partition is None:
            assert gp.keep == above
            continue
        keep = set(gp.keep)
        counts = [sum(1 for r in part if r in keep) for part in g.partition]
        assert len(set(counts)) == 1, counts
        # the count nearest the thresholded mean, and the highest-p channels of each conv group
        per = [sum(1 for r in part if r in set(above)) for part in g.partition]
        assert counts[0] == math.floor(sum(per) / len(per) + 0.5)
        for part in g.partition:
            kept = [r for r in part if r in keep]
            dropped = [r for r in part if r not in keep]
            if kept and dropped:
                assert min(float(p[r]) for r in kept) >= max(float(p[r]) for r in dropped)


def test_freeze_partitioned_group_unchanged_when_already_equal():
    graph = graph_of("grouped")
    g = partitioned_group(graph)
    gi = [x.name for x in graph.groups].index(g.name)
    probs = [torch.full((x.size,), 0.9) for x in graph.groups]
    p = torch.full((g.size,), 0.1)
    want = sorted(part[1] for part in g.partition)  # one channel per conv group
    p[want] = 0.9
    probs[gi] = p
    plan = freeze(graph, probs, tau=0.5)
    assert plan.groups[gi].keep == want


@pytest.mark.parametrize("tau", [-0.01, 1.01, -1.0, 2.0, float("nan"), float("inf")],
                         ids=["just-below-0", "just-above-1", "minus-1", "2", "nan", "inf"])
def test_freeze_rejects_tau_outside_unit_interval(tau):
    graph = graph_of("chain")
    with pytest.raises(ValueError, match="tau"):
        freeze(graph, _probs(graph), tau=tau)


def test_polarization_matches_hand_computed_example():
    probs = [torch.tensor([0.0, 0.01, 0.5, 0.99]), torch.tensor([[0.04, 0.96], [0.25, 1.0]])]
    # low (< 0.05): 0.0, 0.01, 0.04; high (> 0.95): 0.99, 0.96, 1.0; 8 gates in all
    # bins of width 0.1: [0.0, 0.01, 0.04] -> 0; 0.25 -> 2; 0.5 -> 5; [0.96, 0.99, 1.0] -> 9
    r = polarization(probs)
    assert r.gates == 8
    assert r.low == pytest.approx(3 / 8) and r.high == pytest.approx(3 / 8)
    assert r.polarized == pytest.approx(6 / 8)
    assert r.histogram == [3, 0, 1, 0, 0, 1, 0, 0, 0, 3]
    assert sum(r.histogram) == r.gates
    assert not r.ok and r.warning is not None and "75%" in r.warning
    d = r.to_dict()
    assert d["ok"] is False and d["histogram"] == r.histogram and d["gates"] == 8
    relaxed = polarization(probs, threshold=0.75)
    assert relaxed.ok and relaxed.warning is None


def test_polarization_boundaries_and_empty():
    # exactly 0.05 and 0.95 are not polarized (strict inequalities)
    r = polarization([torch.tensor([0.05, 0.95, 0.0, 1.0])])
    assert (r.low, r.high, r.polarized) == (0.25, 0.25, 0.5)
    empty = polarization([])
    assert empty.gates == 0 and empty.histogram == [0] * 10 and empty.polarized == 0
    grads = polarization([torch.tensor([0.2, 0.97], requires_grad=True)])  # detached internally
    assert grads.gates == 2 and grads.high == 0.5


def test_duplicate_group_names_are_refused():
    from chanprune.errors import PlanError
    from chanprune.graph import find_groups
    from chanprune.plan import GroupPlan
    from tests.nets import Chain

    d = {"format": "chanprune.plan", "schema_version": 1,
         "groups": [{"name": "features.1.0", "size": 16, "keep": list(range(16))},
                    {"name": "features.1.0", "size": 16, "keep": [0, 1]}]}
    with pytest.raises(ArtifactError, match="twice"):
        PrunePlan.from_dict(d)
    graph = find_groups(Chain().eval(), torch.randn(2, 3, 16, 16))
    plan = PrunePlan([GroupPlan("features.1.0", 16, list(range(16))), GroupPlan("features.1.0", 16, [0, 1])])
    with pytest.raises(PlanError, match="twice"):
        plan.validate(graph)


@pytest.mark.parametrize("field,value", [("schema_version", True), ("schema_version", 1.0), ("tau", True),
                                         ("tau", 7.5), ("tau", float("nan")), ("arch", 3), ("input_shape", [True, 3])])
def test_loose_values_are_refused(field, value):
    d = {"format": "chanprune.plan", "schema_version": 1, "groups": [{"name": "a", "size": 2, "keep": [0]}]}
    d[field] = value
    with pytest.raises(ArtifactError):
        PrunePlan.from_dict(d)


@pytest.mark.parametrize("probs", [[True, 0.5], [float("nan"), 0.5], [1.5, 0.5]])
def test_bad_probs_are_refused(probs):
    d = {"format": "chanprune.plan", "schema_version": 1, "groups": [{"name": "a", "size": 2, "keep": [0], "probs": probs}]}
    with pytest.raises(ArtifactError, match="probs"):
        PrunePlan.from_dict(d)


def test_freeze_min_keep_tops_up_but_lets_groups_collapse():
    from tests.nets import Chain

    graph = find_groups(Chain().eval(), torch.randn(2, 3, 16, 16))
    probs = []
    for i, g in enumerate(graph.groups):
        p = torch.full((g.size,), 0.01)
        if i == 0:
            p[3] = 0.9  # one channel above tau
            p[5] = 0.4
            p[7] = 0.3
        probs.append(p)
    plan = freeze(graph, probs, tau=0.5, min_keep=3)
    assert plan.groups[0].keep == [3, 5, 7]
    assert all(gp.keep == [] for gp in plan.groups[1:])  # nothing above tau: still removed whole
    with pytest.raises(ValueError):
        freeze(graph, probs, min_keep=-1)
