"""Fashion-MNIST ResNet-20: baseline -> learned gates at t=0.5 (+ fine-tune) -> measured slim model.

Runs the real command line (`chanprune train`, `chanprune learn`), resumes any stage that was cut
short, then measures the slim model: fvcore FLOPs against the dense model, test accuracy of the
frozen gated model and of the slim model, and time per epoch from the runs' metrics.jsonl.

    python benchmarks/fmnist_resnet20.py [--epochs 8] [--learn-epochs 8] [--finetune-epochs 2] [--out runs/fmnist]

Writes benchmarks/results/fmnist_resnet20.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch
from _common import HERE, run_finished, run_stage


def epoch_seconds(run: Path) -> float:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    secs = sorted(r["epoch_seconds"] for r in rows)
    return secs[len(secs) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--learn-epochs", type=int, default=8)
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--out", type=Path, default=Path("runs/fmnist"))
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    base, learned = a.out / "baseline", a.out / f"learn_t{a.target}"
    run_stage(["train", "--arch", "resnet20", "--data", "fashion-mnist", "--epochs", str(a.epochs),
               "--seed", str(a.seed)], base, done=run_finished(base))
    run_stage(["learn", "--arch", "resnet20", "--weights", str(base / "model.pt"), "--data", "fashion-mnist",
               "--target", str(a.target), "--epochs", str(a.learn_epochs), "--finetune-epochs",
               str(a.finetune_epochs), "--calibrate-bn", "100", "--seed", str(a.seed)], learned,
              done=run_finished(learned))

    from chanprune.data import load_data
    from chanprune.learn import evaluate
    from chanprune.measure import count_flops
    from chanprune.cut import cut
    from chanprune.load import GatedModel
    from chanprune.zoo import build_model

    torch.set_num_threads(2)
    data = load_data("fashion-mnist", channels=3, seed=a.seed)
    dense = build_model("resnet20", num_classes=10)
    dense.load_state_dict(torch.load(base / "model.pt", weights_only=True)["state_dict"])
    gm = GatedModel.load(learned / "model.pt")
    plan = gm.plan()
    gm.gates.fix_(plan.keep_masks(gm.graph))
    x = torch.zeros(gm.input_shape)
    gated_acc = evaluate(gm.model, data.test)["accuracy"]
    cutting = cut(gm.model, gm.graph, plan, torch.randn(4, *gm.input_shape[1:]), gates=gm.gates)
    if not cutting.exact:
        raise SystemExit(f"slim differs from the gated model by {cutting.max_abs_diff:.2e}")
    slim = cutting.slim
    flops_dense, flops_slim = count_flops(dense, x).total, count_flops(slim, x).total
    learned_ckpt = torch.load(learned / "model.pt", weights_only=True)
    learn_rows = [json.loads(line) for line in (learned / "metrics.jsonl").read_text().splitlines()]
    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "target": a.target,
        "baseline_test_accuracy": evaluate(dense, data.test)["accuracy"],
        "gated_test_accuracy": gated_acc,
        "slim_test_accuracy": evaluate(slim, data.test)["accuracy"],
        "flops_dense": flops_dense, "flops_slim": flops_slim, "flops_ratio": flops_slim / flops_dense,
        "params_dense": sum(p.numel() for p in dense.parameters()),
        "params_slim": sum(p.numel() for p in slim.parameters()),
        "polarized": learned_ckpt["result"]["polarized"],
        "accuracy_after_learning_before_finetune": next(
            (r["val_accuracy"] for r in learn_rows if r["epoch"] == a.learn_epochs and "cost_ratio_at_tau" in r), None),
        "baseline_epoch_seconds": epoch_seconds(base),
        "learn_epoch_seconds": sorted(r["epoch_seconds"] for r in learn_rows if "cost_ratio_at_tau" in r)[a.learn_epochs // 2],
        "epochs": {"baseline": a.epochs, "learn": a.learn_epochs, "finetune": a.finetune_epochs},
        "command": "python benchmarks/fmnist_resnet20.py " + " ".join(sys.argv[1:]),
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "fmnist_resnet20.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
