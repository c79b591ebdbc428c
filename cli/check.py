"""`chanprune check`: can this model be pruned exactly?"""
from __future__ import annotations

import click

from ._util import INPUT_SHAPE, TOLERANCE, JsonCommand, emit_json, fmt_count, handle_errors


@click.command(cls=JsonCommand)
@click.option("--arch", required=True, help="Zoo name (resnet18, resnet20, mobilenet_v2, efficientnet_lite0, ...) or module:function.")
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
@handle_errors
def check(arch, weights, num_classes, in_channels, input_shape, keep, zero_width, seed, ignore, atol, rtol, onnx, as_json):
    """Will ARCH prune exactly? Gate every channel group, cut a random plan that keeps about
    --keep of each group (and removes one whole group where the model has one), and compare the
    slim model with the gated one, then onnxruntime with the slim model.

    Untrained models get random batch-norm statistics first, so that the constants a removed
    branch leaves behind are non-zero and checked too.

    Exit 0 exact, 1 not exact (or the model cannot be traced), 2 bad input.
    """
    import torch

    from chanprune.check import check_model, perturb_batchnorm_
    from chanprune.errors import UnsupportedModelError
    from chanprune.zoo import build_model

    if input_shape[1] != in_channels:
        raise click.BadParameter(f"channel dimension {input_shape[1]} differs from --in-channels {in_channels}",
                                 param_hint="--input-shape")
    torch.manual_seed(seed)
    model = build_model(arch, num_classes=num_classes, in_channels=in_channels, weights=weights)
    if weights is None:
        perturb_batchnorm_(model, seed=seed)
    try:
        report = check_model(model, arch=arch, input_shape=input_shape, keep=keep, seed=seed, zero_width=zero_width, atol=atol,
                             rtol=rtol, onnx=onnx, ignored=tuple(ignore))
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
        onnx_line = "skipped" if not onnx else (f"failed: {r.onnx_error}" if r.onnx_error else f"max |diff| {r.onnx_max_abs_diff:.2e}")
        click.echo(f"  onnxruntime       {onnx_line}")
        for u in r.unsupported:
            click.echo(f"  ungated           {u['name']}: {u['reason']}")
        click.echo(f"  verdict           {'EXACT' if r.exact else 'NOT EXACT'} (atol {atol:g}, rtol {rtol:g})")
    raise SystemExit(0 if report.exact else 1)
