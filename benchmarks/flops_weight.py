"""The FLOPs reward under a latency budget: does leaning to kept FLOPs lift the efficiency?

Efficiency (speedup x FLOPs ratio) >= 1 needs a plan to keep at least the share of FLOPs that it keeps of
the latency. The latency budget alone is blind to FLOPs: on the mobile nets its plans kept 0.43 of the
FLOPs at 0.50 of the latency, where the table's greedy most-FLOPs plan (benchmarks/ceiling.py) kept 0.57.
`learn --flops-weight W` subtracts W x the sampled FLOPs ratio from the loss, so that among plans of about
the target latency the gates lean to those that keep more FLOPs, where the task term does not object.

Per arch and target: the latency grid's cp-latency learn (benchmarks/latency_budget.py: its baseline, table
and command, one epoch at 64 px, plans only) with `--flops-weight W` for each W (0: the grid's cp-latency,
learned again here beside the others), each exported at 1x3x224x224, all timed against dense in one
interleaved run per batch size (onnxruntime CPU, 2 threads, as the grid times). A plan row per W records
the predicted latency (learned, projected), the FLOPs, and the validation accuracy when learning ended
(before any fine-tuning); benchmarks/accuracy.py --suite latency --methods cp-latency-fw1 fine-tunes one.

    python benchmarks/flops_weight.py [--archs efficientnet_lite0] [--targets 0.5] [--weights 0,1]
                                      [--logit-bound B] [--out runs/bench/latency_budget]

Rows go to benchmarks/results/flops_weight.jsonl; rerunning skips what is there (a W added later is timed
against dense in its own run).
"""
from __future__ import annotations

import argparse
import json

import latency_budget as lb
from _common import Rows, export


def method(w: float, bound: float = 0.0) -> str:
    return f"fw{w:g}" + (f"-lb{bound:g}" if bound else "")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="efficientnet_lite0")
    ap.add_argument("--targets", default="0.5")
    ap.add_argument("--weights", default="0,1", help="--flops-weight values, comma-separated (0: off)")
    ap.add_argument("--logit-bound", type=float, default=0.0,
                    help="learn with --logit-bound B too (a polarized gate keeps a gradient the reward can act on); "
                         "the rows' method gains -lbB")
    lb.plan_arguments(ap)
    a = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    rows = Rows("flops_weight")
    shape = ",".join(map(str, lb.DEPLOY))
    weights = [float(s) for s in a.weights.split(",")]
    for arch in a.archs.split(","):
        base = lb.baseline(arch, a.out, a)
        lut = lb.profile(arch, base, a.out)
        dense_onnx = lb.dense_onnx(arch, base, a.out)
        for t in [float(s) for s in a.targets.split(",")]:
            variants = {}
            for w in weights:
                m = method(w, a.logit_bound)
                run = a.out / "flops_weight" / f"{arch}_t{t}_{m}"
                got = lb.learn(arch, base, run, a, "--budget", "latency", "--lut", str(lut), "--target", str(t),
                               "--flops-weight", f"{w:g}", *(["--logit-bound", f"{a.logit_bound:g}"] if a.logit_bound else []))
                x = export(run / "model.pt", run / "slim", "--input-shape", shape)
                key = f"plan/{arch}/t{t}/{m}"
                if key not in rows:
                    fr = got["frozen"]
                    rows.add({"key": key, "kind": "plan", "arch": arch, "target": t, "flops_weight": w,
                              "logit_bound": a.logit_bound or None, "method": m,
                              "project_by": got["config"].get("project_by", "prob"),
                              "lam_rate": got["learning"].get("lambda_rate"),
                              "first_crossing": got["learning"].get("first_crossing"),
                              "polarized": fr.get("polarized"),
                              "latency_learned": fr.get("cost_ratio_at_tau"),
                              "latency_projected": (got["projected"] or {}).get("to", fr.get("cost_ratio_at_tau")),
                              "flops_ratio_224": x["flops_ratio"], "aligned": x["aligned"],
                              "val_accuracy": got["result"].get("val_accuracy"), "seconds": got["seconds"],
                              "limit": a.limit, "epochs": a.epochs, "command": got["command"]})
                if any(f"lat/{arch}/t{t}/{m}/b{b}" not in rows for b in lb.BATCHES):
                    variants[m] = {**x, "predicted_speedup": (x.get("predicted_speedup") or {}).get("by_batch")}
            if variants:
                lb.measure(rows, arch, t, variants, dense_onnx)
            for w in weights:
                m = method(w, a.logit_bound)
                p = rows.get(f"plan/{arch}/t{t}/{m}")
                eff = [rows.get(f"lat/{arch}/t{t}/{m}/b{b}") for b in lb.BATCHES]
                print(json.dumps({"arch": arch, "target": t, "method": m, "latency_projected": p["latency_projected"],
                                  "flops": p["flops_ratio_224"], "val": p["val_accuracy"],
                                  "efficiency": [r and round(r["efficiency"], 3) for r in eff]}), flush=True)


if __name__ == "__main__":
    main()
