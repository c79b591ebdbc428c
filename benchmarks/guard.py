"""CI latency-regression guard: learned, committed plans applied to resnet18 at 224x224, each slim
ONNX timed against the dense ONNX with `chanprune bench --vs ... --baseline ... --max-regression R`.

Two plans, each with its own baseline file:
  flops    benchmarks/guard/resnet18_t0.5_r16.plan.json, learned by benchmarks/latency.py (FLOPs target
           0.5, --round-to 16); baseline benchmarks/baseline.json
  latency  benchmarks/guard/resnet18_lat0.5.plan.json, learned by benchmarks/latency_budget.py (--budget
           latency, target 0.5 of the dense latency, gates over blocks of 16); baseline
           benchmarks/baseline_latency.json
Weights do not change latency, so the models are built here with random weights. A baseline holds
the speedups (ratios, not times: machines differ) and R, set from the spread of repeated
measurements on the machine that wrote it.

    python benchmarks/guard.py                  # exit 1 when a speedup fell more than R below its baseline
    python benchmarks/guard.py --plan latency   # one plan
    python benchmarks/guard.py --unpruned       # the "slim" model is the dense one: must exit 1
    python benchmarks/guard.py --write-baseline 5   # measure 5 times; write each plan's medians and R
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
PLANS = {"flops": (HERE / "guard" / "resnet18_t0.5_r16.plan.json", HERE / "baseline.json"),
         "latency": (HERE / "guard" / "resnet18_lat0.5.plan.json", HERE / "baseline_latency.json")}
SHAPE = [1, 3, 224, 224]
ROUNDS = {1: 40, 32: 9}  # batch -> interleaved rounds: a batch of 1 takes ~15 ms, and needs many to settle


def build(folder: Path, plan_path: Path, unpruned: bool) -> tuple[Path, Path]:
    """dense.onnx and slim.onnx (each with the export.json `bench` reads FLOPs from)."""
    import torch

    from chanprune.cut import cut
    from chanprune.export import export_onnx
    from chanprune.graph import find_groups
    from chanprune.measure.flops import count_flops, count_params
    from chanprune.plan import PrunePlan
    from chanprune.zoo import build_model

    torch.manual_seed(0)
    plan = PrunePlan.from_json(plan_path.read_text())
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


def write_baseline(name: str, dense: Path, slim: Path, batches: list[int], rounds: dict[int, int], n: int):
    plan_path, baseline = PLANS[name]
    per_key = {}
    for _ in range(n):
        for b in batches:
            for row in bench(dense, slim, b, rounds[b], None, None)["results"]:
                per_key.setdefault(f"{row['backend']}/b{row['batch']}", []).append(row["speedup"])
    medians = {k: sorted(v)[len(v) // 2] for k, v in per_key.items()}
    worst = max(1 - min(v) / medians[k] for k, v in per_key.items())
    # Twice the worst drop seen between repeated runs, at least 15%, in steps of 5%.
    r_max = max(0.15, math.ceil(2 * worst * 20) / 20)
    baseline.write_text(json.dumps({
        "speedups": {k: round(v, 3) for k, v in medians.items()}, "max_regression": r_max,
        "measured": {k: [round(s, 3) for s in v] for k, v in per_key.items()},
        "plan": plan_path.name, "input_shape": SHAPE, "rounds": {f"b{b}": r for b, r in rounds.items()},
        "machine": machine(), "command": f"python benchmarks/guard.py --plan {name} --write-baseline {n}"},
        indent=1) + "\n")
    print(f"wrote {baseline}: speedups {medians}, max regression {r_max:.0%}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan", default=",".join(PLANS), help="Comma-separated, from %(default)s.")
    ap.add_argument("--batch-size", default=",".join(map(str, ROUNDS)), help="Comma-separated, from %(default)s.")
    ap.add_argument("--rounds", type=int, default=None, help="Interleaved rounds (default: 40 at batch 1, 9 at 32).")
    ap.add_argument("--unpruned", action="store_true", help="Bench the dense model as if it were the slim one.")
    ap.add_argument("--write-baseline", type=int, default=0, metavar="N", help="Measure N times and write the baselines.")
    a = ap.parse_args()
    names = a.plan.split(",")
    if unknown := [n for n in names if n not in PLANS]:
        ap.error(f"--plan: unknown {', '.join(unknown)} (choose from {', '.join(PLANS)})")
    import torch

    torch.set_num_threads(2)
    batches = [int(b) for b in a.batch_size.split(",")]
    rounds = {b: a.rounds or ROUNDS.get(b, 9) for b in batches}
    failures = []
    for name in names:
        plan_path, baseline = PLANS[name]
        with tempfile.TemporaryDirectory() as tmp:
            dense, slim = build(Path(tmp), plan_path, a.unpruned)
            if a.write_baseline:
                write_baseline(name, dense, slim, batches, rounds, a.write_baseline)
                continue
            base = json.loads(baseline.read_text())
            results = [bench(dense, slim, b, rounds[b], baseline, base["max_regression"]) for b in batches]
        for r in results:
            for row in r["results"]:
                key = f"{row['backend']}/b{row['batch']}"
                print(f"{name} plan, {key}: speedup {row['speedup']:.2f}x (baseline "
                      f"{base['speedups'].get(key, float('nan')):.2f}x, allowed drop {base['max_regression']:.0%})")
        failures += [f"{f} ({name} plan)" for r in results for f in r["regressions"]]
    for f in failures:
        print(f"REGRESSION {f}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
