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

__all__ = ["export_onnx", "branch_local_initializers", "simplify_onnx", "onnx_session", "run_onnx", "max_abs_diff", "within_tolerance", "DEFAULT_OPSET",
           "DEFAULT_ATOL", "DEFAULT_RTOL"]

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
    proto = onnx.load_from_string(data)
    if branch_local_initializers(proto):
        data = proto.SerializeToString()
    onnx.checker.check_model(proto)
    return atomic_write_bytes(path, data)


def branch_local_initializers(proto) -> int:
    """Give each branch of an `If` its own copy of the constants it reads from the main graph
    (initializers, directly or through the exporter's Identity nodes), and drop what nothing reads
    any more; returns how many branch inputs became local. onnxruntime blocks (NCHWc) and pre-packs a
    conv inside an If only when its weights and bias are the branch's own initializers: read from the
    outer scope, the conv stays a plain NCHW conv (benchmarks/conditional.py --profile shows it).
    Graphs without If are left alone."""
    graph = proto.graph
    ifs = [n for n in graph.node if n.op_type == "If"]
    if not ifs:
        return 0
    inits = {t.name: t for t in graph.initializer}
    made_by = {o: n for n in graph.node for o in n.output}

    def const(name):
        if name in inits:
            return inits[name]
        n = made_by.get(name)
        return inits.get(n.input[0]) if n is not None and n.op_type == "Identity" else None

    moved = 0
    for n in ifs:
        for attr in n.attribute:
            if not attr.HasField("g"):
                continue
            g = attr.g
            own = {o for m in g.node for o in m.output} | {t.name for t in g.initializer}
            local = {}
            for m in g.node:
                for i, x in enumerate(m.input):
                    if x in own or x in local.values():
                        continue
                    t = const(x)
                    if t is None:
                        continue
                    if x not in local:
                        local[x] = f"{x}.{attr.name}.{moved}"
                        copy = g.initializer.add()
                        copy.CopyFrom(t)
                        copy.name = local[x]
                        moved += 1
                    m.input[i] = local[x]
    _drop_unread(graph)
    return moved


def _drop_unread(graph) -> None:
    """Remove the main graph's Identity nodes and initializers that nothing reads (subgraphs included)."""
    def reads(g):
        out = set()
        for n in g.node:
            out.update(n.input)
            for attr in n.attribute:
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    out |= reads(sub)
        return out

    while True:
        read = reads(graph) | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type == "Identity" and not any(o in read for o in n.output)]
        for n in dead:
            graph.node.remove(n)
        if not dead:
            break
    read = reads(graph) | {o.name for o in graph.output} | {i.name for i in graph.input}
    for t in [t for t in graph.initializer if t.name not in read]:
        graph.initializer.remove(t)


SIMPLIFIERS = ("onnxslim", "onnxsim")


def simplify_onnx(path: str | os.PathLike, tool: str = "onnxslim") -> dict:
    """Simplify the ONNX file at `path` in place with `tool` (onnxslim or onnxsim; optional
    dependencies, the `[simplify]` extra) and check the result; returns node counts before and after."""
    import onnx

    if tool not in SIMPLIFIERS:
        raise ValueError(f"unknown simplifier {tool!r}; choose one of {', '.join(SIMPLIFIERS)}")
    path = Path(path)
    model = onnx.load(str(path))
    before = len(model.graph.node)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            if tool == "onnxslim":
                import onnxslim

                out = onnxslim.slim(model)
            else:
                import onnxsim

                out, ok = onnxsim.simplify(model)
                if not ok:
                    raise ArtifactError(f"{path}: onnxsim could not validate its simplified graph")
    except ImportError as e:
        raise ArtifactError(f"--simplify {tool} needs `pip install {tool}` (or chanprune[simplify])") from e
    onnx.checker.check_model(out)
    atomic_write_bytes(path, out.SerializeToString())
    return {"tool": tool, "nodes_before": before, "nodes_after": len(out.graph.node)}


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
