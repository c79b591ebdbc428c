"""The latency budget against FLOPs and Torch-Pruning, measured on onnxruntime CPU at 224x224.

Per arch: a baseline trained here on Fashion-MNIST (3 channels, 64 px; `--base-epochs` on the first
`--limit` images) or, for efficientnet_lite0, its shipped ImageNet weights; then one latency table
(`chanprune profile` at 1x3x224x224, batch 1 and 32, 2 threads, the block of this CPU). Per target t
(a fraction of the dense latency, the mean over batch 1 and 32), plans are learned from the
baseline's weights for `--epochs` at 64 px (plans only: `--finetune-epochs 0`) and deployed at 224:

  cp-latency        learn --budget latency --lut LUT --target t   (gates over blocks: aligned by construction)
  cp-latency-b1-r16 learn --budget latency --block 1 (unaligned), then export --round-to 16
  cp-flops-r16      learn --budget flops at cp-latency's FLOPs, then export --round-to 16
  tp-r16@flops      Torch-Pruning MetaPruner (magnitude, one ratio for all layers, round_to=16) at
                    cp-latency's FLOPs
  tp-r16@latency    the same, its ratio bisected on measured batch-1 latency to cp-latency's

Every model and the dense one are timed in one interleaved run per batch size (2 threads).
Rows: the predicted latency ratio (learned, then projected), the measured speedups (1 / the latency
ratio), FLOPs.

    python benchmarks/latency_budget.py [--archs resnet18,mobilenet_v2,efficientnet_lite0,resnet34,resnet50]
                                        [--targets 0.5,0.3,0.7] [--no-cache] [--out runs/bench/latency_budget]

`--no-cache` profiles a missing table with every point timed now (`profile --no-cache`), as the
committed rows of every arch but resnet50 were; without it `profile` may reuse cached points.

Rows go to benchmarks/results/latency_budget.jsonl; rerunning skips what is there.
"""
from __future__ import annotations

import argparse
import copy
import json
import subprocess
import time
from pathlib import Path

from _common import CLI, Rows, export, measure_vs_dense, run_finished, run_stage, tp_prune

DEPLOY = [1, 3, 224, 224]
BATCHES = [1, 32]
LEARN = {"image_size": 64, "batch_size": 64, "lr": 0.02}
TIMING = {1: {"rounds": 15, "per_round": 5, "warmup": 5}, 32: {"rounds": 7, "per_round": 1, "warmup": 2}}
BLOCK_RT = 16  # the rounding of the unaligned variants: onnxruntime's AVX-512 block


def baseline(arch: str, out: Path, a) -> Path:
    run = out / f"{arch}_base"
    if arch == "efficientnet_lite0":  # ImageNet weights that ship in a package: a model nobody here trained
        args = ["train", "--arch", arch, "--weights", "DEFAULT", "--data", "fashion-mnist", "--image-size", "64",
                "--limit", str(a.limit), "--epochs", str(a.base_epochs), "--seed", "0", "--lr", "0.02"]
    else:
        args = ["train", "--arch", arch, "--data", "fashion-mnist", "--image-size", "64", "--limit", str(a.limit),
                "--epochs", str(a.base_epochs), "--seed", "0"]
    run_stage(args, run, done=run_finished(run))
    return run / "model.pt"


def profile(arch: str, base: Path, out: Path, *extra: str, suffix: str = "") -> Path:
    """The arch's latency table `{arch}_lut{suffix}.json` in `out`, profiled (`extra`: more options) if missing."""
    lut = out / f"{arch}_lut{suffix}.json"
    if not lut.is_file():
        args = ["profile", "--arch", arch, "--weights", str(base), "--input-shape", ",".join(map(str, DEPLOY)),
                "--batch-size", ",".join(map(str, BATCHES)), "--threads", "2", *extra, "--out", str(lut)]
        print("+ chanprune", " ".join(args), flush=True)
        subprocess.run(CLI + args, check=True)
    return lut


def dense_onnx(arch: str, base: Path, out: Path) -> Path:
    """The baseline's dense ONNX at DEPLOY, `{arch}_dense/model.onnx` in `out`, exported if missing."""
    path = out / f"{arch}_dense" / "model.onnx"
    if not path.is_file():
        import torch

        from chanprune.export import export_onnx
        from chanprune.load import load_dense

        path.parent.mkdir(parents=True, exist_ok=True)
        export_onnx(load_dense(base)[0].eval(), torch.zeros(DEPLOY), path)
    return path


def learn(arch: str, base: Path, run: Path, a, *extra: str) -> dict:
    args = ["learn", "--arch", arch, "--weights", str(base), "--data", "fashion-mnist", "--seed", "0",
            "--image-size", str(LEARN["image_size"]), "--limit", str(a.limit), "--batch-size", str(LEARN["batch_size"]),
            "--epochs", str(a.epochs), "--lr", str(LEARN["lr"]), "--finetune-epochs", "0", *extra]
    t0 = time.perf_counter()
    run_stage(args, run, done=run_finished(run))
    import torch

    ckpt = torch.load(run / "model.pt", weights_only=True)
    hist = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    learning = [h for h in hist if "lambda" in h]  # the epochs that learned gates: lambda, its rate, polarization
    return {"command": "chanprune " + " ".join(args + ["--out", str(run)]), "seconds": round(time.perf_counter() - t0, 1),
            "result": ckpt.get("result") or {}, "frozen": ckpt.get("frozen") or {},
            "config": ckpt.get("learn_config") or {},
            "projected": (ckpt.get("plan") or {}).get("meta", {}).get("projected"),
            "learning": learning[-1] if learning else {}}


def tp_model(base_pt: Path, ratio: float, out: Path) -> dict:
    """MetaPruner (magnitude, uniform, round_to 16) on the baseline at `ratio`; its ONNX at 224."""
    if (out / "tp.json").is_file():
        return json.loads((out / "tp.json").read_text())
    import torch

    from chanprune.artifacts import atomic_write_text
    from chanprune.export import export_onnx
    from chanprune.load import load_dense
    from chanprune.measure.flops import count_flops, count_params

    base, _ = load_dense(base_pt)
    x224 = torch.zeros(DEPLOY)
    model = tp_prune(copy.deepcopy(base).eval(), torch.zeros(1, 3, 64, 64), ratio, round_to=BLOCK_RT)
    out.mkdir(parents=True, exist_ok=True)
    export_onnx(model.eval(), x224, out / "model.onnx")
    d = {"onnx": str(out / "model.onnx"), "pruning_ratio": ratio, "round_to": BLOCK_RT,
         "flops_dense": count_flops(base, x224).total, "flops_slim": count_flops(model, x224).total,
         "params_slim": count_params(model)}
    d["flops_ratio"] = d["flops_slim"] / d["flops_dense"]
    atomic_write_text(out / "tp.json", json.dumps(d, indent=1))
    return d


def tp_at_flops(base_pt: Path, flops_ratio: float, out: Path) -> dict:
    """The largest kept FLOPs not above `flops_ratio` (bisection on the uniform ratio)."""
    if (out / "tp.json").is_file():
        return json.loads((out / "tp.json").read_text())
    lo, hi, best, lowest = 0.0, 0.95, None, None
    for i in range(10):
        mid = (lo + hi) / 2
        d = tp_model(base_pt, mid, out.parent / f"{out.name}_try{i}")
        lowest = d if lowest is None or d["flops_ratio"] < lowest["flops_ratio"] else lowest
        if d["flops_ratio"] <= flops_ratio:
            hi, best = mid, (d if best is None or d["flops_ratio"] > best["flops_ratio"] else best)
        else:
            lo = mid
    if best is None:  # uniform round_to=16 cannot go that low: its lowest, said so
        print(f"{out}: no uniform ratio reaches FLOPs {flops_ratio:.3f}; the lowest is {lowest['flops_ratio']:.3f}",
              flush=True)
        best = {**lowest, "short_of_flops": flops_ratio}
    return _settle(best, out)


def tp_at_latency(base_pt: Path, dense_onnx: Path, latency_ratio: float, out: Path) -> dict:
    """The fastest Torch-Pruning model not faster than `latency_ratio` of dense at batch 1, by bisection
    on measured latency (each probe timed against dense, interleaved)."""
    if (out / "tp.json").is_file():
        return json.loads((out / "tp.json").read_text())
    from chanprune.measure.latency import make_runner, measure_interleaved, ratio_stats

    shape = [1, *DEPLOY[1:]]
    lo, hi, best = 0.0, 0.95, None
    for i in range(8):
        mid = (lo + hi) / 2
        d = tp_model(base_pt, mid, out.parent / f"{out.name}_try{i}")
        times = measure_interleaved({"dense": make_runner(dense_onnx, "ort-cpu", shape, threads=2),
                                     "tp": make_runner(d["onnx"], "ort-cpu", shape, threads=2)},
                                    warmup=3, rounds=7, per_round=3)
        r = ratio_stats(times["tp"], times["dense"])[0]
        d["probe_latency_ratio"] = r
        if r >= latency_ratio:  # not faster than ours: prune more
            lo = mid
            if best is None or r < best["probe_latency_ratio"]:
                best = d
        else:
            hi = mid
    return _settle(best, out)


def _settle(d: dict | None, out: Path) -> dict:
    if d is None:
        raise SystemExit(f"{out}: no Torch-Pruning ratio met the constraint")
    import shutil

    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(d["onnx"], out / "model.onnx")
    d = {**d, "onnx": str(out / "model.onnx")}
    (out / "tp.json").write_text(json.dumps(d, indent=1))
    return d


def measure(rows: Rows, arch: str, t: float, variants: dict[str, dict], dense_onnx: Path) -> dict[tuple, dict]:
    return measure_vs_dense(rows, arch, t, variants, dense_onnx, BATCHES, DEPLOY, TIMING, lambda v, b: {
        "params_slim": v.get("params_slim"), "predicted_speedup": (v.get("predicted_speedup") or {}).get(str(b))})


def plan_arguments(ap: argparse.ArgumentParser) -> None:
    """What `baseline` and `learn` read: the subset, the baseline's and each plan's epochs, the folder."""
    ap.add_argument("--limit", type=int, default=12800)
    ap.add_argument("--base-epochs", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1, help="Learning epochs per plan (plans only, no fine-tuning).")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/latency_budget"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="resnet18,mobilenet_v2,efficientnet_lite0,resnet34,resnet50")
    ap.add_argument("--targets", default="0.5,0.3,0.7")
    ap.add_argument("--no-cache", action="store_true", help="Profile a missing table with every point timed now.")
    plan_arguments(ap)
    a = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    rows = Rows("latency_budget")
    shape = ",".join(map(str, DEPLOY))
    for arch in a.archs.split(","):
        base = baseline(arch, a.out, a)
        lut = profile(arch, base, a.out, *(["--no-cache"] if a.no_cache else []))
        table = json.loads(lut.read_text())
        block = table["block"]
        dense = dense_onnx(arch, base, a.out)
        for t in [float(s) for s in a.targets.split(",")]:
            key = f"plan/{arch}/t{t}"
            run = a.out / f"{arch}_t{t}"
            ours = learn(arch, base, run / "latency", a, "--budget", "latency", "--lut", str(lut), "--target", str(t))
            ours_x = export(run / "latency" / "model.pt", run / "latency" / "slim", "--input-shape", shape)
            unal = learn(arch, base, run / "latency_b1", a, "--budget", "latency", "--lut", str(lut), "--target",
                         str(t), "--block", "1")
            unal_x = export(run / "latency_b1" / "model.pt", run / "latency_b1" / "slim_r16", "--input-shape", shape,
                            "--round-to", str(BLOCK_RT), "--lut", str(lut))
            fl = learn(arch, base, run / "flops", a, "--budget", "flops", "--target", f"{ours_x['flops_ratio']:.4f}")
            fl_x = export(run / "flops" / "model.pt", run / "flops" / "slim_r16", "--input-shape", shape,
                          "--round-to", str(BLOCK_RT), "--lut", str(lut))
            if key not in rows:
                rows.add({"key": key, "kind": "plan", "arch": arch, "target": t, "block": block, "learn": LEARN,
                          "limit": a.limit, "epochs": a.epochs,
                          "lam_rate": ours["learning"].get("lambda_rate"), "latency_learned": ours["frozen"].get("cost_ratio_at_tau"),
                          "latency_projected": (ours["projected"] or {}).get("to", ours["frozen"].get("cost_ratio_at_tau")),
                          "val_accuracy": ours["result"].get("val_accuracy"),
                          "flops_ratio_224": ours_x["flops_ratio"], "aligned": ours_x["aligned"],
                          "unaligned_latency_learned": unal["frozen"].get("cost_ratio_at_tau"),
                          "unaligned_val_accuracy": unal["result"].get("val_accuracy"),
                          "flops_val_accuracy": fl["result"].get("val_accuracy"),
                          "seconds": {"latency": ours["seconds"], "latency_b1": unal["seconds"], "flops": fl["seconds"]},
                          "profile": {"seconds": table["meta"].get("seconds"), "points": table["meta"].get("points"),
                                      "points_reused": table["meta"].get("points_reused"),
                                      "unique_layers": table["meta"].get("unique_layers"),
                                      "calibration": {b: {"max_abs_rel_error": c["error"]["max_abs_rel_error"],
                                                          "holdout_rel_error": c["holdout"]["rel_error"]}
                                                      for b, c in (table.get("calibration") or {}).items()}},
                          "command": ours["command"]})
            speed = lambda e: {**e, "predicted_speedup": (e.get("predicted_speedup") or {}).get("by_batch")}  # noqa: E731
            variants = {"cp-latency": speed(ours_x), "cp-latency-b1-r16": speed(unal_x), "cp-flops-r16": speed(fl_x),
                        "tp-r16@flops": tp_at_flops(base, ours_x["flops_ratio"], run / "tp_flops")}
            # cp-latency's measured batch-1 latency ratio sets the Torch-Pruning latency match
            first = measure(rows, arch, t, variants, dense)
            variants["tp-r16@latency"] = tp_at_latency(base, dense, 1 / first[("cp-latency", 1)]["speedup"],
                                                       run / "tp_latency")
            measure(rows, arch, t, {"tp-r16@latency": variants["tp-r16@latency"]}, dense)


if __name__ == "__main__":
    main()
