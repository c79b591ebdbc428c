"""`eval`: accuracy of any chanprune model file, through onnxruntime for .onnx."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .artifacts import atomic_write_text
from .data import load_data
from .learn import cost_summary, input_costs
from .learn import evaluate as evaluate_torch
from .load import load_any, resolve_checkpoint

__all__ = ["eval_model", "eval_gated", "MODES"]

MODES = ("threshold", "stochastic", "ensemble")


def eval_model(path: str | os.PathLike, *, data: str, batch_size: int = 256, tau: float | None = None,
               arch: str | None = None, mode: str | None = None, samples: int = 8) -> dict:
    """Accuracy of any model file. A gated checkpoint with data-dependent gates, or any `mode`, goes
    through `eval_gated` (each input's executed cost too)."""
    path = resolve_checkpoint(path)
    if mode is not None or _has_dependent_gates(path):
        res = eval_gated(path, data=data, batch_size=batch_size, tau=tau, arch=arch, mode=mode or "threshold",
                         samples=samples)
        atomic_write_text(Path(str(path) + ".eval.json"), json.dumps(res, indent=1))
        return res
    kind, model, shape = load_any(path, tau=tau, arch=arch)
    bundle = load_data(data, channels=shape[1], size=shape[-1])
    split, name = (bundle.test, "test") if bundle.test is not None else (bundle.val, "val")
    if kind == "onnx":
        from .export import run_onnx

        n = correct = correct5 = 0
        for x, y in split.batches(batch_size):
            out = torch.from_numpy(run_onnx(model, x))
            correct += (out.argmax(1) == y).sum().item()
            if out.shape[1] > 5:
                correct5 += (out.topk(5, 1).indices == y[:, None]).any(1).sum().item()
            n += y.numel()
        res = {"accuracy": correct / max(n, 1), "count": n}
        if out.shape[1] > 5:
            res["top5"] = correct5 / max(n, 1)
    else:
        res = {k: v for k, v in evaluate_torch(model, split, batch_size=batch_size).items() if k != "loss"}
    res.update({"model": str(path), "kind": kind, "data": data, "split": name})
    atomic_write_text(Path(str(path) + ".eval.json"), json.dumps(res, indent=1))
    return res


def _has_dependent_gates(path: Path) -> bool:
    if path.suffix == ".onnx":
        return False
    from .artifacts import load_artifact

    obj = load_artifact(path)
    return bool(((obj.get("gate") or {}).get("config") or {}).get("dependent"))


@torch.no_grad()
def eval_gated(path: str | os.PathLike, *, data: str, batch_size: int = 256, tau: float | None = None,
               arch: str | None = None, mode: str = "threshold", samples: int = 8, seed: int = 0) -> dict:
    """A gated checkpoint in an inference mode (paper, section 3), with each input's executed cost.

    threshold: the plan the run deploys (static gates at tau; data-dependent gates at tau, per input).
    stochastic: every gate draws a sample, per input. ensemble: the mean of `samples` stochastic
    runs' class probabilities; its cost is the sum of theirs. Reports the accuracy, the executed cost
    under the run's cost model as a fraction of the dense model's (mean, extremes, a 10-bin histogram
    per input) and, per group, the share of its channels switched off on average."""
    from .errors import ChanpruneError
    from .load import GatedModel

    if mode not in MODES:
        raise ChanpruneError(f"--mode {mode!r}: choose one of {', '.join(MODES)}")
    if samples < 1:
        raise ChanpruneError(f"--samples must be >= 1, got {samples}")
    path = resolve_checkpoint(path)
    if path.suffix == ".onnx":
        raise ChanpruneError(f"--mode needs a gated model.pt (its gates), not {path.name}")
    from .artifacts import load_artifact

    if load_artifact(path).get("format", "").split("/")[0] != "chanprune.gated":
        raise ChanpruneError(f"--mode needs a gated model.pt from chanprune learn; {path} has no gates")
    gm = GatedModel.load(path, arch=arch)
    gates, model, cost = gm.gates, gm.model.eval(), gm.cost
    if mode == "threshold":
        gates.fix_(gm.plan(tau).keep_masks(gm.graph))
        gates.mode = "threshold"
    else:
        gates.fix_(None)
        gates.mode = "stochastic"
    runs = samples if mode == "ensemble" else 1
    bundle = load_data(data, channels=gm.input_shape[1], size=gm.input_shape[-1])
    split, name = (bundle.test, "test") if bundle.test is not None else (bundle.val, "val")
    torch.manual_seed(seed)
    n = correct = 0
    per_input, off = [], [torch.zeros(g.size, dtype=torch.float64) for g in gm.graph.groups]
    for x, y in split.batches(batch_size):
        prob, spent = 0.0, torch.zeros(x.shape[0], dtype=torch.float64)
        for _ in range(runs):
            prob = prob + torch.softmax(model(x), 1)
            z = gates.current()
            spent += input_costs(cost, z, x.shape[0])
            for i, m in enumerate(z):
                off[i] += (1 - m.double()).expand(x.shape[0], -1).sum(0)
        correct += int((prob.argmax(1) == y).sum())
        n += y.numel()
        per_input.append(spent)
    r = torch.cat(per_input)
    return {"model": str(path), "kind": "gated", "mode": mode, "samples": runs, "data": data, "split": name,
            "accuracy": correct / max(n, 1), "count": n,
            "cost": cost_summary(cost.name, r, top=runs),
            "skipped_per_group": {g.name: float(o.sum() / (n * runs * g.size)) for g, o in zip(gm.graph.groups, off)}}
