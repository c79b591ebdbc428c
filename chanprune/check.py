"""`check`: will this model prune exactly? Random plan -> gated vs slim -> ONNX vs slim.

`check_list` runs the same check over a named list of models (`timm`: one to three per timm CNN
family) and says for each one that is not exact where and why.
"""
from __future__ import annotations

import contextlib
import signal
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from . import _timm
from .cost import FlopsCost
from .cut import cut
from .errors import UnknownArchError, UnsupportedModelError
from .export import DEFAULT_ATOL, DEFAULT_RTOL, export_onnx, max_abs_diff, onnx_session, run_onnx, within_tolerance
from .freeze import random_plan
from .gates import GateSet, attach_gates
from .graph import ChannelGraph, find_groups, run_hooked
from .measure.flops import count_flops, count_params
from .plan import PrunePlan
from .zoo import build_model

__all__ = ["CHECK_LISTS", "CheckReport", "ListRow", "check_arch", "check_list", "check_model", "collapsible_groups",
           "first_divergence", "perturb_batchnorm_"]


@dataclass
class CheckReport:
    arch: str
    input_shape: list[int]
    exact: bool
    max_abs_diff: float
    onnx_max_abs_diff: float | None
    tolerance: dict
    flops_dense: int
    flops_slim: int
    flops_predicted: float
    params_dense: int
    params_slim: int
    groups: int
    gated_channels: int
    kept_channels: int
    zero_width_groups: int
    gated_flops_fraction: float
    unsupported: list[dict] = field(default_factory=list)
    heads: list[str] = field(default_factory=list)
    onnx_error: str | None = None
    cut_exact: bool = True  # slim vs gated in torch (`exact` also needs onnxruntime vs slim)
    # where a cut that is not exact first goes wrong (see `first_divergence`)
    diverges_at: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def perturb_batchnorm_(model: nn.Module, *, seed: int = 0) -> nn.Module:
    """Give batch norms non-trivial statistics and affine terms, as a trained model has: with the
    default (0 mean, unit variance, zero shift) a removed branch leaves a zero constant behind, and
    a bug that drops the constant would go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    m.bias.copy_(torch.rand(n, generator=g) - 0.5)
    return model


def collapsible_groups(model: nn.Module, graph: ChannelGraph, x: torch.Tensor, *, limit: int = 1,
                       tries: int = 8) -> list[str]:
    """Groups that can be removed whole while the output still depends on the input (a residual
    branch, one branch of a concat): removing a group of a plain chain makes everything after it
    constant, which would make any comparison downstream of it vacuous. Tried from the middle of
    the network outwards, at most `tries` groups."""
    heads = set(graph.heads)
    cands = [i for i, g in enumerate(graph.groups) if not any(s.module in heads for s in g.consumers)]
    mid = (len(cands) - 1) / 2
    cands = [i for _, i in sorted((abs(pos - mid), i) for pos, i in enumerate(cands))]
    x2 = torch.randn_like(x)
    gates = attach_gates(model, graph)
    found: list[str] = []
    try:
        for gi in cands[:tries]:
            masks = [torch.ones(g.size) for g in graph.groups]
            masks[gi] = torch.zeros(graph.groups[gi].size)
            gates.fix_(masks)
            with torch.no_grad():
                y1, y2 = model(x), model(x2)
            # a constant network computes the same bits for any input; anything else depends on it
            if not torch.equal(y1, y2):
                found.append(graph.groups[gi].name)
                if len(found) >= limit:
                    break
    finally:
        gates.detach_()
    return found


def check_model(model: nn.Module, *, arch: str, input_shape: list[int], keep: float = 0.5, seed: int = 0,
                zero_width: int = 1, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL, onnx: bool = True,
                ignored: tuple[str, ...] = ()) -> CheckReport:
    """Gate `model`, cut a random plan that keeps about `keep` of each group and removes
    `zero_width` groups whole (where the model has such groups), and compare outputs."""
    model = model.eval()
    torch.manual_seed(seed)
    x = torch.randn(*input_shape)
    graph = find_groups(model, x, ignored=ignored)
    flops = FlopsCost(model, x, graph)
    zero = collapsible_groups(model, graph, x, limit=zero_width) if zero_width else []
    plan = random_plan(graph, keep=keep, seed=seed, zero=tuple(zero), arch=arch, input_shape=list(input_shape))
    res = cut(model, graph, plan, x, atol=atol, rtol=rtol)
    slim, diff, exact = res.slim, res.max_abs_diff, res.exact
    diverges_at = None if exact else first_divergence(model, graph, plan, slim, x, atol=atol, rtol=rtol)
    onnx_diff, onnx_error = None, None
    if onnx:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = export_onnx(slim, x, Path(tmp) / "slim.onnx")
                xb = torch.randn(2, *input_shape[1:])  # a different batch: the batch axis is dynamic
                with torch.no_grad():
                    ref = slim(xb)
                onnx_diff = max_abs_diff(run_onnx(onnx_session(path), xb), ref)
                exact = exact and within_tolerance(onnx_diff, float(ref.abs().max()), atol=atol, rtol=rtol)
            except Exception as e:  # report, never hide: the verdict is "not exact"
                onnx_error = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                exact = False
    return CheckReport(
        arch=arch, input_shape=list(input_shape), exact=exact, max_abs_diff=diff, onnx_max_abs_diff=onnx_diff,
        tolerance={"atol": atol, "rtol": rtol},
        flops_dense=int(flops.dense()), flops_slim=count_flops(slim, x).total, flops_predicted=flops.plan_cost(plan),
        params_dense=count_params(model), params_slim=count_params(slim), groups=len(graph.groups),
        gated_channels=graph.num_channels, kept_channels=plan.kept_channels,
        zero_width_groups=len(plan.zero_width_groups), gated_flops_fraction=flops.gated_fraction,
        unsupported=graph.unsupported, heads=graph.heads, onnx_error=onnx_error, cut_exact=res.exact,
        diverges_at=diverges_at)


def check_arch(arch: str, *, input_shape: list[int], weights: str | None = None, num_classes: int | None = None,
               in_channels: int = 3, seed: int = 0, **kwargs) -> CheckReport:
    """Build `arch` from the zoo (an untrained one gets random batch-norm statistics) and check it.

    Keyword arguments after `seed` go to `check_model`.
    """
    torch.manual_seed(seed)
    model = build_model(arch, num_classes=num_classes, in_channels=in_channels, weights=weights)
    if weights is None:
        perturb_batchnorm_(model, seed=seed)
    return check_model(model, arch=arch, input_shape=input_shape, seed=seed, **kwargs)


# ----------------------------------------------------------------------------- where it goes wrong
def _outputs(model: nn.Module, x: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """(module name, output) of every module call, in the order the calls finish (copied: a later
    in-place op, `x += shortcut` or an in-place ReLU, would change them)."""
    seen: list[tuple[str, torch.Tensor]] = []
    run_hooked(model, x, [m.register_forward_hook(lambda mod, i, o, name=name: seen.append((name, o.detach().clone()))
                                                  if torch.is_tensor(o) else None)
                          for name, m in model.named_modules() if name])
    return seen


def _kept_in_order(gated: torch.Tensor, slim: torch.Tensor, tol: float) -> int | None:
    """None when every slice of `slim` along the one dimension where the shapes differ equals
    (within `tol`) a slice of `gated`, in order: what cutting channels does to an output. Otherwise
    the first slim channel that matches nothing; -1 when the shapes differ in more than one place."""
    dims = [d for d, (a, b) in enumerate(zip(gated.shape, slim.shape)) if a != b]
    if gated.dim() != slim.dim() or len(dims) > 1:
        return -1
    if not dims:
        return None if float((gated - slim).abs().max()) <= tol else 0
    a = gated.movedim(dims[0], 0).reshape(gated.shape[dims[0]], -1)
    b = slim.movedim(dims[0], 0).reshape(slim.shape[dims[0]], -1)
    i = 0
    for j in range(b.shape[0]):
        close = ((a[i:] - b[j]).abs().amax(1) <= tol).nonzero()
        if not len(close):
            return j
        i += int(close[0]) + 1
    return None


def first_divergence(model: nn.Module, graph: ChannelGraph, plan: PrunePlan, slim: nn.Module, x: torch.Tensor, *,
                     atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL) -> dict | None:
    """The first module whose slim output is not its frozen gated output less the cut channels.

    Cutting a channel removes it from an output and leaves the others as they were, so at every
    module the slim output must equal the gated output with some channels left out, in order. The
    first module (in the order calls finish) where it does not is where the cut went wrong: a layer
    that picks channels by position (a slice with fixed bounds) or mixes them in a way the graph
    did not see. Returns {"layer", "type", "after" (the last module that matched), "reason"}, or
    None when no single module is to blame.
    """
    gates = GateSet(graph).attach_(model)
    try:
        gates.fix_(plan.keep_masks(graph))
        gated = _outputs(model.eval(), x)
    finally:
        gates.fix_(None)
        gates.detach_()
    slim_outs: dict[str, list[torch.Tensor]] = {}
    for name, out in _outputs(slim, x):
        slim_outs.setdefault(name, []).append(out)
    calls: dict[str, int] = {}
    mods = dict(slim.named_modules())
    last_ok = None
    for name, out in gated:
        k = calls[name] = calls.get(name, -1) + 1
        if len(slim_outs.get(name, ())) <= k:
            continue  # a module the cut replaced or removed
        theirs = slim_outs[name][k]
        bad = _kept_in_order(out, theirs, atol + rtol * float(out.abs().max()))
        if bad is None:
            last_ok = name
        if bad is None or bad == -1:
            continue
        if tuple(out.shape) == tuple(theirs.shape):
            why = f"its output differs from the gated model's by {float((out - theirs).abs().max()):.2e}"
        else:
            why = (f"its output channel {bad} (of {list(theirs.shape)}, gated {list(out.shape)}) is none of "
                   "the gated model's channels: the cut kept other channels than the gates did")
        if last_ok:
            why += f"; the last module that matched is {last_ok}, so the cause is between the two"
        return {"layer": name, "type": type(mods[name]).__name__, "after": last_ok, "reason": why}
    return None


# ----------------------------------------------------------------------------- lists of models
# A list's function returns (family, arch) pairs; it may raise UnknownArchError (timm missing).
CHECK_LISTS: dict[str, Callable[[], list[tuple[str, str]]]] = {"timm": _timm.family_archs}


@dataclass
class ListRow:
    """One model of a `check_list` run.

    Attributes:
        verdict: "exact", "not exact", "untraceable" (torch-pruning cannot trace it), "timeout",
            or "error" (building or cutting it raised).
        why: for anything but "exact": the layer and the reason. For an exact model, the layers
            left ungated and why, if any (so "exact" is never bought by gating less unnoticed).
    """

    family: str
    arch: str
    verdict: str
    why: str | None
    seconds: float
    report: CheckReport | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["report"] = self.report.to_dict() if self.report else None
        return d


def check_list(name: str, *, input_shape: list[int], timeout: float | None = None,
               **kwargs) -> Iterator[ListRow]:
    """Check every model of the list `name` (random init, nothing downloaded), one row at a time.

    Args:
        timeout: seconds per model (enforced on the main thread only, where a signal can stop it).
        **kwargs: `num_classes`, `in_channels`, `seed`, and `check_model`'s options.

    Raises:
        UnknownArchError: no such list, or what it needs is not installed (raised at the call,
            before any model is checked).
    """
    if name not in CHECK_LISTS:
        raise UnknownArchError(f"no model list {name!r}; choose one of: {', '.join(sorted(CHECK_LISTS))}")
    return _rows(CHECK_LISTS[name](), input_shape=input_shape, timeout=timeout, **kwargs)


def _rows(archs: list[tuple[str, str]], *, input_shape, timeout, **kwargs) -> Iterator[ListRow]:
    for family, arch in archs:
        start = time.perf_counter()
        report, verdict, why = None, "exact", None
        try:
            with _time_limit(timeout):
                report = check_arch(arch, input_shape=input_shape, **kwargs)
        except _Timeout as e:
            verdict, why = "timeout", f"not done after {timeout:g} s, in {_where(e)}"
        except UnsupportedModelError as e:
            verdict, why = "untraceable", str(e) + (f" (in {_where(e.__cause__)})" if e.__cause__ else "")
        except Exception as e:  # report, never hide
            verdict, why = "error", f"{type(e).__name__} in {_where(e)}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        if report is not None:
            verdict, why = ("exact", _ungated(report)) if report.exact else ("not exact", _why_not(report))
        yield ListRow(family, arch, verdict, why, round(time.perf_counter() - start, 1), report)


def _why_not(r: CheckReport) -> str:
    out = []
    if not r.cut_exact:
        d = r.diverges_at
        out.append(f"{d['layer']} ({d['type']}): {d['reason']}" if d else
                   f"slim differs from gated by {r.max_abs_diff:.2e}, from no single layer")
    if r.onnx_error:
        out.append(f"ONNX: {r.onnx_error}")
    elif r.cut_exact and r.onnx_max_abs_diff is not None:
        out.append(f"onnxruntime differs from torch by {r.onnx_max_abs_diff:.2e}")
    return "; ".join(out)


def _ungated(r: CheckReport) -> str | None:
    if not r.unsupported:
        return None
    first = r.unsupported[0]
    more = f" (+{len(r.unsupported) - 1} more)" if len(r.unsupported) > 1 else ""
    return f"ungated: {first['name']}: {first['reason']}{more}"


class _Timeout(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: float | None):
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _alarm(signum, frame):
        raise _Timeout()

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _where(e: BaseException) -> str:
    """The innermost chanprune function an exception passed through, and the library frame below it."""
    frames = traceback.extract_tb(e.__traceback__)
    frames = [f for f in frames if f.name != "_alarm"]
    ours = [f for f in frames if "/chanprune/" in f.filename.replace("\\", "/")]
    if not ours:
        return "the model's build"
    inner = ours[-1]
    below = frames[frames.index(inner) + 1:] if inner in frames else []
    lib = f" -> {Path(below[-1].filename).parent.name}/{Path(below[-1].filename).name}:{below[-1].name}" if below else ""
    return f"{inner.name}{lib}"
