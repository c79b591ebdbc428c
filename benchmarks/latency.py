"""Latency efficiency: learned plans on ImageNet-shaped models, deployed at 224x224, on onnxruntime CPU.

For each arch and FLOPs target: learn gates on Fashion-MNIST (repeated to 3 channels, 64 px) from
scratch with `chanprune learn`, export the slim model at 224x224 with and without `--round-to`,
prune the same weights with Torch-Pruning's MetaPruner (magnitude, one ratio for every layer, with
and without its round_to) to the same fvcore FLOPs, and time all of them against the dense export
in one interleaved onnxruntime measurement (2 threads, batch 1 and 32).

    efficiency = speedup x (slim FLOPs / dense FLOPs)      (1.0: latency falls as fast as FLOPs)

    python benchmarks/latency.py [--archs resnet18,resnet34,resnet50,mobilenet_v2] [--targets 0.3,0.5,0.7]
                                 [--round-to 16] [--out runs/bench/latency]

Rows go to benchmarks/results/latency.jsonl (one per learned plan and one per measured model and
batch size); rerunning skips what is there and resumes a learning run that was cut short.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

from _common import Rows, export, measure_vs_dense, run_finished, run_stage, tp_prune_to_flops

DEPLOY = [1, 3, 224, 224]
LEARN = {"image_size": 64, "limit": 12800, "batch_size": 64, "epochs": 1, "lr": 0.05}
TIMING = {1: {"rounds": 15, "per_round": 5, "warmup": 5}, 32: {"rounds": 7, "per_round": 1, "warmup": 2}}


def learn(rows: Rows, arch: str, t: float, run: Path) -> dict:
    key = f"learn/{arch}/t{t}"
    args = ["learn", "--arch", arch, "--data", "fashion-mnist", "--target", str(t), "--seed", "0",
            "--image-size", str(LEARN["image_size"]), "--limit", str(LEARN["limit"]),
            "--batch-size", str(LEARN["batch_size"]), "--epochs", str(LEARN["epochs"]), "--lr", str(LEARN["lr"]),
            "--finetune-epochs", "0"]  # plans only: learn for the whole budget
    t0 = time.perf_counter()
    run_stage(args, run, done=key in rows or run_finished(run))
    if key in rows:
        return rows.get(key)
    seconds = time.perf_counter() - t0
    hist = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    slim = export(run / "model.pt", run / "slim", "--input-shape", ",".join(map(str, DEPLOY)))
    return rows.add({
        "key": key, "kind": "learn", "arch": arch, "target": t, "learn": LEARN,
        "flops_ratio_predicted_64px": hist[-1]["cost_ratio_at_tau"], "flops_ratio_224": slim["flops_ratio"],
        "polarized": hist[-1]["polarized"], "val_accuracy": hist[-1]["val_accuracy"],
        "seconds": round(seconds, 1) if seconds > 1 else None,
        "command": "chanprune " + " ".join(args + ["--out", str(run)]),
    })


def tp_variant(run: Path, name: str, flops_target_ratio: float, round_to: int | None) -> dict:
    """MetaPruner on the learned run's weights, matched to a FLOPs ratio; its ONNX and figures."""
    out = run / name
    if (out / "tp.json").is_file():
        return json.loads((out / "tp.json").read_text())
    import torch

    from chanprune.artifacts import atomic_write_text
    from chanprune.export import export_onnx
    from chanprune.measure.flops import count_flops, count_params
    from chanprune.load import GatedModel

    gm = GatedModel.load(run / "model.pt")
    gm.gates.detach_()
    base = gm.model.eval()
    x64 = torch.zeros(gm.input_shape)
    x224 = torch.zeros(DEPLOY)
    dense64 = count_flops(base, x64).total
    t0 = time.perf_counter()
    model, ratio, _ = tp_prune_to_flops(lambda: copy.deepcopy(base), x64, int(flops_target_ratio * dense64),
                                        importance="magnitude", round_to=round_to)
    seconds = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    export_onnx(model.eval(), x224, out / "model.onnx")
    d = {"onnx": str(out / "model.onnx"), "pruning_ratio": ratio, "round_to": round_to,
         "flops_dense": count_flops(base, x224).total, "flops_slim": count_flops(model, x224).total,
         "params_slim": count_params(model), "search_seconds": round(seconds, 1)}
    d["flops_ratio"] = d["flops_slim"] / d["flops_dense"]
    atomic_write_text(out / "tp.json", json.dumps(d, indent=1))
    return d


def measure(rows: Rows, arch: str, t: float, variants: dict[str, dict], dense_onnx: Path, batches: list[int]) -> None:
    measure_vs_dense(rows, arch, t, variants, dense_onnx, batches, DEPLOY, TIMING,
                     lambda v, b: {"round_to": v.get("round_to"), "params_slim": v["params_slim"]})


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="resnet18,resnet34,resnet50,mobilenet_v2")
    ap.add_argument("--targets", default="0.5,0.3,0.7")
    ap.add_argument("--round-to", type=int, default=16, help="16: the channel block of onnxruntime's AVX-512 kernels.")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/latency"))
    a = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    rows = Rows("latency")
    batches = [int(b) for b in a.batches.split(",")]
    n = a.round_to
    for t in [float(s) for s in a.targets.split(",")]:  # every arch at the first target first
        for arch in a.archs.split(","):
            run = a.out / f"{arch}_t{t}"
            learn(rows, arch, t, run)
            shape = ",".join(map(str, DEPLOY))
            dense = export(run / "model.pt", a.out / f"{arch}_dense", "--dense", "--input-shape", shape)
            ours = export(run / "model.pt", run / "slim", "--input-shape", shape)
            ours_r = export(run / "model.pt", run / f"slim_r{n}", "--input-shape", shape, "--round-to", str(n))
            variants = {
                "chanprune": ours,
                f"chanprune-r{n}": ours_r,
                "tp-uniform": tp_variant(run, "tp_uniform", ours["flops_ratio"], None),
                f"tp-uniform-r{n}": tp_variant(run, f"tp_uniform_r{n}", ours_r["flops_ratio"], n),
            }
            measure(rows, arch, t, variants, Path(dense["onnx"]), batches)


if __name__ == "__main__":
    main()
