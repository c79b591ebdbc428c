"""Costs of chanprune itself: a gate-learning step against a plain training step, and the time from a
gated checkpoint to a checked ONNX file (freeze + surgery + export) for resnet50 at 224x224.

Step times are measured interleaved in one process (plain, gated, plain, ...; the median of the
per-round ratios), on the same batch and the same weights, with the optimizers `chanprune learn`
uses (SGD for the weights; Adam for the gate logits plus the FLOPs budget term).

    python benchmarks/costs.py [--rounds 15] [--out runs/bench/costs]

Rows go to benchmarks/results/costs.jsonl; pass --again to measure anew (rows are keyed by date).
"""
from __future__ import annotations

import argparse
import copy
import subprocess
import time
from pathlib import Path

from _common import CLI, Rows, run_finished, run_stage

STEP_CASES = [("resnet20", [128, 3, 28, 28]), ("resnet18", [64, 3, 64, 64]), ("mobilenet_v2", [64, 3, 64, 64])]


def step_times(arch: str, shape: list[int], rounds: int) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from chanprune.cost import FlopsCost
    from chanprune.gates import GateSet
    from chanprune.graph import find_groups
    from chanprune.objective import budget_loss
    from chanprune.measure.latency import ratio_stats
    from chanprune.zoo import build_model

    torch.manual_seed(0)
    plain = build_model(arch, num_classes=10)
    gated = copy.deepcopy(plain)
    x1 = torch.zeros([1, *shape[1:]])
    graph = find_groups(gated, x1)
    cost = FlopsCost(gated, x1, graph)
    gates = GateSet(graph).attach_(gated)
    x, y = torch.randn(shape), torch.randint(0, 10, (shape[0],))
    opt_plain = torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    opt_w = torch.optim.SGD(gated.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    opt_g = torch.optim.Adam(gates.parameters(), lr=1.0)
    plain.train(), gated.train(), gates.train()

    def step_plain():
        opt_plain.zero_grad(set_to_none=True)
        F.cross_entropy(plain(x), y).backward()
        opt_plain.step()

    def step_gated():
        opt_w.zero_grad(set_to_none=True)
        opt_g.zero_grad(set_to_none=True)
        loss = F.cross_entropy(gated(x), y) + 5.0 * budget_loss(cost, gates.current(), 0.5)[0]
        loss.backward()
        opt_w.step()
        opt_g.step()

    for _ in range(3):
        step_plain(), step_gated()
    t = {"plain": [], "gated": []}
    for r in range(rounds):
        for name, fn in ((("plain", step_plain), ("gated", step_gated)) if r % 2 == 0
                         else (("gated", step_gated), ("plain", step_plain))):
            t0 = time.perf_counter()
            fn()
            t[name].append((time.perf_counter() - t0) * 1000)
    ratio, spread = ratio_stats(t["gated"], t["plain"])
    return {"plain_ms": float(np.median(t["plain"])), "gated_ms": float(np.median(t["gated"])),
            "ratio": ratio, "ratio_p10_p90": spread,
            "gates": len(graph.groups), "gated_channels": sum(g.size for g in graph.groups)}


def export_time(model_pt: Path, out: Path) -> dict:
    """Stage by stage in one process, then the whole `chanprune export` command as a user runs it."""
    import torch

    from chanprune.export import export_onnx, onnx_session, run_onnx
    from chanprune.load import GatedModel
    from chanprune.surgery import apply_plan_

    shape = [1, 3, 224, 224]
    marks = {}
    t0 = time.perf_counter()
    gm = GatedModel.load(model_pt, input_shape=shape)
    marks["load_graph_cost_model"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    plan = gm.plan()
    marks["freeze"] = time.perf_counter() - t0
    x = torch.randn(shape)
    gm.gates.detach_()
    t0 = time.perf_counter()
    slim = apply_plan_(copy.deepcopy(gm.model), plan, x, graph=gm.graph).eval()
    marks["surgery"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    export_onnx(slim, x, out / "stages.onnx")
    marks["onnx_export"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    run_onnx(onnx_session(out / "stages.onnx"), x)
    marks["onnx_parity_run"] = time.perf_counter() - t0
    cmd = ["chanprune", "export", str(model_pt), "--input-shape", "1,3,224,224", "--out", str(out / "cli")]
    t0 = time.perf_counter()
    subprocess.run(CLI + cmd[1:], check=True, stdout=subprocess.DEVNULL)
    return {"stages_seconds": {k: round(v, 2) for k, v in marks.items()},
            "stages_total_seconds": round(sum(marks.values()), 2),
            "cli_seconds": round(time.perf_counter() - t0, 2), "command": " ".join(cmd)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", type=Path, default=Path("runs/bench/costs"))
    ap.add_argument("--again", action="store_true", help="Measure again even if today's rows exist.")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    rows = Rows("costs")
    day = time.strftime("%Y-%m-%d")
    for arch, shape in STEP_CASES:
        key = f"step/{arch}/{day}"
        if key in rows and not a.again:
            continue
        r = rows.add({"key": key, "kind": "step", "arch": arch, "batch_shape": shape, "rounds": a.rounds,
                      **step_times(arch, shape, a.rounds)})
        print(f"{arch} batch {shape}: plain {r['plain_ms']:.0f} ms, gated {r['gated_ms']:.0f} ms, ratio {r['ratio']:.2f}",
              flush=True)
    key = f"export/resnet50/{day}"
    if key not in rows or a.again:
        run = a.out / "resnet50"
        # A gated resnet50 learned briefly at 64 px: the export's cost does not depend on how long it learned.
        run_stage(["learn", "--arch", "resnet50", "--data", "fashion-mnist", "--target", "0.5", "--image-size", "64",
                   "--limit", "1280", "--batch-size", "64", "--epochs", "1", "--lr", "0.05", "--finetune-epochs", "0"], run, done=run_finished(run))
        r = rows.add({"key": key, "kind": "export", "arch": "resnet50", "input_shape": [1, 3, 224, 224],
                      **export_time(run / "model.pt", a.out)})
        print(f"resnet50 at 224: freeze + surgery + export {r['stages_total_seconds']:.1f} s in process "
              f"({r['stages_seconds']}), {r['cli_seconds']:.1f} s as `{r['command']}`", flush=True)


if __name__ == "__main__":
    main()
