"""How well a latency table predicts learned plans: calibrated by parts (the default) against one scale.

Per arch, one `chanprune profile --fit parts` (onnxruntime CPU, 2 threads, batch 1 and 32, 224x224;
the demo's ResNet-20 at 1x28x28;
timed points from the cache where this machine has them, the calibration models timed now). The
table keeps what was timed, so the one-scale table (`--fit scale`) is rebuilt from the same points
and the same whole-model timings: the two fits differ in nothing else. Then committed learned plans
(`benchmarks/guard/*.plan.json`, `benchmarks/plans/*.plan.json`; weights do not change latency, so
the models are built here with random weights) are cut, exported, and timed against the dense model,
interleaved in one run per batch size; each plan's measured speedup is set against what either
table predicted. Measure it alone.

    python benchmarks/profile_fit.py [--archs resnet20,resnet18,mobilenet_v2,efficientnet_lite0,resnet34,resnet50]

Rows go to benchmarks/results/profile_fit.jsonl: one per arch (the profile, both fits' calibration
errors) and one per plan and batch.
"""
from __future__ import annotations

import argparse
import copy
import json
import subprocess
from pathlib import Path

from _common import CLI, HERE, Rows

PLANS = {
    "resnet18": [HERE / "guard" / "resnet18_lat0.5.plan.json", HERE / "guard" / "resnet18_t0.5_r16.plan.json"],
    "mobilenet_v2": [HERE / "plans" / "mobilenet_v2_lat0.7.plan.json", HERE / "plans" / "mobilenet_v2_lat0.7_b1_r16.plan.json",
                     HERE / "plans" / "mobilenet_v2_flops0.7_r16.plan.json"],
}
DEPLOY = [1, 3, 224, 224]
SHAPES = {"resnet20": [1, 1, 28, 28]}  # the demo's model at its own size
ARCHS = "resnet20,resnet18,mobilenet_v2,efficientnet_lite0,resnet34,resnet50"
BATCHES = [1, 32]
TIMING = {1: {"rounds": 15, "per_round": 5, "warmup": 5}, 32: {"rounds": 7, "per_round": 1, "warmup": 2}}


def profile(arch: str, shape: list[int], out: Path) -> tuple[dict, list[str]]:
    args = ["profile", "--arch", arch, "--num-classes", "10", "--input-shape", ",".join(map(str, shape)),
            "--batch-size", ",".join(map(str, BATCHES)), "--threads", "2", "--fit", "parts", "--json", "--out", str(out)]
    print("+ chanprune", " ".join(args), flush=True)
    return json.loads(subprocess.run(CLI + args, check=True, capture_output=True, text=True).stdout), args


def scale_table(table):
    """The same table calibrated by one scale: the timed grids, the alternative fit's scale and offset."""
    t = copy.deepcopy(table)
    for lt in t.layers:
        lt.ms = {b: [list(r) for r in rows] for b, rows in lt.attrs["timed_ms"].items()}
        lt.__dict__.pop("_cache", None)
    t.calibration = {b: {**c["alternative"], "dense_ms": c["dense_ms"]} for b, c in t.calibration.items()}
    return t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default=ARCHS)
    ap.add_argument("--out", type=Path, default=Path("runs/bench/profile_fit"))
    a = ap.parse_args()
    import numpy as np
    import torch

    from chanprune.cut import cut
    from chanprune.export import export_onnx
    from chanprune.graph import find_groups
    from chanprune.measure.latency import make_runner, measure_interleaved, ratio_stats
    from chanprune.measure.lut import LatencyTable, kept_counts
    from chanprune.plan import PrunePlan
    from chanprune.zoo import build_model

    torch.set_num_threads(2)
    rows = Rows("profile_fit")
    for arch in a.archs.split(","):
        folder = a.out / arch
        folder.mkdir(parents=True, exist_ok=True)
        lut = folder / "lut.json"
        key, shape = f"profile/{arch}", SHAPES.get(arch, DEPLOY)
        if key not in rows or not lut.is_file():
            r, args = profile(arch, shape, lut)
            if key not in rows:
                rows.add({"key": key, "arch": arch, "input_shape": shape, "command": "chanprune " + " ".join(args[:-2]),
                          "seconds": r["seconds"], "cached": r["cached"], "calibration": r["calibration"]})
        parts = LatencyTable.load(lut)
        tables = {"parts": parts, "scale": scale_table(parts)}
        for b, c in rows.get(key)["calibration"].items():
            alt = c["alternative"]
            print(f"{arch} batch {b}: parts worst {c['max_abs_rel_error']:.1%} holdout {c['holdout_rel_error']:+.1%}; "
                  f"scale worst {alt['max_abs_rel_error']:.1%} holdout {alt['holdout_rel_error']:+.1%}", flush=True)
        if not PLANS.get(arch):
            continue
        torch.manual_seed(0)
        dense = build_model(arch, num_classes=10).eval()
        x = torch.zeros(DEPLOY)
        graph = find_groups(dense, x)
        export_onnx(dense, x, folder / "dense.onnx")
        plans = {}
        for path in PLANS[arch]:
            plan = PrunePlan.from_json(path.read_text())
            res = cut(dense, graph, plan, torch.randn(DEPLOY))
            if not res.exact:
                raise SystemExit(f"{path.name}: the slim model differs from the gated one by {res.max_abs_diff:.2e}")
            onnx = export_onnx(res.slim, x, folder / f"{path.stem}.onnx")
            counts = {name: kept_counts(t, graph, plan.keep_masks(graph)) for name, t in tables.items()}
            plans[path] = (onnx, counts)
        for b in BATCHES:
            keys = {p: f"plan/{arch}/{p.stem}/b{b}" for p in plans}
            if all(k in rows for k in keys.values()):
                continue
            shape = [b, *DEPLOY[1:]]
            runners = {"dense": make_runner(folder / "dense.onnx", "ort-cpu", shape, threads=2)}
            runners.update({p: make_runner(onnx, "ort-cpu", shape, threads=2) for p, (onnx, _) in plans.items()})
            times = measure_interleaved(runners, **TIMING[b])
            for p, (_, counts) in plans.items():
                speedup, spread = ratio_stats(times["dense"], times[p])
                pred = {name: float(t.predict_ms({}, b) / t.predict_ms(counts[name], b)) for name, t in tables.items()}
                row = rows.add({"key": keys[p], "arch": arch, "plan": str(p.relative_to(HERE.parent)), "batch": b,
                                "dense_ms": float(np.median(times["dense"])), "slim_ms": float(np.median(times[p])),
                                "speedup": speedup, "speedup_p10_p90": spread,
                                "predicted": {n: {"speedup": s, "rel_error": s / speedup - 1} for n, s in pred.items()},
                                **TIMING[b]})
                print(f"  {p.stem:<32} b{b}: measured {speedup:.2f}x; parts {pred['parts']:.2f}x "
                      f"({row['predicted']['parts']['rel_error']:+.1%}), scale {pred['scale']:.2f}x "
                      f"({row['predicted']['scale']['rel_error']:+.1%})", flush=True)


if __name__ == "__main__":
    main()
