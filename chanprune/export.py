"""ONNX export of a (slim) model and onnxruntime parity.

We use the TorchScript exporter (`dynamo=False`) first: it exports resnet18 in about 0.7 s
against 7.4 s for the dynamo exporter and handles the zero-width stand-ins (`ZeroChannels`,
`ConstantOutput`) with a dynamic batch axis. Where it cannot export an op (adaptive pooling to a
size that does not divide the input, as VGG's 7x7 pool at low resolution), we fall back to the
dynamo exporter. The TorchScript exporter is deprecated upstream; `test_export.py` pins both paths
so a torch upgrade that breaks one fails loudly.
"""
from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .artifacts import atomic_write_bytes
from .errors import ArtifactError

__all__ = ["export_onnx", "onnx_session", "run_onnx", "max_abs_diff", "within_tolerance", "DEFAULT_OPSET"]

DEFAULT_OPSET = 17
DEFAULT_ATOL = 1e-5
DEFAULT_RTOL = 1e-4


def within_tolerance(diff: float, reference_scale: float, *, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL) -> bool:
    """DESIGN.md's one tolerance: |a - b| <= atol + rtol * max|reference|."""
    return bool(np.isfinite(diff) and diff <= atol + rtol * reference_scale)


def max_abs_diff(a, b) -> float:
    a = a.detach().cpu().numpy() if torch.is_tensor(a) else np.asarray(a)
    b = b.detach().cpu().numpy() if torch.is_tensor(b) else np.asarray(b)
    if a.shape != b.shape:
        return float("inf")
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) if a.size else 0.0


EXPORTERS = ("auto", "torchscript", "dynamo")


def _export_bytes(model: nn.Module, example_inputs: torch.Tensor, *, dynamo: bool, opset: int,
                  dynamic_batch: bool) -> bytes:
    buf = io.BytesIO()
    kwargs = {}
    if dynamo:
        kwargs["verbose"] = False
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # tracer and deprecation chatter; the checker and parity decide
        torch.onnx.export(model, (example_inputs,), buf, dynamo=dynamo, opset_version=opset,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None,
                          **kwargs)
    return buf.getvalue()


def export_onnx(model: nn.Module, example_inputs: torch.Tensor, path: str | os.PathLike, *,
                opset: int = DEFAULT_OPSET, dynamic_batch: bool = True, exporter: str = "auto") -> Path:
    """Export `model` (eval mode) to `path` atomically and validate it with `onnx.checker`.

    Args:
        exporter: "torchscript", "dynamo", or "auto" (TorchScript, then dynamo where it fails).
    """
    import onnx

    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; choose one of {EXPORTERS}")
    was_training = model.training
    model.eval()
    try:
        if exporter == "dynamo":
            data = _export_bytes(model, example_inputs, dynamo=True, opset=opset, dynamic_batch=dynamic_batch)
        else:
            try:
                data = _export_bytes(model, example_inputs, dynamo=False, opset=opset, dynamic_batch=dynamic_batch)
            except Exception:  # torch.onnx raises SymbolicValueError, RuntimeError, ...
                if exporter == "torchscript":
                    raise
                data = _export_bytes(model, example_inputs, dynamo=True, opset=opset, dynamic_batch=dynamic_batch)
    finally:
        model.train(was_training)
    onnx.checker.check_model(onnx.load_from_string(data))
    return atomic_write_bytes(path, data)


def onnx_session(path: str | os.PathLike, *, providers: list[str] | None = None, threads: int | None = None):
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers or ["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise ArtifactError(f"{path}: not a valid ONNX model ({str(e).splitlines()[0][:200]})") from e


def run_onnx(session, inputs: torch.Tensor) -> np.ndarray:
    name = session.get_inputs()[0].name
    return session.run(None, {name: inputs.detach().cpu().numpy()})[0]


# ----------------------------------------------------------------------------- the export stage
def round_plan(plan, graph, n: int, cost=None):
    """Kept counts per group become multiples of `n`, choosing channels by gate probability.

    Each count first rounds down (to at least `n`, or the group's size; a removed group stays
    removed). With a cost model, groups are then rounded up, those that lost most first, while the
    predicted FLOPs stay within the unrounded plan's: the FLOPs target holds. Groups that feed a
    grouped conv keep their plan (equal counts per conv group come first).
    """
    from .plan import GroupPlan, PrunePlan

    if n < 1:
        raise ValueError(f"--round-to must be >= 1, got {n}")

    def pick(gp, k):
        probs = (torch.tensor(gp.probs) if gp.probs is not None
                 else torch.zeros(gp.size).index_fill_(0, torch.tensor(gp.keep, dtype=torch.long), 1.0))
        return GroupPlan(gp.name, gp.size, sorted(int(i) for i in torch.argsort(probs, descending=True, stable=True)[:k]),
                         gp.probs)

    groups, lost = [], []
    for i, gp in enumerate(plan.groups):
        g = graph.group(gp.name)
        k = len(gp.keep)
        if k == 0 or g.partition or n == 1 or k == g.size:
            groups.append(gp)
            continue
        down = min(g.size, max(n, (k // n) * n))
        groups.append(pick(gp, down))
        if down < k:
            lost.append((k - down, i))
    out = PrunePlan(groups, plan.arch, plan.input_shape, plan.tau, {**plan.meta, "round_to": n})
    if cost is not None:
        budget = cost.plan_flops(plan, graph)
        for _, i in sorted(lost, reverse=True):
            gp = plan.groups[i]
            up = min(gp.size, len(out.groups[i].keep) + n)
            trial = list(out.groups)
            trial[i] = pick(gp, up)
            cand = PrunePlan(trial, out.arch, out.input_shape, out.tau, out.meta)
            if cost.plan_flops(cand, graph) <= budget:
                out = cand
    return out


def export_run(model_path: str | os.PathLike, *, out_dir: str | os.PathLike | None = None, tau: float = 0.5,
               round_to: int | None = None, calibrate_bn: int = 0, data: str | None = None,
               input_shape: list[int] | None = None, dense: bool = False, opset: int = DEFAULT_OPSET,
               atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL, arch: str | None = None) -> dict:
    """Freeze, (recalibrate BN,) cut, export, and check parity; write plan.json, slim.pt,
    model.onnx and export.json into `out_dir` (default: beside the checkpoint; `dense/` for --dense)."""
    import copy
    import json

    from .artifacts import atomic_write_text, save_slim
    from .freeze import polarization
    from .learn import calibrate_bn_
    from .measure.flops import count_flops, count_params
    from .plan import GroupPlan, PrunePlan
    from .runs import GatedModel
    from .surgery import apply_plan_

    model_path = Path(model_path)
    gm = GatedModel(model_path, arch=arch, input_shape=input_shape)
    out = Path(out_dir) if out_dir else (model_path.parent / "dense" if dense else model_path.parent)
    out.mkdir(parents=True, exist_ok=True)
    if dense:
        plan = PrunePlan([GroupPlan(g.name, g.size, list(range(g.size))) for g in gm.graph.groups], gm.arch,
                         gm.input_shape, None, {"dense": True})
    else:
        plan = gm.plan(tau)
        if round_to:
            plan = round_plan(plan, gm.graph, round_to, gm.cost)
    plan.validate(gm.graph)
    gm.gates.fix_(plan.keep_masks(gm.graph))  # the frozen gated model, under the plan actually applied
    if calibrate_bn:
        if not data:
            raise ValueError("--calibrate-bn needs --data")
        from .data import load_data

        bundle = load_data(data, channels=gm.input_shape[1], size=gm.input_shape[-1])
        calibrate_bn_(gm.model, bundle.train, batches=calibrate_bn)
    gm.model.eval()
    torch.manual_seed(0)
    x = torch.randn(2, *gm.input_shape[1:])
    with torch.no_grad():
        y_gated = gm.model(x)
    gm.gates.detach_()
    slim = apply_plan_(copy.deepcopy(gm.model), plan, x[:1], graph=gm.graph).eval()
    with torch.no_grad():
        y_slim = slim(x)
    kwargs = gm.ckpt.get("build_kwargs") or {}
    slim_path = save_slim(out / "slim.pt", slim, arch=gm.arch, plan=plan, input_shape=gm.input_shape,
                          build_kwargs=kwargs)
    atomic_write_text(out / "plan.json", plan.to_json())
    onnx_path = export_onnx(slim, x[:1], out / "model.onnx", opset=opset)
    y_ort = run_onnx(onnx_session(onnx_path), x)
    scale = float(y_gated.abs().max())
    d_slim, d_onnx, d_total = max_abs_diff(y_slim, y_gated), max_abs_diff(y_ort, y_slim), max_abs_diff(y_ort, y_gated)
    exact = (within_tolerance(d_slim, scale, atol=atol, rtol=rtol)
             and within_tolerance(d_onnx, float(y_slim.abs().max()), atol=atol, rtol=rtol))
    x1 = x[:1]
    report = {
        "onnx": str(onnx_path), "slim": str(slim_path), "plan": str(out / "plan.json"), "dense": dense,
        "arch": gm.arch, "input_shape": gm.input_shape, "tau": None if dense else tau, "round_to": round_to,
        "flops_dense": int(gm.cost.dense), "flops_slim": count_flops(slim, x1).total,
        "flops_predicted": gm.cost.plan_flops(plan, gm.graph),
        "params_dense": count_params(gm.model), "params_slim": count_params(slim),
        "kept_channels": plan.kept_channels, "gated_channels": plan.total_channels,
        "zero_width_groups": len(plan.zero_width_groups),
        "max_abs_diff": d_total, "slim_vs_gated": d_slim, "onnx_vs_slim": d_onnx,
        "tolerance": {"atol": atol, "rtol": rtol}, "exact": exact,
        "polarization": polarization(gm.gates.probs()).to_dict(), "source": str(model_path),
    }
    report["flops_ratio"] = report["flops_slim"] / report["flops_dense"]
    atomic_write_text(out / "export.json", json.dumps(report, indent=1))
    return report
