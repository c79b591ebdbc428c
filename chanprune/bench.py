"""`bench`: latency of a model (and against another), FLOPs and params, and the CI regression guard."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .artifacts import atomic_write_text
from .errors import ArtifactError, ChanpruneError
from .load import load_any
from .measure.latency import BACKENDS, available_backends, make_runner, measure_interleaved, ratio_stats, summarize

__all__ = ["bench_models", "check_regression"]


def _target(path: Path, backend: str, arch: str | None):
    """What a backend runs for a model file: the ONNX itself, or the export beside a .pt."""
    if backend.startswith("ort"):
        if path.suffix == ".onnx":
            return path
        onnx = path.parent / "model.onnx"
        if not onnx.is_file():
            raise ArtifactError(f"{path}: no model.onnx beside it for {backend}; run `chanprune export` first")
        return onnx
    if path.suffix == ".onnx":
        raise ChanpruneError(f"{path}: torch backends need a .pt (slim.pt or model.pt), not an ONNX file")
    return load_any(path, arch=arch)[1]


def _stats(path: Path, shape: list[int], arch: str | None) -> dict:
    if path.suffix == ".onnx":
        ej = path.parent / "export.json"
        if ej.is_file():
            d = json.loads(ej.read_text())
            return {"flops": d.get("flops_slim"), "params": d.get("params_slim"), "flops_source": str(ej)}
        return {"flops": None, "params": None, "flops_source": None}
    from .measure.flops import count_flops, count_params

    model = load_any(path, arch=arch)[1]
    return {"flops": count_flops(model, torch.zeros([1, *shape[1:]])).total, "params": count_params(model),
            "flops_source": "fvcore"}


def _shape(path: Path, given: list[int] | None, arch: str | None) -> list[int]:
    if given:
        return list(given)
    if path.suffix == ".onnx":
        from .export import onnx_session

        dims = onnx_session(path).get_inputs()[0].shape
        return [d if isinstance(d, int) else 1 for d in dims]
    return list(load_any(path, arch=arch)[2])


def bench_models(model: str | os.PathLike, *, vs: str | os.PathLike | None = None, batch_sizes=(1,),
                 backends: tuple[str, ...] | None = None, threads: int = 2, input_shape: list[int] | None = None,
                 rounds: int = 15, per_round: int = 5, warmup: int = 5, arch: str | None = None) -> dict:
    model, vs = Path(model), Path(vs) if vs else None
    for p in (model, vs):
        if p is not None and not p.is_file():
            raise ArtifactError(f"{p}: no such file")
    avail = available_backends()
    if backends is None:  # the GPU twin too: it runs where it really is there, else says why not
        backends = ("ort-cpu", "ort-cuda") if model.suffix == ".onnx" else ("torch-cpu", "torch-cuda")
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown backend {unknown[0]!r}; choose from {', '.join(BACKENDS)}")
    shape = _shape(model, input_shape, arch)
    out = {"model": str(model), "vs": str(vs) if vs else None, "input_shape": shape, "threads": threads,
           **_stats(model, shape, arch), "results": [], "not_available": {}}
    if vs is not None:
        other = _stats(vs, shape, arch)
        out["vs_flops"], out["vs_params"] = other["flops"], other["params"]
    for backend in backends:
        if avail[backend] is not None:
            out["not_available"][backend] = avail[backend]
            continue
        for b in batch_sizes:
            s = [b, *shape[1:]]
            runners = {"model": make_runner(_target(model, backend, arch), backend, s, threads=threads)}
            if vs is not None:
                runners["vs"] = make_runner(_target(vs, backend, arch), backend, s, threads=threads)
            times = measure_interleaved(runners, warmup=warmup, rounds=rounds, per_round=per_round)
            row = summarize(str(model), backend, b, threads, warmup, times["model"], per_round).to_dict()
            if vs is not None:
                ref = summarize(str(vs), backend, b, threads, warmup, times["vs"], per_round)
                speedup, spread = ratio_stats(times["vs"], times["model"])
                row.update({"vs_p50_ms": ref.p50_ms, "vs_p90_ms": ref.p90_ms, "speedup": speedup,
                            "speedup_spread": spread})
            out["results"].append(row)
    atomic_write_text(Path(str(model) + ".bench.json"), json.dumps(out, indent=1))
    return out


def check_regression(result: dict, baseline_path: str | os.PathLike, max_regression: float) -> list[str]:
    """Speedups more than `max_regression` (a fraction) below the committed baseline's, as messages."""
    path = Path(baseline_path)
    try:
        base = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ArtifactError(f"--baseline {path}: not a readable JSON file ({e})") from e
    want = base.get("speedups") if isinstance(base, dict) else None
    if not isinstance(want, dict):
        raise ArtifactError(f"--baseline {path}: expected {{\"speedups\": {{\"ort-cpu/b1\": 1.5, ...}}}}")
    failures = []
    got = {f"{r['backend']}/b{r['batch']}": r.get("speedup") for r in result["results"]}
    for key, ref in want.items():
        if key not in got:
            continue
        if got[key] is None:
            raise ChanpruneError("--baseline compares speedups: pass --vs OTHER")
        if got[key] < ref * (1 - max_regression):
            failures.append(f"{key}: speedup {got[key]:.2f}x is below the baseline {ref:.2f}x by more than "
                            f"{max_regression:.0%}")
    return failures
