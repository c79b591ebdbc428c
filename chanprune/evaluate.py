"""`eval`: accuracy of any chanprune model file, through onnxruntime for .onnx."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .artifacts import DENSE_FORMAT, GATED_FORMAT, SLIM_FORMAT, atomic_write_text, load_artifact, load_slim
from .data import load_data
from .learn import evaluate as evaluate_torch

__all__ = ["eval_model", "load_any"]


def load_any(path: str | os.PathLike, *, tau: float = 0.5, arch: str | None = None):
    """(kind, torch model or onnxruntime session, input shape) for a .pt of any kind or a .onnx."""
    path = Path(path)
    if path.suffix == ".onnx":
        from .export import onnx_session

        sess = onnx_session(path)
        shape = [d if isinstance(d, int) else 1 for d in sess.get_inputs()[0].shape]
        return "onnx", sess, shape
    obj = load_artifact(path, (GATED_FORMAT, SLIM_FORMAT, DENSE_FORMAT))
    if obj["format"] == SLIM_FORMAT:
        model, obj = load_slim(path, arch=arch)
        return "slim", model, obj["input_shape"]
    if obj["format"] == GATED_FORMAT:
        from .runs import GatedModel

        gm = GatedModel(path, arch=arch)
        plan = gm.plan(tau)
        gm.gates.fix_(plan.keep_masks(gm.graph))
        return "gated", gm.model.eval(), gm.input_shape
    from .zoo import build_model, saved_arch

    kw = obj.get("build_kwargs") or {}
    model = build_model(saved_arch(obj, path, arch), num_classes=kw.get("num_classes"), in_channels=kw.get("in_channels", 3))
    model.load_state_dict(obj["state_dict"])
    return "dense", model.eval(), obj["input_shape"]


def eval_model(path: str | os.PathLike, *, data: str, batch_size: int = 256, tau: float = 0.5,
               arch: str | None = None) -> dict:
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
