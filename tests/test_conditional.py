"""Data-dependent gates (conditional computation): the gate, the gate set, per-input cost, and the
dynamic model that skips the channels the gates switch off, exact against the masked gated model."""
import json

import pytest
import torch
from click.testing import CliRunner

from chanprune.cost import make_cost
from chanprune.data import load_data
from chanprune.dynamic import dynamic_model, onnx_dynamic_model
from chanprune.export import DEFAULT_ATOL, DEFAULT_RTOL, export_onnx, within_tolerance
from chanprune.gates import DependentGate, GateSet, dependent_sites
from chanprune.graph import find_groups
from chanprune.zoo import build_model
from chanprune_cli.main import main as cli


def _gated(arch="resnet20", seed=0, spread=3.0, granularity="channel", kind="dependent"):
    """A resnet20 with dependent gates whose decisions vary from input to input (static+dependent:
    and a static gate that closes about a third of the channels)."""
    torch.manual_seed(seed)
    model = build_model(arch, num_classes=10)
    x = torch.zeros(1, 3, 32, 32)
    graph = find_groups(model, x)
    cost = make_cost("flops", model, x, graph)
    gates = GateSet(graph, kind=kind, config={"dependent": dependent_sites(model, graph),
                                                     "granularity": granularity}).attach_(model)
    for gi in gates.dependent:
        g = gates.gates[gi]
        g.fc2.weight.data.normal_(0, spread)
        g.fc2.bias.data.normal_(0, 1)
        if kind == "static+dependent":
            g.static.logits.data[:, 1] = torch.where(torch.rand(g.static.num_channels) < 0.33, -5.0, 5.0)
    model.train()
    with torch.no_grad():  # gate and model batch-norm statistics that are not the identity
        for _ in range(3):
            model(torch.randn(8, 3, 32, 32))
    return model.eval(), graph, gates, cost


def _digits(n=24):
    bundle = load_data("digits", seed=0)
    split = bundle.test or bundle.val
    split.channels, split.size = 3, 32
    x, _ = next(iter(split.batches(n)))
    return x


def _exact_dynamic(model, graph, gates, x):
    """The dynamic model of `model`, run on x (recording each input's kept counts) and checked against
    the masked gated model; returns it and the gated model's masks."""
    dyn = dynamic_model(model, graph, gates)
    dyn.record = True
    with torch.no_grad():
        ref = model(x)
        masks = [m.clone() for m in gates.current()]
        out = dyn(x)
    assert within_tolerance(float((out - ref).abs().max()), float(ref.abs().max()), atol=DEFAULT_ATOL, rtol=DEFAULT_RTOL)
    return dyn, masks


def test_dependent_gate_starts_open_and_learns_from_its_input():
    gate = DependentGate(8, in_channels=16)
    x = torch.randn(4, 16, 5, 5)
    p = gate.probs_from(x)
    assert p.shape == (4, 8) and torch.allclose(p, torch.full_like(p, torch.sigmoid(torch.tensor(3.9)).item()))
    assert torch.equal(gate.probs(), torch.ones(8))  # a static plan keeps every channel
    z = gate.sample_from(x)
    assert set(z.unique().tolist()) <= {0.0, 1.0}
    z.sum().backward()
    assert gate.fc2.weight.grad is not None and gate.fc2.weight.grad.abs().sum() > 0
    assert float(gate.fc1.weight.grad.abs().sum()) == 0.0  # zero last-layer weights: fc1 learns once fc2 moves
    with pytest.raises(ValueError, match="inference mode"):
        gate.mask_from(x, "bogus")


def test_dependent_sites_are_the_inner_groups_of_residual_blocks():
    model = build_model("resnet20", num_classes=10)
    graph = find_groups(model, torch.zeros(1, 3, 32, 32))
    sites = dependent_sites(model, graph)
    assert len(sites) == 9 and all(name.endswith(".conv1") for name in sites)  # one per basic block
    streams = [g.name for g in graph.groups if g.name not in sites]
    assert "conv1" in streams  # the residual stream stays static


def test_per_input_masks_and_costs():
    model, graph, gates, cost = _gated()
    x = _digits(16)
    with torch.no_grad():
        model(x)
    z = gates.current()
    dep = [z[gi] for gi in gates.dependent]
    assert all(m.shape == (16, graph.groups[gi].size) for m, gi in zip(dep, gates.dependent))
    r = cost.ratio_of(z)
    assert r.shape == (16,) and bool((r < 1).all())
    assert len({round(float(v), 6) for v in r}) > 1, "the executed cost should differ between inputs"


def test_dynamic_model_reproduces_the_gated_model_input_by_input():
    model, graph, gates, _ = _gated()
    # one gate switched off for every input: its block must cost nothing and still be exact
    off = gates.dependent[4]
    gates.gates[off].fc2.bias.data[1::2] = -50.0
    dyn, masks = _exact_dynamic(model, graph, gates, _digits(24))
    assert len(dyn.kept_history) == 24
    for i, kept in enumerate(dyn.kept_history):
        for gi, k in kept.items():
            assert k == int(masks[gi][i].sum()), (i, graph.groups[gi].name)
    assert all(kept[off] == 0 for kept in dyn.kept_history)
    counts = {tuple(sorted(k.items())) for k in dyn.kept_history}
    assert len(counts) > 1, "the kept channels should differ between inputs"


def test_layer_granularity_decides_whole_branches_per_input():
    gate = DependentGate(8, in_channels=16, granularity="layer")
    assert gate.fc2.out_features == 2 and gate.probs_from(torch.randn(3, 16, 4, 4)).shape == (3, 8)
    with pytest.raises(ValueError, match="granularity"):
        DependentGate(8, in_channels=16, granularity="block")
    model, graph, gates, _ = _gated(granularity="layer", spread=6.0)
    dyn, masks = _exact_dynamic(model, graph, gates, _digits(24))
    for gi in gates.dependent:  # all or nothing, per input
        rows = masks[gi].sum(1)
        assert bool(((rows == 0) | (rows == graph.groups[gi].size)).all())
    ran = {k for kept in dyn.kept_history for k in kept.items()}
    assert any(k == 0 for _, k in ran) and any(k > 0 for _, k in ran), "some branches should run, others not"


def test_static_layer_granularity_gates_whole_inner_groups():
    model = build_model("resnet20", num_classes=10)
    x = torch.zeros(1, 3, 32, 32)
    graph = find_groups(model, x)
    sites = sorted(dependent_sites(model, graph))
    gates = GateSet(graph, config={"granularity": "layer", "layers": sites})
    for gi, g in enumerate(graph.groups):
        assert gates.gates[gi].num_channels == g.size
        if g.name in sites:
            assert gates.units()[gi] == [list(range(g.size))]  # one unit: the whole group
        else:
            assert bool((gates.gates[gi].probs() == 1).all())  # the residual stream stays open
    with pytest.raises(ValueError, match="must name the groups"):
        GateSet(graph, config={"granularity": "layer"})


@pytest.mark.parametrize("way, granularity", [("gather", "channel"), ("gather", "layer"), ("if", "layer"),
                                              ("if-per-conv", "layer")])
def test_onnx_dynamic_model_reproduces_the_gated_model_input_by_input(tmp_path, monkeypatch, way, granularity):
    import numpy as np
    import onnx
    import onnxruntime as ort

    if way == "if-per-conv":  # a branch fx cannot see whole: each gated conv in its own If
        import chanprune.dynamic

        monkeypatch.setattr(chanprune.dynamic, "_whole_branches", lambda model, *args: (model, set()))
        way = "if"

    model, graph, gates, _ = _gated(granularity=granularity, spread=6.0 if granularity == "layer" else 3.0)
    gates.gates[gates.dependent[4]].fc2.bias.data[1::2] = -50.0  # one gate off for every input
    x = _digits(12)
    with torch.no_grad():
        ref = model(x)
        masks = [m.clone() for m in gates.current()]
    path = export_onnx(onnx_dynamic_model(model, graph, gates, way), x[:1], tmp_path / f"{way}.onnx",
                       dynamic_batch=False, exporter="torchscript")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert ("NonZero" in ops) if way == "gather" else ("If" in ops)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = np.concatenate([sess.run(None, {"input": x[i:i + 1].numpy()})[0] for i in range(len(x))])
    err = float(np.abs(out - ref.numpy()).max())
    assert within_tolerance(err, float(ref.abs().max()), atol=DEFAULT_ATOL, rtol=DEFAULT_RTOL), err
    kept = torch.stack([masks[gi].sum(1) for gi in gates.dependent], 1)  # (inputs, groups)
    assert len({tuple(r.tolist()) for r in kept}) > 1, "the inputs should take different paths"


def test_the_if_way_gives_onnxruntime_blocked_convs_in_its_branches(tmp_path):
    """Each If branch holds its conv's weights as its own initializers, batch norm folded in, so that
    onnxruntime optimizes the conv inside the branch as it does in the main graph (NCHWc on x86)."""
    import onnx
    import onnxruntime as ort

    model, graph, gates, _ = _gated(granularity="layer", spread=6.0)
    x = _digits(2)
    path = export_onnx(onnx_dynamic_model(model, graph, gates, "if"), x[:1], tmp_path / "if.onnx",
                       dynamic_batch=False, exporter="torchscript")
    g = onnx.load(str(path)).graph
    ifs = [n for n in g.node if n.op_type == "If"]
    assert len(ifs) == len(gates.dependent)  # one per residual branch: conv, ReLU, conv
    assert not any(n.op_type == "BatchNormalization" for n in g.node)  # every gated conv's was folded
    for n in ifs:
        branch = next(a.g for a in n.attribute if a.name == "then_branch")
        convs = [m for m in branch.node if m.op_type == "Conv"]
        assert len(convs) == 2 and any(m.op_type == "Relu" for m in branch.node)
        for conv in convs:
            assert set(conv.input[1:]) <= {t.name for t in branch.initializer}
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    opt = onnx.load(str(tmp_path / "optimized.onnx")).graph
    blocked = lambda nodes: [m.domain == "com.microsoft.nchwc" for m in nodes if m.op_type == "Conv"]  # noqa: E731
    inner = [b for n in opt.node if n.op_type == "If" for a in n.attribute if a.name == "then_branch"
             for b in blocked(a.g.node)]
    assert inner and all(inner) == any(blocked(opt.node)), "the branches' convs should be blocked as the main graph's"


@pytest.mark.parametrize("kind, granularity", [("dependent", "channel"), ("dependent", "layer"),
                                               ("static+dependent", "channel"), ("static+dependent", "layer")])
def test_the_dynamic_models_decide_as_the_gates_do(kind, granularity):
    from chanprune.dynamic import _Decision

    model, graph, gates, _ = _gated(kind=kind, granularity=granularity, spread=6.0 if granularity == "layer" else 3.0)
    gates.eval()  # the gate network's batch norm on its running statistics, as deployed
    kept = total = 0
    for gi in gates.dependent:
        g = gates.gates[gi]
        x = torch.randn(64, g.in_channels, 6, 6)
        with torch.no_grad():
            want = g.mask_from(x, "threshold", tau=gates.tau) > 0
            got = _Decision(g, gates.tau)(x.mean((2, 3)))
        assert got.shape[1] == (1 if granularity == "layer" else g.num_channels)
        assert torch.equal(got.expand(-1, g.num_channels), want)
        kept, total = kept + int(want.sum()), total + want.numel()
    assert 0.1 < kept / total < 0.9  # decisions both ways


def test_onnx_dynamic_model_bad_inputs():
    model, graph, gates, _ = _gated()
    with pytest.raises(ValueError, match="layer granularity"):
        onnx_dynamic_model(model, graph, gates, "if")
    with pytest.raises(ValueError, match="unknown way"):
        onnx_dynamic_model(model, graph, gates, "switch")


def test_static_and_dependent_gates_together_are_exact_everywhere(tmp_path):
    import numpy as np
    import onnxruntime as ort

    model, graph, gates, cost = _gated(kind="static+dependent")
    x = _digits(12)
    with torch.no_grad():
        ref = model(x)
        masks = [m.clone() for m in gates.current()]
    for gi in gates.dependent:  # an input keeps only what the static plan keeps
        static = (gates.gates[gi].probs() > 0.5).float()
        assert 0 < static.sum() < static.numel()
        assert bool((masks[gi] <= static).all())
    assert bool((cost.ratio_of(masks) < 1).all())
    with torch.no_grad():
        out = dynamic_model(model, graph, gates)(x)
    assert within_tolerance(float((out - ref).abs().max()), float(ref.abs().max()), atol=DEFAULT_ATOL, rtol=DEFAULT_RTOL)
    path = export_onnx(onnx_dynamic_model(model, graph, gates, "gather"), x[:1], tmp_path / "g.onnx",
                       dynamic_batch=False, exporter="torchscript")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = np.concatenate([sess.run(None, {"input": x[i:i + 1].numpy()})[0] for i in range(len(x))])
    assert within_tolerance(float(np.abs(got - ref.numpy()).max()), float(ref.abs().max()),
                            atol=DEFAULT_ATOL, rtol=DEFAULT_RTOL)
    model.train()
    z = gates.gates[gates.dependent[0]].sample_from(torch.randn(4, 16, 8, 8))
    z.sum().backward()  # both parts learn
    g = gates.gates[gates.dependent[0]]
    assert g.static.logits.grad is not None and g.fc2.weight.grad is not None


def test_dynamic_model_needs_dependent_gates():
    model = build_model("resnet20", num_classes=10)
    graph = find_groups(model, torch.zeros(1, 3, 32, 32))
    gates = GateSet(graph).attach_(model)
    with pytest.raises(ValueError, match="no data-dependent gates"):
        dynamic_model(model, graph, gates)


@pytest.fixture(scope="module")
def dep_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("conditional") / "dep"
    r = CliRunner().invoke(cli, ["learn", "--arch", "resnet20", "--data", "digits", "--gate", "dependent", "--target",
                                 "0.5", "--epochs", "1", "--out", str(run), "--json"])
    assert r.exit_code == 0, r.output
    return run, json.loads(r.stdout)


def test_learn_dependent_reports_each_inputs_cost(dep_run):
    run, res = dep_run
    ex = res["executed_cost"]
    bundle = load_data("digits", seed=0)
    assert 0 < ex["min"] <= ex["mean"] <= ex["max"] <= 1
    assert sum(ex["histogram"]) == len(bundle.test or bundle.val)  # one entry per test input
    assert torch.load(run / "model.pt", weights_only=True)["result"]["executed_cost"] == ex


def test_export_refuses_a_dependent_run(dep_run, tmp_path):
    run, _ = dep_run
    r = CliRunner().invoke(cli, ["export", str(run / "model.pt"), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "depend on the input" in r.output


def test_eval_modes_report_accuracy_and_each_inputs_cost(dep_run):
    run, res = dep_run

    def ev(*args):
        r = CliRunner().invoke(cli, ["eval", str(run / "model.pt"), "--data", "digits", "--json", *args])
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout)

    thr = ev()
    assert thr["mode"] == "threshold" and thr["accuracy"] == pytest.approx(res["test_accuracy"])
    assert thr["cost"]["mean"] == pytest.approx(res["executed_cost"]["mean"])
    assert thr["skipped_per_group"]["conv1"] == 0.0  # the residual stream is static and open
    sto = ev("--mode", "stochastic")
    assert sto == ev("--mode", "stochastic")  # seeded: the same draws every time
    ens = ev("--mode", "ensemble", "--samples", "3")
    assert ens["samples"] == 3 and sum(ens["cost"]["histogram"]) == ens["count"]
    assert ens["cost"]["mean"] == pytest.approx(3 * sto["cost"]["mean"], rel=0.1)  # three runs cost three times one


def test_eval_mode_needs_a_gated_checkpoint(dep_run, tmp_path):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"")
    r = CliRunner().invoke(cli, ["eval", str(onnx), "--data", "digits", "--mode", "stochastic"])
    assert r.exit_code == 2 and "gated model.pt" in r.output, r.output


@pytest.mark.parametrize("extra, message", [
    (["--block", "16"], "drop --block"),
    (["--finetune-epochs", "1"], "drop --finetune-epochs"),
    (["--granularity", "layer", "--block", "16"], "drop --block"),
    (["--granularity", "layer", "--gate-init", "norm"], "drop it"),
    (["--granularity", "block"], "Invalid value for '--granularity'"),
    (["--dependent-gate-lr", "0"], "Invalid value for '--dependent-gate-lr'"),
    (["--gate", "static+dependent", "--finetune-epochs", "1"], "drop --finetune-epochs"),
    (["--gate", "static+dependent", "--block", "8"], "drop --block"),
    (["--gate", "gumbel", "--dependent-finetune"], "needs --gate dependent"),
])
def test_learn_dependent_bad_options(tmp_path, extra, message):
    r = CliRunner().invoke(cli, ["learn", "--arch", "resnet20", "--data", "digits", "--gate", "dependent", "--target",
                                 "0.5", "--epochs", "1", "--out", str(tmp_path / "r"), *extra])
    assert r.exit_code == 2 and message in r.output, r.output


def test_deterministic_gates_train_the_model_under_their_threshold_decisions():
    model, graph, gates, _ = _gated(kind="static+dependent")
    gates.eval()
    x = _digits(8)
    with torch.no_grad():
        model(x)
        want = [m.clone() for m in gates.current()]
    stats = [g.bn.running_mean.clone() for g in (gates.gates[gi] for gi in gates.dependent)]
    gates.deterministic = True
    model.train()
    for m in model.modules():  # the model's own batch norms as in eval, so that every gate sees the same input
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    model(x)  # the gated convs in training mode: no samples, the gate networks in eval mode
    for a, b in zip(gates.current(), want):
        assert torch.equal(a.expand_as(b), b)
    for gi, s in zip(gates.dependent, stats):
        assert not gates.gates[gi].training and torch.equal(gates.gates[gi].bn.running_mean, s)
    gates.deterministic = False
    model(x)
    assert gates.gates[gates.dependent[0]].training  # sampling again, batch norm in training mode


def test_learn_dependent_finetune_freezes_the_gate_network_then_trains_the_weights(tmp_path):
    run = tmp_path / "dep-ft"
    r = CliRunner().invoke(cli, ["learn", "--arch", "resnet20", "--data", "digits", "--gate", "dependent", "--target",
                                 "0.5", "--epochs", "2", "--dependent-finetune", "--out", str(run), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    ck = torch.load(run / "model.pt", weights_only=True)
    frozen = ck["frozen"]
    assert frozen["reason"] == "deadline" and frozen["finetune_steps"] > 0
    assert frozen["steps"] == int(0.5 * (frozen["steps"] + frozen["finetune_steps"]))  # the deadline: half the budget
    assert ck["stage"] == "done" and 0 < res["executed_cost"]["mean"] < 1
    ev = CliRunner().invoke(cli, ["eval", str(run / "model.pt"), "--data", "digits", "--json"])
    assert ev.exit_code == 0 and json.loads(ev.stdout)["accuracy"] == pytest.approx(res["test_accuracy"])


def test_report_plots_the_work_skipped_per_group(dep_run):
    run, _ = dep_run
    assert CliRunner().invoke(cli, ["eval", str(run / "model.pt"), "--data", "digits"]).exit_code == 0
    r = CliRunner().invoke(cli, ["report", str(run), "--json"])
    assert r.exit_code == 0, r.output
    files = json.loads(r.stdout)["files"]
    assert (run / "skipped.png").is_file() and files["skipped"].endswith("skipped.png")
    summary = (run / "summary.md").read_text()
    assert "executed FLOPs per input (threshold)" in summary and "skipped.png" in summary


def test_learn_static_layer_granularity_removes_whole_blocks_exactly(tmp_path):
    run = tmp_path / "layer"
    r = CliRunner().invoke(cli, ["learn", "--arch", "resnet20", "--data", "digits", "--granularity", "layer",
                                 "--target", "0.5", "--epochs", "1", "--out", str(run), "--json"])
    assert r.exit_code == 0, r.output
    ckpt = torch.load(run / "model.pt", weights_only=True)
    layers = set(ckpt["gate"]["config"]["layers"])
    assert len(layers) == 9 and ckpt["gate"]["config"]["granularity"] == "layer"
    plan = {g["name"]: g for g in json.loads(json.dumps(ckpt["plan"]))["groups"]}
    assert any(not plan[n]["keep"] for n in layers), "at half the FLOPs some residual branches go"
    for name, g in plan.items():
        assert len(g["keep"]) in ((0, g["size"]) if name in layers else (g["size"],)), name
    assert abs(json.loads(r.stdout)["cost_ratio"] - 0.5) <= 0.05  # projected onto the target, whole branches at a time
    e = CliRunner().invoke(cli, ["export", str(run / "model.pt"), "--out", str(tmp_path / "x"), "--json"])
    assert e.exit_code == 0 and json.loads(e.stdout)["exact"], e.output


def test_learn_static_and_dependent_at_layer_granularity(tmp_path):
    run = tmp_path / "sd"
    r = CliRunner().invoke(cli, ["learn", "--arch", "resnet20", "--data", "digits", "--gate", "static+dependent",
                                 "--granularity", "layer", "--target", "0.5", "--epochs", "1", "--out", str(run),
                                 "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert 0 < res["executed_cost"]["min"] <= res["executed_cost"]["max"] <= 1
    gate = torch.load(run / "model.pt", weights_only=True)["gate"]
    assert gate["kind"] == "static+dependent" and gate["config"]["granularity"] == "layer"
    e = CliRunner().invoke(cli, ["eval", str(run / "model.pt"), "--data", "digits", "--mode", "stochastic", "--json"])
    assert e.exit_code == 0, e.output
