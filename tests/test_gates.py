import pytest
import torch

from chanprune.gates import GateSet, GumbelGate, attach_gates, list_gates, make_gate, register_gate
from chanprune.graph import find_groups
from tests import nets

X = torch.randn(4, 3, 16, 16)


def test_gate_starts_nearly_open():
    g = GumbelGate(10)
    assert torch.allclose(g.probs(), torch.sigmoid(torch.tensor(3.9)).expand(10))
    assert g.logits.shape == (10, 2)


def test_sample_is_hard_per_example_and_straight_through():
    g = GumbelGate(6, init=(0.0, 0.0))
    z = g.sample(5)
    assert z.shape == (5, 6)
    assert set(z.unique().tolist()) <= {0.0, 1.0}
    (z * torch.arange(6.0)).sum().backward()
    assert g.logits.grad is not None and g.logits.grad.abs().sum() > 0


def test_sample_rate_matches_probability():
    g = GumbelGate(1, init=(0.0, 1.0))  # p = sigmoid(1) = 0.731
    torch.manual_seed(1)
    rate = g.sample(20000).mean().item()
    assert abs(rate - torch.sigmoid(torch.tensor(1.0)).item()) < 0.01


def test_inference_modes():
    g = GumbelGate(3)
    with torch.no_grad():
        g.logits.copy_(torch.tensor([[0.0, 2.0], [2.0, 0.0], [0.0, 0.1]]))
    assert g.mask("threshold", tau=0.5).tolist() == [[1.0, 0.0, 1.0]]
    assert g.mask("threshold", tau=0.6).tolist() == [[1.0, 0.0, 0.0]]
    torch.manual_seed(0)
    z = g.mask("stochastic", batch=4000)
    assert z.shape == (4000, 3) and set(z.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(z.mean(0), g.probs().detach(), atol=0.03, rtol=0)
    with pytest.raises(ValueError, match="unknown gate inference mode"):
        g.mask("bogus")


def test_gate_registry_builds_kinds_by_name_and_refuses_duplicates():
    gate = make_gate("gumbel", 5, init=(0.0, 1.0), temperature=0.5)
    assert isinstance(gate, GumbelGate) and gate.kind == "gumbel" and gate.num_channels == 5
    assert gate.config() == {"init": [0.0, 1.0], "temperature": 0.5}
    assert make_gate("gumbel", 5, **gate.config()).config() == gate.config()
    with pytest.raises(ValueError, match="gumbel"):
        make_gate("no-such-gate", 3)
    with pytest.raises(ValueError, match="already registered"):
        register_gate("gumbel")(GumbelGate)
    assert "gumbel" in list_gates()


def test_gate_set_runs_in_stochastic_mode_and_at_its_tau():
    m = nets.Chain().eval()
    graph = find_groups(m, X)
    gates = GateSet(graph, tau=0.7, mode="stochastic").attach_(m)
    with torch.no_grad():
        m(X)
    assert all(z.shape == (X.shape[0], g.size) for z, g in zip(gates.current(), graph.groups))
    gates.mode = "threshold"
    with torch.no_grad():
        for g in gates.gates:  # p = 0.6: open at tau 0.5, closed at the set's tau 0.7
            g.logits.copy_(torch.tensor([[0.0, 0.4055]]).repeat(g.num_channels, 1))
        m(X)
    assert all(z.sum() == 0 for z in gates.current())
    with pytest.raises(ValueError, match="tau"):
        GateSet(graph, tau=1.5)


def test_one_sample_shared_by_all_consumers_of_a_group():
    m = nets.Residual().train()
    graph = find_groups(m, X)
    gates = attach_gates(m, graph)
    seen = {}
    stream = next(i for i, gr in enumerate(graph.groups) if len(gr.consumers) > 2)
    names = [s.module for s in graph.groups[stream].consumers]
    hooks = [m.get_submodule(n).register_forward_pre_hook(
        lambda mod, a, n=n: seen.__setitem__(n, (a[0].abs().sum((2, 3)) == 0) if a[0].dim() == 4 else (a[0] == 0)))
        for n in names]
    with torch.no_grad():
        gates.gates[stream].logits.copy_(torch.tensor([[0.0, 0.0]]).repeat(graph.groups[stream].size, 1))
    m(X)
    z = gates.current()[stream]
    assert z.shape == (4, graph.groups[stream].size)
    for n in names:  # every consumer saw exactly the channels the one sample switched off
        assert torch.equal(seen[n], z == 0), n
    for h in hooks:
        h.remove()


def test_gradients_reach_gate_logits_through_the_model():
    m = nets.Concat().train()
    graph = find_groups(m, X)
    gates = attach_gates(m, graph)
    m(X).square().mean().backward()
    assert all(g.logits.grad is not None and g.logits.grad.abs().sum() > 0 for g in gates.gates)


def test_fixed_masks_and_detach():
    m = nets.Chain().eval()
    graph = find_groups(m, X)
    with torch.no_grad():
        y0 = m(X)
    gates = attach_gates(m, graph).fix_([torch.zeros(g.size) for g in graph.groups])
    with torch.no_grad():
        y_off = m(X)
    assert torch.allclose(y_off, y_off[:1].expand_as(y_off))  # everything off: a constant
    gates.detach_()
    with torch.no_grad():
        assert torch.equal(m(X), y0)


def test_attach_to_other_architecture_fails():
    graph = find_groups(nets.Chain().eval(), X)
    with pytest.raises(ValueError, match="another architecture"):
        attach_gates(nets.Concat().eval(), graph)


def _closed_(gates):
    """Every gate's logits set to 'close' (p ~ 0)."""
    for g in gates.gates:
        inner = getattr(g, "inner", g)
        with torch.no_grad():
            inner.logits[:, 0], inner.logits[:, 1] = 5.0, -5.0


@pytest.mark.parametrize("block", [1, 16])
def test_essential_groups_keep_a_unit_in_samples_thresholds_and_freeze(block):
    """A residual stream closed whole leaves a constant network (the latency budget once closed
    ResNet-20's first stream: 11% accuracy). Those groups are found by running the model, and keep
    their most probable channel (or block) everywhere the gates decide: training samples, the
    threshold masks, and freeze. A residual branch's inner group is not essential: it may close."""
    from chanprune.freeze import freeze
    from chanprune.zoo import build_model

    model = build_model("resnet20", num_classes=10)
    x = torch.zeros(1, 3, 28, 28)
    graph = find_groups(model, x)
    gates = GateSet(graph, config={"block": block} if block > 1 else None).attach_(model)
    found = gates.find_essential_(model, x)
    assert found == ["conv1", "layer2.0.shortcut.0", "layer3.0.shortcut.0"]
    assert gates.config["essential"] == found
    ess = gates.essential()
    assert sum(ess) == 3 and not ess[graph.groups.index(graph.group("layer1.0.conv1"))]
    _closed_(gates)
    unit = block if block > 1 else 1
    model.train()
    model(torch.randn(4, 3, 28, 28))
    z = gates.current()
    for i, e in enumerate(ess):
        per_row = z[i].detach().sum(dim=1)
        assert torch.equal(per_row, torch.full_like(per_row, float(unit) if e else 0.0))
    # the floor is a constant: the sample's gradient still reaches the gate logits
    model.zero_grad()
    model(torch.randn(2, 3, 28, 28)).sum().backward()
    first = gates.gates[ess.index(True)]
    assert getattr(first, "inner", first).logits.grad is not None
    masks = gates.threshold_masks()
    assert [int(m.sum()) for m in masks] == [unit if e else 0 for e in ess]
    plan = freeze(graph, gates.probs(), essential=ess, units=gates.units())
    assert [len(gp.keep) for gp in plan.groups] == [unit if e else 0 for e in ess]
    if block > 1:  # one block of 16 carries the input through (a single channel may be dead after a ReLU)
        model.eval()
        a, b = model(torch.randn(1, 3, 28, 28)), model(torch.randn(1, 3, 28, 28))
        assert not torch.allclose(a, b)  # the network still sees its input


def test_essential_survives_the_gate_config_and_rejects_unknown_groups():
    model, x = nets.Residual(), torch.zeros(1, 3, 16, 16)
    graph = find_groups(model, x)
    gates = GateSet(graph).attach_(model)
    found = gates.find_essential_(model, x)
    again = GateSet(graph, config=gates.config)
    assert again.essential() == gates.essential() and sum(again.essential()) == len(found)
    with pytest.raises(ValueError, match="not a group"):
        GateSet(graph, config={"essential": ["nope"]})


def test_bound_clamps_the_gap_about_its_midpoint():
    g = GumbelGate(3)
    with torch.no_grad():
        g.logits.copy_(torch.tensor([[1.0, 31.0], [4.0, -26.0], [0.5, 2.5]]))
    g.bound_(6.0)
    gap = g.logits[:, 1] - g.logits[:, 0]
    assert gap.tolist() == pytest.approx([6.0, -6.0, 2.0])
    assert g.logits.mean(1).tolist() == pytest.approx([16.0, -11.0, 1.5])  # midpoints kept
    assert g.probs()[2].item() == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item())  # inside: unchanged


def test_a_bounded_polarized_gate_keeps_its_gradient():
    """At a gap of 30 the straight-through gradient is ~e^-30: no step on the budget can reopen or close
    the gate. Bounded at 6 it is ~e^-6 per sample."""
    g = GumbelGate(1)
    grads = []
    for bound in (None, 6.0):
        with torch.no_grad():
            g.logits.copy_(torch.tensor([[0.0, 30.0]]))
        if bound:
            g.bound_(bound)
        g.logits.grad = None
        torch.manual_seed(0)
        g.sample(4096).sum().backward()
        grads.append((g.logits.grad[0, 1] - g.logits.grad[0, 0]).abs().item())
    assert grads[0] < 1e-6 < 1.0 < grads[1]


def test_gateset_bound_reaches_block_and_static_parts():
    model = nets.Residual()
    graph = find_groups(model, X)
    gates = GateSet(graph, config={"block": 2})
    for g in gates.gates:
        with torch.no_grad():
            inner = getattr(g, "inner", g)
            inner.logits[:, 1] = 40.0
    gates.bound_(None)  # off: nothing moves
    assert max((getattr(g, "inner", g).logits.diff(dim=1).abs().max().item()) for g in gates.gates) > 39
    gates.bound_(5.0)
    assert max((getattr(g, "inner", g).logits.diff(dim=1).abs().max().item()) for g in gates.gates) == pytest.approx(5.0)
    dep = make_gate("static+dependent", 4, in_channels=3)
    with torch.no_grad():
        dep.static.logits[:, 1] = -50.0
    dep.bound_(5.0)
    assert dep.static.logits.diff(dim=1).abs().max().item() == pytest.approx(5.0)
