"""`chanprune check`: can this model be pruned exactly?"""
from __future__ import annotations

import click

from ._util import INPUT_SHAPE, TOLERANCE, JsonCommand, emit_json, fmt_count, handle_errors


@click.command(cls=JsonCommand)
@click.option("--arch", default=None,
              help="Zoo name (resnet18, resnet20, mobilenet_v2, efficientnet_lite0, ...), timm:NAME or module:function.")
@click.option("--list", "list_name", default=None, metavar="LIST",
              help="Instead of --arch: check every model of LIST (timm: one or two per timm CNN family), "
                   "random init, and print a table.")
@click.option("--weights", default=None, help="None (random init), DEFAULT, a torchvision weights name, or a .pt file.")
@click.option("--num-classes", type=click.IntRange(min=1), default=None, help="Classifier outputs.")
@click.option("--in-channels", type=click.IntRange(min=1), default=3, show_default=True, help="Input channels.")
@click.option("--input-shape", type=INPUT_SHAPE, default="1,3,64,64", show_default=True,
              help="Example input N,C,H,W (the channel count must match --in-channels).")
@click.option("--keep", type=click.FloatRange(0, 1, min_open=True), default=0.5, show_default=True,
              help="Fraction of each group's channels the random plan keeps.")
@click.option("--zero-width", type=click.IntRange(min=0), default=1, show_default=True,
              help="Groups to remove whole (0: none), chosen where the output still depends on the input.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random plan and input.")
@click.option("--ignore", multiple=True, metavar="NAME", help="Keep this layer's output channels ungated (repeatable).")
@click.option("--atol", type=TOLERANCE, default=1e-5, show_default=True, help="Absolute tolerance.")
@click.option("--rtol", type=TOLERANCE, default=1e-4, show_default=True, help="Tolerance relative to max|output|.")
@click.option("--onnx/--no-onnx", default=True, show_default=True, help="Also export the slim model and compare onnxruntime.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=300, show_default=True,
              help="With --list: seconds per model before it is reported as a timeout.")
@handle_errors
def check(arch, list_name, weights, num_classes, in_channels, input_shape, keep, zero_width, seed, ignore, atol, rtol,
          onnx, timeout, as_json):
    """Will ARCH prune exactly? Gate every channel group, cut a random plan that keeps about
    --keep of each group (and removes one whole group where the model has one), and compare the
    slim model with the gated one, then onnxruntime with the slim model.

    Untrained models get random batch-norm statistics first, so that the constants a removed
    branch leaves behind are non-zero and checked too. A model that is not exact is reported with
    the first layer where slim and gated part.

    With --list, every model of the list is checked in turn (random init; nothing is downloaded),
    one table row each: verdict, groups, FLOPs, and for each one not exact the layer and the reason.

    Exit 0 exact (every model, with --list), 1 not exact (or the model cannot be traced), 2 bad input.
    """
    if (arch is None) == (list_name is None):
        raise click.UsageError("give one of --arch or --list")
    if input_shape[1] != in_channels:
        raise click.BadParameter(f"channel dimension {input_shape[1]} differs from --in-channels {in_channels}",
                                 param_hint="--input-shape")
    options = dict(keep=keep, seed=seed, zero_width=zero_width, atol=atol, rtol=rtol, onnx=onnx, ignored=tuple(ignore),
                   num_classes=num_classes, in_channels=in_channels)
    if list_name is not None:
        if weights is not None:
            raise click.UsageError("--list checks models with random weights; --weights goes with --arch")
        return _check_list(list_name, input_shape, timeout, as_json, options)
    from chanprune.check import check_arch
    from chanprune.errors import UnsupportedModelError

    try:
        report = check_arch(arch, input_shape=input_shape, weights=weights, **options)
    except UnsupportedModelError as e:
        if as_json:
            emit_json({"arch": arch, "exact": False, "unsupported": [{"name": "<model>", "reason": str(e)}]})
        else:
            click.echo(f"{arch}: NOT SUPPORTED: {e}")
        raise SystemExit(1)
    if as_json:
        emit_json(report.to_dict())
    else:
        r = report
        click.echo(f"{arch} at {'x'.join(map(str, input_shape))}")
        click.echo(f"  groups            {r.groups} ({r.gated_channels} gated channels, {r.zero_width_groups} removed whole)")
        click.echo(f"  gated FLOPs       {r.gated_flops_fraction:.1%} of the dense FLOPs are in layers a gate can shrink")
        click.echo(f"  FLOPs             {fmt_count(r.flops_dense)} -> {fmt_count(r.flops_slim)} "
                   f"({r.flops_slim / max(r.flops_dense, 1):.1%}; predicted {fmt_count(r.flops_predicted)})")
        click.echo(f"  params            {fmt_count(r.params_dense)} -> {fmt_count(r.params_slim)}")
        click.echo(f"  slim vs gated     max |diff| {r.max_abs_diff:.2e}")
        if r.diverges_at:
            d = r.diverges_at
            click.echo(f"  diverges at       {d['layer']} ({d['type']}): {d['reason']}")
        onnx_line = "skipped" if not onnx else (f"failed: {r.onnx_error}" if r.onnx_error else f"max |diff| {r.onnx_max_abs_diff:.2e}")
        click.echo(f"  onnxruntime       {onnx_line}")
        for u in r.unsupported:
            click.echo(f"  ungated           {u['name']}: {u['reason']}")
        click.echo(f"  verdict           {'EXACT' if r.exact else 'NOT EXACT'} (atol {atol:g}, rtol {rtol:g})")
    raise SystemExit(0 if report.exact else 1)


def _check_list(name, input_shape, timeout, as_json, options):
    """Run `check_list`, a Markdown table row per model as it finishes (or one JSON object at the end)."""
    from chanprune.check import check_list

    rows = check_list(name, input_shape=input_shape, timeout=timeout, **options)
    results = []
    if not as_json:
        click.echo(f"chanprune check --list {name} at {'x'.join(map(str, input_shape))}, random init, "
                   + ", ".join(f"{p} {v}" for p, v in _versions().items()))
        click.echo("| family | model | verdict | groups | gated FLOPs | FLOPs kept | s | why not / ungated |")
        click.echo("|---|---|---|---|---|---|---|---|")
    for row in rows:
        results.append(row)
        if not as_json:
            r = row.report
            nums = (f"{r.groups} | {r.gated_flops_fraction:.0%} | {r.flops_slim / max(r.flops_dense, 1):.0%}"
                    if r else "- | - | -")
            why = (row.why or "").replace("|", "/")
            click.echo(f"| {row.family} | {row.arch} | {row.verdict.upper()} | {nums} | {row.seconds:.0f} | {why} |")
    exact = sum(r.verdict == "exact" for r in results)
    if as_json:
        emit_json({"list": name, "input_shape": list(input_shape), "exact": exact, "total": len(results),
                   "versions": _versions(),
                   "results": [r.to_dict() for r in results]})
    else:
        click.echo(f"{exact}/{len(results)} exact")
    raise SystemExit(0 if exact == len(results) else 1)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("torch", "torch-pruning", "onnxruntime", "timm"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found
