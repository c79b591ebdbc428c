"""Where the time goes: onnxruntime's own profile of the dense and the slim models of one latency run.

For each ONNX file of `benchmarks/latency.py`'s run folder (dense, chanprune, chanprune-r16,
tp-uniform, tp-uniform-r16), or with `--grid latency_budget` of `benchmarks/latency_budget.py`'s
(dense, cp-latency, cp-latency-b1-r16, cp-flops-r16, tp-r16@flops, tp-r16@latency), this saves the graph onnxruntime actually runs (after its optimizations:
batch norm folded into convs, activations fused, channels-blocked NCHWc convs where the channel
counts allow) and profiles it: kernel time per op type, summed over the nodes (each node's median over runs).

    python benchmarks/why.py [--arch resnet18] [--target 0.5] [--batch 1] [--runs 30] [--grid latency|latency_budget]

Rows go to benchmarks/results/why.jsonl (one per model, arch, target and batch).
"""
from __future__ import annotations

import argparse
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

from _common import Rows


def _options(**kw):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = 2, 1, 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as `chanprune bench` measures
    for k, v in kw.items():
        setattr(opts, k, v)
    return opts


def profile(onnx_path: Path, batch: int, runs: int) -> dict:
    """The graph onnxruntime runs (after its optimizations) and its kernel time per op type and per
    kind of node: the median over `runs` runs of each node (`measure.latency.node_kernel_ms`)."""
    import onnx
    import onnxruntime as ort
    from chanprune.measure.latency import node_kernel_ms

    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        ort.InferenceSession(str(onnx_path), sess_options=_options(optimized_model_filepath=str(optimized)),
                             providers=["CPUExecutionProvider"])
        graph = onnx.load(str(optimized)).graph
    every, inside = _nodes(graph)
    nodes = Counter(f"{n.domain + ':' if n.domain else ''}{n.op_type}" for n in every)
    kinds = {n.name: _kind(n) for n in every}
    shape = [batch, *(d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:])]
    per_op, per_kind = defaultdict(float), defaultdict(float)
    nested = 0.0
    for name, (op, ms) in node_kernel_ms(onnx_path, shape, threads=2, budget_s=float("inf"), max_runs=runs).items():
        per_op[op] += ms
        per_kind[kinds.get(name, "other")] += ms
        nested += ms if name in inside else 0.0
    if nested:  # an If's kernel time includes the nodes of the branch it ran, profiled on their own too
        per_op["If"] -= nested
        per_kind["If"] -= nested
    return {"nodes": dict(nodes), "ms_per_op": _ordered(per_op), "ms_per_kind": _ordered(per_kind),
            "ms_total": round(sum(per_op.values()), 3)}


def _nodes(graph):
    """Every node, the branches of If (and loop bodies) included, and the names of those inside one."""
    every, inside = [], set()

    def walk(g, nested):
        for n in g.node:
            every.append(n)
            if nested:
                inside.add(n.name)
            for attr in n.attribute:
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    walk(sub, True)

    walk(graph, False)
    return every, inside


def _ordered(d: dict) -> dict:
    return {k: round(v, 3) for k, v in sorted(d.items(), key=lambda kv: -kv[1])}


def _kind(node) -> str:
    """A conv by shape (depthwise, 1x1, kxk) and whether it runs channels-blocked (NCHWc); else its op."""
    if node.op_type not in ("Conv", "FusedConv"):
        return node.op_type
    attrs = {a.name: a for a in node.attribute}
    shape = "depthwise" if attrs.get("group") and attrs["group"].i > 1 else (
        "1x1" if attrs.get("kernel_shape") and list(attrs["kernel_shape"].ints) == [1, 1] else "kxk")
    return f"{shape} conv ({'NCHWc' if node.domain == 'com.microsoft.nchwc' else 'NCHW'})"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--round-to", type=int, default=16)
    ap.add_argument("--grid", choices=["latency", "latency_budget"], default="latency",
                    help="Whose run folder: benchmarks/latency.py's (FLOPs plans) or latency_budget.py's.")
    ap.add_argument("--out", type=Path, default=None, help="The grid's run folder (default: runs/bench/GRID).")
    a = ap.parse_args()
    rows = Rows("why")
    out = a.out or Path("runs/bench") / a.grid
    run = out / f"{a.arch}_t{a.target}"
    n = a.round_to
    if a.grid == "latency":
        models = {"dense": out / f"{a.arch}_dense", "chanprune": run / "slim", f"chanprune-r{n}": run / f"slim_r{n}",
                  "tp-uniform": run / "tp_uniform", f"tp-uniform-r{n}": run / f"tp_uniform_r{n}"}
    else:
        models = {"dense": out / f"{a.arch}_dense", "cp-latency": run / "latency" / "slim",
                  "cp-latency-b1-r16": run / "latency_b1" / "slim_r16", "cp-flops-r16": run / "flops" / "slim_r16",
                  "tp-r16@flops": run / "tp_flops", "tp-r16@latency": run / "tp_latency"}
    for name, folder in models.items():
        key = f"{a.arch}/t{a.target}/{name}/b{a.batch}" + ("" if a.grid == "latency" else f"/{a.grid}")
        if key in rows or not (folder / "model.onnx").is_file():
            continue
        r = rows.add({"key": key, "grid": a.grid, "arch": a.arch, "target": a.target, "model": name, "batch": a.batch,
                      "runs": a.runs, **profile(folder / "model.onnx", a.batch, a.runs)})
        top = ", ".join(f"{k} {v:.2f}" for k, v in list(r["ms_per_kind"].items())[:6])
        print(f"{name:<16} {r['ms_total']:.2f} ms/run in kernels: {top}; nodes {r['nodes']}", flush=True)


if __name__ == "__main__":
    main()
