"""`chanprune profile`: measure a latency table (per-layer latency against kept channels)."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import click

from ._util import INPUT_SHAPE, JsonCommand, batch_sizes_option, emit_json, handle_errors

BACKENDS = ("ort-cpu", "ort-cuda", "torch-cpu", "torch-cuda")  # chanprune.measure.latency.BACKENDS, without torch


class Block(click.ParamType):
    """auto, or an integer >= 1."""

    name = "auto|N"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, int):
            return value
        if str(value).strip().lower() == "auto":
            return None
        try:
            n = int(value)
        except ValueError:
            self.fail(f"{value!r} is neither auto nor an integer", param, ctx)
        if n < 1:
            self.fail(f"{value!r} must be >= 1 (or auto)", param, ctx)
        return n


def default_out(arch: str, input_shape: list[int], backend: str) -> Path:
    """profiles/<arch>-<H>x<W>-<backend>.json (the arch's ':' and '/' made safe for a file name)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", arch).strip("_") or "model"
    return Path("profiles") / f"{safe}-{'x'.join(map(str, input_shape[2:]))}-{backend}.json"


class _Lines:
    """Progress on stderr: a bar over the layers on a terminal, else a line per layer."""

    def __init__(self):
        self.bar = None

    def __call__(self, stage: str, info: dict) -> None:
        if stage == "graph":
            click.echo(f"timing {info['layers']} gated layers ({info['unique']} distinct, {info['points']} points)",
                       err=True)
            if sys.stderr.isatty():
                from tqdm import tqdm

                self.bar = tqdm(total=info["unique"], desc="layers", file=sys.stderr, leave=False)
        elif stage == "layer":
            if self.bar is not None:
                self.bar.set_postfix_str(info["module"], refresh=False)
                self.bar.update(1)
                return
            a = info["attrs"]
            shape = "x".join(map(str, a.get("kernel", []))) or "fc"
            stride = max(a.get("stride", [1]))
            more = f" (+{len(info['modules']) - 1} alike)" if len(info["modules"]) > 1 else ""
            click.echo(f"  [{info['index']}/{info['total']}] {info['module']}{more}: {info['kind']} {shape}"
                       f"{'/' + str(stride) if stride > 1 else ''} {info['channels_in']}->{info['channels_out']} at "
                       f"{'x'.join(map(str, a.get('input_size', []))) or '-'}, {info['points']} points "
                       f"({info['timed']} timed) {info['seconds']:.1f}s", err=True)
        elif stage == "recheck":
            table = info.get("of") == "table"
            verdict = ("the table is dropped, profiling anew" if table else
                       "the points are dropped, timing every point anew") if info["dropped"] else "reused"
            kinds = info.get("ratios") or {}
            each = f" ({', '.join(f'{k} {r:.2f}x' for k, r in kinds.items())})" if len(kinds) > 1 else ""
            click.echo(f"cached {'table' if table else 'points'}: {info['points']} points re-timed at "
                       f"{info['ratio']:.2f}x their cached time{each}; {verdict}", err=True)
        elif stage == "calibrate":
            self.close()
            click.echo(f"calibrating batch {info['batch']} against {info['models']} whole models", err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _pct(x) -> str:
    return "-" if x is None else f"{x:+.1%}"


def _fit_summary(c: dict | None) -> dict | None:
    """One calibration fit in short: which, its scale and offset (or weights), its errors."""
    if not c:
        return None
    return {"fit": c.get("fit", "scale"), "scale": c["scale"], "offset_ms": c["offset_ms"], "weights": c.get("weights"),
            "max_abs_rel_error": c["error"]["max_abs_rel_error"], "holdout_rel_error": c["holdout"]["rel_error"]}


@click.command(cls=JsonCommand)
@click.option("--arch", required=True,
              help="Zoo name (resnet18, mobilenet_v2, efficientnet_lite0, ...), timm:NAME or module:function.")
@click.option("--weights", default=None,
              help="Optional: DEFAULT, a torchvision weights name, or a .pt file (latency does not depend on them).")
@click.option("--num-classes", type=click.IntRange(min=1), default=None, help="Classifier outputs (default: the arch's).")
@click.option("--input-shape", type=INPUT_SHAPE, required=True, help="N,C,H,W; N is ignored (see --batch-size).")
@click.option("--backend", type=click.Choice(BACKENDS), default="ort-cpu", show_default=True,
              help="ort-cpu is the deployment; the others only where they are really there.")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True, help="Intra-op threads.")
@click.option("--batch-size", "batch_sizes", default="1", show_default=True, help="Comma-separated, e.g. 1,32.")
@click.option("--block", type=Block(), default="auto", show_default=True,
              help="Kept counts are timed at multiples of N (auto: 16 with AVX-512, 8 with AVX2 or on a GPU).")
@click.option("--samples", type=click.IntRange(min=2), default=4, show_default=True,
              help="Timed counts per layer side (the smallest and the full width among them); interpolated between.")
@click.option("--calibration-plans", type=click.IntRange(min=0), default=3, show_default=True,
              help="Random aligned plans timed whole to calibrate the table (one more is held out).")
@click.option("--point-seconds", type=click.FloatRange(min=0, min_open=True), default=0.15, show_default=True,
              help="About how long each point runs (at least 3 runs after a warm-up); less is faster and noisier.")
@click.option("--timing", type=click.Choice(["wall", "kernel"]), default="wall", show_default=True,
              help="A point's time: wall = the whole session call; kernel = onnxruntime's profile of its kernels, "
                   "without the reorders a lone layer pays (ort-cpu only).")
@click.option("--in-context", is_flag=True, default=False,
              help="Correct each layer to its kernel time inside the calibration models (onnxruntime's profile; ort-cpu).")
@click.option("--fit", type=click.Choice(["parts", "scale"]), default="parts", show_default=True,
              help="Calibration: parts = each layer's intercept, linear and product terms weighted apart (needs "
                   ">= 3 calibration plans, else scale); scale = one scale and an offset over the layers' sum.")
@click.option("--cache/--no-cache", default=True, show_default=True,
              help="Reuse a cached table (and timed points) from $CHANPRUNE_CACHE/profiles.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the table (default: profiles/<arch>-<H>x<W>-<backend>.json).")
@handle_errors
def profile(arch, weights, num_classes, input_shape, backend, threads, batch_sizes, block, samples, calibration_plans,
            point_seconds, timing, in_context, fit, cache, out, as_json):
    """Measure the latency table of --arch on this machine: each gated conv and linear layer timed as a
    one-layer ONNX graph on a grid of kept channel counts (multiples of --block), with the
    deployment's session settings, then calibrated against whole cut models per batch size.

    The table is what a latency budget learns against; it records the machine it was measured on.
    """
    from chanprune.profile import profile_model

    sizes = batch_sizes_option(batch_sizes)
    out = out or default_out(arch, input_shape, backend)
    lines = _Lines()
    try:
        table = profile_model(arch, input_shape, weights=weights, num_classes=num_classes, backend=backend,
                              threads=threads, batch_sizes=sizes, block=block, samples=samples,
                              calibration_plans=calibration_plans, point_seconds=point_seconds, cache=cache,
                              timing=timing, in_context=in_context, fit=fit, progress=lines)
    finally:
        lines.close()
    table.save(out)
    m = table.meta
    hit = bool((m.get("cache") or {}).get("hit"))
    r = {"out": str(out), "arch": table.arch, "input_shape": table.input_shape, "backend": table.backend,
         "threads": table.threads, "block": table.block, "batch_sizes": table.batch_sizes, "cached": hit,
         "cache_path": (m.get("cache") or {}).get("path"), "layers": len(table.layers),
         "unique_layers": m.get("unique_layers"), "points": m.get("points"), "points_timed": m.get("points_timed"),
         "recheck": m.get("recheck") or m.get("points_recheck"),
         "seconds": m.get("seconds"), "timing": m.get("timing"), "in_context": m.get("in_context", False), "machine": table.machine,
         "calibration": {b: {"dense_ms": c["dense_ms"], **_fit_summary(c),  # and the fit not used, same timings
                             "alternative": _fit_summary(c.get("alternative"))} for b, c in table.calibration.items()}}
    if as_json:
        emit_json(r)
        return
    where = f"loaded from cache {r['cache_path']} (measured in {m.get('seconds', 0):.0f} s)" if hit else \
        f"{m.get('points_timed')} of {m.get('points')} points timed in {m.get('seconds', 0):.1f} s"
    click.echo(f"{table.arch} at {'x'.join(map(str, table.input_shape))} on {table.backend} ({table.threads} threads, "
               f"block {table.block}): {len(table.layers)} layers ({m.get('unique_layers')} distinct), {where}")
    for b, c in r["calibration"].items():
        if c["weights"]:
            w = c["weights"]
            how = f"layers = {w['intercept']:.2f} x intercepts + {w['linear']:.2f} x linear + {w['product']:.2f} x products"
        else:
            how = f"model = {c['scale']:.3f} x layers {c['offset_ms']:+.3f} ms"
        click.echo(f"  batch {b}: dense {c['dense_ms']:.3f} ms; {how}; error in fit max "
                   f"{abs(c['max_abs_rel_error']):.1%}, holdout {_pct(c['holdout_rel_error'])}")
    mc = table.machine
    click.echo(f"  machine: {mc.get('device') or mc.get('cpu')} ({mc.get('isa')}), {table.backend} "
               f"{mc.get('backend_version')}")
    click.echo(f"  wrote {out}")
