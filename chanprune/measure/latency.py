"""Latency: onnxruntime and torch on CPU (and CUDA where it is really there), A/B interleaved.

Ratios are measured side by side in one process, round by round (A, B, A, B, ...), and the median
of the per-round ratios is reported: a noisy machine slows both sides of a round alike.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch

__all__ = ["LatencyReport", "BACKENDS", "available_backends", "make_session", "make_runner", "measure_interleaved",
           "ratio_stats", "kernel_ms", "node_kernel_ms", "runs_in_budget", "LAYOUT_OPS"]

BACKENDS = ("ort-cpu", "ort-cuda", "torch-cpu", "torch-cuda")


@dataclass
class LatencyReport:
    name: str
    backend: str
    batch: int
    threads: int
    warmup: int
    repeats: int
    p50_ms: float
    p90_ms: float
    mean_ms: float

    def to_dict(self) -> dict:
        return asdict(self)


def available_backends() -> dict[str, str | None]:
    """Each backend -> None when usable here, else why not."""
    import onnxruntime as ort

    providers = ort.get_available_providers()
    cuda = torch.cuda.is_available()
    return {
        "ort-cpu": None,
        "ort-cuda": None if "CUDAExecutionProvider" in providers and cuda else
        "onnxruntime's CUDA provider is not available (pip install 'chanprune[gpu]' on a machine with a GPU)",
        "torch-cpu": None,
        "torch-cuda": None if cuda else "torch sees no CUDA GPU",
    }


def make_session(target, backend: str, *, threads: int, profile_prefix: str | None = None):
    """An onnxruntime session on `target` (an ONNX path) with the deployment's settings (and, with
    `profile_prefix`, onnxruntime's profiler on, writing there)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if profile_prefix is not None:
        opts.enable_profiling, opts.profile_file_prefix = True, profile_prefix
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # No spin-waiting: A/B rounds keep several sessions alive, and the spinning thread pool of the
    # session that just ran steals the cores from the next one (on 2 cores resnet18 at batch 1
    # measured 13-17 ms with spinning, 12.8 ms without, and the speedup's spread fell from ±8% to ±1%).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if backend == "ort-cuda" else ["CPUExecutionProvider"]
    return ort.InferenceSession(str(target), sess_options=opts, providers=providers)


def make_runner(target, backend: str, shape: list[int], *, threads: int) -> Callable[[], None]:
    """A no-argument callable that runs one batch. `target` is an ONNX path for ort-*, a module for torch-*."""
    if backend.startswith("ort"):
        sess = make_session(target, backend, threads=threads)
        name = sess.get_inputs()[0].name
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        return lambda: sess.run(None, {name: x})
    device = "cuda" if backend == "torch-cuda" else "cpu"
    model = target.to(device).eval()
    x = torch.randn(*shape, device=device)

    def run():
        torch.set_num_threads(threads)
        with torch.inference_mode():
            model(x)
        if device == "cuda":
            torch.cuda.synchronize()

    return run


def runs_in_budget(run: Callable[[], None], budget_s: float, *, min_runs: int = 3, max_runs: int = 500) -> int:
    """How many calls of `run` fit `budget_s` (`min_runs` to `max_runs`), from a warm-up call and one
    timed call (both made here)."""
    run()
    t0 = time.perf_counter()
    run()
    once = time.perf_counter() - t0
    return int(min(max_runs, max(min_runs, budget_s / max(once, 1e-6))))


# onnxruntime's layout changes around channels-blocked (NCHWc) nodes: a lone conv pays one on each
# side, a conv inside a model between two blocked neighbours pays none
LAYOUT_OPS = ("ReorderInput", "ReorderOutput")


def _profiled_runs(target, shape: list[int], *, threads: int, budget_s: float, max_runs: int,
                   min_runs: int = 3) -> tuple[int, list[dict]]:
    """Run the ONNX file `target` under onnxruntime's profiler: a warm-up pair, then as many runs as
    fit `budget_s` (`min_runs` to `max_runs`). Returns the number of timed runs and the kernel
    events, each node's k-th event belonging to the k-th run (the two warm-ups first)."""
    import json
    import os
    import tempfile

    with tempfile.TemporaryDirectory(prefix="chanprune-kernel-") as tmp:
        sess = make_session(target, "ort-cpu", threads=threads, profile_prefix=os.path.join(tmp, "profile"))
        name = sess.get_inputs()[0].name
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        runs = runs_in_budget(lambda: sess.run(None, {name: x}), budget_s, min_runs=min_runs, max_runs=max_runs)
        for _ in range(runs):
            sess.run(None, {name: x})
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    return runs, [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]


def kernel_ms(target, shape: list[int], *, threads: int, budget_s: float, max_runs: int = 500,
              skip=LAYOUT_OPS) -> float:
    """The median over runs of the time onnxruntime's CPU kernels spend in one run of the ONNX file
    `target`, the nodes whose op is in `skip` left out (its own profiler, deployment settings).

    This is what a layer costs inside a model, timed alone: the session call and the reorders
    around a lone blocked conv, which a whole model pays once or not at all, are not in it. Runs: a
    warm-up, then as many as fit `budget_s` (3 to `max_runs`)."""
    runs, events = _profiled_runs(target, shape, threads=threads, budget_s=budget_s, max_runs=max_runs)
    per_run = np.zeros(runs + 2)
    seen: dict[str, int] = {}
    for e in events:
        i = seen.get(e["name"], 0)  # the k-th event of a node belongs to the k-th run
        seen[e["name"]] = i + 1
        if i < len(per_run) and e.get("args", {}).get("op_name") not in skip:
            per_run[i] += e["dur"] / 1000.0
    return float(np.median(per_run[2:]))


def node_kernel_ms(target, shape: list[int], *, threads: int, budget_s: float, max_runs: int = 200) -> dict[str, tuple[str, float]]:
    """Per node of the graph onnxruntime runs (after its fusions): (op, median kernel milliseconds
    per run), from its own profiler. Node names are onnxruntime's: a fused node is named after
    the output it writes (with `_nchwc` when blocked), an untouched one keeps its ONNX name."""
    runs, events = _profiled_runs(target, shape, threads=threads, budget_s=budget_s, max_runs=max_runs, min_runs=5)
    per: dict[str, list[float]] = {}
    ops: dict[str, str] = {}
    for e in events:
        name = e["name"][: -len("_kernel_time")]
        per.setdefault(name, []).append(e["dur"] / 1000.0)
        ops[name] = e.get("args", {}).get("op_name", "")
    return {n: (ops[n], float(np.median(v[2:] if len(v) > 2 else v))) for n, v in per.items()}


def measure_interleaved(runners: dict[str, Callable[[], None]], *, warmup: int = 5, rounds: int = 15,
                        per_round: int = 5) -> dict[str, list[float]]:
    """Per-call milliseconds for each runner, one list entry per round, runners alternating."""
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in runners}
    names = list(runners)
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for k in order:
            fn = runners[k]
            t0 = time.perf_counter()
            for _ in range(per_round):
                fn()
            times[k].append((time.perf_counter() - t0) * 1000 / per_round)
    return times


def summarize(name: str, backend: str, batch: int, threads: int, warmup: int, ms: list[float], per_round: int) -> LatencyReport:
    q = np.percentile(ms, [50, 90])
    return LatencyReport(name, backend, batch, threads, warmup, len(ms) * per_round, float(q[0]), float(q[1]),
                         float(statistics.fmean(ms)))


def ratio_stats(numerator: list[float], denominator: list[float]) -> tuple[float, list[float]]:
    """The median and the 10th-90th percentiles of the per-round ratios numerator / denominator."""
    ratios = [n / d for n, d in zip(numerator, denominator)]
    return float(np.median(ratios)), [float(np.percentile(ratios, 10)), float(np.percentile(ratios, 90))]
