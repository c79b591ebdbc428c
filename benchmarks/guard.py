"""CI latency-regression guard: a learned, committed plan applied to resnet18 at 224x224, the slim
ONNX timed against the dense ONNX with `chanprune bench --vs ... --baseline ... --max-regression R`.

The plan in benchmarks/guard/ was learned by benchmarks/latency.py (resnet18, target 0.5,
--round-to 16); weights do not change latency, so both models are built here with random weights.
benchmarks/baseline.json holds the speedups (ratios, not times: machines differ) and R, set from the
spread of repeated measurements on the machine that wrote it.

    python benchmarks/guard.py                  # exit 1 when a speedup fell more than R below the baseline
    python benchmarks/guard.py --unpruned       # the "slim" model is the dense one: must exit 1
    python benchmarks/guard.py --write-baseline 5   # measure 5 times; write the medians and R
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import CLI, machine

HERE = Path(__file__).resolve().parent
PLAN = HERE / "guard" / "resnet18_t0.5_r16.plan.json"
BASELINE = HERE / "baseline.json"
SHAPE = [1, 3, 224, 224]
ROUNDS = {1: 40, 32: 9}  # batch -> interleaved rounds: a batch of 1 takes ~15 ms, and needs many to settle


def build(folder: Path, unpruned: bool) -> tuple[Path, Path]:
    """dense.onnx and slim.onnx (each with the export.json `bench` reads FLOPs from)."""
    import torch

    from chanprune.cut import cut
    from chanprune.export import export_onnx
    from chanprune.graph import find_groups
    from chanprune.measure.flops import count_flops, count_params
    from chanprune.plan import PrunePlan
    from chanprune.zoo import build_model

    torch.manual_seed(0)
    plan = PrunePlan.from_json(PLAN.read_text())
    dense = build_model(plan.arch, num_classes=10).eval()
    x = torch.zeros(SHAPE)
    graph = find_groups(dense, x)
    slim = dense
    if not unpruned:
        res = cut(dense, graph, plan, torch.randn(SHAPE))
        if not res.exact:
            sys.exit(f"guard: the slim model differs from the gated one by {res.max_abs_diff:.2e}")
        slim = res.slim
    paths = []
    for name, model in (("dense", dense), ("slim", slim)):
        out = folder / name
        out.mkdir(parents=True, exist_ok=True)
        export_onnx(model, x, out / "model.onnx")
        (out / "export.json").write_text(json.dumps({"flops_slim": count_flops(model, x).total,
                                                     "params_slim": count_params(model)}))
        paths.append(out / "model.onnx")
    return paths[0], paths[1]


def bench(dense: Path, slim: Path, batch: int, rounds: int, baseline: Path | None, max_regression: float | None):
    cmd = CLI + ["bench", str(slim), "--vs", str(dense), "--backend", "ort-cpu", "--threads", "2",
                 "--batch-size", str(batch), "--rounds", str(rounds), "--json"]
    if baseline is not None:
        cmd += ["--baseline", str(baseline), "--max-regression", str(max_regression)]
    r = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if r.returncode not in (0, 1):
        sys.exit(f"guard: chanprune bench failed:\n{r.stderr.strip()}")
    return json.loads(r.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", type=Path, default=BASELINE)
    ap.add_argument("--batch-size", default=",".join(map(str, ROUNDS)), help="Comma-separated, from %(default)s.")
    ap.add_argument("--rounds", type=int, default=None, help="Interleaved rounds (default: 40 at batch 1, 9 at 32).")
    ap.add_argument("--unpruned", action="store_true", help="Bench the dense model as if it were the slim one.")
    ap.add_argument("--write-baseline", type=int, default=0, metavar="N", help="Measure N times and write --baseline.")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    batches = [int(b) for b in a.batch_size.split(",")]
    rounds = {b: a.rounds or ROUNDS.get(b, 9) for b in batches}
    with tempfile.TemporaryDirectory() as tmp:
        dense, slim = build(Path(tmp), a.unpruned)
        if a.write_baseline:
            per_key = {}
            for _ in range(a.write_baseline):
                for b in batches:
                    for row in bench(dense, slim, b, rounds[b], None, None)["results"]:
                        per_key.setdefault(f"{row['backend']}/b{row['batch']}", []).append(row["speedup"])
            medians = {k: sorted(v)[len(v) // 2] for k, v in per_key.items()}
            worst = max(1 - min(v) / medians[k] for k, v in per_key.items())
            # Twice the worst drop seen between repeated runs, at least 15%, in steps of 5%.
            r_max = max(0.15, math.ceil(2 * worst * 20) / 20)
            a.baseline.write_text(json.dumps({
                "speedups": {k: round(v, 3) for k, v in medians.items()}, "max_regression": r_max,
                "measured": {k: [round(s, 3) for s in v] for k, v in per_key.items()},
                "plan": PLAN.name, "input_shape": SHAPE, "rounds": {f"b{b}": r for b, r in rounds.items()},
                "machine": machine(), "command": f"python benchmarks/guard.py --write-baseline {a.write_baseline}"},
                indent=1) + "\n")
            print(f"wrote {a.baseline}: speedups {medians}, max regression {r_max:.0%}")
            return
        base = json.loads(a.baseline.read_text())
        results = [bench(dense, slim, b, rounds[b], a.baseline, base["max_regression"]) for b in batches]
    failures = [f for r in results for f in r["regressions"]]
    for r in results:
        for row in r["results"]:
            key = f"{row['backend']}/b{row['batch']}"
            print(f"{key}: speedup {row['speedup']:.2f}x (baseline {base['speedups'].get(key, float('nan')):.2f}x, "
                  f"allowed drop {base['max_regression']:.0%})")
    for f in failures:
        print(f"REGRESSION {f}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
