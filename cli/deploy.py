"""`chanprune export` and `chanprune eval`."""
from __future__ import annotations

from pathlib import Path

import click

from ._util import INPUT_SHAPE, TOLERANCE, JsonCommand, batch_sizes_option, emit_json, fmt_count, handle_errors


@click.command(cls=JsonCommand)
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--onnx/--no-onnx", "onnx_flag", default=True, show_default=True,
              help="Write model.onnx and check onnxruntime against the slim model (--no-onnx: plan.json, slim.pt, "
                   "export.json only).")
@click.option("--tau", type=click.FloatRange(0, 1), default=None,
              help="Freeze threshold (default: the run's own; a fine-tuned run deploys its stored plan only).")
@click.option("--round-to", default="auto", show_default=True, metavar="auto|N",
              help="Kept channels per group become multiples of N, keeping the target. auto: onnxruntime's block on "
                   "this CPU (16 with AVX-512, 8 with AVX2) for a plan not fine-tuned yet; an aligned plan is left "
                   "alone; a fine-tuned unaligned one gets a warning. 1: never.")
@click.option("--lut", type=click.Path(path_type=Path), default=None,
              help="A latency table (chanprune profile) to predict the speedup with (default: the run's own, if it "
                   "learned against one).")
@click.option("--calibrate-bn", type=click.IntRange(min=0), default=0, show_default=True,
              help="Re-estimate batch norms with K batches of --data under the plan, before the cut.")
@click.option("--data", default=None, help="Data for --calibrate-bn.")
@click.option("--input-shape", type=INPUT_SHAPE, default=None,
              help="Export and FLOPs shape N,C,H,W (a plan learned at 64 px deploys at 224).")
@click.option("--simplify", type=click.Choice(["onnxslim", "onnxsim"]), default=None,
              help="Simplify model.onnx with this tool before the parity check (pip install chanprune[simplify]).")
@click.option("--dense", is_flag=True, help="Write the same artifacts with nothing removed (the reference for bench --vs).")
@click.option("--opset", type=click.IntRange(min=9), default=17, show_default=True)
@click.option("--atol", type=TOLERANCE, default=1e-5, show_default=True)
@click.option("--rtol", type=TOLERANCE, default=1e-4, show_default=True)
@click.option("--arch", default=None, help="Needed only for a model built from module:function.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default: beside MODEL; MODEL's folder/dense for --dense).")
@handle_errors
def export(model, onnx_flag, tau, round_to, lut, calibrate_bn, data, input_shape, simplify, dense, opset, atol, rtol, arch, out, as_json):
    """Cut a gated run (RUN or RUN/model.pt) under the plan it deploys, and write plan.json, slim.pt,
    model.onnx and export.json.

    Parity is checked with one tolerance: slim torch against the frozen gated torch (under the plan
    actually applied), and onnxruntime against slim torch. Exit 1 if either fails.
    """
    from chanprune.deploy import export_run

    if calibrate_bn and not data:
        raise click.BadParameter("--calibrate-bn needs --data", param_hint="--data")
    if round_to != "auto":
        if not round_to.isdigit() or int(round_to) < 1:
            raise click.BadParameter(f"{round_to!r}: give auto or a positive integer", param_hint="--round-to")
        round_to = int(round_to)
    if lut is not None and not lut.is_file():
        raise click.BadParameter(f"{lut}: no such file", param_hint="--lut")
    r = export_run(model, out_dir=out, tau=tau, round_to=round_to, calibrate_bn=calibrate_bn, data=data,
                   input_shape=input_shape, dense=dense, opset=opset, atol=atol, rtol=rtol, arch=arch, onnx=onnx_flag,
                   simplify=simplify, lut=lut)
    if as_json:
        emit_json(r)
    else:
        click.echo(f"{'dense' if dense else 'slim'} {r['arch']} at {'x'.join(map(str, r['input_shape']))}: "
                   f"FLOPs {fmt_count(r['flops_dense'])} -> {fmt_count(r['flops_slim'])} ({r['flops_ratio']:.1%}), "
                   f"params {fmt_count(r['params_dense'])} -> {fmt_count(r['params_slim'])}")
        ort = f", onnxruntime vs slim {r['onnx_vs_slim']:.1e}" if r["onnx"] else " (no ONNX)"
        click.echo(f"  slim vs gated {r['slim_vs_gated']:.1e}{ort}: {'EXACT' if r['exact'] else 'NOT EXACT'}")
        sp = r.get("predicted_speedup")
        if sp:
            click.echo(f"  predicted speedup on {sp['backend']} ({sp['threads']} threads): " +
                       ", ".join(f"{v:.2f}x at batch {b}" for b, v in sp["by_batch"].items()))
            if sp.get("mismatch"):
                click.echo(f"  warning: {sp['mismatch']}", err=True)
        for w in r.get("warnings", []):
            click.echo(f"  warning: {w}", err=True)
        click.echo("  wrote " + ", ".join(p for p in (r["onnx"], r["slim"], r["plan"]) if p))
    raise SystemExit(0 if r["exact"] else 1)


@click.command(name="eval", cls=JsonCommand)
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--data", required=True, help="Data set; its test split is used (digits: the held-out 20%).")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--tau", type=click.FloatRange(0, 1), default=None,
              help="Freeze threshold for a gated model.pt (default: the plan the run deploys).")
@click.option("--arch", default=None, help="Needed only for a model built from module:function.")
@click.option("--mode", type=click.Choice(["threshold", "stochastic", "ensemble"]), default=None,
              help="Inference mode of a gated model.pt (paper, section 3): threshold at tau (the plan it deploys), "
                   "stochastic (each gate draws a sample per input), or ensemble (the mean of --samples stochastic "
                   "runs). Reports each input's executed cost too. Default: threshold.")
@click.option("--samples", type=click.IntRange(min=1), default=8, show_default=True, help="Runs of --mode ensemble.")
@handle_errors
def evaluate(model, data, batch_size, tau, arch, mode, samples, as_json):
    """Accuracy of a gated model.pt (frozen under the plan it deploys), a slim.pt, a dense model.pt or a .onnx (onnxruntime).

    Writes the result beside MODEL as MODEL.eval.json.
    """
    from chanprune.evaluate import eval_model

    r = eval_model(model, data=data, batch_size=batch_size, tau=tau, arch=arch, mode=mode, samples=samples)
    if as_json:
        emit_json(r)
    else:
        top5 = f", top-5 {r['top5']:.4f}" if "top5" in r else ""
        how = f", mode {r['mode']}" + (f" x{r['samples']}" if r["mode"] == "ensemble" else "") if "mode" in r else ""
        click.echo(f"{model} ({r['kind']}{how}): top-1 {r['accuracy']:.4f}{top5} on {r['count']} {r['split']} images")
        if "cost" in r:
            c = r["cost"]
            click.echo(f"  executed {c['name']} per input: mean {c['mean']:.3f} of dense (from {c['min']:.3f} to "
                       f"{c['max']:.3f}); histogram over [0, {r['samples']}]: {c['histogram']}")


@click.command(cls=JsonCommand)
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--vs", "vs", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Another model (e.g. the dense export): measured interleaved, reported as a speedup.")
@click.option("--batch-size", "batch_sizes", default="1", show_default=True, help="Comma-separated batch sizes, e.g. 1,32.")
@click.option("--backend", "backends", default=None, help="Comma-separated: ort-cpu, ort-cuda, torch-cpu, torch-cuda.")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--input-shape", type=INPUT_SHAPE, default=None, help="Default: the model's own.")
@click.option("--rounds", type=click.IntRange(min=3), default=15, show_default=True, help="Interleaved rounds.")
@click.option("--baseline", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Committed speedups to compare with (the CI latency-regression guard).")
@click.option("--max-regression", type=click.FloatRange(0, 1), default=0.25, show_default=True,
              help="Allowed fractional drop below the baseline's speedups.")
@click.option("--arch", default=None, help="Needed only for a model built from module:function.")
@handle_errors
def bench(model, vs, batch_sizes, backends, threads, input_shape, rounds, baseline, max_regression, arch, as_json):
    """Latency p50/p90 of MODEL per backend and batch size; with --vs, the speedup measured side by side.

    A .onnx runs on onnxruntime (FLOPs from the export.json beside it); a .pt runs on torch (FLOPs by
    fvcore). Writes MODEL.bench.json. With --baseline, exit 1 when a speedup regressed.
    """
    from chanprune.bench import bench_models, check_regression

    sizes = batch_sizes_option(batch_sizes)
    if baseline is not None and vs is None:
        raise click.BadParameter("--baseline compares speedups: pass --vs OTHER", param_hint="--baseline")
    r = bench_models(model, vs=vs, batch_sizes=sizes, backends=tuple(backends.split(",")) if backends else None,
                     threads=threads, input_shape=input_shape, rounds=rounds, arch=arch)
    failures = check_regression(r, baseline, max_regression) if baseline else []
    r["regressions"] = failures
    if as_json:
        emit_json(r)
    else:
        if r.get("flops"):
            click.echo(f"{model}: {fmt_count(r['flops'])} FLOPs, {fmt_count(r['params'] or 0)} params")
        for row in r["results"]:
            line = f"  {row['backend']:<10} batch {row['batch']:<4} p50 {row['p50_ms']:.3f} ms  p90 {row['p90_ms']:.3f} ms"
            if "speedup" in row:
                line += f"  vs {row['vs_p50_ms']:.3f} ms: speedup {row['speedup']:.2f}x"
            click.echo(line)
        for b, why in r["not_available"].items():
            click.echo(f"  {b:<10} not available: {why}")
        for f in failures:
            click.echo(f"  REGRESSION {f}")
    raise SystemExit(1 if failures else 0)


@click.command(cls=JsonCommand)
@click.argument("run", type=click.Path(file_okay=False, path_type=Path))
@handle_errors
def report(run, as_json):
    """Figures of RUN (kept channels per group, gate polarization, learning curves) and summary.md,
    with whatever export, eval and bench wrote into the run."""
    from chanprune.report import make_report

    r = make_report(run)
    if as_json:
        emit_json(r)
    else:
        click.echo(r["summary"])
        click.echo("wrote " + ", ".join(r["files"].values()))
