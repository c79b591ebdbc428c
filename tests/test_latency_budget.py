"""The latency budget: the cost from a latency table, gates over channel blocks (aligned by
construction), projection by whole blocks, and export's alignment rule and predicted speedup.
The table is synthetic here (tests/_lut.py); `chanprune profile`'s own tests time real ones."""
import json

import pytest
import torch
from click.testing import CliRunner

from chanprune.cost import make_cost
from chanprune.deploy import unaligned_groups
from chanprune.freeze import freeze, project_plan
from chanprune.gates import BlockGate, GateSet
from chanprune.graph import find_groups
from chanprune.measure.lut import LatencyTable, machine_mismatch
from chanprune.zoo import build_model
from chanprune_cli.main import main
from tests import nets
from tests._lut import synthetic_table


def run(*args, code=0):
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == code, r.output + repr(r.exception)
    return r


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, in_channels=3)
    x = torch.zeros(1, 3, 8, 8)
    graph = find_groups(model, x)
    table = synthetic_table(model, x, block=4, batch_sizes=(1, 32), arch="resnet20")
    return model, x, graph, table


def test_latency_cost_is_the_table_and_differentiable(resnet):
    model, x, graph, table = resnet
    cost = make_cost("latency", model, x, graph, lut=table)
    ones = [torch.ones(g.size) for g in graph.groups]
    assert cost.ratio_of(ones) == pytest.approx(1.0)
    assert cost.dense() == pytest.approx(float(table.predict_ms({}, 1)))
    half = [torch.cat([torch.ones(g.size // 2), torch.zeros(g.size - g.size // 2)]) for g in graph.groups]
    # at aligned counts the cost is the table's own prediction, per batch size, averaged as ratios
    counts = {}
    for t, cin, cout in cost.layers:
        counts[t.module] = (cin(half) if cin else t.channels_in, cout(half) if cout else t.channels_out)
    want = sum(float(table.predict_ms(counts, b)) / float(table.predict_ms({}, b)) for b in (1, 32)) / 2
    assert float(cost.ratio_of(half)) == pytest.approx(want)
    assert 0.1 < want < 0.6
    soft = [torch.full((3, g.size), 0.7, requires_grad=True) for g in graph.groups]
    r = cost.ratio_of(soft)
    assert r.shape == (3,)
    r.sum().backward()
    assert all(s.grad is not None and (s.grad > 0).all() for s in soft)  # more channels, more time
    assert float(cost.ratio_of([torch.zeros(g.size) for g in graph.groups])) == pytest.approx(cost.floor())


def test_flops_reward_is_subtracted_and_pulls_toward_flops(resnet):
    from chanprune.objective import BudgetObjective

    model, x, graph, table = resnet
    lat, flops = make_cost("latency", model, x, graph, lut=table), make_cost("flops", model, x, graph)
    logits, y = torch.randn(3, 10), torch.tensor([1, 2, 3])
    soft = [torch.full((3, g.size), 0.6, requires_grad=True) for g in graph.groups]
    plain = BudgetObjective(lat, 0.5, lam=5.0)
    rewarded = BudgetObjective(lat, 0.5, lam=5.0, reward=(flops, 2.0))
    assert BudgetObjective(lat, 0.5, reward=(flops, 0.0)).reward is None  # weight 0: the plain objective
    a, _ = plain(logits, y, soft)
    b, stats = rewarded(logits, y, soft)
    kept = flops.ratio_of(soft).mean()
    assert float(b) == pytest.approx(float(a) - 2.0 * float(kept)) and float(stats["reward"]) == pytest.approx(float(kept))
    ga = torch.autograd.grad(a, soft[0])[0]
    gb = torch.autograd.grad(b, soft[0])[0]
    assert (gb < ga).all()  # every channel's FLOPs pull it open: a lower gradient on its mask


def test_flops_weight_keeps_more_flops_at_the_same_latency(tmp_path):
    """A table where layer3's layers take 6x their FLOPs' time: the reward moves the cut there."""
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, in_channels=3)
    x = torch.zeros(1, 3, 8, 8)
    table = synthetic_table(model, x, block=4, batch_sizes=(1,), arch="resnet20")
    for layer in table.layers:
        if layer.module.startswith("layer3"):
            layer.ms = {b: [[v * 6 for v in row] for row in grid] for b, grid in layer.ms.items()}
    lut = table.save(tmp_path / "lut.json")
    got = {}
    for w in (0, 1):
        out = tmp_path / f"fw{w}"
        res = json.loads(run("learn", "--arch", "resnet20", "--data", "digits", "--target", 0.5, "--epochs", 2,
                             "--batch-size", 64, "--budget", "latency", "--lut", lut, "--flops-weight", w,
                             "--out", out, "--json").stdout)
        assert abs(res["cost_ratio"] - 0.5) <= 0.05
        assert torch.load(out / "model.pt", weights_only=True)["learn_config"]["flops_weight"] == w
        got[w] = json.loads(run("export", out / "model.pt", "--no-onnx", "--out", tmp_path / f"x{w}", "--json").stdout)
    assert got[1]["flops_ratio"] > got[0]["flops_ratio"] + 0.1, (got[0]["flops_ratio"], got[1]["flops_ratio"])


def test_table_round_trip_and_machine_warning(resnet, tmp_path):
    _, _, _, table = resnet
    path = table.save(tmp_path / "lut.json")
    again = LatencyTable.load(path)
    assert again.to_dict() == json.loads(json.dumps(table.to_dict()))
    assert machine_mismatch(again) is None
    again.machine = {**again.machine, "cpu": "Some Other CPU"}
    assert "another machine" in machine_mismatch(again)
    (tmp_path / "bad.json").write_text("{\"version\": 1}")
    with pytest.raises(ValueError, match="latency table"):
        LatencyTable.load(tmp_path / "bad.json")


def test_block_gates_keep_aligned_counts_and_rank_by_score():
    model = nets.Chain(num_classes=5)
    x = torch.randn(2, 3, 16, 16)
    graph = find_groups(model, x[:1])
    gates = GateSet(graph, config={"block": 4})
    assert all(isinstance(g, BlockGate) for g, grp in zip(gates.gates, graph.groups) if not grp.partition)
    for g in gates.gates:
        z = g.sample(5)
        for row in z:
            assert int(row.sum()) % 4 == 0 or int(row.sum()) == g.num_channels
    scores = [torch.arange(g.size, dtype=torch.float) for g in graph.groups]  # the last channels matter most
    gates.rank_blocks_(scores)
    g0, size = gates.gates[0], graph.groups[0].size
    assert g0.units()[0] == list(range(size - 4, size))
    # the blocks travel in the state dict: a fresh set loaded from it has the same blocks
    fresh = GateSet(graph, config={"block": 4})
    fresh.load_state_dict(gates.state_dict())
    assert fresh.units() == gates.units()
    with torch.no_grad():
        for g in gates.gates:
            g.inner.logits.normal_()
    plan = freeze(graph, gates.probs())
    assert unaligned_groups(plan, graph, 4) == 0


def _block_gates(resnet, seed: int):
    """The fixture's latency cost and Gumbel gates over blocks of 4, with the RNG at `seed`."""
    model, x, graph, table = resnet
    torch.manual_seed(seed)
    return graph, make_cost("latency", model, x, graph, lut=table), GateSet(graph, config={"block": 4})


def test_projection_ranks_polarized_gates_by_their_margins(resnet):
    """Once the gates polarize every kept probability is 1.0 in float32: ranked by it, the projection
    dropped the earliest groups' blocks first. By the logit gaps it drops the least certain ones."""
    graph, cost, gates = _block_gates(resnet, 2)
    with torch.no_grad():
        for g in gates.gates:
            g.inner.logits[:, 0] = 0.0
            g.inner.logits[:, 1] = 40.0 + 20.0 * torch.rand(g.inner.logits.shape[0])  # all saturated
        weak = gates.gates[-1].inner.logits
        weak[:, 1] = 25.0  # the last group's blocks: the smallest gaps
    assert all(bool((p == 1.0).all()) for p in gates.probs())
    margins = gates.margins()
    assert margins[-1].max() < min(float(m.min()) for m in margins[:-1])
    plan = freeze(graph, gates.probs(), cost=cost)
    by_prob = project_plan(plan, graph, cost, 0.95, tolerance=0.0, units=gates.units())
    by_margin = project_plan(plan, graph, cost, 0.95, tolerance=0.0, units=gates.units(),
                             scores=[m.tolist() for m in margins])
    changed = lambda out: [i for i, (a, b) in enumerate(zip(plan.groups, out.groups)) if a.keep != b.keep]  # noqa: E731
    assert changed(by_prob)[0] == 0  # the tie fell to group order
    assert changed(by_margin) == [len(graph.groups) - 1]
    assert cost.ratio(by_margin) <= 0.95 and cost.ratio(by_prob) <= 0.95


def test_projection_moves_whole_blocks(resnet):
    graph, cost, gates = _block_gates(resnet, 1)
    with torch.no_grad():
        for g in gates.gates:
            g.inner.logits[:, 1] += 3.0  # nearly all open: far above a target of 0.5
            g.inner.logits.add_(torch.randn_like(g.inner.logits) * 0.1)
    plan = freeze(graph, gates.probs(), cost=cost)
    assert cost.ratio(plan) > 0.9
    out = project_plan(plan, graph, cost, 0.5, tolerance=0.02, units=gates.units())
    assert cost.ratio(out) <= 0.5 and 0.5 - cost.ratio(out) < 0.05
    assert unaligned_groups(out, graph, 4) == 0 and all(len(gp.keep) for gp in out.groups)
    loose = project_plan(plan, graph, cost, 0.5, tolerance=0.02)  # channel by channel: unaligned
    assert unaligned_groups(loose, graph, 4) > 0


@pytest.fixture(scope="module")
def learned(resnet, tmp_path_factory):
    root = tmp_path_factory.mktemp("latency")
    lut = resnet[3].save(root / "lut.json")
    out = root / "run"
    res = json.loads(run("learn", "--arch", "resnet20", "--data", "digits", "--target", 0.5, "--epochs", 3,
                         "--batch-size", 64, "--budget", "latency", "--lut", lut, "--out", out, "--json").stdout)
    return root, lut, out, res


def test_learn_against_latency_is_aligned_near_target_and_exports_exactly(learned):
    root, lut, out, res = learned
    assert res["cost"] == "latency" and abs(res["cost_ratio"] - 0.5) <= 0.05
    ckpt = torch.load(out / "model.pt", weights_only=True)
    assert ckpt["gate"]["config"]["block"] == 4 and ckpt["gate"]["config"]["essential"] and ckpt["plan"]["meta"]["block"] == 4
    assert all(len(g["keep"]) % 4 == 0 for g in ckpt["plan"]["groups"])
    assert ckpt["cost"]["table"]["layers"]  # the table travels with the run
    lut.unlink()  # export needs no file: the checkpoint holds the table
    r = run("export", out, "--no-onnx", "--out", root / "exp")
    assert "predicted speedup on ort-cpu" in r.output and "EXACT" in r.output
    rep = json.loads((root / "exp" / "export.json").read_text())
    sp = rep["predicted_speedup"]["by_batch"]
    assert set(sp) == {"1", "32"} and all(v > 1.2 for v in sp.values())
    assert rep["round_to"] is None  # learned aligned to its own block; no rounding after the fact


def test_resume_rebuilds_the_cost_from_the_checkpoint(learned):
    _, _, out, res = learned
    again = json.loads(run("learn", "--arch", "resnet20", "--data", "digits", "--target", 0.5, "--epochs", 3,
                           "--budget", "latency", "--out", out, "--resume", "--json").stdout)
    assert again["already_complete"]


def test_lut_auto_profiles_the_model_being_learned(tmp_path, monkeypatch):
    """--lut auto profiles first: the model as it is learned (10 classes here, not the arch's
    default head) at the learning input; the timing itself is `profile`'s tests' business."""
    import chanprune.profile

    seen = {}

    def fake(model, input_shape, *, arch=None, progress=None, **kw):
        seen.update(arch=arch, shape=list(input_shape), classes=model.fc.out_features)
        progress("graph", {"layers": 1, "unique": 1, "points": 1})
        return synthetic_table(model, torch.zeros(input_shape), block=4, arch=arch)

    monkeypatch.setattr(chanprune.profile, "profile_model", fake)
    r = run("learn", "--arch", "resnet20", "--data", "digits", "--target", 0.6, "--epochs", 1, "--batch-size", 64,
            "--budget", "latency", "--lut", "auto", "--finetune-epochs", 0, "--out", tmp_path / "run")
    assert seen == {"arch": "resnet20", "shape": [1, 3, 8, 8], "classes": 10}
    assert "profiling (--lut auto)" in r.output
    ckpt = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert ckpt["cost"]["table"]["block"] == 4 and ckpt["plan"]["meta"]["block"] == 4


@pytest.mark.parametrize("args,message", [
    (["--budget", "latency"], "needs --lut"),
    (["--budget", "latency", "--lut", "missing.json"], "--lut"),
    (["--budget", "latency", "--lut", "other.json"], "another architecture"),
    (["--lut", "lut.json"], "only for --budget latency"),
    (["--block", "0"], "--block"),
    (["--block", "abc"], "--block"),
    (["--flops-weight", "1"], "--flops-weight"),  # under the FLOPs budget it would fight the target
    (["--budget", "latency", "--lut", "lut.json", "--flops-weight", "-1"], "--flops-weight"),
])
def test_learn_latency_bad_inputs(resnet, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    resnet[3].save(tmp_path / "lut.json")
    other = synthetic_table(nets.Chain(num_classes=5), torch.zeros(1, 3, 16, 16))
    other.save(tmp_path / "other.json")
    r = CliRunner().invoke(main, ["learn", "--arch", "resnet20", "--data", "digits", "--target", "0.5", "--epochs", "1",
                                  "--out", "run", *args])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "run" / "model.pt").exists()


@pytest.fixture(scope="module")
def unaligned(tmp_path_factory):
    """A FLOPs run, not fine-tuned, and the same fine-tuned: unaligned plans."""
    root = tmp_path_factory.mktemp("unaligned")
    for name, extra in (("raw", ["--finetune-epochs", 0]), ("tuned", ["--finetune-epochs", 1])):
        run("learn", "--arch", "resnet20", "--data", "digits", "--target", 0.45, "--epochs", 1, "--batch-size", 64,
            "--out", root / name, *extra)
    return root


def test_export_round_to_auto(unaligned, tmp_path):
    r = json.loads(run("export", unaligned / "raw", "--no-onnx", "--out", tmp_path / "a", "--json").stdout)
    assert r["round_to"] == r["block"] and r["aligned"] and not r["warnings"] and r["exact"]
    r = json.loads(run("export", unaligned / "raw", "--no-onnx", "--round-to", 1, "--out", tmp_path / "b",
                       "--json").stdout)
    assert r["round_to"] == 1 and not r["aligned"]
    r = run("export", unaligned / "tuned", "--no-onnx", "--out", tmp_path / "c")
    rep = json.loads((tmp_path / "c" / "export.json").read_text())
    assert rep["round_to"] is None and not rep["aligned"] and "--round-to" in r.output and "EXACT" in r.output
    for bad in ("0", "x"):
        r = CliRunner().invoke(main, ["export", str(unaligned / "raw"), "--round-to", bad, "--out", str(tmp_path / "d")])
        assert r.exit_code == 2 and "--round-to" in r.output and not (tmp_path / "d").exists()
