"""The benchmark machinery: resumable rows, the Torch-Pruning FLOPs match, the README tables, and the
CI latency guard, which must trip when the "slim" model is the unpruned one."""
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


@pytest.fixture
def common(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCH))
    mod = importlib.import_module("_common")
    monkeypatch.setattr(mod, "RESULTS", tmp_path)
    return mod


def test_rows_resume_from_the_file(common, tmp_path):
    rows = common.Rows("grid")
    rows.add({"key": "a/1", "value": 1.5})
    rows.add({"key": "a/2", "value": 2.5})
    again = common.Rows("grid")  # a new process after a kill
    assert "a/1" in again and "a/2" in again and "a/3" not in again
    assert again.get("a/2")["value"] == 2.5 and again.get("a/2")["machine"]
    assert len((tmp_path / "grid.jsonl").read_text().splitlines()) == 2


def test_torch_pruning_is_matched_to_the_flops_asked(common):
    from chanprune.measure.flops import count_flops
    from chanprune.zoo import build_model

    base = build_model("resnet20", num_classes=10).eval()
    x = torch.zeros(1, 3, 32, 32)
    dense = count_flops(base, x).total
    import copy

    for importance in ("magnitude", "group-norm"):
        model, ratio, flops = common.tp_prune_to_flops(lambda: copy.deepcopy(base), x, int(0.5 * dense),
                                                       importance=importance)
        assert flops == count_flops(model, x).total
        assert 0.46 * dense <= flops <= 0.5 * dense, (importance, flops / dense)
        assert 0.2 < ratio < 0.4
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_readme_tables_come_from_the_committed_rows(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    report = importlib.import_module("report")
    text = report.render()
    assert "### Latency efficiency" in text and "### CI latency guard" in text
    readme = (ROOT / "README.md").read_text()
    block = readme.split(report.BEGIN, 1)[1].split(report.END, 1)[0]
    assert block.strip() == text.strip(), "README is stale: run python benchmarks/report.py --readme"


def test_accuracy_table_measures_a_bn_setup_from_the_baseline_re_estimated_the_same_way(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    report = importlib.import_module("report")
    run = lambda arch, setup, m, acc: {"key": f"{arch}/{setup}/{m}", "arch": arch, "setup": setup, "target": 0.5,  # noqa: E731
                                       "seed": 0, "method": m, "flops_ratio": 0.5, "val_after_pruning": 0.5,
                                       "test_accuracy": acc, "train_seconds": 10.0,
                                       **({"image_size": 64, "bn_batches": 100} if "-bn" in setup else {})}
    rows = [{"key": "lite/baseline", "arch": "lite", "method": "baseline", "test_accuracy": 0.75},
            {"key": "lite/latency-baseline", "suite": "latency", "arch": "lite", "method": "baseline", "test_accuracy": 0.80},
            {"key": "lite/baseline-bn100", "arch": "lite", "method": "baseline", "bn_batches": 100, "test_accuracy": 0.86},
            {"key": "r20/baseline", "arch": "r20", "method": "baseline", "test_accuracy": 0.92},
            run("lite", "L12000-e3-64px-bn100", "chanprune", 0.84), run("lite", "L12000-e3-64px-bn100", "tp-fpgm", 0.85),
            run("r20", "L12000-e3", "chanprune", 0.91), run("r20", "L12000-e3", "tp-fpgm", 0.90)]
    monkeypatch.setattr(report, "load", lambda name: rows if name == "accuracy" else [])
    text = "\n".join(report.accuracy_section())
    assert "| lite | - | baseline (batch norms re-estimated on 100 batches) | 1.000 | - | 86.00 |" in text
    assert "| lite | 0.5 | chanprune | 0.500 | 50.00 | 84.00 ± 0.00 | -2.00 |" in text
    assert "| r20 | - | baseline | 1.000 | - | 92.00 |" in text and "| r20 | 0.5 | chanprune | 0.500 | 50.00 | 91.00 ± 0.00 | -1.00 |" in text
    assert "without re-estimation scores 75.00%" in text


def test_accuracy_table_measures_each_run_from_its_own_baseline(monkeypatch):
    """Runs that name a retrained baseline (`baseline_key`) lose from that one; the table lists it."""
    monkeypatch.syspath_prepend(str(BENCH))
    report = importlib.import_module("report")
    run = lambda seed, m, acc, **kw: {"key": f"r56/s{seed}/{m}", "arch": "r56", "setup": "L12000-e3",  # noqa: E731
                                      "target": 0.25, "seed": seed, "method": m, "flops_ratio": 0.2,
                                      "val_after_pruning": 0.5, "test_accuracy": acc, "train_seconds": 10.0, **kw}
    again = {"baseline_key": "r56/baseline-retrained"}
    rows = [{"key": "r56/baseline", "arch": "r56", "method": "baseline", "test_accuracy": 0.90},
            {"key": "r56/baseline-retrained", "arch": "r56", "method": "baseline", "retrained": True,
             "test_accuracy": 0.88, "date": "2026-12-02"},
            run(0, "chanprune", 0.89), run(0, "tp-group-norm", 0.87),
            run(1, "chanprune", 0.87, **again), run(1, "tp-group-norm", 0.86, **again),
            run(0, "tp-fpgm+cp", 0.80, **again), run(1, "tp-fpgm+cp", 0.86, **again)]
    monkeypatch.setattr(report, "load", lambda name: rows if name == "accuracy" else [])
    text = "\n".join(report.accuracy_section())
    assert "| r56 | - | baseline | 1.000 | - | 90.00 |" in text
    assert "| r56 | - | baseline retrained with the same command (2026-12-02), the runs of t=0.25 seed 0 (tp-fpgm+cp), t=0.25 seed 1 | 1.000 | - | 88.00 |" in text
    # chanprune: (0.90 - 0.89 + 0.88 - 0.87) / 2 = 1 point; group norm: (3 + 2) / 2 = 2.5 points
    assert "| r56 | 0.25 | chanprune | 0.200 | 50.00 | 88.00 ± 1.41 | -1.00 |" in text
    assert "| r56 | 0.25 | tp-group-norm | 0.200 | 50.00 | 86.50 ± 0.71 | -2.50 |" in text
    assert "chanprune loses 1.00 points, the best Torch-Pruning method (tp-group-norm) 2.50: goal (at most half) met" in text
    # seed 0's FPGM run started from the other baseline: no pair with seed 0's chanprune
    assert "| r56 | 0.25 | tp-fpgm+cp | 0.200 | 50.00 | 83.00 ± 4.24 | -5.00 | +1.00 (wins 1/1) |" in text


def test_latency_accuracy_table_keeps_each_baselines_runs_apart(monkeypatch):
    """A baseline retrained on another machine (other bits) starts another block: its runs (baseline_key)
    are neither averaged nor paired with the first baseline's, even at the same seed."""
    monkeypatch.syspath_prepend(str(BENCH))
    report = importlib.import_module("report")
    run = lambda seed, m, acc, **kw: {"key": f"lite/s{seed}/{m}{kw.get('baseline_key', '')}", "suite": "latency",  # noqa: E731
                                      "arch": "lite", "setup": "L12000-e2-bn100", "latency_target": 0.5,
                                      "seed": seed, "method": m, "latency_ratio_b1": 0.5, "flops_ratio": 0.4,
                                      "test_accuracy": acc, "train_seconds": 10.0, **kw}
    other = {"baseline_key": "lite/latency-baseline-c41bdb63"}
    rows = [{"key": "lite/latency-baseline", "suite": "latency", "arch": "lite", "method": "baseline",
             "sha256": "0c0be01e00", "test_accuracy": 0.80, "machine": "Intel(R) Xeon(R) Processor, 2 cores",
             "date": "2026-12-03"},
            {"key": "lite/latency-baseline-c41bdb63", "suite": "latency", "arch": "lite", "method": "baseline",
             "sha256": "c41bdb6300", "test_accuracy": 0.84, "machine": "AMD EPYC, 2 cores", "date": "2026-12-04"},
            run(0, "cp-latency", 0.82), run(0, "tp-r16+cp", 0.83),
            run(0, "cp-latency", 0.90, **other), run(0, "tp-r16+cp", 0.85, **other)]
    monkeypatch.setattr(report, "load", lambda name: rows if name == "accuracy" else [])
    text = "\n".join(report.latency_accuracy_section())
    assert "| lite | 0c0be01e, 2026-12-03 | - | - | baseline (ImageNet weights, moved; Intel(R) Xeon(R) Processor) |" in text
    assert "| lite | c41bdb63, 2026-12-04 | - | - | baseline (ImageNet weights, moved; AMD EPYC) |" in text
    assert "| 0c0be01e, 2026-12-03 | L12000-e2-bn100 | 0.5 | tp-r16+cp | 0.500 | 0.400 | 83.00 | -1.00 (wins 0/1) |" in text
    assert "| c41bdb63, 2026-12-04 | L12000-e2-bn100 | 0.5 | tp-r16+cp | 0.500 | 0.400 | 85.00 | +5.00 (wins 1/1) |" in text


def test_latency_fidelity_names_lambdas_rate_and_where_replaced_rows_went(monkeypatch):
    """A plan row that records the rate `--lam-rate auto` chose shows it; one without (learned when 0.05
    was the default) shows 0.05; rows archived by a relearn are pointed to."""
    monkeypatch.syspath_prepend(str(BENCH))
    report = importlib.import_module("report")
    lat = lambda arch, b, speedup: {"key": f"lat/{arch}/t0.5/cp-latency/b{b}", "kind": "latency", "arch": arch,  # noqa: E731
                                    "target": 0.5, "method": "cp-latency", "batch": b, "flops_ratio": 0.4,
                                    "speedup": speedup, "efficiency": 0.4 * speedup}
    plan = lambda arch, **kw: {"key": f"plan/{arch}/t0.5", "kind": "plan", "arch": arch, "target": 0.5,  # noqa: E731
                               "latency_learned": 0.56, "latency_projected": 0.5, "aligned": True, **kw}
    rows = {"latency_budget": [plan("old"), lat("old", 1, 2.0), lat("old", 32, 2.5),
                               plan("new", lam_rate=0.1023), lat("new", 1, 2.0), lat("new", 32, 2.5)],
            "latency_budget_2026-12-01": [plan("new")], "latency_budget_stale-table": [plan("new")]}
    monkeypatch.setattr(report, "load", lambda name: rows.get(name, []))
    text = "\n".join(report.latency_budget_section())
    assert "| old | 0.5 | 0.05 | 0.560 | 0.500 | 0.500 | 0.400 | 0.450 | -0.050 | yes |" in text
    assert "| new | 0.5 | auto (0.102) | 0.560 | 0.500 |" in text
    assert "are kept: learned with lambda's rate 0.05" in text
    assert "in `benchmarks/results/latency_budget_2026-12-01.jsonl`; the mobile nets'" in text
    assert "in `benchmarks/results/latency_budget_stale-table.jsonl`." in text
    del rows["latency_budget_2026-12-01"]
    text = "\n".join(report.latency_budget_section())
    assert "latency_budget_2026-12-01" not in text and "latency_budget_stale-table.jsonl" in text
    del rows["latency_budget_stale-table"]
    assert "are kept" not in "\n".join(report.latency_budget_section())


def test_a_replaced_baseline_gets_its_own_row_and_its_runs_name_it(monkeypatch, tmp_path):
    """The main suite measures a baseline once; when the file holds other weights later (retrained),
    it writes a second row for them and returns its key, which the runs then carry."""
    monkeypatch.syspath_prepend(str(BENCH))
    common, accuracy = importlib.import_module("_common"), importlib.import_module("accuracy")
    import chanprune.evaluate

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    scores = iter([0.90, 0.88, 0.86])
    monkeypatch.setattr(chanprune.evaluate, "eval_model", lambda path, data: {"accuracy": next(scores)})
    base = tmp_path / "model.pt"
    torch.save({"state_dict": {"w": torch.ones(3)}, "saved": 1}, base)
    rows = common.Rows("acc")
    assert accuracy.baseline_row(rows, "r56", base) is None  # the first: ARCH/baseline, with its digest
    torch.save({"state_dict": {"w": torch.ones(3)}, "saved": 2}, base)  # the same weights, another file
    assert accuracy.baseline_row(rows, "r56", base) is None and len(rows.rows) == 1
    torch.save({"state_dict": {"w": torch.zeros(3)}}, base)  # retrained
    key = accuracy.baseline_row(rows, "r56", base)
    assert key.startswith("r56/baseline-") and rows.get(key)["retrained"] and rows.get(key)["test_accuracy"] == 0.88
    assert accuracy.baseline_row(common.Rows("acc"), "r56", base) == key  # found again from the file
    legacy = common.Rows("legacy")
    legacy.add({"key": "r20/baseline", "arch": "r20", "method": "baseline", "test_accuracy": 0.92})
    assert accuracy.baseline_row(legacy, "r20", base) is None and len(legacy.rows) == 1  # no digest: taken as these
    # a suite's own baseline rows (the latency suite's) start apart from the main suite's, with its fields
    assert accuracy.baseline_row(rows, "r56", base, suite="latency", more=lambda: {"test_accuracy_bn100": 0.9}) is None
    own = rows.get("r56/latency-baseline")
    assert own["suite"] == "latency" and own["test_accuracy"] == 0.86 and own["test_accuracy_bn100"] == 0.9


def test_the_profile_counts_an_if_branch_once(monkeypatch, tmp_path):
    """onnxruntime profiles the nodes inside an If on their own and inside the If's time: the breakdown
    of the conditional models counts them once, in their own kind, and the If by its own time."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    monkeypatch.syspath_prepend(str(BENCH))
    why = importlib.import_module("why")
    w = helper.make_tensor("w", TensorProto.FLOAT, [8, 8, 3, 3], np.random.default_rng(0).standard_normal(576).tolist())
    branch = lambda name, node: helper.make_graph(  # noqa: E731
        [node], name, [], [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, None)], [w] if name == "on" else [])
    on = branch("on", helper.make_node("Conv", ["x", "w"], ["on_y"], pads=[1, 1, 1, 1], name="inner_conv"))
    off = branch("off", helper.make_node("Identity", ["x"], ["off_y"], name="inner_identity"))
    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], keepdims=0, name="gate_mean"),
             helper.make_node("Constant", [], ["zero"], value=helper.make_tensor("z", TensorProto.FLOAT, [], [-100.0])),
             helper.make_node("Greater", ["m", "zero"], ["run"], name="gate_greater"),
             helper.make_node("If", ["run"], ["y"], then_branch=on, else_branch=off, name="the_if")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    path = tmp_path / "if.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    every, inside = why._nodes(onnx.load(path).graph)
    assert {"inner_conv", "inner_identity"} <= inside and "the_if" not in inside and len(every) == 6
    p = why.profile(path, batch=1, runs=5)
    conv = sum(v for k, v in p["ms_per_kind"].items() if "conv (" in k)
    assert conv > 0  # the branch that ran (the mean is above -100)
    assert p["ms_per_op"]["If"] >= 0  # its branch taken out, not counted twice
    assert p["ms_total"] == pytest.approx(sum(p["ms_per_op"].values()), abs=1e-2)
    report = importlib.import_module("report")
    groups = report._profile_groups(p["ms_per_kind"])
    assert groups["convs NCHW"] + groups["convs NCHWc"] == pytest.approx(conv) and groups["If (its own time)"] >= 0
    assert sum(groups.values()) == pytest.approx(sum(p["ms_per_kind"].values()))


@pytest.mark.parametrize("plan", ["flops", "latency"])
def test_guard_baseline_is_well_formed(plan, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    plan_path, baseline = importlib.import_module("guard").PLANS[plan]
    assert plan_path.is_file()
    base = json.loads(baseline.read_text())
    assert base["plan"] == plan_path.name
    assert set(base["speedups"]) == {"ort-cpu/b1", "ort-cpu/b32"}
    assert all(v > 1.2 for v in base["speedups"].values())
    assert 0.15 <= base["max_regression"] < 0.5
    # The guard can only fail an unpruned model if 1.0x lies below the allowed floor.
    assert all(v * (1 - base["max_regression"]) > 1.05 for v in base["speedups"].values())


def test_guard_trips_when_the_slim_model_is_the_unpruned_one():
    r = subprocess.run([sys.executable, str(BENCH / "guard.py"), "--unpruned", "--batch-size", "32", "--rounds", "3"],
                       check=False, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "REGRESSION ort-cpu/b32" in r.stdout


def test_why_table_names_each_rows_target(monkeypatch):
    """why.py profiles a grid's plans at any target: each row shows its own (rows from before the
    target was asked for were all at 0.5)."""
    monkeypatch.syspath_prepend(str(BENCH))
    report = importlib.import_module("report")
    row = lambda arch, **kw: {"arch": arch, "model": "cp-latency", "ms_total": 5.0, "grid": "latency_budget",  # noqa: E731
                              "nodes": {"com.microsoft.nchwc:Conv": 2}, "ms_per_kind": {"kxk conv (NCHWc)": 4.0}, **kw}
    monkeypatch.setattr(report, "load", lambda name: [row("resnet34", target=0.3), row("resnet18")] if name == "why" else [])
    text = "\n".join(report.why_section())
    assert "| grid | arch | target | model |" in text
    assert "| latency_budget | resnet34 | 0.3 | cp-latency | 5.00 | 2/2 | 4.00 / 0.00 |" in text
    assert "| latency_budget | resnet18 | 0.5 | cp-latency |" in text


def test_flops_weight_table_pairs_each_plan_with_its_timings(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    report = importlib.import_module("report")
    plan = lambda w, fl: {"key": f"plan/lite/t0.5/fw{w:g}", "kind": "plan", "arch": "lite", "target": 0.5,  # noqa: E731
                          "flops_weight": w, "latency_projected": 0.5, "flops_ratio_224": fl, "val_accuracy": 0.8,
                          "polarized": 0.99}
    lat = lambda w, b, sp, fl: {"kind": "latency", "arch": "lite", "target": 0.5, "method": f"fw{w:g}", "batch": b,  # noqa: E731
                                "speedup": sp, "predicted_speedup": 2.0, "efficiency": sp * fl}
    rows = [plan(0, 0.4), plan(1, 0.55), lat(0, 1, 2.0, 0.4), lat(0, 32, 2.0, 0.4), lat(1, 1, 2.0, 0.55)]
    monkeypatch.setattr(report, "load", lambda name: rows if name == "flops_weight" else [])
    text = "\n".join(report.flops_weight_section())
    assert "| lite | 0.5 | 0 | 99.0% | 0.500 | 0.400 | 80.00 | 0.500 / 0.500 | 2.00x (2.00x) / 2.00x (2.00x) | 0.80 / 0.80 |" in text
    assert "| lite | 0.5 | 1 | 99.0% | 0.500 | 0.550 | 80.00 | 0.500 / - | 2.00x (2.00x) / - | **1.10** / - |" in text


def test_table_greedy_keeps_the_flops_the_cost_makes_cheap(monkeypatch):
    """benchmarks/ceiling.py's greedy: the plan at a cost ratio keeps more FLOPs than uniform pruning,
    drops in order (any prefix is the plan at its ratio), and keeps a block of every essential group."""
    monkeypatch.syspath_prepend(str(BENCH))
    ceiling = importlib.import_module("ceiling")
    from chanprune.cost import ChannelsCost, FlopsCost
    from chanprune.graph import find_groups
    from chanprune.zoo import build_model

    model = build_model("resnet20", num_classes=10).eval()
    x = torch.zeros(1, 3, 32, 32)
    graph = find_groups(model, x)
    cost, flops = ChannelsCost(model, x, graph), FlopsCost(model, x, graph)  # every channel costs the same
    units = [[list(range(i, min(i + 4, g.size))) for i in range(0, g.size, 4)] for g in graph.groups]
    scores = [torch.arange(g.size, dtype=torch.float) for g in graph.groups]
    essential = [g.size == 16 and i == 0 for i, g in enumerate(graph.groups)]
    masks, lat, fl, drops = ceiling.greedy(graph, cost, flops, ceiling.pools_of(graph, units, scores), essential, 0.5)
    assert lat <= 0.5 and abs(lat - float(cost.ratio_of(masks))) < 1e-9 and abs(fl - float(flops.ratio_of(masks))) < 1e-9
    uniform = [torch.cat([torch.zeros(g.size // 2), torch.ones(g.size - g.size // 2)]) for g in graph.groups]
    assert float(cost.ratio_of(uniform)) >= lat - 1e-6 and fl > float(flops.ratio_of(uniform)) + 0.05
    # each group loses its lowest-scored blocks first, and a prefix of the drops is the plan at its ratio
    for gi, m in enumerate(masks):
        kept = torch.nonzero(m).flatten().tolist()
        assert kept == list(range(graph.groups[gi].size - len(kept), graph.groups[gi].size))
    half = [torch.ones(g.size) for g in graph.groups]
    for gi, block, _, _ in drops[:len(drops) // 2]:
        half[gi][block] = 0
    assert abs(float(cost.ratio_of(half)) - drops[len(drops) // 2 - 1][2]) < 1e-9
    assert all(float(masks[i].sum()) >= 4 for i, e in enumerate(essential) if e)
    # a lower ratio keeps fewer FLOPs, each drop costs FLOPs
    assert all(b[3] <= a[3] + 1e-12 and b[2] < a[2] for a, b in zip(drops, drops[1:]))


def test_floor_uniform_plans_keep_one_share_of_every_group_and_meet_the_latency_asked(monkeypatch):
    """benchmarks/floor.py: the floor keeps one block of every group; a uniform plan keeps the same share
    of each group's blocks; the share found for a ratio predicts that ratio or just under it."""
    monkeypatch.syspath_prepend(str(BENCH))
    floor = importlib.import_module("floor")
    from chanprune.cost import ChannelsCost, FlopsCost
    from chanprune.graph import find_groups
    from chanprune.zoo import build_model

    model = build_model("resnet20", num_classes=10).eval()
    x = torch.zeros(1, 3, 32, 32)
    u = object.__new__(floor.Uniform)
    u.graph = find_groups(model, x)
    u.costs = {1: ChannelsCost(model, x, u.graph), 32: ChannelsCost(model, x, u.graph)}
    u.flops = FlopsCost(model, x, u.graph)
    u.units = [[list(range(i, min(i + 8, g.size))) for i in range(0, g.size, 8)] for g in u.graph.groups]
    thin = u.masks(0.0)
    assert [int(m.sum()) for m in thin] == [8] * len(u.graph.groups)
    half = u.masks(0.5)
    assert all(int(m.sum()) == g.size // 2 for m, g in zip(half, u.graph.groups))
    share, p = u.at_latency(0.5, 1)
    assert 0.45 < p["latency_ratio"]["1"] <= 0.5 and p == u.predict(u.masks(share))
    assert p["flops_ratio"] < u.predict(u.masks(1.0))["flops_ratio"] == pytest.approx(1.0)


def test_floor_table_pairs_the_prediction_with_the_grids_torch_pruning_and_its_timings(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    report = importlib.import_module("report")
    pred = {"key": "lite/floor", "kind": "predicted", "arch": "lite", "floor": {"latency_ratio": {"1": 0.2, "32": 0.1}},
            "uniform": {"0.5/b1": {"latency_ratio": 0.5, "flops_ratio": 0.4, "efficiency": 0.8, "formula": 0.75},
                        "0.5/b32": {"latency_ratio": 0.5, "flops_ratio": 0.45, "efficiency": 0.9, "formula": 0.89}}}
    lat = lambda m, b, sp: {"kind": "latency", "arch": "lite", "target": 0.5, "method": m, "batch": b,  # noqa: E731
                            "speedup": sp, "flops_ratio": 0.4, "efficiency": sp * 0.4}
    grid = [{"kind": "latency", "arch": "lite", "target": 0.5, "method": "tp-r16@latency", "batch": 1, "efficiency": 0.79}]
    monkeypatch.setattr(report, "load", lambda name: {"floor": [pred, lat("floor", 1, 4.0), lat("uniform", 1, 2.0)],
                                                      "latency_budget": grid}.get(name, []))
    text = "\n".join(report.floor_section())
    assert "| lite | 1 | 0.200 | 0.250 | 0.5 | 0.500, 0.400 | 0.80 | 0.75 | 0.79 |" in text
    assert "| lite | 32 | 0.100 | - | 0.5 | 0.500, 0.450 | 0.90 | 0.89 | - |" in text
    assert "- lite, the uniform plan of t = 0.5 timed at batch 1: 0.500 of dense, FLOPs 0.400, efficiency 0.80." in text
