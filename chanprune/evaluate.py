"""`eval`: accuracy of any chanprune model file, through onnxruntime for .onnx."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .artifacts import atomic_write_text
from .data import load_data
from .learn import evaluate as evaluate_torch
from .load import load_any, resolve_checkpoint

__all__ = ["eval_model"]


def eval_model(path: str | os.PathLike, *, data: str, batch_size: int = 256, tau: float | None = None,
               arch: str | None = None) -> dict:
    path = resolve_checkpoint(path)
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
