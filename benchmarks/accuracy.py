"""Accuracy at matched FLOPs and the same training budget: chanprune against Torch-Pruning.

One baseline (Fashion-MNIST ResNet-20; the shipped examples/fmnist_resnet20_baseline.pt, or one
trained here with `chanprune train` for another arch), then per seed and FLOPs target:
  (a) chanprune: `chanprune learn --weights BASE --target t --epochs 1 --finetune-epochs 1`
      (1 epoch learning gates and weights, 1 epoch fine-tuning under the frozen plan);
  (b) Torch-Pruning MetaPruner, one shot from BASE, importance `magnitude` (L1 of each filter)
      and `group-norm` (DepGraph's L2 over the coupled group), one ratio for every layer, bisected
      to the FLOPs (fvcore) chanprune's slim model measured for the same seed and target, then
      fine-tuned for 2 epochs with the same optimizer, learning rate and schedule as (a)'s weights.
Accuracy after pruning is on the validation split (held out of training), final accuracy on the test
split (10,000 images). Pairs share the seed (data order and validation split).

    python benchmarks/accuracy.py [--arch resnet20] [--targets 0.5,0.25] [--seeds 0,1,2] [--out runs/bench/accuracy]

Rows go to benchmarks/results/accuracy.jsonl, one per (method, target, seed); rerunning skips them.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

from _common import HERE, Rows, export, run_finished, run_stage, tp_prune_to_flops

EPOCHS = 2  # training epochs after the baseline, for every method
LR = 0.02  # the weights' learning rate in `chanprune learn` (its default), for every method


def baseline(arch: str, out: Path, given: Path | None) -> Path:
    if given is not None:
        return given
    shipped = HERE.parent / "examples" / f"fmnist_{arch}_baseline.pt"
    if shipped.is_file():
        return shipped
    run = out / f"baseline_{arch}"
    run_stage(["train", "--arch", arch, "--data", "fashion-mnist", "--epochs", "8", "--seed", "0"], run,
              done=run_finished(run))
    return run / "model.pt"


def ours(rows: Rows, arch: str, base: Path, t: float, seed: int, out: Path) -> dict:
    key = f"{arch}/t{t}/s{seed}/chanprune"
    if key in rows:
        return rows.get(key)
    from chanprune.evaluate import eval_model

    run = out / f"{arch}_t{t}_s{seed}_chanprune"
    args = ["learn", "--arch", arch, "--weights", str(base), "--data", "fashion-mnist", "--target", str(t),
            "--epochs", str(EPOCHS - 1), "--finetune-epochs", "1", "--calibrate-bn", "100", "--lr", str(LR),
            "--seed", str(seed)]
    t0 = time.perf_counter()
    run_stage(args, run, done=run_finished(run))
    seconds = time.perf_counter() - t0
    slim = export(run / "model.pt", run / "slim")
    hist = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    learned = [h for h in hist if "cost_ratio_at_tau" in h]
    return rows.add({
        "key": key, "arch": arch, "target": t, "seed": seed, "method": "chanprune",
        "flops_ratio": slim["flops_ratio"], "params_slim": slim["params_slim"],
        "val_after_pruning": learned[-1]["val_accuracy"], "test_accuracy": eval_model(run / "slim" / "slim.pt", data="fashion-mnist")["accuracy"],
        "train_seconds": round(sum(h["epoch_seconds"] for h in hist), 1), "wall_seconds": round(seconds, 1),
        "polarized": learned[-1]["polarized"], "epochs": EPOCHS,
        "command": "chanprune " + " ".join(args + ["--out", str(run)]),
    })


def torch_pruning(rows: Rows, arch: str, base: Path, t: float, seed: int, importance: str, flops_ratio: float,
                  out: Path) -> dict:
    key = f"{arch}/t{t}/s{seed}/tp-{importance}"
    if key in rows:
        return rows.get(key)
    import torch

    from chanprune.artifacts import load_artifact
    from chanprune.checkpoint import DenseCheckpoint
    from chanprune.checkpointer import Checkpointer
    from chanprune.learn import TrainConfig, evaluate, fit
    from chanprune.measure.flops import count_flops, count_params
    from chanprune.runs import _setup

    ckpt = load_artifact(base, "chanprune.dense/1")
    model, bundle, _, _, shape = _setup(arch, "fashion-mnist", weights=None, num_classes=None, in_channels=None,
                                        image_size=None, seed=seed, limit=None, saved_kwargs=ckpt["build_kwargs"])
    model.load_state_dict(ckpt["state_dict"])
    x = torch.zeros(shape)
    dense_flops = count_flops(model, x).total
    t0 = time.perf_counter()
    pruned, ratio, flops = tp_prune_to_flops(lambda: copy.deepcopy(model).eval(), x, int(flops_ratio * dense_flops),
                                             importance=importance)
    after = evaluate(pruned, bundle.val)["accuracy"]
    run = out / f"{arch}_t{t}_s{seed}_tp-{importance}"
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").unlink(missing_ok=True)
    for p in pruned.parameters():
        p.requires_grad_(True)
    # the checkpoint names the arch it was pruned from; a torch-pruning model cannot be rebuilt from it
    template = DenseCheckpoint(arch, ckpt["build_kwargs"], shape, {}, data="fashion-mnist")
    state = fit(pruned, bundle.train, bundle.val, TrainConfig(epochs=EPOCHS, lr=LR, seed=seed),
                checkpointer=Checkpointer(run, template))
    seconds = time.perf_counter() - t0
    return rows.add({
        "key": key, "arch": arch, "target": t, "seed": seed, "method": f"tp-{importance}",
        "pruning_ratio": ratio, "flops_ratio": flops / dense_flops, "params_slim": count_params(pruned),
        "val_after_pruning": after, "test_accuracy": evaluate(pruned.eval(), bundle.test)["accuracy"],
        "train_seconds": round(sum(h["epoch_seconds"] for h in state.history), 1), "wall_seconds": round(seconds, 1),
        "epochs": EPOCHS, "command": f"python benchmarks/accuracy.py --arch {arch} --targets {t} --seeds {seed}",
    })


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet20")
    ap.add_argument("--baseline", type=Path, default=None, help="A dense model.pt (default: shipped, or trained here).")
    ap.add_argument("--targets", default="0.5,0.25")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default="magnitude,group-norm", help="Torch-Pruning importances to compare.")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/accuracy"))
    a = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    rows = Rows("accuracy")
    base = baseline(a.arch, a.out, a.baseline)
    key = f"{a.arch}/baseline"
    if key not in rows:
        from chanprune.evaluate import eval_model

        rows.add({"key": key, "arch": a.arch, "method": "baseline", "baseline": str(base),
                  "test_accuracy": eval_model(base, data="fashion-mnist")["accuracy"]})
    for seed in [int(s) for s in a.seeds.split(",")]:
        for t in [float(s) for s in a.targets.split(",")]:
            ref = ours(rows, a.arch, base, t, seed, a.out)
            for imp in a.methods.split(","):
                torch_pruning(rows, a.arch, base, t, seed, imp, ref["flops_ratio"], a.out)
            for r in [rows.get(f"{a.arch}/t{t}/s{seed}/{m}") for m in ["chanprune"] + [f"tp-{i}" for i in a.methods.split(",")]]:
                print(f"{r['method']:<15} t={t} seed {seed}: FLOPs {r['flops_ratio']:.3f}  after pruning (val) "
                      f"{r['val_after_pruning']:.4f}  test {r['test_accuracy']:.4f}  {r['wall_seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
