"""`profile`: measure a model's latency table (`measure.lut.LatencyTable`) on one backend.

What is timed. Every conv (dense, grouped, depthwise) and linear layer with at least one gated side
(a channel-graph site of role "in", "out" or "dw") gets a grid of kept counts per side: the
multiples of the block up to the layer's width, plus the width itself; an ungated side (a stem's
RGB inputs, a classifier's outputs) is the one point [width]. At most `samples` points per side
are timed, evenly spread over that grid, the smallest and the full width always among them; the
table interpolates bilinearly between them (exact for a cost bilinear in the two counts). Each
point is a one-layer model of the kept shape at the layer's own input size, stride, padding,
dilation and groups: `nn.ConvNd`/`nn.Linear` *with* bias (batch norm folds into the conv in
onnxruntime) and *without* the activation (onnxruntime fuses a following ReLU into the conv, so
it costs next to nothing; the calibration's scale absorbs what is left). On ort-* the layer is
exported to ONNX (`export.export_onnx`) and run in a session with the deployment's settings
(`measure.latency.make_runner`); on torch-* the module runs as it is. The median of repeated runs
is the point's time, repeats adapting to about `point_seconds` a point (at least 3 after a warm-up).

Grouped convs: a kept count must stay divisible by the conv's groups (equal counts per group), and
`freeze.round_plan` leaves such groups unrounded, so a grouped (not depthwise) conv's gated sides
are timed at the multiples of lcm(block, groups), plus the full width.

Deduplication and caching. Layers with one signature (kind, kernel, stride, padding, dilation,
groups, input size, widths) share their points; every (signature, kept in, kept out, batch) is timed
once per profile, and, unless `cache=False`, kept in a per-machine point cache for the next profile.
Cached points are reused only while the machine still runs them at the speed they were timed at: the
first distinct conv and depthwise layers (a linear one where there is neither) are timed again, and
when either kind's median ratio moved by more than `STALE_POINTS` (relative) the cached points are
dropped and every point is timed anew (a table that mixed two speeds of the machine, its points from
one day and its calibration from another, mis-predicted the learned plans it steered by 8-15%:
benchmarks/repredict.py). A whole table is cached under $CHANPRUNE_CACHE (default
~/.cache/chanprune)/profiles/, keyed by the architecture (name and structure, not weight values:
latency does not depend on them), input shape, backend, threads, batch sizes, block, sampling,
calibration and the machine. It keeps those layers' points as timed (`meta["recheck_ms"]`), and is
loaded only after they are timed again within `STALE_POINTS`; otherwise the model is profiled anew
(with the same re-timed points checking the point cache).

Calibration. Per batch size, the dense model and `calibration_plans` random plans rounded to the
block (`freeze.random_plan` + `round_plan`) are cut (`cut.cut`), exported and timed side by side
(`measure_interleaved`), and the whole models' times are fitted to the table's sums, one of two ways:

  fit "parts" (the default): each layer's timed grid is split by non-negative least squares into
      a bilinear a + p * kin + q * kout + d * kin * kout (`_layer_parts`): an intercept (a lone
      graph's call), the terms linear in one count (memory traffic, the layout reorders around a
      lone blocked conv) and the product (the multiply-adds). Summed over the layers that keep
      channels, the three parts get one non-negative weight each (`scipy.optimize.nnls`, least
      squares on relative errors) and every layer's grid is rewritten as w_a * a + w_lin * (its
      linear rest) + w_d * d * kin * kout (at least a twentieth of the point, so the table stays
      positive): a lone layer's overheads scale apart from its compute, which is what a single
      scale got wrong (pruned plans over-predicted by 10-35%). The table then predicts with scale 1
      and offset 0. Fewer than 4 models to fit (3 weights) falls back to:
  fit "scale": `model_ms = scale * sum(layer ms) + offset_ms` by least squares (`_fit`).

Both fits' errors are recorded from the same timings (the one not used under "alternative").
One more random plan, not in the fit, is the holdout: its relative error is the honest one.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .artifacts import atomic_write_text
from .cut import cut
from .errors import ArtifactError, ChanpruneError
from .export import export_onnx
from .freeze import random_plan, round_plan
from .graph import ChannelGraph, find_groups, run_hooked
from .measure.latency import (BACKENDS, available_backends, kernel_ms, make_runner, measure_interleaved, node_kernel_ms,
                             runs_in_budget)
from .measure.lut import LUT_VERSION, LatencyTable, LayerTable, default_block, kept_counts, machine_info
from .zoo import build_model

__all__ = ["profile_model", "cache_root", "sample_grid", "side_grid", "POINT_SECONDS", "TIMINGS", "FITS"]

POINT_SECONDS = 0.15  # time spent running one point (plus its export and session)
_MAX_RUNS = 500  # per point: a 20 µs layer needs no more
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
TIMINGS = ("wall", "kernel")
FITS = ("parts", "scale")
# Each fit's revision, part of a cached table's key: a table made by an earlier algorithm under the same
# fit name is profiled again, not reused. Bump a fit's revision when its algorithm changes.
FIT_REVISIONS = {"parts": "parts/nnls-relative", "scale": "offset>=0"}
# How far (relative) a re-timed layer kind's median may move before a cached table or the cached
# points are dropped; None: reuse them unchecked
STALE_POINTS = 0.15

Progress = Callable[[str, dict], None]


# ----------------------------------------------------------------------------- grids
def side_grid(width: int, step: int, gated: bool) -> list[int]:
    """The kept counts a side may take: multiples of `step` up to `width`, plus `width`; [width] ungated."""
    if not gated:
        return [width]
    grid = list(range(step, width + 1, step))
    if not grid or grid[-1] != width:
        grid.append(width)
    return grid


def sample_grid(grid: list[int], samples: int) -> list[int]:
    """At most `samples` counts of `grid`, evenly spread, its first and last always among them."""
    if len(grid) <= samples:
        return list(grid)
    idx = sorted({int(round(i)) for i in np.linspace(0, len(grid) - 1, samples)})
    return [grid[i] for i in idx]


# ----------------------------------------------------------------------------- the layers
@dataclass
class _Layer:
    module: str
    kind: str  # "conv", "dw", "linear"
    layer: nn.Module
    channels_in: int
    channels_out: int
    gated_in: bool
    gated_out: bool
    input_size: list[int] = field(default_factory=list)  # conv: spatial dims; linear: dims between batch and features
    calls: int = 0

    @property
    def groups(self) -> int:
        return getattr(self.layer, "groups", 1)

    @property
    def attrs(self) -> dict:
        m = self.layer
        a: dict = {"input_size": list(self.input_size), "calls": self.calls}
        if isinstance(m, _CONVS):
            a.update(kernel=list(m.kernel_size), stride=list(m.stride),
                     padding=m.padding if isinstance(m.padding, str) else list(m.padding),
                     dilation=list(m.dilation), groups=m.groups, padding_mode=m.padding_mode, dims=len(m.kernel_size))
        return a

    @property
    def signature(self) -> str:
        a = {k: v for k, v in self.attrs.items() if k != "calls"}
        return f"{self.kind}|{json.dumps(a, sort_keys=True)}|{self.channels_in}->{self.channels_out}"

    def step(self, block: int) -> int:
        g = self.groups if self.kind == "conv" else 1
        return block * g // math.gcd(block, g)

    def grids(self, block: int, samples: int) -> tuple[list[int], list[int]]:
        step = self.step(block)
        if self.kind == "dw":
            return sample_grid(side_grid(self.channels_in, step, True), samples), [self.channels_out]
        return (sample_grid(side_grid(self.channels_in, step, self.gated_in), samples),
                sample_grid(side_grid(self.channels_out, step, self.gated_out), samples))

    def build(self, kin: int, kout: int) -> nn.Module:
        """The one-layer model at kept counts (with bias, no activation)."""
        m = self.layer
        if isinstance(m, nn.Linear):
            return nn.Linear(kin, kout, bias=True).eval()
        groups = kin if self.kind == "dw" else m.groups
        kout = kin if self.kind == "dw" else kout
        # a copy resized, not type(m)(...): subclasses take other constructor arguments (EfficientNet-Lite's
        # static "same" padding needs the image size) and keep their own forward (its Pad before the conv)
        out = copy.copy(m)
        out._parameters, out._buffers, out._modules = dict(m._parameters), dict(m._buffers), dict(m._modules)
        out.in_channels, out.out_channels, out.groups = kin, kout, groups
        out.weight = nn.Parameter(torch.randn(kout, kin // groups, *m.kernel_size) * 0.1)
        out.bias = nn.Parameter(torch.zeros(kout))
        return out.eval()

    def input_shape(self, kin: int, batch: int) -> list[int]:
        if isinstance(self.layer, nn.Linear):
            return [batch, *self.input_size, kin]
        return [batch, kin, *self.input_size]


def _gated_layers(model: nn.Module, graph: ChannelGraph, x: torch.Tensor) -> list[_Layer]:
    roles: dict[str, set[str]] = {}
    for g in graph.groups:
        for s in g.sites:
            roles.setdefault(s.module, set()).add(s.role)
    layers = []
    for name, m in model.named_modules():
        r = roles.get(name, set())
        if not isinstance(m, (*_CONVS, nn.Linear)) or not r & {"in", "out", "dw"}:
            continue
        if isinstance(m, nn.Linear):
            layers.append(_Layer(name, "linear", m, m.in_features, m.out_features, "in" in r, "out" in r))
        elif "dw" in r:
            layers.append(_Layer(name, "dw", m, m.in_channels, m.out_channels, True, True))
        else:
            layers.append(_Layer(name, "conv", m, m.in_channels, m.out_channels, "in" in r, "out" in r))

    def hook(layer: _Layer):
        def fn(mod, inputs, output):
            layer.calls += 1
            if layer.calls == 1 and inputs and torch.is_tensor(inputs[0]):
                shape = list(inputs[0].shape)
                layer.input_size = shape[1:-1] if layer.kind == "linear" else shape[2:]
        return fn

    run_hooked(model, x, [lay.layer.register_forward_hook(hook(lay)) for lay in layers])
    return [lay for lay in layers if lay.calls > 0]


# ----------------------------------------------------------------------------- timing
def _time_runner(run: Callable[[], None], budget_s: float) -> float:
    """Median milliseconds of one call: a warm-up, then as many runs as fit `budget_s` (at least 3)."""
    times = []
    for _ in range(runs_in_budget(run, budget_s, max_runs=_MAX_RUNS)):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def _time_models(runners: dict[str, Callable[[], None]], budget_s: float) -> dict[str, float]:
    """Median milliseconds per call of each runner, measured round by round side by side."""
    once = 0.0
    for run in runners.values():
        run()
        t0 = time.perf_counter()
        run()
        once += time.perf_counter() - t0
    per_round = max(1, int(round(0.02 / max(once / len(runners), 1e-6))))
    rounds = int(min(40, max(5, budget_s / max(once * per_round, 1e-6))))
    times = measure_interleaved(runners, warmup=2, rounds=rounds, per_round=per_round)
    return {k: float(np.median(v)) for k, v in times.items()}


def _compare(fresh: dict[str, float], reference: dict[str, float], limit: float,
             kinds: dict[str, list[str]]) -> dict | None:
    """Per layer kind (`kinds`: kind -> its probe's point keys), the median ratio of the `fresh`
    points' times to the `reference` ones; `ratio` is the one furthest from 1, and the reference is
    dropped when it moved by more than `limit` (relative): a busy neighbour can slow memory-bound
    depthwise layers and not compute-bound ones. None when they share no point."""
    ratios, points = {}, 0
    for kind, keys in kinds.items():
        common = [k for k in keys if k in fresh and reference.get(k, 0) > 0]
        if common:
            ratios[kind] = float(np.median([fresh[k] / reference[k] for k in common]))
            points += len(common)
    if not ratios:
        return None
    ratio = max(ratios.values(), key=lambda r: abs(r - 1))
    return {"points": points, "ratio": ratio, "ratios": ratios, "dropped": abs(ratio - 1) > limit}


class _Points:
    """Milliseconds per (signature, kept in, kept out, batch): timed once; kept on disk between
    profiles of one machine, backend and thread count unless the cache is off."""

    def __init__(self, path: Path | None):
        self.path = path
        self.ms: dict[str, float] = {}
        self.stored: dict[str, float] = {}
        self.timed = 0
        self.reused = 0
        self._saved = time.monotonic()
        if path is not None and path.is_file():
            try:
                d = json.loads(path.read_text())
                self.stored = {k: float(v) for k, v in d.items()} if isinstance(d, dict) else {}
            except (OSError, ValueError, TypeError):
                self.stored = {}

    def get(self, key: str) -> float | None:
        if key in self.ms:
            return self.ms[key]
        if key in self.stored:
            self.reused += 1
            self.ms[key] = self.stored[key]
            return self.ms[key]
        return None

    def put(self, key: str, ms: float) -> None:
        self.ms[key] = ms
        self.timed += 1

    def recheck(self, probe: "_Points", limit: float, kinds: dict[str, list[str]]) -> dict | None:
        """Take `probe`'s freshly timed points; compared with the stored ones they replace (`_compare`),
        drop every stored point when they moved by more than `limit`. None when nothing compared."""
        check = _compare(probe.ms, self.stored, limit, kinds)
        self.ms.update(probe.ms)
        self.timed += probe.timed
        if check and check["dropped"]:
            self.stored = {}
        return check

    def save(self, *, force: bool = False) -> None:
        if self.path is None or not self.timed or (not force and time.monotonic() - self._saved < 10):
            return
        try:
            current = json.loads(self.path.read_text()) if self.path.is_file() else {}
            if not isinstance(current, dict):
                current = {}
        except (OSError, ValueError):
            current = {}
        current.update(self.ms)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps(current, sort_keys=True))
        except (OSError, ArtifactError):
            pass  # a cache that cannot be written is no reason to fail a profile
        self._saved = time.monotonic()


def _export(module: nn.Module, example: torch.Tensor, path: Path, backend: str):
    """What `make_runner` runs: the ONNX file (ort-*) or the module itself (torch-*)."""
    if backend.startswith("ort"):
        return export_onnx(module, example, path)
    return copy.deepcopy(module).eval()  # make_runner moves it to its device: not the caller's model


def _point_key(lay: _Layer, kin: int, kout: int, b: int, timing: str) -> str:
    sig = lay.signature if timing == "wall" else f"{timing}|{lay.signature}"
    return f"{sig}|{kin}x{kout}|b{b}"


def _time_layer(lay: _Layer, grid_in: list[int], grid_out: list[int], batch_sizes: list[int], *, backend: str,
                threads: int, points: _Points, budget_s: float, tmp: Path, timing: str) -> dict[str, list[list[float]]]:
    ms = {str(b): [[0.0] * len(grid_out) for _ in grid_in] for b in batch_sizes}
    for i, kin in enumerate(grid_in):
        for j, kout in enumerate(grid_out):
            keys = {b: _point_key(lay, kin, kout, b, timing) for b in batch_sizes}
            todo = [b for b in batch_sizes if points.get(keys[b]) is None]
            if todo:
                module = lay.build(kin, kout)
                target = _export(module, torch.zeros(lay.input_shape(kin, 1)), tmp / "layer.onnx", backend)
                for b in todo:
                    if timing == "kernel":
                        points.put(keys[b], kernel_ms(target, lay.input_shape(kin, b), threads=threads,
                                                      budget_s=budget_s, max_runs=_MAX_RUNS))
                        continue
                    run = make_runner(target, backend, lay.input_shape(kin, b), threads=threads)
                    points.put(keys[b], _time_runner(run, budget_s))
                    del run
            for b in batch_sizes:
                ms[str(b)][i][j] = points.get(keys[b]) * (lay.calls or 1)
    return ms


# ----------------------------------------------------------------------------- calibration
def _fit(x: list[float], y: list[float], *, free_offset: bool = False) -> tuple[float, float]:
    """scale, offset of y = scale * x + offset by least squares, with offset >= 0; scale 1 and the
    mean residual where that is not a positive, finite fit (a single point, equal sums).

    The offset is what no gate touches, and it cannot be negative. A free fit made it so: each
    one-layer graph carries a session call's overhead that the whole model pays once, so the layer
    sum overshoots at full width and a negative offset took it back. That held on the calibration
    plans but over-promised on learned plans that remove whole branches (ResNet-20 at 28 px,
    predicted 1.92x against 1.62x measured at batch 1; through the origin, 1.59x).

    `free_offset`: one layer's line from its lone timing to its time inside a model, whose offset
    may be negative (the lone call's overhead taken back); where that is not a positive, finite
    fit, through the origin (a pure scale, never a shift that could turn a time negative)."""
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    scale = offset = float("nan")
    if len(xa) >= 2 and np.ptp(xa) > 0:
        scale, offset = (float(v) for v in np.polyfit(xa, ya, 1))
        if offset < 0 and not free_offset:  # through the origin
            scale, offset = float(np.dot(xa, ya) / np.dot(xa, xa)), 0.0
    if not (math.isfinite(scale) and math.isfinite(offset) and scale > 0):
        scale, offset = (float(np.dot(xa, ya) / np.dot(xa, xa)), 0.0) if free_offset else (1.0, float(np.mean(ya - xa)))
    return scale, offset


def _calibration_plans(graph: ChannelGraph, n: int, block: int, seed: int) -> tuple[list[tuple[float, int, object]], tuple]:
    keeps = [0.5] if n == 1 else [round(float(k), 3) for k in np.linspace(0.3, 0.7, n)] if n > 1 else []
    fit = [(k, seed + i, round_plan(random_plan(graph, keep=k, seed=seed + i), graph, block)) for i, k in enumerate(keeps)]
    hold_seed = seed + 1000
    holdout = (0.6, hold_seed, round_plan(random_plan(graph, keep=0.6, seed=hold_seed), graph, block))
    return fit, holdout


_COMPUTE_OPS = ("Conv", "Gemm", "MatMul")
# what onnxruntime may fuse into the conv or gemm before it (activations, a folded batch norm, a residual sum)
_FUSABLE_OPS = ("Relu", "Clip", "LeakyRelu", "HardSigmoid", "HardSwish", "Sigmoid", "BatchNormalization", "Add", "Mul",
                "Identity")


def _call_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    """The names of the model's conv and linear layers, in the order its forward calls them."""
    order: list[str] = []
    run_hooked(model, x, [m.register_forward_pre_hook(lambda mod, inp, name=name: order.append(name))
                          for name, m in model.named_modules() if isinstance(m, (*_CONVS, nn.Linear))])
    return order


def _node_layers(onnx_path: Path, order: list[str]) -> dict[str, str] | None:
    """onnxruntime node name -> layer, for an exported model whose i-th Conv/Gemm/MatMul node is the
    i-th layer call of `order`; None where the counts differ (the pairing would be a guess).

    onnxruntime keeps an unfused node's ONNX name and names a fused one after the output it writes
    (plus `_nchwc` when blocked), so each layer claims its node's name and the outputs of the chain
    of fusable ops after it (one consumer each). An output two layers claim (a sum of two convs) is
    nobody's: its time stays out of the per-layer fit."""
    import onnx

    g = onnx.load(str(onnx_path)).graph
    compute = [n for n in g.node if n.op_type in _COMPUTE_OPS]
    if len(compute) != len(order):
        return None
    users: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    names: dict[str, str] = {}
    claims: dict[str, set[str]] = {}
    for node, layer in zip(compute, order):
        names[node.name] = layer
        t = node.output[0]
        for _ in range(4):
            claims.setdefault(t, set()).add(layer)
            u = users.get(t, [])
            if len(u) != 1 or u[0].op_type not in _FUSABLE_OPS:
                break
            t = u[0].output[0]
    for t, layers in claims.items():
        if len(layers) == 1:
            (layer,) = layers
            names.setdefault(t, layer)
            names.setdefault(f"{t}_nchwc", layer)
    return names


def _in_context(table: LatencyTable, targets: dict[str, Path], orders: dict[str, list[str]],
                counts: dict[str, dict], fit_names: list[str], b: int, shape: list[int], *, threads: int,
                budget_s: float) -> dict:
    """Correct each layer's row of the table at batch b to its kernel time inside the whole models.

    Each fitted model (the dense one and the random plans) runs under onnxruntime's profiler; a
    layer's in-context time is the kernel time of its nodes (`_node_layers`). Per layer, over the
    models, ctx = a * table + c is fitted (a > 0; through the origin where that fails or there is one
    distinct point), and the layer's grid becomes max(a * ms + c, ms / 20): what a lone layer pays
    and a layer inside a model does not (the session call, the reorders around it) goes, and the
    table stays monotone and bilinear between its points."""
    ctx: dict[str, dict[str, float]] = {}
    unmapped = []
    for name in fit_names:
        names = _node_layers(targets[name], orders[name])
        if names is None:
            unmapped.append(name)
            continue
        per = {}
        for node, (_, ms) in node_kernel_ms(targets[name], shape, threads=threads, budget_s=budget_s).items():
            layer = names.get(node)
            if layer is not None:
                per[layer] = per.get(layer, 0.0) + ms
        ctx[name] = per
    corrected = {}
    for lt in table.layers:
        pts = [(float(lt.at(*counts[n][lt.module], b)), ctx[n][lt.module]) for n in ctx if lt.module in ctx[n]]
        pts = [(x, y) for x, y in pts if x > 0 and y > 0]
        if not pts:
            continue
        a, c = _fit([p[0] for p in pts], [p[1] for p in pts], free_offset=True)
        lt.ms[str(b)] = [[max(a * v + c, v / 20) for v in row] for row in lt.ms[str(b)]]
        lt.__dict__.pop("_cache", None)
        lt.attrs.setdefault("context", {})[str(b)] = [a, c]
        corrected[lt.module] = [a, c]
    return {"layers": len(corrected), "of": len(table.layers), "models": len(ctx), "unmapped_models": unmapped}


def _layer_parts(lt: LayerTable, b: int) -> tuple[float, float, float, float]:
    """(a, p, q, d) of ms ~ a + p * kin + q * kout + d * kin * kout over the layer's timed grid at
    batch b, by non-negative least squares (`scipy.optimize.nnls`: no part may take time back, so
    the weighted grid stays what the fit saw). A depthwise layer (one count) or a side timed at
    one width (a stem's RGB inputs, a classifier's outputs) is a line a + c * k; its slope is the
    product d (the fixed side folded in) for a conv or linear layer, and linear (p) for a depthwise
    one, whose multiply-adds and memory traffic both grow with its one count."""
    from scipy.optimize import nnls

    ms = np.asarray(lt.ms[str(b)], dtype=float)
    gi, go = np.asarray(lt.grid_in, dtype=float), np.asarray(lt.grid_out, dtype=float)
    if lt.kind == "dw" or len(gi) == 1 or len(go) == 1:
        one_in = lt.kind != "dw" and len(gi) == 1
        k, y = (go, ms[0, :]) if one_in else (gi, ms[:, 0])
        if len(k) < 2:
            return float(ms.flat[0]), 0.0, 0.0, 0.0
        (a, c), _ = nnls(np.stack([np.ones_like(k), k], 1), y)
        if lt.kind == "dw":
            return float(a), float(c), 0.0, 0.0
        return float(a), 0.0, 0.0, float(c) / float(gi[0] if one_in else go[0])
    i, o = np.meshgrid(gi, go, indexing="ij")
    A = np.stack([np.ones(i.size), i.ravel(), o.ravel(), (i * o).ravel()], 1)
    return tuple(float(v) for v in nnls(A, ms.ravel())[0])


def _parts_sum(table: LatencyTable, counts: dict[str, tuple], b: int, coefs: dict[str, tuple]) -> np.ndarray:
    """[intercepts, linear rests, products] summed over the layers that keep channels at `counts`;
    the linear rest is the table's interpolated time less the other two (so the three add up to it)."""
    out = np.zeros(3)
    for lt in table.layers:
        kin, kout = (float(v) for v in counts[lt.module])
        if kin <= 0 or kout <= 0:
            continue
        a, _, _, d = coefs[lt.module]
        t = float(lt.at(kin, kout, b))
        prod = d * kin * kout
        out += (a, t - a - prod, prod)
    return out


def _fit_parts(features: list[np.ndarray], y: list[float]) -> np.ndarray | None:
    """Non-negative weights of the three parts (`scipy.optimize.nnls` on the relative errors); None
    where fewer than 4 models, or no positive fit."""
    from scipy.optimize import nnls

    if len(y) < 4:
        return None
    y = np.asarray(y, dtype=float)
    if np.any(y <= 0):
        return None
    # relative errors, not milliseconds: least squares on raw times is the dense model's alone
    w, _ = nnls(np.asarray(features) / y[:, None], np.ones(len(y)))
    return w if np.all(np.isfinite(w)) and w.sum() > 0 else None


def _rewrite_parts(table: LatencyTable, b: int, coefs: dict[str, tuple], w: np.ndarray) -> None:
    """Each layer's grid at batch b as w_a * a + w_lin * rest + w_d * d * kin * kout, floored at a
    twentieth of the timed point; what was timed stays in `attrs["timed_ms"]`."""
    for lt in table.layers:
        a, _, _, d = coefs[lt.module]
        rows = lt.ms[str(b)]
        lt.attrs.setdefault("timed_ms", {})[str(b)] = [list(r) for r in rows]
        # a depthwise layer's one column is at grid_out = [its width], and its product d is 0
        lt.ms[str(b)] = [[max(float(w[0] * a + w[1] * (v - a - d * kin * kout) + w[2] * d * kin * kout), v / 20)
                          for kout, v in zip(lt.grid_out, row)] for kin, row in zip(lt.grid_in, rows)]
        lt.__dict__.pop("_cache", None)


def _calibrate(table: LatencyTable, model: nn.Module, graph: ChannelGraph, x: torch.Tensor, *, plans: int,
               seed: int, backend: str, threads: int, budget_s: float, tmp: Path,
               progress: Progress | None, in_context: bool = False, fit_kind: str = "parts") -> dict[str, dict]:
    fit, holdout = _calibration_plans(graph, plans, table.block, seed)
    models = {"dense": (1.0, None, None, model)}
    for k, s, plan in [*fit, holdout]:
        slim = cut(model, graph, plan, x).slim
        models[f"keep {k} seed {s}"] = (k, s, plan, slim)
    targets = {name: _export(m, x, tmp / f"model{i}.onnx", backend) for i, (name, (*_, m)) in enumerate(models.items())}
    ones = [torch.ones(g.size) for g in graph.groups]
    sums = {}
    for name, (_, _, plan, _) in models.items():
        counts = kept_counts(table, graph, ones if plan is None else plan.keep_masks(graph))
        sums[name] = counts
    hold_name = list(models)[-1]
    orders = {name: _call_order(m, x) for name, (*_, m) in models.items()} if in_context else {}
    out = {}
    for b in table.batch_sizes:
        if progress:
            progress("calibrate", {"batch": b, "models": len(models)})
        shape = [b, *x.shape[1:]]
        runners = {name: make_runner(t, backend, shape, threads=threads) for name, t in targets.items()}
        measured = _time_models(runners, budget_s)
        del runners
        in_fit = [n for n in models if n != hold_name]
        context = None
        if in_context:
            context = _in_context(table, targets, orders, sums, in_fit, b, shape, threads=threads, budget_s=budget_s)
        layer_ms = {name: float(sum(t.at(*sums[name][t.module], b) for t in table.layers)) for name in models}
        scale, offset = _fit([layer_ms[n] for n in in_fit], [measured[n] for n in in_fit])

        def errors(pred: dict[str, float], layers: dict[str, float]) -> dict:
            def row(name):
                keep, s, _, _ = models[name]
                return {"keep": keep, "seed": s, "measured_ms": measured[name], "predicted_ms": pred[name],
                        "layers_ms": layers[name], "rel_error": (pred[name] - measured[name]) / measured[name]}

            rows = [row(n) for n in in_fit]
            return {"error": {"plans": rows, "max_abs_rel_error": max(abs(r["rel_error"]) for r in rows)},
                    "holdout": row(hold_name)}

        by_scale = {"fit": "scale", "scale": scale, "offset_ms": offset, "layers_dense_ms": layer_ms["dense"],
                    **errors({n: scale * layer_ms[n] + offset for n in models}, layer_ms)}
        coefs = {lt.module: _layer_parts(lt, b) for lt in table.layers}
        feats = {n: _parts_sum(table, sums[n], b, coefs) for n in models}
        w = _fit_parts([feats[n] for n in in_fit], [measured[n] for n in in_fit])
        by_parts = None
        if w is not None:
            weights = {"intercept": float(w[0]), "linear": float(w[1]), "product": float(w[2])}
            if fit_kind == "parts":
                _rewrite_parts(table, b, coefs, w)
                fitted = {n: float(sum(t.at(*sums[n][t.module], b) for t in table.layers)) for n in models}
            else:
                fitted = {n: float(feats[n] @ w) for n in models}
            by_parts = {"fit": "parts", "scale": 1.0, "offset_ms": 0.0, "weights": weights,
                        "layers_dense_ms": fitted["dense"], "raw_layers_dense_ms": layer_ms["dense"],
                        **errors(fitted, fitted)}
        chosen, other = (by_parts, by_scale) if fit_kind == "parts" and by_parts is not None else (by_scale, by_parts)
        out[str(b)] = {**chosen, "dense_ms": measured["dense"]}
        if other is not None:
            out[str(b)]["alternative"] = other
        if context is not None:
            out[str(b)]["context"] = context
        if progress:
            progress("calibrated", {"batch": b, **out[str(b)]})
    return out


# ----------------------------------------------------------------------------- cache
def cache_root() -> Path:
    """$CHANPRUNE_CACHE, or ~/.cache/chanprune."""
    return Path(os.environ.get("CHANPRUNE_CACHE") or os.path.expanduser("~/.cache/chanprune"))


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _fingerprint(model: nn.Module) -> str:
    """The architecture, not the weights: every leaf module's name and repr (shapes, strides, ...)."""
    return _sha([(n, repr(m)) for n, m in model.named_modules() if next(m.children(), None) is None])


def _machine_key(machine: dict) -> dict:
    return {k: machine.get(k) for k in ("cpu", "isa", "backend", "backend_version", "threads", "device")}


# ----------------------------------------------------------------------------- the command
def _check_args(input_shape, backend, threads, batch_sizes, block, samples, calibration_plans, point_seconds):
    if (not isinstance(input_shape, (list, tuple)) or not 3 <= len(input_shape) <= 5
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in input_shape)):
        raise ChanpruneError(f"--input-shape {input_shape}: expected 3 to 5 positive integers like 1,3,224,224")
    if backend not in BACKENDS:
        raise ChanpruneError(f"--backend {backend!r}: unknown; choose from {', '.join(BACKENDS)}")
    why = available_backends()[backend]
    if why is not None:
        raise ChanpruneError(f"--backend {backend} is not available here: {why}")
    if not isinstance(threads, int) or threads < 1:
        raise ChanpruneError(f"--threads {threads}: must be >= 1")
    sizes = list(dict.fromkeys(batch_sizes))
    if not sizes or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in sizes):
        raise ChanpruneError(f"--batch-size {','.join(map(str, batch_sizes))}: batch sizes must be integers >= 1")
    if block is not None and (not isinstance(block, int) or block < 1):
        raise ChanpruneError(f"--block {block}: must be >= 1 (or auto)")
    if not isinstance(samples, int) or samples < 2:
        raise ChanpruneError(f"--samples {samples}: must be >= 2 (the smallest count and the full width)")
    if not isinstance(calibration_plans, int) or calibration_plans < 0:
        raise ChanpruneError(f"--calibration-plans {calibration_plans}: must be >= 0")
    if not point_seconds > 0:
        raise ChanpruneError(f"point_seconds {point_seconds}: must be > 0")
    return sizes


def _build(model, arch, weights, num_classes, in_channels) -> tuple[nn.Module, str | None]:
    if isinstance(model, nn.Module):
        if weights is not None:
            from .artifacts import load_state_dict_file

            try:
                model.load_state_dict(load_state_dict_file(weights), strict=True)
            except RuntimeError as e:
                raise ArtifactError(f"--weights {weights}: does not fit the model "
                                    f"({str(e).strip().splitlines()[0][:200]})") from e
        return model, arch
    if not isinstance(model, str) or not model:
        raise ChanpruneError("give an arch name or an nn.Module")
    arch = model
    if weights is not None and num_classes is None and Path(weights).is_file():
        from .artifacts import DENSE_FORMAT, _safe_torch_load  # a dense checkpoint knows its classifier

        obj = _safe_torch_load(Path(weights))
        if isinstance(obj, dict) and obj.get("format") == DENSE_FORMAT:
            if obj.get("arch") != arch:
                raise ArtifactError(f"--weights {weights} holds a {obj.get('arch')}, not a {arch}")
            num_classes = (obj.get("build_kwargs") or {}).get("num_classes")
    return build_model(arch, num_classes=num_classes, in_channels=in_channels, weights=weights), arch


def profile_model(model: str | nn.Module, input_shape: list[int], *, weights: str | None = None,
                  arch: str | None = None, num_classes: int | None = None, backend: str = "ort-cpu",
                  threads: int = 2, batch_sizes=(1,), block: int | None = None, samples: int = 4,
                  calibration_plans: int = 3, cache: bool = True, point_seconds: float = POINT_SECONDS,
                  seed: int = 0, timing: str = "wall", in_context: bool = False, fit: str = "parts",
                  progress: Progress | None = None) -> LatencyTable:
    """Measure the latency table of a model on this machine (see the module's docstring).

    Args:
        model: an arch name for the zoo (built with `num_classes`, the input's channels and
            `weights`), or a dense `nn.Module` (`arch` then names it in the table; `weights`, a
            state_dict file, is loaded into it).
        input_shape: N,C,H,W (or N,C,L / N,C,D,H,W); N is ignored, `batch_sizes` say what is timed.
        backend: "ort-cpu" (the deployment), "ort-cuda", "torch-cpu", "torch-cuda"; one not
            available here raises `ChanpruneError`.
        threads: the session's intra-op threads (inter-op 1, no spinning: `make_runner`).
        block: kept counts are timed at multiples of it (default `default_block(backend)`).
        samples: at most this many counts per side (>= 2).
        calibration_plans: random aligned plans in the whole-model fit (besides the dense model;
            one more is the holdout).
        cache: load a cached table with the same key, reuse cached points, and store both.
        point_seconds: about how long one point runs.
        timing: what a point's time is. "wall": the session call's wall time, reorders and call
            overhead included. "kernel" (ort-cpu only): onnxruntime's own profile of the one-layer
            graph, its kernels' time without the layout reorders around a lone blocked conv
            (`measure.latency.kernel_ms`). Measured against whole models neither fits better
            everywhere (README, "Latency as the budget"), so wall, the older, stays the default.
        in_context: (ort-cpu only) before the whole-model fit, correct each layer's row to its
            kernel time inside the calibration models (`_in_context`): onnxruntime's profile of each
            whole model, its nodes paired with the layers.
        fit: how the whole models' times calibrate the table: "parts" (the default: intercepts,
            linear terms and products of each layer's grid weighted apart) or "scale" (one scale and
            an offset over the layers' sum). See the module's docstring.
        progress: `progress(stage, info)` with stage "recheck" (a cached table's or the cached points'
            first conv and depthwise layers re-timed: of "table" or "points", how many points, the
            median ratio per kind and the one furthest from 1, whether the cached ones were
            dropped), "cached", "graph", "layer", "calibrate" or "calibrated".

    Returns:
        The table; `meta["cache"]` says whether it came from the cache ("hit") and where it is kept,
        `meta["recheck"]` how a cached table was checked, `meta["points_recheck"]` the point cache.
    """
    t_start = time.perf_counter()
    sizes = _check_args(input_shape, backend, threads, batch_sizes, block, samples, calibration_plans, point_seconds)
    if timing not in TIMINGS:
        raise ChanpruneError(f"--timing {timing!r}: choose from {', '.join(TIMINGS)}")
    if fit not in FITS:
        raise ChanpruneError(f"--fit {fit!r}: choose from {', '.join(FITS)}")
    if timing == "kernel" and backend != "ort-cpu":
        raise ChanpruneError(f"--timing kernel needs --backend ort-cpu (onnxruntime's CPU profiler), not {backend}")
    if in_context and backend != "ort-cpu":
        raise ChanpruneError(f"--in-context needs --backend ort-cpu (onnxruntime's CPU profiler), not {backend}")
    if in_context and calibration_plans < 1:
        raise ChanpruneError("--in-context needs --calibration-plans >= 1: the layers are fitted on whole models")
    block = default_block(backend) if block is None else block
    model, arch = _build(model, arch, weights, num_classes, input_shape[1])
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros([1, *input_shape[1:]])
        graph = find_groups(model, x)
        layers = _gated_layers(model, graph, x)
        if not layers:
            raise ChanpruneError(f"{arch or 'the model'}: no gated conv or linear layer to profile "
                                 f"({len(graph.groups)} channel groups)")
        machine = machine_info(backend, threads)
        settings = {"arch": arch, "fingerprint": _fingerprint(model), "input_shape": list(input_shape[1:]),
                    "backend": backend, "threads": threads, "batch_sizes": sizes, "block": block, "samples": samples,
                    "calibration_plans": calibration_plans, "point_seconds": point_seconds, "seed": seed,
                    "machine": _machine_key(machine), "version": LUT_VERSION, "fit": FIT_REVISIONS[fit], "timing": timing,
                    **({"in_context": True} if in_context else {})}
        root = cache_root() / "profiles"
        path = root / f"{_sha(settings)}.json"
        unique: dict[tuple, list[_Layer]] = {}
        grids = {}
        for lay in layers:
            gi, go = lay.grids(block, samples)
            key = (lay.signature, tuple(gi), tuple(go), lay.calls)
            unique.setdefault(key, []).append(lay)
            grids[key] = (gi, go)
        # what a cached table or point is checked by: the first distinct conv and depthwise layer (a linear
        # layer only where there is neither: a head's microseconds are mostly noise)
        probes = {}
        for key, lays in unique.items():
            probes.setdefault(lays[0].kind, key)
        probes = {k: v for k, v in probes.items() if k != "linear" or len(probes) == 1}
        kinds = {kind: [_point_key(unique[key][0], kin, kout, b, timing)
                        for kin in grids[key][0] for kout in grids[key][1] for b in sizes]
                 for kind, key in probes.items()}
        tables: dict[tuple, dict] = {}
        recheck = probe = None
        with tempfile.TemporaryDirectory(prefix="chanprune-profile-") as tmpdir:
            tmp = Path(tmpdir)

            def time_probe() -> _Points:
                """The probe layers' points, timed now (once)."""
                nonlocal probe
                if probe is None:
                    probe = _Points(None)
                    for key in probes.values():
                        _time_layer(unique[key][0], *grids[key], sizes, backend=backend, threads=threads,
                                    points=probe, budget_s=point_seconds, tmp=tmp, timing=timing)
                return probe

            if cache and path.is_file():
                try:
                    table = LatencyTable.load(path)
                except ValueError:
                    table = None
                reference = (table.meta.get("recheck_ms") or {}) if table is not None else {}
                check = None
                if table is not None and reference and STALE_POINTS is not None:  # still this machine's speed?
                    check = _compare(time_probe().ms, reference, STALE_POINTS, kinds)
                if check:
                    check["of"] = "table"
                    if progress:
                        progress("recheck", check)
                    if check["dropped"]:
                        table = None
                    else:
                        table.meta["recheck"] = check
                if table is not None:
                    table.meta["cache"] = {"hit": True, "path": str(path)}
                    if progress:
                        progress("cached", {"path": str(path), "layers": len(table.layers)})
                    return table
            point_key = _sha({**_machine_key(machine), "point_seconds": point_seconds, "version": LUT_VERSION})
            points = _Points(root / "points" / f"{point_key}.json" if cache else None)
            if progress:
                progress("graph", {"layers": len(layers), "unique": len(unique),
                                   "points": sum(len(gi) * len(go) for gi, go in grids.values()) * len(sizes)})
            # does this machine still run at the cached points' speed? A probe the table's check timed goes
            # into the points either way, not timed again below
            if STALE_POINTS is not None and (points.stored or probe is not None):
                recheck = points.recheck(time_probe(), STALE_POINTS, kinds)
                if recheck:
                    recheck["of"] = "points"
                    if progress:
                        progress("recheck", recheck)
            for i, (key, lays) in enumerate(unique.items()):
                t0, timed0 = time.perf_counter(), points.timed
                gi, go = grids[key]
                tables[key] = _time_layer(lays[0], gi, go, sizes, backend=backend, threads=threads, points=points,
                                          budget_s=point_seconds, tmp=tmp, timing=timing)
                points.save()
                if progress:
                    lay = lays[0]
                    progress("layer", {"index": i + 1, "total": len(unique), "module": lay.module,
                                       "modules": [m.module for m in lays], "kind": lay.kind,
                                       "channels_in": lay.channels_in, "channels_out": lay.channels_out,
                                       "attrs": lay.attrs, "grid_in": gi, "grid_out": go,
                                       "points": len(gi) * len(go) * len(sizes),
                                       "timed": points.timed - timed0,
                                       "seconds": time.perf_counter() - t0})
            points.save(force=True)
            layer_tables = []
            for key, lays in unique.items():
                gi, go = grids[key]
                for lay in lays:
                    layer_tables.append(LayerTable(lay.module, lay.kind, lay.channels_in, lay.channels_out, list(gi),
                                                   list(go), {b: [list(r) for r in rows] for b, rows in tables[key].items()},
                                                   {**lay.attrs, "step": lay.step(block)}))
            order = {lay.module: i for i, lay in enumerate(layers)}
            layer_tables.sort(key=lambda t: order[t.module])
            table = LatencyTable(arch, list(input_shape[1:]), backend, threads, sizes, block, machine, layer_tables, {})
            t_cal = time.perf_counter()
            table.calibration = _calibrate(table, model, graph, x, plans=calibration_plans, seed=seed, backend=backend,
                                           threads=threads, budget_s=10 * point_seconds, tmp=tmp, progress=progress,
                                           in_context=in_context, fit_kind=fit)
        n_points = sum(len(gi) * len(go) for gi, go in grids.values()) * len(sizes)
        table.meta = {
            "samples": samples, "point_seconds": point_seconds, "calibration_plans": calibration_plans, "seed": seed,
            "seconds": time.perf_counter() - t_start, "calibration_seconds": time.perf_counter() - t_cal,
            "layers": len(layer_tables), "unique_layers": len(unique), "points": n_points,
            "points_timed": points.timed, "points_reused": points.reused,
            **({"points_recheck": recheck} if recheck else {}),
            "recheck_ms": {k: points.ms[k] for keys in kinds.values() for k in keys if k in points.ms},
            "timed_as": ("one-layer " + ("ONNX graph" if backend.startswith("ort") else "torch module")
                         + ": Conv/Linear of the kept shape with bias, no activation"),
            "timing": timing, "in_context": in_context, "fit": fit,
            "grouped_convs": "gated sides timed at multiples of lcm(block, groups), plus the full width",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "cache": {"hit": False, "path": str(path) if cache else None},
        }
        if cache:
            try:
                table.save(path)
            except OSError:
                table.meta["cache"]["path"] = None
        return table
    finally:
        model.train(was_training)
