"""A latency table built from cached points against one profiled afresh: which predicts the grid's plans?

`chanprune profile` reuses timed points from its per-machine cache. `benchmarks/latency_budget.py`'s
Lite0 table of 2026-12-03 reused all of them (timed on earlier days) and timed only the whole-model
calibration that day. This profiles the same model again with `--no-cache` and predicts every
latency_budget plan of the arch (cp-latency, cp-latency-b1-r16 and cp-flops-r16, exported as the grid
exports them) with both tables, against the speedups the grid measured.

    python benchmarks/repredict.py [--arch efficientnet_lite0] [--out runs/bench/latency_budget]

Rows go to benchmarks/results/repredict.jsonl (predictions only: the profile is the one timed step).
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import latency_budget as lb
from _common import Rows

# the grid's variants: run folder and the rounding its export used
VARIANTS = {"cp-latency": ("latency", 1), "cp-latency-b1-r16": ("latency_b1", lb.BLOCK_RT),
            "cp-flops-r16": ("flops", lb.BLOCK_RT)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="efficientnet_lite0")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/latency_budget"))
    a = ap.parse_args()
    from chanprune.deploy import export_run

    base = a.out / f"{a.arch}_base" / "model.pt"
    cached, fresh = lb.profile(a.arch, base, a.out), lb.profile(a.arch, base, a.out, "--no-cache", suffix="_fresh")
    measured = {(r["target"], r["method"], r["batch"]): r["speedup"] for r in Rows("latency_budget").rows.values()
                if r.get("kind") == "latency" and r["arch"] == a.arch}
    metas = {name: json.loads(p.read_text())["meta"] for name, p in (("cached", cached), ("fresh", fresh))}
    rows = Rows("repredict")
    for t in sorted({k[0] for k in measured}):
        for method, (folder, round_to) in VARIANTS.items():
            key = f"{a.arch}/t{t}/{method}"
            if key in rows:
                continue
            pred = {}
            for name, lut in (("cached", cached), ("fresh", fresh)):
                with tempfile.TemporaryDirectory() as tmp:
                    rep = export_run(a.out / f"{a.arch}_t{t}" / folder / "model.pt", out_dir=tmp, round_to=round_to,
                                     input_shape=lb.DEPLOY, onnx=False, lut=lut)
                pred[name] = rep["predicted_speedup"]["by_batch"]
            row = rows.add({"key": key, "arch": a.arch, "target": t, "method": method,
                            "measured": {str(b): measured[(t, method, b)] for b in lb.BATCHES},
                            "predicted_cached": pred["cached"], "predicted_fresh": pred["fresh"],
                            "tables": {n: {"points_timed": m.get("points_timed"), "points_reused": m.get("points_reused"),
                                           "created": m.get("created")} for n, m in metas.items()}})
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
