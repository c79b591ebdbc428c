"""Accuracy at matched cost and the same training budget: chanprune against Torch-Pruning.

One dense baseline per arch (ResNet-20: the shipped examples/fmnist_resnet20_baseline.pt; others
trained here with `chanprune train` on all of Fashion-MNIST), then, per arch, target and seed, every
method trains for the same number of epochs (`--epochs`, default 3) over the same fixed subset of
the training data (`--limit`, default the first 12,000 images; 10% of them held out for validation);
final accuracy is on the whole test split (10,000 images). Pairs share the seed (data order, split).

Methods (`--methods`, comma-separated):
  chanprune          `chanprune learn --weights BASE --target T --epochs E` with today's defaults:
                     distillation from BASE, gates frozen when ready, the plan projected onto T, the
                     slim model fine-tuned for the rest of the budget with a one-cycle schedule. T is
                     the FLOPs ratio Torch-Pruning's uniform ratio reaches at t (the largest not above
                     t), and `--project-tolerance 0` projects the plan onto T or just below, so that
                     chanprune has the same FLOPs as Torch-Pruning or fewer.
  cp-default         the same at T = t (the ablations' reference).
  cp-<ablation>      the default with one lever changed (ABLATIONS below), at T = t.
  tp-<crit>[+cp]     Torch-Pruning: MetaPruner one shot from BASE with importance <crit> (magnitude,
                     group-norm, fpgm), one ratio for every layer, bisected to t x the dense FLOPs;
                     then fine-tuned for E epochs. `tp-group-sl` regularises first (GroupNormPruner,
                     reg 5e-4, its sparse learning) for a third of the budget, then prunes and
                     fine-tunes for the rest.
                     Recipes: plain = Torch-Pruning's documented one (SGD lr 0.01, wd 5e-4, x0.1 at
                     60% and 80%); `+cp` = chanprune's (distillation from BASE, one-cycle at the
                     learn default lr 0.02, wd 1e-4): it isolates the choice of channels.
  <method>@wall      the same, fine-tuned for as long (wall time) as chanprune's run of that seed took.

    python benchmarks/accuracy.py --suite main       [--arch resnet20] [--targets 0.5,0.25] [--seeds 0,1,2]
    python benchmarks/accuracy.py --suite ablations  (ResNet-20, t=0.5, seed 0)
    python benchmarks/accuracy.py --suite latency    (EfficientNet-Lite0, latency target 0.5, seeds 0,1,2)
    python benchmarks/accuracy.py --suite conditional (ResNet-56, average FLOPs targets 0.5,0.3, seeds 0,1,2)

The transfer scenario (the main suite on a model nobody here trained): EfficientNet-Lite0 with its
ImageNet weights, moved to Fashion-MNIST at 64 px (benchmarks/latency_budget.py's baseline), pruned
to 0.5 of its FLOPs. A baseline whose input is not 28 px makes every method learn and fine-tune at its
size; `--calibrate-bn K` re-estimates every method's batch norms after training (Lite0's momentum is
0.01, see the latency suite below):

    python benchmarks/accuracy.py --suite main --arch efficientnet_lite0 --targets 0.5 --calibrate-bn 100 \\
        --baseline runs/bench/latency_budget/efficientnet_lite0_base/model.pt \\
        --methods chanprune,tp-group-norm,tp-group-norm+cp,tp-fpgm,tp-fpgm+cp

The conditional suite (issue 13; the paper's claim that conditional computation beats pruning at
equal FLOPs): from the same baseline, the same E epochs on the same subset, at an average FLOPs
target t, four ways to spend it:
  cd-static               `learn --target t` (chanprune's static pruning, the default recipe)
  cd-dependent            `learn --gate dependent`: data-dependent channel gates, learned for the whole budget
  cd-dependent-layer      the same at `--granularity layer`: one decision per residual branch (AIG-style)
  cd-static+dependent     `learn --gate static+dependent`: both, learned together
  cd-static-layer         (with --methods only) static gates over whole branches, `--granularity layer`:
                          blocks removed for every input, the partner of cd-dependent-layer (paper, Table 4)
  cd-dependent-ft         (with --methods only) `--gate dependent --dependent-finetune`: the gate network
                          learns for half the budget, then the weights train under its frozen decisions
Test accuracy on the whole test split, threshold at tau; FLOPs: the slim model's (static), or each test
input's executed FLOPs averaged (the others). `--image-size 64` learns at 64 px (resnet18 from the latency
grid's 64 px baseline, given as --baseline: the plans that benchmarks/conditional.py --trained times at 224).
`--modes K` also evaluates each run in the paper's inference modes (section 3): threshold at tau,
stochastic, and an ensemble of K stochastic runs, each with its accuracy and executed cost per input
(`chanprune eval --mode ...`; rows keyed modes/...).

The latency suite: accuracy at equal *measured* latency, on a model nobody here trained. The
baseline is benchmarks/latency_budget.py's: EfficientNet-Lite0 with its ImageNet weights, moved to
Fashion-MNIST at 64 px (2 epochs, first 12,800 images), with its latency table at 1x3x224x224. Per
seed, every method trains E epochs at 64 px after pruning (chanprune's recipe, distillation included),
is exported, and its ONNX at 224 is timed at batch 1 against the dense one (interleaved, 2 threads):
  cp-latency      `learn --budget latency --lut LUT --target t` (gates over blocks of 16)
  cp-flops-r16    `learn --budget flops` at cp-latency's FLOPs, exported with `--round-to 16` (the
                  channels rounding adds back were not fine-tuned: what a user of rounding gets)
  tp-r16+cp       Torch-Pruning MetaPruner (magnitude, one ratio, round_to=16), its ratio bisected
                  on measured batch-1 latency to cp-latency's (the fastest not faster), then
                  fine-tuned with chanprune's recipe
  table-greedy+cp the latency table's greedy most-FLOPs plan from the baseline alone (benchmarks/ceiling.py:
                  blocks of 16 ranked by the weights' group norm, no data, no learning), the prefix of
                  its drops bisected on measured batch-1 latency to cp-latency's the same way, then
                  fine-tuned with chanprune's recipe
  cp-latency-ls0.25  cp-latency freezing at the latest after a quarter of the budget (`--max-learn-share
                  0.25`, default 0.5), so the slim model fine-tunes for three quarters; only when --methods
                  names it
  cp-latency-ls0.75  the other way: freezing at the latest after three quarters (`--max-learn-share 0.75`);
                  only when --methods names it
  cp-latency-b1   cp-latency learned per channel (`--block 1`), not aligned by construction, exported with
                  `--round-to 16` as cp-flops-r16 is (rounding down, then up where the table's cost
                  allows; what it adds back was not fine-tuned); only when --methods names it
  cp-latency-norm cp-latency with its gates started graded by the weights' group norm (`--gate-init norm`,
                  default uniform: nearly open); only when --methods names it
  cp-latency-fw1  cp-latency rewarding kept FLOPs (`--flops-weight 1`, default 0: among plans of about the
                  target latency, lean to those that keep more FLOPs; benchmarks/flops_weight.py); only
                  when --methods names it
  cp-latency-fixed cp-latency learning its gates with the weights fixed (`--fix-weights`): the weights
                  train only after the cut, from the baseline's, like tp-r16+cp's; only when --methods
                  names it
Test accuracy is on the whole test split at 64 px, of the exported slim model. Every method's batch
norms are re-estimated on 100 batches after training (`export --calibrate-bn 100`; for Torch-Pruning
the same `calibrate_bn_`): Lite0's batch norms have momentum 0.01 (TensorFlow's 0.99), so after a
short budget their running statistics still describe the network before pruning. Without it,
cp-latency's seed 0 fell to 13.9% test accuracy (the `L12000-e2` row) at 73% training accuracy.

Rows go to benchmarks/results/accuracy.jsonl, one per (arch, setup, target, seed, method); rerunning
skips them, so the grid resumes where it stopped.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

from _common import HERE, Rows, export, run_finished, run_stage, tp_prune_to_flops

EPOCHS = 3  # training epochs after the baseline, for every method
LIMIT = 12000  # the first LIMIT Fashion-MNIST training images, for every method
TP_METHODS = ["tp-magnitude", "tp-group-norm", "tp-fpgm", "tp-group-sl"]
MAIN = ["chanprune"] + TP_METHODS + [m + "+cp" for m in TP_METHODS]
ABLATIONS = {  # one lever each, against the new default
    "cp-no-distill": ["--no-distill"],
    "cp-fixed-split": ["@split"],  # learn a third of the budget, fine-tune the rest: no freeze-when-ready
    "cp-cosine": ["--finetune-schedule", "cosine"],
    "cp-gate-init-norm": ["--gate-init", "norm"],
    "cp-anneal": ["--gate-temperature-final", "0.2"],
    "cp-trainable-gate": ["--gate", "trainable"],
    "cp-learn-quarter": ["--max-learn-share", "0.25"],  # freeze by a quarter of the budget, not half
    # lambda's rise scaled to the learning steps: the plan reaches its target (and may freeze when
    # ready) within a short run, where the fixed rate leaves it above until the deadline's projection
    "cp-lam-rate-auto": ["--lam-rate", "auto"],
    # the gates' Adam momentum zeroed where the cost first crosses the target (on by default since
    # 2026-12-04); against cp-lam-rate-auto, learned before the restart existed
    "cp-gate-restart": ["--lam-rate", "auto", "--gate-restart"],
    "cp-old-recipe": ["--no-distill", "@split", "--finetune-schedule", "cosine"],  # the recipe before this wave
    # a gentler fine-tune: the slim model starts near the baseline (92% val at the freeze), not at
    # Torch-Pruning's 10%, so the peak learning rate that revives a one-shot cut may undo it
    "cp-finetune-lr-0.01": ["--finetune-lr", "0.01"],
    "cp-finetune-lr-0.005": ["--finetune-lr", "0.005"],
}


def baseline(arch: str, out: Path, given: Path | None) -> Path:
    if given is not None:
        return given
    shipped = HERE.parent / "examples" / f"fmnist_{arch}_baseline.pt"
    if shipped.is_file():
        return shipped
    run = out / f"baseline_{arch}"
    run_stage(["train", "--arch", arch, "--data", "fashion-mnist", "--epochs", "4", "--seed", "0"], run,
              done=run_finished(run))
    return run / "model.pt"


def recalibrate_bn(model, batches: int, *, channels: int, size: int):
    """Re-estimate `model`'s batch norms on `batches` batches of the whole Fashion-MNIST training
    split, as chanprune's `export --calibrate-bn` does; returns that data (its test split too)."""
    import torch
    from chanprune.data import load_data
    from chanprune.learn import calibrate_bn_

    bundle = load_data("fashion-mnist", channels=channels, size=size)
    with torch.no_grad():
        calibrate_bn_(model, bundle.train, batches=batches)
    return bundle


def baseline_bn_accuracy(base: Path, batches: int) -> float:
    """The baseline's test accuracy with its batch norms re-estimated as every method's are under
    `--calibrate-bn` (the reference that method's change is measured from)."""
    from chanprune.learn import evaluate
    from chanprune.load import load_dense

    model, ckpt = load_dense(base)
    bundle = recalibrate_bn(model, batches, channels=ckpt.input_shape[1], size=ckpt.input_shape[-1])
    return evaluate(model.eval(), bundle.test)["accuracy"]


def setup_tag(limit: int, epochs: int) -> str:
    return f"L{limit}-e{epochs}"


def _size(base: Path) -> int | None:
    """The baseline's input size where it is not Fashion-MNIST's own 28 (a model moved at 64 px)."""
    from chanprune.artifacts import load_artifact

    size = int(load_artifact(base)["input_shape"][-1])
    return None if size == 28 else size


def main_tag(a, base: Path) -> str:
    """The main suite's setup: the subset and epochs, plus the input size and batch-norm re-estimation
    where they are not the default (the transfer scenario: Lite0 at 64 px, batch norms re-estimated)."""
    size = _size(base)
    return (setup_tag(a.limit, a.epochs) + (f"-{size}px" if size else "")
            + (f"-bn{a.calibrate_bn}" if a.calibrate_bn else ""))


def main_fields(a, base: Path) -> dict:
    """What a main-suite row's setup tag encodes beyond the subset and epochs, stored in the row itself:
    the input size and the batch-norm re-estimation, where they are not the default (28 px, none),
    and the baseline row that measured this baseline where it is not the arch's first (`baseline_key`)."""
    size = _size(base)
    return {**({"image_size": size} if size else {}), **({"bn_batches": a.calibrate_bn} if a.calibrate_bn else {}),
            **({"baseline_key": a.baseline_key} if getattr(a, "baseline_key", None) else {})}


def weights_digest(path: Path) -> str:
    """A digest of a checkpoint's weights (not of the file, which also holds optimizer state and times)."""
    import hashlib

    import torch

    state = torch.load(path, weights_only=True, map_location="cpu")["state_dict"]
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def baseline_row(rows: Rows, arch: str, base: Path, *, suite: str | None = None, more=dict) -> str | None:
    """The baseline row that measured the weights in `base`, written here if none did; returns its key
    where it is not the arch's first row (`ARCH/baseline`, or `ARCH/SUITE-baseline` for a suite's own
    baseline rows), for the runs to name. A first row without a digest (written before digests) is taken
    to be these weights: there is nothing to tell them apart. `more()`: further fields of a new row."""
    from chanprune.evaluate import eval_model

    key, digest = f"{arch}/{suite + '-' if suite else ''}baseline", weights_digest(base)
    same = [r for r in rows.rows.values() if r.get("arch") == arch and r.get("method") == "baseline"
            and r.get("suite") == suite and not r.get("bn_batches") and r.get("sha256") == digest]
    if same:
        return None if same[0]["key"] == key else same[0]["key"]
    first = rows.get(key)
    if first is not None and "sha256" not in first:
        return None
    new = key if first is None else f"{key}-{digest[:8]}"  # else the file was replaced (retrained)
    if first is not None:
        print(f"{base}: not the weights {key} measured; its runs are measured from {new}", flush=True)
    rows.add({"key": new, **({"suite": suite} if suite else {}), "arch": arch, "method": "baseline",
              **({"retrained": True} if first else {}), "baseline": str(base), "sha256": digest,
              "test_accuracy": eval_model(base, data="fashion-mnist")["accuracy"], **more()})
    return None if new == key else new


def first_crossing(hist: list[dict]) -> dict:
    """A row's `first_crossing` from a learn run's metrics: the step whose cost first crossed the target
    (where --gate-restart acts; None: never), from its last epoch that learned gates; {} where the run
    predates the record (2026-12-04)."""
    learning = [h for h in hist if "lambda" in h]
    return {"first_crossing": learning[-1]["first_crossing"]} if learning and "first_crossing" in learning[-1] else {}


def ours(rows: Rows, arch: str, base: Path, t: float, seed: int, method: str, a) -> dict:
    tag = main_tag(a, base)
    key = f"{arch}/{tag}/t{t}/s{seed}/{method}"
    if key in rows:
        return rows.get(key)
    from chanprune.evaluate import eval_model

    extra = [] if method in ("chanprune", "cp-default") else list(ABLATIONS[method])
    # the main table matches FLOPs: chanprune's target is what Torch-Pruning's uniform ratio reaches
    # (the largest FLOPs not above t); the ablations all learn at t itself
    asked = matched_target(arch, base, t) if method == "chanprune" else t
    if method == "chanprune":
        extra += ["--project-tolerance", "0"]  # at the matched FLOPs or below, as Torch-Pruning
    epochs = ["--epochs", str(a.epochs)]
    if "@split" in extra:
        extra.remove("@split")
        learn = max(1, a.epochs // 3)
        epochs = ["--epochs", str(learn), "--finetune-epochs", str(a.epochs - learn)]
    run = a.out / f"{arch}_{tag}_t{t}_s{seed}_{method}"
    size = ["--image-size", str(_size(base))] if _size(base) else []
    args = ["learn", "--arch", arch, "--weights", str(base), "--data", "fashion-mnist", "--limit", str(a.limit),
            "--target", f"{asked:.4f}", *epochs, "--seed", str(seed), *size, *extra]
    t0 = time.perf_counter()
    run_stage(args, run, done=run_finished(run))
    seconds = time.perf_counter() - t0
    bn = ["--calibrate-bn", str(a.calibrate_bn), "--data", "fashion-mnist"] if a.calibrate_bn else []
    slim = export(run / "model.pt", run / "slim", "--no-onnx", *bn)
    hist = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    learned = [h for h in hist if "cost_ratio_at_tau" in h]
    import torch

    frozen = torch.load(run / "model.pt", weights_only=True).get("frozen") or {}
    return rows.add({
        "key": key, "arch": arch, "setup": tag, **main_fields(a, base), "target": t, "asked_target": round(asked, 4),
        "seed": seed,
        "method": method, "flops_ratio": slim["flops_ratio"], "params_slim": slim["params_slim"],
        "val_after_pruning": learned[-1]["val_accuracy"],
        "test_accuracy": eval_model(run / "slim" / "slim.pt", data="fashion-mnist")["accuracy"],
        "train_seconds": round(sum(h["epoch_seconds"] for h in hist), 1), "wall_seconds": round(seconds, 1),
        "polarized": learned[-1]["polarized"], "frozen": {k: frozen.get(k) for k in ("reason", "steps", "finetune_steps")},
        **first_crossing(hist),
        "epochs": a.epochs, "limit": a.limit, "exact": slim.get("exact"),
        "command": "chanprune " + " ".join(args + ["--out", str(run)]),
    })


CONDITIONAL = {"cd-static": [], "cd-dependent": ["--gate", "dependent"],
               "cd-dependent-layer": ["--gate", "dependent", "--granularity", "layer"],
               "cd-static+dependent": ["--gate", "static+dependent"]}
# not in the default grid: static gates over whole branches, the paper's Table 4 partner of cd-dependent-layer
CONDITIONAL_EXTRA = {"cd-static-layer": ["--granularity", "layer"],
                     # a lever for the dependent gates: the static recipe's freeze-then-fine-tune, per input
                     "cd-dependent-ft": ["--gate", "dependent", "--dependent-finetune"]}


def conditional(rows: Rows, arch: str, base: Path, t: float, seed: int, method: str, a) -> dict:
    """One row of the conditional suite (see the module's docstring)."""
    tag = setup_tag(a.limit, a.epochs) + (f"-{a.image_size}px" if a.image_size else "")
    key = f"{arch}/{tag}/t{t}/s{seed}/{method}"
    if key in rows:
        return rows.get(key)
    import torch

    from chanprune.evaluate import eval_model

    run = a.out / f"{arch}_{tag}_t{t}_s{seed}_{method}"
    size = ["--image-size", str(a.image_size)] if a.image_size else []
    args = ["learn", "--arch", arch, "--weights", str(base), "--data", "fashion-mnist", "--limit", str(a.limit),
            "--target", str(t), "--epochs", str(a.epochs), "--seed", str(seed), *size,
            *{**CONDITIONAL, **CONDITIONAL_EXTRA}[method]]
    t0 = time.perf_counter()
    run_stage(args, run, done=run_finished(run))
    seconds = time.perf_counter() - t0
    hist = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    result = torch.load(run / "model.pt", weights_only=True).get("result") or {}
    row = {"key": key, "suite": "conditional", "arch": arch, "setup": tag, "target": t, "seed": seed,
           "method": method, "train_seconds": round(sum(h["epoch_seconds"] for h in hist), 1),
           "wall_seconds": round(seconds, 1), "epochs": a.epochs, "limit": a.limit,
           "command": "chanprune " + " ".join(args + ["--out", str(run)])}
    if method.startswith("cd-static") and "dependent" not in method:
        slim = export(run / "model.pt", run / "slim", "--no-onnx")
        row.update(flops_ratio=slim["flops_ratio"], exact=slim.get("exact"),
                   test_accuracy=eval_model(run / "slim" / "slim.pt", data="fashion-mnist")["accuracy"])
    else:
        ex = result["executed_cost"]
        row.update(flops_ratio=ex["mean"], flops_min=ex["min"], flops_max=ex["max"],
                   test_accuracy=result["test_accuracy"])
    return rows.add(row)


def inference_modes(rows: Rows, r: dict, samples: int) -> None:
    """The paper's inference modes (section 3) of one conditional-suite run: `eval --mode threshold`,
    `stochastic` and `ensemble --samples K`, each with its accuracy and executed cost per input."""
    from chanprune.evaluate import eval_model

    run = Path(r["command"].split("--out ")[-1])
    for mode in ("threshold", "stochastic", "ensemble"):
        key = f"modes/{r['key']}/{mode}" + (f"{samples}" if mode == "ensemble" else "")
        if key in rows:
            continue
        t0 = time.perf_counter()
        res = eval_model(run / "model.pt", data="fashion-mnist", mode=mode, samples=samples)
        c = res["cost"]
        rows.add({"key": key, "suite": "modes", "arch": r["arch"], "setup": r["setup"], "target": r["target"],
                  "seed": r["seed"], "method": r["method"], "mode": mode, "samples": res["samples"],
                  "test_accuracy": res["accuracy"], "cost_mean": c["mean"], "cost_min": c["min"],
                  "cost_max": c["max"], "cost_histogram": c["histogram"],
                  "eval_seconds": round(time.perf_counter() - t0, 1),
                  "command": f"chanprune eval {run / 'model.pt'} --data fashion-mnist --mode {mode}"
                             + (f" --samples {samples}" if mode == "ensemble" else "")})
        print(f"  {r['method']:<22} {mode:<10} test {res['accuracy']:.4f}  cost {c['mean']:.3f} "
              f"({c['min']:.2f}-{c['max']:.2f})", flush=True)


_MATCHED: dict = {}


def matched_target(arch: str, base: Path, t: float) -> float:
    """The FLOPs ratio Torch-Pruning's uniform ratio reaches at t (the largest not above t)."""
    if (arch, t) not in _MATCHED:
        import torch

        from chanprune.artifacts import load_artifact
        from chanprune.measure.flops import count_flops
        from chanprune.zoo import build_model

        ckpt = load_artifact(base, "chanprune.dense/1")
        model = build_model(arch, **ckpt["build_kwargs"])
        model.load_state_dict(ckpt["state_dict"])
        x = torch.zeros(ckpt["input_shape"])
        dense = count_flops(model, x).total
        _, _, flops = tp_prune_to_flops(lambda: copy.deepcopy(model).eval(), x, int(t * dense))
        _MATCHED[(arch, t)] = flops / dense
    return _MATCHED[(arch, t)]


def _recipe(name: str, seed: int, epochs: int, max_steps: int | None = None):
    from chanprune.learn import TrainConfig

    if name == "cp":  # chanprune's fine-tuning recipe (learn's defaults)
        return TrainConfig(epochs=epochs, lr=0.02, weight_decay=1e-4, schedule="onecycle", seed=seed,
                           max_steps=max_steps)
    # Torch-Pruning's documented fine-tuning (benchmarks/main.py: lr 0.01, wd 5e-4, milestones 60%/80%)
    return TrainConfig(epochs=epochs, lr=0.01, weight_decay=5e-4, schedule="step", seed=seed, max_steps=max_steps)


def torch_pruning(rows: Rows, arch: str, base: Path, t: float, seed: int, method: str, a) -> dict:
    tag = main_tag(a, base)
    key = f"{arch}/{tag}/t{t}/s{seed}/{method}"
    if key in rows:
        return rows.get(key)
    import torch

    from chanprune.artifacts import load_artifact
    from chanprune.learn import TrainConfig, evaluate, fit
    from chanprune.measure.flops import count_flops, count_params
    from chanprune.objective import Distill
    from chanprune.runs import _setup

    name, _, wall = method.partition("@")
    crit, _, recipe = name[len("tp-"):].partition("+")
    recipe = recipe or "tp"
    ckpt = load_artifact(base, "chanprune.dense/1")
    model, bundle, _, _, shape = _setup(arch, "fashion-mnist", weights=None, num_classes=None, in_channels=None,
                                        image_size=_size(base), seed=seed, limit=a.limit,
                                        saved_kwargs=ckpt["build_kwargs"])
    model.load_state_dict(ckpt["state_dict"])
    teacher = copy.deepcopy(model).eval()
    distill = Distill(teacher) if recipe == "cp" else None
    x = torch.zeros(shape)
    dense_flops = count_flops(model, x).total
    steps_per_epoch = bundle.train.num_batches(128)
    budget = a.epochs * steps_per_epoch
    if wall:  # as long as chanprune's run of this seed took, at this method's own speed per step
        ref = rows.get(f"{arch}/{tag}/t{t}/s{seed}/chanprune")
        own = rows.get(f"{arch}/{tag}/t{t}/s{seed}/{name}")
        if ref is None or own is None:
            raise SystemExit(f"{method} needs the rows of chanprune and {name} for seed {seed} first")
        budget = int(budget * ref["train_seconds"] / own["train_seconds"])
    t0 = time.perf_counter()
    sparse_steps, sparse_seconds = 0, 0.0
    if crit == "group-sl":  # regularise (GroupNormPruner's sparse learning), then prune, in the same budget
        sparse_steps = budget // 3
        t1 = time.perf_counter()
        _sparse_learning(model, bundle, x, sparse_steps, seed, distill)
        sparse_seconds = time.perf_counter() - t1
        crit_name = "group-norm"
    else:
        crit_name = crit
    pruned, ratio, flops = tp_prune_to_flops(lambda: copy.deepcopy(model).eval(), x, int(t * dense_flops),
                                             importance=crit_name)
    after = evaluate(pruned, bundle.val)["accuracy"]
    for p in pruned.parameters():
        p.requires_grad_(True)
    ft_steps = budget - sparse_steps
    state = fit(pruned, bundle.train, bundle.val, _recipe(recipe, seed, -(-ft_steps // steps_per_epoch), ft_steps),
                distill=distill)
    if a.calibrate_bn:
        recalibrate_bn(pruned, a.calibrate_bn, channels=shape[1], size=shape[-1])
    seconds = time.perf_counter() - t0
    return rows.add({
        "key": key, "arch": arch, "setup": tag, **main_fields(a, base), "target": t, "seed": seed, "method": method,
        "pruning_ratio": ratio, "flops_ratio": flops / dense_flops, "params_slim": count_params(pruned),
        "val_after_pruning": after, "test_accuracy": evaluate(pruned.eval(), bundle.test)["accuracy"],
        "train_seconds": round(sparse_seconds + sum(h["epoch_seconds"] for h in state.history), 1),
        "wall_seconds": round(seconds, 1), "steps": budget, "epochs": a.epochs, "limit": a.limit,
        "command": f"python benchmarks/accuracy.py --arch {arch} --targets {t} --seeds {seed} --methods {method}"
                   + (f" --baseline {base} --calibrate-bn {a.calibrate_bn}" if tag != setup_tag(a.limit, a.epochs) else ""),
    })


def _sparse_learning(model, bundle, x, steps: int, seed: int, distill) -> None:
    """Torch-Pruning's group sparse learning: train with `pruner.regularize` (reg 5e-4) added to the
    gradients (its benchmarks/main.py), at its sparse-learning lr 0.01."""
    import torch
    import torch_pruning as tp

    from _common import head_layers
    from chanprune.objective import task_loss

    pruner = tp.pruner.GroupNormPruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                       pruning_ratio=0.5, ignored_layers=head_layers(model), reg=5e-4)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    torch.manual_seed(seed)
    model.train()
    done = 0
    epoch = 0
    while done < steps:
        for xb, yb in bundle.train.batches(128, shuffle=True, seed=seed, epoch=epoch):
            loss, _ = task_loss(model(xb), yb, xb, distill)
            opt.zero_grad()
            loss.backward()
            pruner.regularize(model)
            opt.step()
            done += 1
            if done >= steps:
                break
        epoch += 1
    model.eval()


LATENCY_METHODS = ["cp-latency", "cp-flops-r16", "tp-r16+cp", "table-greedy+cp",
                   "cp-latency-ls0.25", "cp-latency-norm", "cp-latency-fw1", "cp-latency-fixed",
                   "cp-latency-ls0.75", "cp-latency-b1"]
# cp-latency with other `learn` options (and the export's --round-to), run only when --methods names them
LATENCY_VARIANTS = {"cp-latency-ls0.25": (["--max-learn-share", "0.25"], "auto"),
                    "cp-latency-norm": (["--gate-init", "norm"], "auto"),
                    "cp-latency-fw1": (["--flops-weight", "1"], "auto"), "cp-latency-fixed": (["--fix-weights"], "auto"),
                    "cp-latency-ls0.75": (["--max-learn-share", "0.75"], "auto"),
                    "cp-latency-b1": (["--block", "1"], "16")}
BN_BATCHES = 100  # batch-norm re-estimation after training, for every method of the latency suite


def table_greedy(rows: Rows, arch: str, t: float, seed: int, a, tag: str, base: Path, lut: Path, dense_onnx: Path,
                 ours: dict, timed, on: dict) -> dict:
    """table-greedy+cp: the latency table's most-FLOPs plan from the baseline alone (no data, no learning;
    benchmarks/ceiling.py), cut at cp-latency's measured batch-1 latency, fine-tuned as tp-r16+cp. `on`:
    the baseline's key suffix, folder suffix and row fields (`latency_suite`)."""
    key = f"{arch}/{tag}/lat{t}/s{seed}/table-greedy+cp{on['key']}"
    if key in rows:
        return rows.get(key)
    import latency_budget as lb
    import torch

    from ceiling import TablePlanner
    from chanprune.learn import evaluate, fit
    from chanprune.measure.flops import count_flops, count_params
    from chanprune.objective import Distill
    from chanprune.runs import _setup

    folder = a.out / f"{arch}_{tag}_lat{t}_s{seed}_table-greedy+cp{on['folder']}"
    planner = TablePlanner(base, lut, a.out / f"{arch}_table-greedy{on['folder']}")
    g = planner.at_latency(dense_onnx, ours["latency_ratio_b1"], folder / "match")
    _, bundle, _, _, _ = _setup(arch, "fashion-mnist", weights=None, num_classes=10, in_channels=3, image_size=64,
                                seed=seed, limit=a.limit)
    pruned = planner.slim(g["drops"])
    ratio, spread = timed(g["onnx"])
    for q in pruned.parameters():
        q.requires_grad_(True)
    steps = a.epochs * bundle.train.num_batches(128)
    t0 = time.perf_counter()
    state = fit(pruned, bundle.train, bundle.val, _recipe("cp", seed, a.epochs, steps),
                distill=Distill(copy.deepcopy(planner.dense).eval()))
    recalibrate_bn(pruned, BN_BATCHES, channels=3, size=64)
    x224 = torch.zeros(lb.DEPLOY)
    return rows.add({
        "key": key, "suite": "latency", "arch": arch, "setup": tag, "latency_target": t, "seed": seed, **on["fields"],
        "method": "table-greedy+cp", "drops": g["drops"], "predicted_latency_ratio_b1": g["predicted_latency_ratio"],
        "flops_ratio": count_flops(pruned, x224).total / count_flops(planner.dense, x224).total,
        "params_slim": count_params(pruned), "latency_ratio_b1": ratio, "latency_ratio_b1_p10_p90": spread,
        "test_accuracy": evaluate(pruned.eval(), bundle.test)["accuracy"],
        "train_seconds": round(sum(h["epoch_seconds"] for h in state.history), 1),
        "wall_seconds": round(time.perf_counter() - t0, 1), "epochs": a.epochs, "limit": a.limit,
        "command": f"python benchmarks/accuracy.py --suite latency --seeds {seed}"})


def latency_suite(rows: Rows, arch: str, t: float, seed: int, a) -> None:
    """The latency suite's four methods for one seed (see the module's docstring)."""
    import latency_budget as lb
    import torch

    from chanprune.evaluate import eval_model
    from chanprune.measure.latency import make_runner, measure_interleaved, ratio_stats

    grid = Path("runs/bench/latency_budget")
    base = lb.baseline(arch, grid, argparse.Namespace(limit=12800, base_epochs=2))
    lut = lb.profile(arch, base, grid)
    dense_onnx = lb.dense_onnx(arch, base, grid)
    tag = f"{setup_tag(a.limit, a.epochs)}-bn{BN_BATCHES}"
    other = baseline_row(rows, arch, base, suite="latency",
                         more=lambda: {f"test_accuracy_bn{BN_BATCHES}": baseline_bn_accuracy(base, BN_BATCHES)})
    # A baseline retrained elsewhere (another CPU can train other bits) is another experiment: its runs name it
    # (baseline_key) in their rows, keys and folders, so they neither resume from nor pair with the first's.
    digest = rows.get(other)["sha256"][:8] if other else ""
    on = ({"key": "", "folder": "", "fields": {}} if other is None else
          {"key": f"@{digest}", "folder": f"_{digest}", "fields": {"baseline_key": other}})
    deploy = ",".join(map(str, lb.DEPLOY))
    shape1 = [1, *lb.DEPLOY[1:]]

    def timed(onnx_path) -> tuple[float, list[float]]:
        times = measure_interleaved({"dense": make_runner(dense_onnx, "ort-cpu", shape1, threads=2),
                                     "m": make_runner(onnx_path, "ort-cpu", shape1, threads=2)},
                                    warmup=5, rounds=15, per_round=5)
        return ratio_stats(times["m"], times["dense"])

    def cp(method: str, extra: list[str], round_to: str) -> dict:
        key = f"{arch}/{tag}/lat{t}/s{seed}/{method}{on['key']}"
        if key in rows:
            return rows.get(key)
        # the learn does not change with the batch-norm re-estimation, so the folder has no -bn
        run = a.out / f"{arch}_{setup_tag(a.limit, a.epochs)}_lat{t}_s{seed}_{method}{on['folder']}"
        args = ["learn", "--arch", arch, "--weights", str(base), "--data", "fashion-mnist", "--limit", str(a.limit),
                "--image-size", "64", "--epochs", str(a.epochs), "--seed", str(seed), *extra]
        t0 = time.perf_counter()
        run_stage(args, run, done=run_finished(run))
        seconds = time.perf_counter() - t0
        slim = export(run / "model.pt", run / f"slim_bn{BN_BATCHES}", "--no-onnx", "--round-to", round_to,
                      "--calibrate-bn", str(BN_BATCHES), "--data", "fashion-mnist")
        x224 = export(run / "model.pt", run / "slim224", "--input-shape", deploy, "--round-to", round_to, "--lut", str(lut))
        ratio, spread = timed(x224["onnx"])
        hist = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        ckpt = torch.load(run / "model.pt", weights_only=True)
        return rows.add({
            "key": key, "suite": "latency", "arch": arch, "setup": tag, "latency_target": t, "seed": seed,
            **on["fields"], "method": method, "flops_ratio": x224["flops_ratio"], "params_slim": x224["params_slim"],
            "latency_ratio_b1": ratio, "latency_ratio_b1_p10_p90": spread,
            "predicted_speedup": (x224.get("predicted_speedup") or {}).get("by_batch"),
            "test_accuracy": eval_model(run / f"slim_bn{BN_BATCHES}" / "slim.pt", data="fashion-mnist")["accuracy"],
            "train_seconds": round(sum(h["epoch_seconds"] for h in hist), 1), "wall_seconds": round(seconds, 1),
            "epochs": a.epochs, "limit": a.limit, "exact": slim.get("exact") and x224.get("exact"),
            "bn_batches": BN_BATCHES,
            **first_crossing(hist),
            # the projection's order (LearnConfig.project_by: margin since 2026-12-04; rows before it: prob)
            "project_by": (ckpt.get("learn_config") or {}).get("project_by", "prob"),
            "projected": ((ckpt.get("plan") or {}).get("meta") or {}).get("projected"),
            "command": "chanprune " + " ".join(args + ["--out", str(run)]),
        })

    wanted = (a.methods or ",".join(m for m in LATENCY_METHODS if m not in LATENCY_VARIANTS)).split(",")
    # cp-latency always: the others match it
    ours = cp("cp-latency", ["--budget", "latency", "--lut", str(lut), "--target", str(t)], "auto")
    rows_out = [ours]
    for m, (extra, round_to) in LATENCY_VARIANTS.items():
        if m in wanted:
            rows_out.append(cp(m, ["--budget", "latency", "--lut", str(lut), "--target", str(t), *extra], round_to))
    if "cp-flops-r16" in wanted:
        rows_out.append(cp("cp-flops-r16", ["--budget", "flops", "--target", f"{ours['flops_ratio']:.4f}"], "16"))
    key = f"{arch}/{tag}/lat{t}/s{seed}/tp-r16+cp{on['key']}"
    if "tp-r16+cp" in wanted and key not in rows:
        from chanprune.learn import evaluate, fit
        from chanprune.load import load_dense
        from chanprune.measure.flops import count_flops, count_params
        from chanprune.objective import Distill
        from chanprune.runs import _setup

        from _common import tp_prune

        folder = a.out / f"{arch}_{tag}_lat{t}_s{seed}_tp-r16+cp{on['folder']}"
        tp = lb.tp_at_latency(base, dense_onnx, ours["latency_ratio_b1"], folder / "match")
        dense, _ = load_dense(base)
        model, bundle, _, _, shape = _setup(arch, "fashion-mnist", weights=None, num_classes=10, in_channels=3,
                                            image_size=64, seed=seed, limit=a.limit)
        x = torch.zeros(shape)
        pruned = tp_prune(copy.deepcopy(dense).eval(), x, tp["pruning_ratio"], round_to=lb.BLOCK_RT)
        ratio, spread = timed(tp["onnx"])
        for q in pruned.parameters():
            q.requires_grad_(True)
        steps = a.epochs * bundle.train.num_batches(128)
        t0 = time.perf_counter()
        state = fit(pruned, bundle.train, bundle.val, _recipe("cp", seed, a.epochs, steps), distill=Distill(dense.eval()))
        recalibrate_bn(pruned, BN_BATCHES, channels=3, size=64)
        x224 = torch.zeros(lb.DEPLOY)
        rows_out.append(rows.add({
            "key": key, "suite": "latency", "arch": arch, "setup": tag, "latency_target": t, "seed": seed,
            **on["fields"], "method": "tp-r16+cp", "pruning_ratio": tp["pruning_ratio"],
            "flops_ratio": count_flops(pruned, x224).total / count_flops(dense, x224).total,
            "params_slim": count_params(pruned), "latency_ratio_b1": ratio, "latency_ratio_b1_p10_p90": spread,
            "test_accuracy": evaluate(pruned.eval(), bundle.test)["accuracy"],
            "train_seconds": round(sum(h["epoch_seconds"] for h in state.history), 1),
            "wall_seconds": round(time.perf_counter() - t0, 1), "epochs": a.epochs, "limit": a.limit,
            "command": f"python benchmarks/accuracy.py --suite latency --seeds {seed}"}))
    elif "tp-r16+cp" in wanted:
        rows_out.append(rows.get(key))
    if "table-greedy+cp" in wanted:
        rows_out.append(table_greedy(rows, arch, t, seed, a, tag, base, lut, dense_onnx, ours, timed, on))
    for r in rows_out:
        print(f"{r['method']:<14} latency target {t} seed {seed}: measured latency {r['latency_ratio_b1']:.3f}  "
              f"FLOPs {r['flops_ratio']:.3f}  test {r['test_accuracy']:.4f}  {r['train_seconds']:.0f} s", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", choices=["main", "ablations", "latency", "conditional"], default="main")
    ap.add_argument("--arch", default=None, help="Default: resnet20 (efficientnet_lite0 for --suite latency).")
    ap.add_argument("--baseline", type=Path, default=None, help="A dense model.pt (default: shipped, or trained here).")
    ap.add_argument("--targets", default=None, help="Default: 0.5,0.25 (main), 0.5 (ablations).")
    ap.add_argument("--seeds", default=None, help="Default: 0,1,2 (main), 0 (ablations).")
    ap.add_argument("--methods", default=None, help="Default: the suite's.")
    ap.add_argument("--epochs", type=int, default=None, help=f"Default: {EPOCHS} (2 for --suite latency).")
    ap.add_argument("--limit", type=int, default=LIMIT)
    ap.add_argument("--image-size", type=int, default=None,
                    help="--suite conditional: learn at this size (e.g. 64 for resnet18 with a 64 px --baseline).")
    ap.add_argument("--calibrate-bn", type=int, default=0, metavar="K",
                    help="--suite main: every method's batch norms re-estimated on K batches after training "
                         "(Lite0's momentum is 0.01: the transfer scenario).")
    ap.add_argument("--modes", type=int, default=0, metavar="K",
                    help="--suite conditional: also evaluate each run in the inference modes (threshold, stochastic, "
                         "an ensemble of K stochastic runs).")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/accuracy"))
    a = ap.parse_args()
    if a.image_size and a.suite != "conditional":
        ap.error("--image-size: only --suite conditional takes it (the other suites fix their sizes)")
    if a.calibrate_bn and a.suite not in ("main", "ablations"):
        ap.error("--calibrate-bn: the main suite's option (the latency suite always re-estimates)")
    if a.modes and a.suite != "conditional":
        ap.error("--modes: only --suite conditional takes it (the runs with gates to sample)")
    import torch

    torch.set_num_threads(2)
    rows = Rows("accuracy")
    if a.suite == "latency":
        unknown = set((a.methods or "").split(",")) - set(LATENCY_METHODS) - {""}
        if unknown:
            ap.error(f"--methods: {sorted(unknown)[0]} is not a latency-suite method ({', '.join(LATENCY_METHODS)})")
        a.arch, a.epochs = a.arch or "efficientnet_lite0", a.epochs or 2
        for seed in [int(s) for s in (a.seeds or "0,1,2").split(",")]:
            for t in [float(s) for s in (a.targets or "0.5").split(",")]:
                latency_suite(rows, a.arch, t, seed, a)
        return
    cond = a.suite == "conditional"
    a.arch, a.epochs = a.arch or ("resnet56" if cond else "resnet20"), a.epochs or EPOCHS
    main_suite = a.suite in ("main", "conditional")
    targets = [float(s) for s in (a.targets or ("0.5,0.3" if cond else "0.5,0.25" if main_suite else "0.5")).split(",")]
    seeds = [int(s) for s in (a.seeds or ("0,1,2" if main_suite else "0")).split(",")]
    methods = (a.methods or ",".join(CONDITIONAL if cond else MAIN if main_suite else ["cp-default", *ABLATIONS])).split(",")
    base = baseline(a.arch, a.out, a.baseline)
    key = f"{a.arch}/baseline"
    a.baseline_key = baseline_row(rows, a.arch, base)
    if a.calibrate_bn and f"{key}-bn{a.calibrate_bn}" not in rows:
        rows.add({"key": f"{key}-bn{a.calibrate_bn}", "arch": a.arch, "method": "baseline", "baseline": str(base),
                  "bn_batches": a.calibrate_bn, "test_accuracy": baseline_bn_accuracy(base, a.calibrate_bn)})
    for seed in seeds:
        for t in targets:
            for m in methods:
                r = (conditional if m.startswith("cd-") else torch_pruning if m.startswith("tp-") else ours)(
                    rows, a.arch, base, t, seed, m, a)
                after = f"  after pruning (val) {r['val_after_pruning']:.4f}" if "val_after_pruning" in r else ""
                print(f"{r['method']:<22} t={t} seed {seed}: FLOPs {r['flops_ratio']:.3f}{after}  "
                      f"test {r['test_accuracy']:.4f}  {r['train_seconds']:.0f} s", flush=True)
                if cond and a.modes:
                    inference_modes(rows, r, a.modes)


if __name__ == "__main__":
    main()
