"""`export`: a gated run to a slim model, ONNX and a parity report.

Freeze (or take the run's stored plan), optionally round the plan onto a grid and recalibrate
batch norms under it, cut (`cut.cut`: slim against the frozen gated model), export to ONNX and
check onnxruntime against the slim model; write plan.json, slim.pt, model.onnx and export.json.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .artifacts import atomic_write_text
from .cost import LatencyCost, make_cost
from .cut import cut
from .errors import ChanpruneError
from .export import (DEFAULT_ATOL, DEFAULT_OPSET, DEFAULT_RTOL, export_onnx, max_abs_diff, onnx_session, run_onnx,
                     simplify_onnx, within_tolerance)
from .freeze import polarization, round_plan
from .learn import calibrate_bn_
from .load import GatedModel, resolve_checkpoint, save_slim
from .measure.flops import count_flops, count_params
from .measure.lut import default_block, machine_mismatch
from .plan import GroupPlan, PrunePlan

__all__ = ["export_run"]


def unaligned_groups(plan: PrunePlan, graph, block: int) -> int:
    """Groups whose kept count is neither 0, the whole group, nor a multiple of `block` (groups with
    equal counts per part, grouped convs, are left out: their counts follow their parts)."""
    n = 0
    for gp in plan.groups:
        k = len(gp.keep)
        if graph.group(gp.name).partition or k in (0, gp.size) or k % block == 0:
            continue
        n += 1
    return n


def alignment(plan: PrunePlan, gm: GatedModel, block: int) -> tuple[int | None, str | None]:
    """`--round-to auto`: what to round to, and a warning when the plan stays unaligned.

    An aligned plan (learned in blocks, or aligned already) is left alone. An unaligned plan whose
    weights were not fine-tuned under it is rounded to the block. An unaligned plan that was
    fine-tuned is left alone with a warning: rounding re-picks channels after fine-tuning, which
    costs accuracy (the demo: 91.7% -> 87.1% with --round-to 4), so it is the user's call."""
    bad = unaligned_groups(plan, gm.graph, block)
    if not bad:
        return None, None
    if not gm.ckpt.tuned_for_plan:
        return block, None
    return None, (f"{bad} of {len(plan.groups)} groups keep channel counts off onnxruntime's block of {block} on this "
                  f"CPU, which runs them on slower kernels; --round-to {block} aligns them (re-picking channels after "
                  f"fine-tuning costs accuracy), and learn --block {block} (or --budget latency) learns aligned plans")


def predicted_speedup(gm: GatedModel, plan: PrunePlan, lut=None) -> dict | None:
    """Dense over slim latency per batch size, predicted by the run's latency table (or `lut`)."""
    cost = gm.cost if isinstance(gm.cost, LatencyCost) else None
    if lut is not None:
        cost = make_cost("latency", gm.model, torch.zeros(gm.input_shape), gm.graph, lut=lut)
    if cost is None:
        return None
    return {"backend": cost.table.backend, "threads": cost.table.threads,
            "by_batch": cost.speedup(plan.keep_masks(gm.graph)),
            "mismatch": machine_mismatch(cost.table)}


def export_run(model_path: str | os.PathLike, *, out_dir: str | os.PathLike | None = None, tau: float | None = None,
               round_to: int | str | None = "auto", calibrate_bn: int = 0, data: str | None = None,
               input_shape: list[int] | None = None, dense: bool = False, opset: int = DEFAULT_OPSET,
               atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL, arch: str | None = None,
               onnx: bool = True, simplify: str | None = None, lut: str | os.PathLike | None = None) -> dict:
    """Cut and export the run at `model_path` into `out_dir` (default: beside the checkpoint;
    `dense/` for `dense`). `tau=None` deploys the run's own plan (see `GatedModel.plan`).
    `onnx=False` writes plan.json, slim.pt and export.json only; `simplify` ("onnxslim" or "onnxsim")
    simplifies model.onnx before the onnxruntime parity check, so parity holds for the file written.

    `round_to` "auto" (the default) aligns kept counts for onnxruntime on this CPU (`alignment`); an
    integer rounds to it, 1 or None leaves the plan as it is. With a latency table (the run's own, when
    it learned against one, or `lut`) the report holds the predicted speedup per batch size."""
    model_path = resolve_checkpoint(model_path)
    gm = GatedModel.load(model_path, arch=arch, input_shape=input_shape)
    if gm.gates.dependent and not dense:
        raise ChanpruneError(f"{model_path}: its gates depend on the input, so no static slim model reproduces it. "
                             "Its deployable form is the dynamic model (chanprune.dynamic.dynamic_model: torch, batch 1); "
                             "export of that to ONNX is not built yet")
    if dense:
        plan = PrunePlan([GroupPlan(g.name, g.size, list(range(g.size))) for g in gm.graph.groups], gm.arch,
                         gm.input_shape, None, {"dense": True})
    else:
        plan = gm.plan(tau)
    warnings: list[str] = []
    block = default_block("ort-cpu")
    if not dense:
        if round_to == "auto":
            round_to, why = alignment(plan, gm, block)
            if why:
                warnings.append(why)
        if round_to and round_to > 1:
            plan = round_plan(plan, gm.graph, round_to, gm.cost)
    plan.validate(gm.graph)
    if calibrate_bn:
        if not data:
            raise ValueError("--calibrate-bn needs --data")
        from .data import load_data

        bundle = load_data(data, channels=gm.input_shape[1], size=gm.input_shape[-1])
        gm.gates.fix_(plan.keep_masks(gm.graph))  # statistics of the network the plan keeps, before the cut
        calibrate_bn_(gm.model, bundle.train, batches=calibrate_bn)
    out = Path(out_dir) if out_dir else (model_path.parent / "dense" if dense else model_path.parent)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    x = torch.randn(2, *gm.input_shape[1:])
    res = cut(gm.model, gm.graph, plan, x, gates=gm.gates, atol=atol, rtol=rtol)
    slim = res.slim
    slim_path = save_slim(out / "slim.pt", slim, arch=gm.arch, plan=plan, input_shape=gm.input_shape,
                          build_kwargs=gm.ckpt.build_kwargs)
    atomic_write_text(out / "plan.json", plan.to_json())
    onnx_path, d_onnx, d_total, exact, simplified = None, None, res.max_abs_diff, res.exact, None
    if onnx:
        onnx_path = export_onnx(slim, x[:1], out / "model.onnx", opset=opset)
        if simplify:
            simplified = simplify_onnx(onnx_path, simplify)
        y_ort = run_onnx(onnx_session(onnx_path), x)
        d_onnx, d_total = max_abs_diff(y_ort, res.slim_output), max_abs_diff(y_ort, res.gated_output)
        exact = exact and within_tolerance(d_onnx, float(res.slim_output.abs().max()), atol=atol, rtol=rtol)
    x1 = x[:1]
    report = {
        "onnx": str(onnx_path) if onnx_path else None, "slim": str(slim_path), "plan": str(out / "plan.json"), "dense": dense,
        "arch": gm.arch, "input_shape": gm.input_shape, "tau": plan.tau, "round_to": round_to,
        "cost": gm.cost.name, "cost_ratio": gm.cost.ratio(plan),
        "flops_dense": int(gm.flops.dense()), "flops_slim": count_flops(slim, x1).total,
        "flops_predicted": gm.flops.plan_cost(plan),
        "params_dense": count_params(gm.model), "params_slim": count_params(slim),
        "kept_channels": plan.kept_channels, "gated_channels": plan.total_channels,
        "zero_width_groups": len(plan.zero_width_groups),
        "max_abs_diff": d_total, "slim_vs_gated": res.max_abs_diff,
        "onnx_vs_slim": d_onnx, "tolerance": res.tolerance, "exact": exact, "simplified": simplified,
        "polarization": polarization(gm.gates.probs()).to_dict(), "source": str(model_path),
    }
    report["flops_ratio"] = report["flops_slim"] / report["flops_dense"]
    report["block"], report["aligned"] = block, unaligned_groups(plan, gm.graph, block) == 0
    latency = predicted_speedup(gm, plan, lut)
    if latency:
        report["predicted_speedup"] = latency
    report["warnings"] = warnings
    atomic_write_text(out / "export.json", json.dumps(report, indent=1))
    return report
