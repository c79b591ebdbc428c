"""`chanprune profile`: the latency table of a tiny net (what is timed, grids, interpolation,
calibration, caches) and the command's bad inputs. No timing number is asserted tightly."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import chanprune.profile as prof
from chanprune.errors import ChanpruneError
from chanprune.freeze import random_plan, round_plan
from chanprune.graph import find_groups
from chanprune.measure.latency import available_backends
from chanprune.measure.lut import LatencyTable, LayerTable, kept_counts, machine_mismatch
from chanprune.surgery import apply_plan_
from chanprune_cli.main import main

SHAPE = [1, 3, 16, 16]
BLOCK = 4


class Mixed(nn.Module):
    """A dense stem, a 1x1 expansion, a depthwise conv, a grouped conv (8 groups), a projection and a head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 12, 3, 2, 1, bias=False), nn.BatchNorm2d(12), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(12, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(32, 32, 3, 1, 1, groups=32, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.grouped = nn.Sequential(nn.Conv2d(32, 32, 3, 1, 1, groups=8, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.project = nn.Sequential(nn.Conv2d(32, 20, 1, bias=False), nn.BatchNorm2d(20), nn.ReLU())
        self.fc = nn.Linear(20, 5)

    def forward(self, x):
        x = self.grouped(self.dw(self.expand(self.stem(x))))
        return self.fc(self.project(x).mean((2, 3)))


class Counter:
    """Wraps the two timers of `chanprune.profile` and counts their calls."""

    def __init__(self, mp):
        self.points = self.models = 0
        point, kernel, models = prof._time_runner, prof.kernel_ms, prof._time_models

        def count_point(*a, **k):
            self.points += 1
            return point(*a, **k)

        def count_kernel(*a, **k):
            self.points += 1
            return kernel(*a, **k)

        def count_models(*a, **k):
            self.models += 1
            return models(*a, **k)

        mp.setattr(prof, "_time_runner", count_point)
        mp.setattr(prof, "kernel_ms", count_kernel)
        mp.setattr(prof, "_time_models", count_models)


def _profile(**kw) -> LatencyTable:
    args = dict(arch="mixed", block=BLOCK, samples=2, calibration_plans=2, point_seconds=0.005)
    args.update(kw)
    torch.manual_seed(0)
    return prof.profile_model(Mixed(), SHAPE, **args)


@pytest.fixture(autouse=True)
def _unchecked_points(monkeypatch):
    """Reuse cached tables and points unchecked: these tests time at 5 ms a point, where re-timing one
    layer moves by more than the staleness limit; `test_cached_points_are_dropped_when_the_machine_moved`
    and `test_a_cached_table_is_profiled_again_when_the_machine_moved` check it."""
    monkeypatch.setattr(prof, "STALE_POINTS", None)


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    """One profile of `Mixed` in a fresh cache, then the same call again, and timers counted."""
    cache = tmp_path_factory.mktemp("cache")
    events = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHANPRUNE_CACHE", str(cache))
        first = Counter(mp)
        table = _profile(progress=lambda stage, info: events.append((stage, info)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHANPRUNE_CACHE", str(cache))
        mp.setattr(prof, "STALE_POINTS", None)  # module-scoped: the autouse fixture does not reach it
        again = Counter(mp)
        cached = _profile()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CHANPRUNE_CACHE", str(cache))
        mp.setattr(prof, "STALE_POINTS", None)
        recal = Counter(mp)
        recalibrated = _profile(calibration_plans=1)
    return {"table": table, "first": first, "events": events, "cached": cached, "again": again,
            "recalibrated": recalibrated, "recal": recal, "cache": cache}


def _gated_modules(model, graph) -> dict[str, set[str]]:
    roles: dict[str, set[str]] = {}
    for g in graph.groups:
        for s in g.sites:
            if s.role in ("in", "out", "dw"):
                roles.setdefault(s.module, set()).add(s.role)
    return {n: roles[n] for n, m in model.named_modules() if n in roles and isinstance(m, (nn.Conv2d, nn.Linear))}


# ----------------------------------------------------------------------------- what is timed
def test_the_table_covers_every_gated_conv_and_linear(profiled):
    table = profiled["table"]
    model = Mixed()
    graph = find_groups(model, torch.zeros(SHAPE))
    gated = _gated_modules(model, graph)
    assert {t.module for t in table.layers} == set(gated)
    kinds = {t.module: t.kind for t in table.layers}
    assert kinds["dw.0"] == "dw" and kinds["fc"] == "linear" and kinds["grouped.0"] == "conv"
    assert table.layer("grouped.0").attrs["groups"] == 8
    assert table.layer("stem.0").attrs["input_size"] == [16, 16] and table.layer("expand.0").attrs["input_size"] == [8, 8]
    assert table.layer("stem.0").attrs["stride"] == [2, 2]
    assert table.meta["layers"] == len(table.layers) and table.meta["points_timed"] > 0
    assert table.meta["cache"]["hit"] is False


def test_grids_are_aligned_multiples_plus_the_full_width(profiled):
    table = profiled["table"]
    for t in table.layers:
        step = t.attrs["step"]
        assert step == (math.lcm(BLOCK, t.attrs["groups"]) if t.kind == "conv" else BLOCK), t.module
        for grid, width in ((t.grid_in, t.channels_in), (t.grid_out, t.channels_out)):
            assert grid == sorted(set(grid)) and grid[-1] == width and len(grid) <= 2
            assert all(k % step == 0 for k in grid[:-1]), (t.module, grid)
        for b in table.batch_sizes:
            ms = t.ms[str(b)]
            assert len(ms) == len(t.grid_in) and all(len(r) == len(t.grid_out) for r in ms)
            assert all(v > 0 and math.isfinite(v) for r in ms for v in r)
    # an ungated side is its one full width: the stem's RGB inputs, the classifier's outputs
    assert table.layer("stem.0").grid_in == [3] and table.layer("fc").grid_out == [5]
    assert table.layer("dw.0").grid_out == [32]
    # the grouped conv's sides: multiples of lcm(4, 8) = 8
    assert table.layer("grouped.0").grid_in == [8, 32] and table.layer("grouped.0").grid_out == [8, 32]


def test_side_grid_and_sampling():
    assert prof.side_grid(40, 16, True) == [16, 32, 40]
    assert prof.side_grid(32, 16, True) == [16, 32]
    assert prof.side_grid(8, 16, True) == [8]
    assert prof.side_grid(3, 16, False) == [3]
    assert prof.sample_grid(list(range(16, 257, 16)), 4) == [16, 96, 176, 256]
    assert prof.sample_grid([16, 32], 4) == [16, 32]


def test_progress_reports_each_distinct_layer(profiled):
    stages = [s for s, _ in profiled["events"]]
    layers = [i for s, i in profiled["events"] if s == "layer"]
    assert stages[0] == "graph" and "calibrated" in stages
    assert len(layers) == profiled["table"].meta["unique_layers"]
    assert [i["index"] for i in layers] == list(range(1, len(layers) + 1))


def test_the_layer_model_has_the_kept_shape():
    lay = prof._Layer("g", "conv", nn.Conv2d(32, 32, 3, 2, 1, groups=8), 32, 32, True, True, [8, 8], 1)
    m = lay.build(16, 24)
    assert (m.in_channels, m.out_channels, m.groups, m.stride, m.bias is not None) == (16, 24, 8, (2, 2), True)
    dw = prof._Layer("d", "dw", nn.Conv2d(32, 32, 3, 1, 1, groups=32), 32, 32, True, True, [8, 8], 1)
    assert (dw.build(16, 32).in_channels, dw.build(16, 32).out_channels, dw.build(16, 32).groups) == (16, 16, 16)
    assert lay.input_shape(16, 4) == [4, 16, 8, 8]


# ----------------------------------------------------------------------------- interpolation
def test_at_is_exact_on_grid_points_and_zero_at_zero(profiled):
    for t in profiled["table"].layers:
        ms = t.ms["1"]
        for i, kin in enumerate(t.grid_in):
            for j, kout in enumerate(t.grid_out):
                assert float(t.at(kin, kout, 1)) == pytest.approx(ms[i][j], rel=1e-9)
        assert float(t.at(0, t.channels_out, 1)) == 0.0


def _synthetic() -> LayerTable:
    grid = [16, 48, 64]
    ms = [[0.01 * a * b / 256 + 0.02 for b in grid] for a in grid]
    return LayerTable("c", "conv", 64, 64, grid, grid, {"1": ms})


def test_at_is_monotone_and_differentiable():
    t = _synthetic()
    values = [float(t.at(k, 64, 1)) for k in range(0, 65, 4)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    kin = torch.tensor(40.0, requires_grad=True)
    kout = torch.tensor(30.0, requires_grad=True)
    y = t.at(kin, kout, 1)
    y.backward()
    assert kin.grad is not None and float(kin.grad) > 0 and float(kout.grad) > 0
    soft = torch.full((2, 64), 0.5, requires_grad=True)  # batched soft counts
    t.at(soft.sum(-1), soft.sum(-1), 1).sum().backward()
    assert soft.grad is not None and torch.isfinite(soft.grad).all() and (soft.grad > 0).all()


def test_kept_counts_match_the_cut_model(profiled):
    table = profiled["table"]
    model = Mixed()
    x = torch.zeros(SHAPE)
    graph = find_groups(model, x)
    plan = round_plan(random_plan(graph, keep=0.5, seed=3), graph, BLOCK)
    counts = kept_counts(table, graph, plan.keep_masks(graph))
    slim = apply_plan_(Mixed(), plan, x, graph=graph)
    mods = dict(slim.named_modules())
    for name, (kin, kout) in counts.items():
        m = mods[name]
        shape = (m.in_features, m.out_features) if isinstance(m, nn.Linear) else (m.in_channels, m.out_channels)
        assert (float(kin), float(kout)) == shape, name
    # soft masks: differentiable counts, and a prediction with a gradient
    masks = [torch.full((g.size,), 0.7, requires_grad=True) for g in graph.groups]
    table.predict_ms(kept_counts(table, graph, masks), 1).backward()
    assert any(m.grad is not None and float(m.grad.abs().sum()) > 0 for m in masks)


# ----------------------------------------------------------------------------- calibration
def test_calibration_records_the_fit_and_a_holdout(profiled):
    table = profiled["table"]
    cal = table.calibration["1"]
    assert cal["scale"] > 0 and math.isfinite(cal["offset_ms"]) and cal["dense_ms"] > 0
    rows = cal["error"]["plans"]
    assert [r["keep"] for r in rows] == [1.0, 0.3, 0.7]  # the dense model and two aligned random plans
    assert cal["error"]["max_abs_rel_error"] == max(abs(r["rel_error"]) for r in rows)
    hold = cal["holdout"]
    assert hold["keep"] not in [r["keep"] for r in rows] and math.isfinite(hold["rel_error"])
    for r in [*rows, hold]:
        assert r["predicted_ms"] == pytest.approx(cal["scale"] * r["layers_ms"] + cal["offset_ms"])
        assert r["rel_error"] == pytest.approx((r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"])


def test_predicted_dense_is_the_calibrated_estimate(profiled):
    table = profiled["table"]
    cal = table.calibration["1"]
    dense_pred = float(table.predict_ms({}, 1))
    assert dense_pred == pytest.approx(cal["error"]["plans"][0]["predicted_ms"], rel=1e-9)
    assert dense_pred == pytest.approx(cal["scale"] * cal["layers_dense_ms"] + cal["offset_ms"], rel=1e-9)
    assert 0.2 < dense_pred / table.dense_ms(1) < 5  # loose: timings are noisy on a shared machine


def test_fit_falls_back_where_the_slope_is_not_positive():
    assert prof._fit([1.0, 2.0, 3.0], [2.0, 4.0, 6.0]) == pytest.approx((2.0, 0.0), abs=1e-9)
    scale, offset = prof._fit([1.0, 2.0, 3.0], [3.0, 2.0, 1.0])
    assert scale == 1.0 and offset == pytest.approx(0.0)
    assert prof._fit([2.0], [5.0]) == (1.0, 3.0)
    assert prof._fit([2.0, 2.0], [5.0, 7.0]) == (1.0, 4.0)


def test_a_layers_in_context_line_may_take_back_an_overhead_but_never_shifts_a_single_point():
    # lone timings 2, 4 ms inside a model 1, 3 ms: the lone call's 1 ms is taken back
    assert prof._fit([2.0, 4.0], [1.0, 3.0], free_offset=True) == pytest.approx((1.0, -1.0))
    assert prof._fit([2.0, 4.0], [1.0, 3.0]) == pytest.approx((0.7, 0.0))  # the model-level fit: through the origin
    # one point, or a slope that is not positive: a pure scale (least squares through the origin)
    assert prof._fit([2.0], [1.0], free_offset=True) == (0.5, 0.0)
    scale, offset = prof._fit([1.0, 2.0], [2.0, 1.0], free_offset=True)
    assert scale == pytest.approx(0.8) and offset == 0.0


def _grid_table(kind, gi, go, fn):
    ms = [[fn(i, o) for o in go] for i in gi]
    return LayerTable("m", kind, gi[-1], go[-1], list(gi), list(go), {"1": ms})


def test_layer_parts_recover_a_bilinear_grid():
    t = _grid_table("conv", [4, 8, 12], [4, 8], lambda i, o: 0.5 + 0.1 * i + 0.2 * o + 0.03 * i * o)
    assert prof._layer_parts(t, 1) == pytest.approx((0.5, 0.1, 0.2, 0.03))
    # one timed input width (a stem's RGB): the slope over the outputs is the product, the fixed side folded in
    stem = _grid_table("conv", [3], [4, 8, 12], lambda i, o: 0.4 + 0.06 * o)
    assert prof._layer_parts(stem, 1) == pytest.approx((0.4, 0.0, 0.0, 0.02))
    dw = LayerTable("d", "dw", 12, 12, [4, 8, 12], [12], {"1": [[0.3 + 0.05 * k] for k in (4, 8, 12)]})
    assert prof._layer_parts(dw, 1) == pytest.approx((0.3, 0.05, 0.0, 0.0))  # depthwise: all linear


def test_parts_fit_needs_four_models_and_keeps_weights_non_negative():
    feats = [[1.0, 2.0, 8.0], [1.0, 1.0, 2.0], [1.0, 1.5, 4.5], [0.8, 0.7, 1.0]]
    w_true = [0.5, 0.3, 1.2]
    y = [sum(f * w for f, w in zip(row, w_true)) for row in feats]
    assert prof._fit_parts([list(map(float, r)) for r in feats], y) == pytest.approx(w_true)
    assert prof._fit_parts(feats[:3], y[:3]) is None  # 3 weights from 3 models: no fit, the scale fit is used
    w = prof._fit_parts(feats, [-v for v in y])
    assert w is None  # nothing positive fits negative times


def test_the_rewritten_table_predicts_what_was_fitted():
    # convex in the counts (a bilinear fit of it has a negative intercept): no part may go negative,
    # or the floor would lift the rewritten points away from the weighted sum the fit saw
    conv = _grid_table("conv", [16, 32, 48], [16, 32], lambda i, o: 0.001 * i * i + 0.002 * i * o + 0.01)
    stem = _grid_table("conv", [3], [16, 32], lambda i, o: 0.05 + 0.004 * o)
    stem.module = "stem"
    dw = LayerTable("dw", "dw", 48, 48, [16, 32, 48], [48], {"1": [[0.02 + 0.003 * k * k / 48] for k in (16, 32, 48)]})
    table = LatencyTable("t", [3, 8, 8], "ort-cpu", 2, [1], 16, {}, [conv, stem, dw], {})
    coefs = {lt.module: prof._layer_parts(lt, 1) for lt in table.layers}
    assert all(v >= 0 for c in coefs.values() for v in c)
    plans = [{"m": (i, o), "stem": (3, s), "dw": (d, d)} for i, o, s, d in
             [(48, 32, 32, 48), (16, 16, 16, 16), (32, 16, 32, 32), (48, 16, 16, 32)]]
    w = np.array([3.0, 0.2, 0.8])
    want = [float(prof._parts_sum(table, c, 1, coefs) @ w) for c in plans]
    prof._rewrite_parts(table, 1, coefs, w)
    got = [float(sum(lt.at(*c[lt.module], 1) for lt in table.layers)) for c in plans]
    assert got == pytest.approx(want, rel=1e-9)


def test_parts_calibration_rewrites_the_grid_from_the_same_points(tmp_path, monkeypatch):
    monkeypatch.setenv("CHANPRUNE_CACHE", str(tmp_path))
    raw = _profile(calibration_plans=3, fit="scale")
    parts = _profile(calibration_plans=3)  # the same points, from the cache; the models timed again
    assert parts.meta["points_timed"] == 0 and parts.meta["fit"] == "parts" and raw.meta["fit"] == "scale"
    for b in ("1",):
        cal, alt = parts.calibration[b], raw.calibration[b]["alternative"]
        assert cal["fit"] == "parts" and cal["scale"] == 1.0 and cal["offset_ms"] == 0.0
        assert cal["alternative"]["fit"] == "scale" and alt["fit"] == "parts"  # both fits, from one set of timings
        w = cal["weights"]
        assert min(w.values()) >= 0 and max(w.values()) > 0
        for lr, lp in zip(raw.layers, parts.layers):
            a, _, _, d = prof._layer_parts(lr, 1)
            go = lr.grid_out if lr.kind != "dw" else [0]
            want = [[max(w["intercept"] * a + w["linear"] * (v - a - d * i * o) + w["product"] * d * i * o, v / 20)
                     for o, v in zip(go, row)] for i, row in zip(lr.grid_in, lr.ms[b])]
            assert sum(lp.ms[b], []) == pytest.approx(sum(want, []), rel=1e-9)
            assert min(min(r) for r in lp.ms[b]) > 0
            assert lp.attrs["timed_ms"][b] == lr.ms[b]  # what was timed, kept beside the fitted grid
        rows = cal["error"]["plans"]
        assert [r["keep"] for r in rows] == [1.0, 0.3, 0.5, 0.7]
        assert float(parts.predict_ms({}, 1)) == pytest.approx(rows[0]["predicted_ms"], rel=1e-9)
        for r in [*rows, cal["holdout"]]:
            assert r["rel_error"] == pytest.approx((r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"])
    with pytest.raises(ChanpruneError, match="--fit"):
        _profile(fit="median")


def test_runs_in_budget_calls_twice_and_clamps():
    from chanprune.measure.latency import runs_in_budget

    calls = []
    assert runs_in_budget(lambda: calls.append(1), 1e9, min_runs=3, max_runs=7) == 7 and len(calls) == 2
    assert runs_in_budget(lambda: time.sleep(0.01), 0.0, min_runs=3, max_runs=7) == 3


# ----------------------------------------------------------------------------- caches, files, machines
def test_a_second_call_loads_the_cached_table_without_timing(profiled):
    assert profiled["again"].points == 0 and profiled["again"].models == 0
    cached, table = profiled["cached"], profiled["table"]
    assert cached.meta["cache"]["hit"] is True
    assert Path(cached.meta["cache"]["path"]).is_file()
    want = json.loads(json.dumps(table.to_dict()))
    got = cached.to_dict()
    assert {k: v for k, v in got.items() if k != "meta"} == {k: v for k, v in want.items() if k != "meta"}


def test_a_new_calibration_reuses_the_cached_points(profiled):
    assert profiled["first"].points > 0
    assert profiled["recal"].points == 0 and profiled["recal"].models == 1
    t = profiled["recalibrated"]
    assert t.meta["cache"]["hit"] is False and t.meta["points_timed"] == 0 and t.meta["points_reused"] > 0
    assert [r["keep"] for r in t.calibration["1"]["error"]["plans"]] == [1.0, 0.5]


def test_no_cache_writes_no_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CHANPRUNE_CACHE", str(tmp_path))
    t = prof.profile_model(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)), [1, 3, 8, 8], block=4,
                           samples=2, calibration_plans=0, point_seconds=0.002, cache=False)
    assert t.meta["cache"] == {"hit": False, "path": None}
    assert not any(tmp_path.iterdir())
    assert t.calibration["1"]["scale"] == 1.0  # the dense model alone: scale 1, the residual as offset


def test_save_load_round_trip(profiled, tmp_path):
    table = profiled["table"]
    path = table.save(tmp_path / "lut.json")
    back = LatencyTable.load(path)
    assert back.to_dict() == json.loads(json.dumps(table.to_dict()))
    assert float(back.predict_ms({}, 1)) == pytest.approx(float(table.predict_ms({}, 1)))


def test_machine_mismatch_warns_when_the_cpu_differs(profiled):
    table = LatencyTable.from_dict(json.loads(json.dumps(profiled["table"].to_dict())))
    assert machine_mismatch(table) is None
    table.machine["cpu"] = "Some Other CPU 9000"
    msg = machine_mismatch(table)
    assert msg and "cpu" in msg and "Some Other CPU 9000" in msg and "\n" not in msg


def test_library_bad_inputs(monkeypatch, tmp_path):
    monkeypatch.setenv("CHANPRUNE_CACHE", str(tmp_path))
    for kw, needle in ((dict(block=0), "--block"), (dict(batch_sizes=(0,)), "--batch-size"),
                       (dict(samples=1), "--samples"), (dict(backend="tpu"), "unknown")):
        with pytest.raises(ChanpruneError, match=needle):
            prof.profile_model("tests.nets:chain", SHAPE, **kw)
    with pytest.raises(ChanpruneError, match="no gated"):
        prof.profile_model(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), [1, 3, 2, 2], cache=False)


def test_kernel_timing_leaves_the_reorders_out(tmp_path):
    """A lone blocked conv pays a reorder on each side that a conv inside a model does not: the
    kernel time leaves them out, and is below the session call's wall time."""
    from chanprune.export import export_onnx
    from chanprune.measure.latency import LAYOUT_OPS, kernel_ms, make_runner

    conv = nn.Conv2d(32, 32, 3, padding=1).eval()
    path = export_onnx(conv, torch.zeros(1, 32, 28, 28), tmp_path / "conv.onnx")
    shape = [1, 32, 28, 28]
    without = kernel_ms(path, shape, threads=1, budget_s=0.05)
    with_reorders = kernel_ms(path, shape, threads=1, budget_s=0.05, skip=())
    assert 0 < without <= with_reorders * 1.5  # separate runs: only the sign is sure, with noise
    assert kernel_ms(path, shape, threads=1, budget_s=0.05, skip=("Conv", "FusedConv", *LAYOUT_OPS)) < without
    assert without < prof._time_runner(make_runner(path, "ort-cpu", shape, threads=1), 0.05) * 1.5


def test_the_table_records_its_timing_and_kernel_points_are_not_wall_points(profiled, monkeypatch):
    assert profiled["table"].meta["timing"] == "wall"  # the default
    monkeypatch.setenv("CHANPRUNE_CACHE", str(profiled["cache"]))
    c = Counter(monkeypatch)
    kernel = _profile(timing="kernel")
    assert kernel.meta["timing"] == "kernel" and kernel.meta["cache"]["hit"] is False
    assert c.points == kernel.meta["points_timed"] > 0 and kernel.meta["points_reused"] == 0
    assert all(v > 0 for lay in kernel.layers for rows in lay.ms.values() for r in rows for v in r)


def test_every_kernel_of_a_layer_is_paired_with_it(tmp_path):
    """The i-th Conv/Gemm node is the i-th layer call; onnxruntime's names (kept, or the fused
    output's, `_nchwc` when blocked) all lead back to a layer."""
    from chanprune.export import export_onnx
    from chanprune.measure.latency import node_kernel_ms

    torch.manual_seed(0)
    model = Mixed().eval()
    x = torch.zeros(SHAPE)
    order = prof._call_order(model, x)
    assert order == ["stem.0", "expand.0", "dw.0", "grouped.0", "project.0", "fc"]
    path = export_onnx(model, x, tmp_path / "m.onnx")
    names = prof._node_layers(path, order)
    assert names is not None
    nodes = node_kernel_ms(path, SHAPE, threads=1, budget_s=0.02)
    compute = {n: op for n, (op, _) in nodes.items() if op in ("Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul")}
    assert compute and all(n in names for n in compute), (compute, names)
    assert sorted({names[n] for n in compute}) == sorted(order)
    assert prof._node_layers(path, order[:-1]) is None  # counts differ: no pairing, no guess


def test_in_context_corrects_every_layer_and_keeps_the_table_positive(monkeypatch, tmp_path):
    monkeypatch.setenv("CHANPRUNE_CACHE", str(tmp_path))
    table = _profile(in_context=True)
    ctx = table.calibration["1"]["context"]
    assert ctx["layers"] == ctx["of"] == len(table.layers) and ctx["models"] == 3 and not ctx["unmapped_models"]
    for lay in table.layers:
        a, c = lay.attrs["context"]["1"]
        assert a > 0 and math.isfinite(c)
        assert all(v > 0 for row in lay.ms["1"] for v in row)
    assert table.meta["in_context"] is True
    assert _profile().meta["cache"]["hit"] is False  # another table: not the in-context one from the cache


# ----------------------------------------------------------------------------- the command
def invoke(*args):
    return CliRunner().invoke(main, list(args))


@pytest.fixture()
def garbage(tmp_path) -> Path:
    p = tmp_path / "w.pt"
    p.write_bytes(b"not a checkpoint at all")
    return p


@pytest.mark.parametrize("args, needle", [
    (["--arch", "no_such_arch_xyz"], "no_such_arch_xyz"),
    (["--arch", "tests.nets:chain", "--input-shape", "1,3,x,16"], "--input-shape"),
    (["--arch", "tests.nets:chain", "--input-shape", "1,3,16"], "does not run"),
    (["--arch", "tests.nets:chain", "--block", "0"], "--block"),
    (["--arch", "tests.nets:chain", "--block", "many"], "--block"),
    (["--arch", "tests.nets:chain", "--batch-size", "0"], "--batch-size"),
    (["--arch", "tests.nets:chain", "--batch-size", "1,a"], "--batch-size"),
    (["--arch", "tests.nets:chain", "--samples", "1"], "--samples"),
    (["--arch", "tests.nets:chain", "--timing", "cpu"], "--timing"),
    (["--arch", "tests.nets:chain", "--fit", "median"], "--fit"),
    (["--arch", "tests.nets:chain", "--in-context", "--backend", "torch-cpu"], "--in-context"),
    (["--arch", "tests.nets:chain", "--in-context", "--calibration-plans", "0"], "--in-context"),
    (["--arch", "tests.nets:chain", "--timing", "kernel", "--backend", "torch-cpu"], "--timing kernel"),
    (["--arch", "tests.nets:chain", "--weights", "GARBAGE"], "w.pt"),
    (["--arch", "tests.nets:chain", "--weights", "/no/such/file.pt"], "file.pt"),
])
def test_bad_input_is_one_line_exit_2_and_no_file(args, needle, tmp_path, garbage, monkeypatch):
    monkeypatch.setenv("CHANPRUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "lut.json"
    args = [str(garbage) if a == "GARBAGE" else a for a in args]
    if "--input-shape" not in args:
        args += ["--input-shape", "1,3,16,16"]
    result = invoke("profile", *args, "--out", str(out))
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and needle in errors[0], result.stderr
    assert "Traceback" not in result.output
    assert not out.exists() and not (tmp_path / "cache").exists()


@pytest.mark.skipif(available_backends()["ort-cuda"] is None, reason="onnxruntime's CUDA provider is here")
def test_ort_cuda_is_not_available_here(tmp_path):
    out = tmp_path / "lut.json"
    result = invoke("profile", "--arch", "tests.nets:chain", "--input-shape", "1,3,16,16", "--backend", "ort-cuda",
                    "--out", str(out))
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "not available" in errors[0] and "ort-cuda" in errors[0]
    assert not out.exists()
    with pytest.raises(ChanpruneError, match="not available"):
        prof.profile_model("tests.nets:chain", SHAPE, backend="ort-cuda")


def test_help_is_fast_and_lists_profile():
    result = invoke("--help")
    assert "profile" in result.output
    proc = subprocess.run([sys.executable, "-c", "import sys; import chanprune_cli.main; "
                           "print('torch' in sys.modules)"], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "False"


def test_json_is_one_object_and_the_file_is_a_table(tmp_path):
    out = tmp_path / "lut.json"
    env = {**__import__("os").environ, "CHANPRUNE_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "chanprune_cli.main", "profile", "--arch", "tests.nets:chain", "--input-shape",
           "1,3,16,16", "--block", "4", "--samples", "2", "--calibration-plans", "3", "--point-seconds", "0.01",
           "--out", str(out), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout)
    assert r["out"] == str(out) and r["cached"] is False and r["layers"] == 4
    assert set(r["calibration"]) == {"1"} and r["calibration"]["1"]["dense_ms"] > 0
    c = r["calibration"]["1"]
    assert c["fit"] == "parts" and set(c["weights"]) == {"intercept", "linear", "product"}
    assert c["alternative"]["fit"] == "scale" and c["alternative"]["max_abs_rel_error"] >= 0  # both fits, one timing
    assert "timing 4 gated layers" in proc.stderr
    table = LatencyTable.load(out)
    assert {t.module for t in table.layers} == {"features.0.0", "features.1.0", "features.2.0", "fc"}

def test_a_cached_table_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("CHANPRUNE_CACHE", str(tmp_path / "cache"))
    args = ["profile", "--arch", "tests.nets:chain", "--input-shape", "1,3,16,16", "--block", "4", "--samples", "2",
            "--calibration-plans", "0", "--point-seconds", "0.002"]
    first = invoke(*args, "--out", str(tmp_path / "a.json"))
    assert first.exit_code == 0, first.output
    assert "points timed" in first.stdout and "batch 1: dense" in first.stdout and "wrote" in first.stdout
    again = invoke(*args, "--out", str(tmp_path / "b.json"))
    assert again.exit_code == 0, again.output
    assert "loaded from cache" in again.stdout and "batch 1: dense" in again.stdout
    a, b = LatencyTable.load(tmp_path / "a.json"), LatencyTable.load(tmp_path / "b.json")
    assert [t.ms for t in a.layers] == [t.ms for t in b.layers] and b.meta["cache"]["hit"] is True


def test_default_out_names_arch_size_and_backend():
    from chanprune_cli.profile import default_out

    assert str(default_out("timm:resnet50", [1, 3, 224, 160], "ort-cpu")) == "profiles/timm_resnet50-224x160-ort-cpu.json"


class _SamePadConv(nn.Conv2d):
    """A conv whose constructor needs more than nn.Conv2d's (as EfficientNet-Lite's static-same-padding conv)."""

    def __init__(self, cin, cout, k, *, image_size, stride=1, groups=1):
        super().__init__(cin, cout, k, stride=stride, padding=0, groups=groups, bias=False)
        pad = max((math.ceil(image_size / stride) - 1) * stride + k - image_size, 0)
        self.static_padding = nn.ZeroPad2d((pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))

    def forward(self, x):
        return super().forward(self.static_padding(x))


@pytest.mark.parametrize("kind, groups", [("conv", 1), ("dw", 32)])
def test_layer_build_keeps_a_conv_subclass_and_its_forward(kind, groups):
    m = _SamePadConv(32, 32, 3, image_size=15, stride=2, groups=groups)
    lay = prof._Layer("c", kind, m, 32, 32, True, True, input_size=[15, 15])
    one = lay.build(16, 16 if kind == "conv" else 16)
    assert type(one) is _SamePadConv and one.weight.shape == (16, 16 // (16 if kind == "dw" else 1), 3, 3)
    assert one(torch.zeros(lay.input_shape(16, 1))).shape == (1, 16, 8, 8)  # the padding came along
    assert m.weight.shape[0] == 32 and m.in_channels == 32  # the model's layer is untouched


def test_cached_points_are_dropped_when_the_machine_moved(tmp_path, monkeypatch):
    """A profile re-times its first layer before reusing cached points: at the cached speed the rest
    is reused; at twice the time (another machine state) every point is timed anew."""
    monkeypatch.setenv("CHANPRUNE_CACHE", str(tmp_path))
    monkeypatch.setattr(prof, "STALE_POINTS", 0.15)
    speed = {"ms": 1.0}
    monkeypatch.setattr(prof, "_time_runner", lambda run, budget_s: speed["ms"])
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    kw = dict(block=4, samples=2, point_seconds=0.002, cache=True)
    first = prof.profile_model(net, [1, 3, 10, 10], calibration_plans=0, **kw)
    total = first.meta["points"]
    assert first.meta["points_timed"] == total and "points_recheck" not in first.meta
    events = []
    same = prof.profile_model(net, [1, 3, 10, 10], calibration_plans=1, progress=lambda s, i: events.append((s, i)), **kw)
    check = same.meta["points_recheck"]
    assert check["ratio"] == 1.0 and not check["dropped"] and 0 < check["points"] < total
    assert same.meta["points_timed"] == check["points"] and same.meta["points_reused"] == total - check["points"]
    assert ("recheck", check) in events
    speed["ms"] = 2.0
    moved = prof.profile_model(net, [1, 3, 10, 10], calibration_plans=2, **kw)
    assert moved.meta["points_recheck"]["ratio"] == 2.0 and moved.meta["points_recheck"]["dropped"]
    assert moved.meta["points_timed"] == total and moved.meta["points_reused"] == 0
    monkeypatch.setattr(prof, "STALE_POINTS", None)  # off: reused unchecked
    speed["ms"] = 4.0
    unchecked = prof.profile_model(net, [1, 3, 10, 10], calibration_plans=3, **kw)
    assert unchecked.meta["points_timed"] == 0 and "points_recheck" not in unchecked.meta


def test_a_cached_table_is_profiled_again_when_the_machine_moved(tmp_path, monkeypatch):
    """A cached table keeps its first layer's points as timed; it is loaded only while they time the
    same again, and otherwise the model is profiled anew with the same re-timed points checking the
    point cache (one probe, not two)."""
    monkeypatch.setenv("CHANPRUNE_CACHE", str(tmp_path))
    monkeypatch.setattr(prof, "STALE_POINTS", 0.15)
    speed = {"ms": 1.0}
    calls = []
    monkeypatch.setattr(prof, "_time_runner", lambda run, budget_s: calls.append(1) or speed["ms"])
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    kw = dict(block=4, samples=2, point_seconds=0.002, cache=True, calibration_plans=0)
    first = prof.profile_model(net, [1, 3, 10, 10], **kw)
    reference = first.meta["recheck_ms"]
    assert reference and set(reference.values()) == {1.0} and len(reference) < first.meta["points"]
    speed["ms"] = 1.1  # within 15%: the table is loaded, after its first layer's points only
    calls.clear()
    events = []
    same = prof.profile_model(net, [1, 3, 10, 10], progress=lambda s, i: events.append((s, i)), **kw)
    assert same.meta["cache"]["hit"] is True and len(calls) == len(reference)
    check = same.meta["recheck"]
    assert check["of"] == "table" and check["points"] == len(reference) and not check["dropped"]
    assert check["ratio"] == pytest.approx(1.1) and [s for s, _ in events] == ["recheck", "cached"]
    speed["ms"] = 2.0  # the machine moved: profiled anew, every point timed at the new speed
    calls.clear()
    events.clear()
    moved = prof.profile_model(net, [1, 3, 10, 10], progress=lambda s, i: events.append((s, i)), **kw)
    assert moved.meta["cache"]["hit"] is False and "recheck" not in moved.meta
    rechecks = [i for s, i in events if s == "recheck"]
    assert [r["of"] for r in rechecks] == ["table", "points"] and all(r["dropped"] for r in rechecks)
    assert [r["ratio"] for r in rechecks] == [2.0, 2.0]
    assert moved.meta["points_timed"] == moved.meta["points"] == len(calls)  # the probe counted once
    assert set(moved.meta["recheck_ms"].values()) == {2.0}
    shutil.rmtree(tmp_path / "profiles" / "points")  # a stale table, no cached point: its probe is not timed twice
    speed["ms"] = 3.0
    calls.clear()
    bare = prof.profile_model(net, [1, 3, 10, 10], **kw)
    assert bare.meta["cache"]["hit"] is False and "points_recheck" not in bare.meta
    assert bare.meta["points_timed"] == bare.meta["points"] == len(calls)
    monkeypatch.setattr(prof, "STALE_POINTS", None)  # off: the cached table loads unchecked
    speed["ms"] = 4.0
    calls.clear()
    unchecked = prof.profile_model(net, [1, 3, 10, 10], **kw)
    assert unchecked.meta["cache"]["hit"] is True and not calls and "recheck" not in unchecked.meta


def test_the_recheck_times_one_layer_of_each_kind(tmp_path, monkeypatch):
    """Convs and depthwise convs are checked each on its first layer (the head, microseconds of noise,
    is not): a machine that slows only its depthwise layers (memory-bound, where a busy neighbour shows
    first) drops the cached table and points, although the convs run as fast as when they were timed."""
    monkeypatch.setenv("CHANPRUNE_CACHE", str(tmp_path))
    monkeypatch.setattr(prof, "STALE_POINTS", 0.15)
    speed, timed, current = {"conv": 1.0, "dw": 1.0, "linear": 1.0}, [], {}
    time_layer = prof._time_layer

    def tagged(lay, *a, **k):
        current["kind"] = lay.kind
        return time_layer(lay, *a, **k)

    monkeypatch.setattr(prof, "_time_layer", tagged)
    monkeypatch.setattr(prof, "_time_runner", lambda run, budget_s: timed.append(current["kind"])
                        or speed[current["kind"]])
    first = _profile(calibration_plans=0, cache=True)
    probed = first.meta["recheck_ms"]
    assert {k.split("|")[0] for k in probed} == {"conv", "dw"}
    timed.clear()
    same = _profile(calibration_plans=0, cache=True)
    assert same.meta["cache"]["hit"] and same.meta["recheck"]["ratios"] == {"conv": 1.0, "dw": 1.0}
    assert len(timed) == len(probed) and set(timed) == {"conv", "dw"}
    speed["dw"] = 1.5
    moved = _profile(calibration_plans=0, cache=True)
    assert not moved.meta["cache"]["hit"]
    check = moved.meta["points_recheck"]
    assert check["dropped"] and check["ratio"] == 1.5 and check["ratios"] == {"conv": 1.0, "dw": 1.5}
    assert moved.meta["points_reused"] == 0


def test_a_new_fit_revision_does_not_reuse_the_cached_table(tmp_path, monkeypatch):
    """Tables are cached by settings that include the fit's revision: when a fit's algorithm changes
    (its revision is bumped), the old table is not loaded, while the timed points are reused."""
    monkeypatch.setenv("CHANPRUNE_CACHE", str(tmp_path))
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    kw = dict(block=4, samples=2, calibration_plans=0, point_seconds=0.002)
    first = prof.profile_model(net, [1, 3, 8, 8], **kw)
    assert prof.profile_model(net, [1, 3, 8, 8], **kw).meta["cache"]["hit"] is True
    monkeypatch.setitem(prof.FIT_REVISIONS, "parts", "parts/next")
    again = prof.profile_model(net, [1, 3, 8, 8], **kw)
    assert again.meta["cache"]["hit"] is False and again.meta["points_timed"] == 0
    assert again.meta["cache"]["path"] != first.meta["cache"]["path"]
