"""The main job on an embedded default (what `make demo` runs), offline, in a few minutes on 2 cores:

1. a ResNet-20 trained on Fashion-MNIST (shipped as examples/fmnist_resnet20_baseline.pt; this
   script re-trains it with `chanprune train` when the file is missing: 8 epochs, seed 0),
2. `chanprune profile`: the latency table of that model on onnxruntime CPU (2 threads, batch 1 and
   32, channel blocks of this CPU: 16 with AVX-512, 8 with AVX2),
3. `chanprune learn --budget latency --target 0.5 --epochs 4` (on 20,000 training images; the
   default recipe: the gates freeze when ready, the slim model is fine-tuned for the rest, distilled
   from the baseline): half the dense latency, gates over channel blocks so counts stay aligned,
4. `chanprune export --onnx` of the slim model (its predicted speedup), and `--dense` for the reference,
5. `chanprune eval` of the gated model, the slim model and its ONNX on the 10,000 test images,
6. `chanprune bench` of the slim ONNX against the dense one (onnxruntime, 2 threads, batch 1 and 32),
7. `chanprune report`, and a table of all of it.

    python examples/fmnist_demo.py [--out runs/demo] [--target 0.5]
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
BASELINE = HERE / "fmnist_resnet20_baseline.pt"


def cli(*args) -> dict:
    cmd = [sys.executable, "-m", "chanprune_cli.main", *[str(a) for a in args], "--json"]
    print("+ chanprune " + " ".join(str(a) for a in args), flush=True)
    res = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if res.returncode != 0:
        raise SystemExit(f"chanprune {args[0]} failed with exit code {res.returncode}")
    return json.loads(res.stdout)


def make_baseline(out: Path) -> None:
    """Train the baseline and keep only what a dense checkpoint needs (no optimizer state)."""
    run = out / "baseline"
    if run.exists():
        shutil.rmtree(run)
    cli("train", "--arch", "resnet20", "--data", "fashion-mnist", "--epochs", 8, "--seed", 0, "--out", run)
    ckpt = torch.load(run / "model.pt", weights_only=True)
    keep = {k: ckpt[k] for k in ("format", "arch", "build_kwargs", "input_shape", "data", "state_dict", "config",
                                 "metrics", "provenance")}
    keep["state"] = {"epoch": ckpt["state"]["epoch"], "best": ckpt["state"]["best"]}
    torch.save(keep, BASELINE)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/demo"))
    ap.add_argument("--target", type=float, default=0.5, help="Fraction of the dense latency to keep.")
    a = ap.parse_args()
    if not BASELINE.is_file():
        make_baseline(a.out)
    t = a.target
    lut = a.out / "lut.json"
    if not lut.is_file():
        cli("profile", "--arch", "resnet20", "--weights", BASELINE, "--input-shape", "1,3,28,28", "--batch-size", "1,32",
            "--threads", 2, "--out", lut)
    run = a.out / f"learn_latency_t{t:g}"
    if run.exists():
        shutil.rmtree(run)
    learned = cli("learn", "--arch", "resnet20", "--weights", BASELINE, "--data", "fashion-mnist", "--target", t,
                  "--budget", "latency", "--lut", lut, "--limit", 20000, "--epochs", 4, "--out", run)
    slim = cli("export", run / "model.pt", "--onnx")
    dense = cli("export", run / "model.pt", "--dense")
    acc = {name: cli("eval", path, "--data", "fashion-mnist")["accuracy"]
           for name, path in (("baseline", BASELINE), ("gated", run / "model.pt"), ("slim.pt", slim["slim"]),
                              ("slim ONNX", slim["onnx"]))}
    bench = cli("bench", slim["onnx"], "--vs", dense["onnx"], "--batch-size", "1,32", "--backend", "ort-cpu")
    cli("report", run)
    fr = learned["frozen"]
    learned_ratio = fr.get("cost_ratio_at_tau")
    projected = (fr.get("projected") or {}).get("to", learned_ratio)
    predicted = (slim.get("predicted_speedup") or {}).get("by_batch", {})
    print()
    print("| what | value |")
    print("|---|---|")
    print(f"| latency target (mean of batch 1 and 32, onnxruntime CPU, 2 threads) | {t:.2f} of dense |")
    print(f"| predicted latency ratio: learned, after projection | {learned_ratio:.3f}, {projected:.3f} |")
    print(f"| FLOPs (fvcore) | {dense['flops_slim']:,} -> {slim['flops_slim']:,} ({slim['flops_ratio']:.1%}) |")
    print(f"| params | {dense['params_slim']:,} -> {slim['params_slim']:,} ({slim['params_slim'] / dense['params_slim']:.1%}) |")
    print(f"| channel counts aligned to the block of {slim['block']} | {'yes' if slim['aligned'] else 'no'} |")
    print(f"| gates polarized | {learned['polarized']:.1%} |")
    for name, v in acc.items():
        print(f"| test accuracy, {name} | {v:.4f} |")
    print(f"| parity | slim vs gated {slim['slim_vs_gated']:.1e}, onnxruntime vs slim {slim['onnx_vs_slim']:.1e} |")
    for row in bench["results"]:
        pred = predicted.get(str(row["batch"]))
        print(f"| onnxruntime CPU, batch {row['batch']}, 2 threads | dense {row['vs_p50_ms']:.3f} ms -> "
              f"{row['p50_ms']:.3f} ms: speedup {row['speedup']:.2f}x measured"
              + (f", {pred:.2f}x predicted |" if pred else " |"))
    print(f"\nfigures and summary: {run}/summary.md")


if __name__ == "__main__":
    main()
