"""`chanprune train`, `chanprune learn` and `chanprune inspect`."""
from __future__ import annotations

from pathlib import Path

import click

from ._progress import Reporter
from ._util import BadInput, Failed, Interrupted, JsonCommand, emit_json, handle_errors

DATA_HELP = "fashion-mnist[:DIR], digits, imagefolder:PATH (train/ and val/ inside) or cifar10:PATH."


def _common(fn):
    for opt in reversed([
        click.option("--arch", required=True, help="Zoo name (resnet20, resnet18, mobilenet_v2, ...), timm:NAME or module:function."),
        click.option("--data", default=None, help=DATA_HELP),
        click.option("--out", default=None, type=click.Path(file_okay=False, path_type=Path),
                     help="Run folder (RUN). Default: runs/train/ARCH or runs/learn/ARCH-tTARGET, with -2, -3, ... "
                          "when taken; with --resume, the newest of those."),
        click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True),
        click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--num-classes", type=click.IntRange(min=1), default=None, help="Default: the data's classes."),
        click.option("--in-channels", type=click.IntRange(min=1), default=None,
                     help="Default: what the model's stem takes (grayscale data is repeated to 3 channels)."),
        click.option("--image-size", type=click.IntRange(min=4), default=None, help="Resize images (e.g. 64)."),
        click.option("--device", default="cpu", show_default=True, help="cpu or cuda."),
        click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first N training images."),
        click.option("--resume", is_flag=True, help="Continue from RUN/model.pt (optimizer, schedule, RNG, data order)."),
    ]):
        fn = opt(fn)
    return fn


def _run_dir(out: Path | None, data: str | None, kind: str, name: str, resume: bool) -> Path:
    """The run folder (the library's default when --out is not given); --data must be named."""
    from chanprune.data import missing_data_message
    from chanprune.runs import default_run_dir

    if data is None:
        raise BadInput(missing_data_message())
    return out if out is not None else default_run_dir(kind, name, resume=resume)


def _auto_or_positive(value: str, flag: str) -> float | None:
    """`auto` as None, else a positive number; anything else is a bad input."""
    if value == "auto":
        return None
    try:
        x = float(value)
    except ValueError:
        x = 0.0
    if not x > 0 or x == float("inf"):
        raise BadInput(f"{flag} {value!r}: give auto or a positive number")
    return x


def _guarded(out: Path, rep: Reporter, work):
    """Run a training job: Ctrl-C has saved the checkpoint (exit 130); a NaN loss exits 1."""
    from chanprune.learn import TrainingError

    try:
        return work()
    except KeyboardInterrupt:
        rep.close()
        raise Interrupted(f"interrupted: saved {out / 'model.pt'}; continue with --resume") from None
    except TrainingError as e:
        rep.close()
        raise Failed(str(e)) from None


def _finish(result: dict, as_json: bool, lines: list[str]) -> None:
    if as_json:
        emit_json(result)
    else:
        for line in lines:
            click.echo(line)


@click.command(cls=JsonCommand)
@_common
@click.option("--weights", default=None, help="Start from DEFAULT, a torchvision weights name, or a .pt file.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=0.1, show_default=True)
@handle_errors
def train(arch, data, out, epochs, batch_size, seed, num_classes, in_channels, image_size, device, limit,
          resume, as_json, weights, lr):
    """Plain baseline training: the "pretrained" model to learn gates on, on any data set.

    Writes RUN/model.pt (a dense checkpoint, atomically every epoch and on Ctrl-C) and RUN/metrics.jsonl.
    """
    from chanprune.learn import TrainConfig
    from chanprune.runs import train_run

    out = _run_dir(out, data, "train", arch, resume)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    rep = Reporter()
    res = _guarded(out, rep, lambda: train_run(
        arch=arch, data=data, out=out, config=cfg, weights=weights, num_classes=num_classes, in_channels=in_channels,
        image_size=image_size, device=device, resume=resume, limit=limit, progress=rep))
    _finish(res, as_json, [f"trained {arch}: best val accuracy {res['best']['val_accuracy']:.4f} "
                           f"(epoch {res['best']['epoch']}), test accuracy {res['test_accuracy']:.4f}",
                           f"wrote {res['model']}"])


@click.command(cls=JsonCommand)
@_common
@click.option("--weights", default=None, help="DEFAULT, a torchvision weights name, or RUN/model.pt from `chanprune train`.")
@click.option("--target", type=click.FloatRange(0, 1, min_open=True), required=True,
              help="Fraction of the dense model's cost to keep (--budget; FLOPs: the whole network, fvcore's count).")
@click.option("--budget", default="flops", show_default=True,
              help="The cost the target is a fraction of. flops: (t - FLOPs(Z)/FLOPs)^2; "
                   "channels: the paper's batch activation loss (t - mean Z)^2; latency: the expected latency "
                   "under the gates from a latency table (--lut).")
@click.option("--lut", default=None, metavar="FILE|auto",
              help="The latency table of --budget latency (chanprune profile), or auto: profile this model first.")
@click.option("--block", default="auto", show_default=True, metavar="auto|N",
              help="Gate blocks of N channels: kept counts are multiples of N by construction. auto: the latency "
                   "table's block with --budget latency (16 on AVX-512, 8 on AVX2), else 1.")
@click.option("--gate", default="gumbel", show_default=True,
              help="Gate kind. gumbel: data-independent Gumbel-softmax gates (Herrmann et al. 2020); "
                   "trainable: deterministic 0/1 gates with a shaped gradient (Kim et al. 2020); "
                   "dependent: data-dependent gates inside residual blocks, decided per input from the gated "
                   "layer's input (conditional computation; learned for the whole budget, no static plan); "
                   "static+dependent: both, learned together (a channel runs when a static and a data-dependent "
                   "gate both keep it).")
@click.option("--granularity", type=click.Choice(["channel", "layer"]), default="channel", show_default=True,
              help="What one gate decides. channel: each channel (or --block). layer: the whole inner group of each "
                   "residual block, so the block's branch runs or not (with --gate dependent: per input, AIG-style; "
                   "with static gates: whole blocks removed).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=0.02, show_default=True, help="Weights' learning rate (SGD).")
@click.option("--gate-lr", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True, help="Gate logits' learning rate (Adam).")
@click.option("--logit-bound", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Clamp each Gumbel gate's logit gap to +-B after every step (10: p within 5e-5 of 0 or 1), so "
                   "that a polarized gate keeps a gradient and the budget can still move it. 0: unbounded.")
@click.option("--gate-restart/--no-gate-restart", default=True, show_default=True,
              help="When the cost first crosses the target, zero the gate logits' Adam momentum (a restart), "
                   "so the gates turn there instead of coasting past it.")
@click.option("--flops-weight", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="With --budget latency: subtract W x the sampled FLOPs ratio from the loss, so that among plans "
                   "of about the target latency the gates lean to those that keep more FLOPs (a higher "
                   "efficiency). 0: off.")
@click.option("--dependent-gate-lr", type=click.FloatRange(min=0, min_open=True), default=0.01, show_default=True,
              help="Learning rate (Adam) of a data-dependent gate's network (--gate dependent, static+dependent).")
@click.option("--dependent-finetune", is_flag=True,
              help="Data-dependent gates: learn them for --max-learn-share of the budget, then freeze the gate "
                   "network and train the weights under its threshold decisions (each input's own) for the rest.")
@click.option("--lam", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              help="Initial weight of the budget term; it rises while the FLOPs stay above target.")
@click.option("--lam-rate", default="auto", show_default=True, metavar="auto|RATE",
              help="How fast lambda rises above target: x exp(RATE * relative excess) a step. auto: fast enough to "
                   "grow 100-fold over the learning steps at 25% above target (never below 0.05: only short runs differ from 0.05).")
@click.option("--tau", type=click.FloatRange(0, 1), default=0.5, show_default=True, help="Freeze threshold.")
@click.option("--finetune-epochs", type=click.IntRange(min=0), default=None,
              help="Learn for --epochs, then fine-tune for this many. Default: --epochs is the whole budget; the "
                   "gates freeze when ready and the slim model is fine-tuned for the rest.")
@click.option("--finetune-lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Peak learning rate of fine-tuning (default: --lr).")
@click.option("--finetune-schedule", type=click.Choice(["onecycle", "cosine", "step"]), default="onecycle",
              show_default=True, help="Fine-tuning's learning-rate schedule.")
@click.option("--distill/--no-distill", default=None,
              help="Distil from the dense model the run starts from, in learning and fine-tuning [default: on "
                   "with --weights].")
@click.option("--distill-temperature", type=click.FloatRange(min=0, min_open=True), default=4.0, show_default=True)
@click.option("--distill-weight", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Share of the loss that is the teacher's term (the rest is cross-entropy).")
@click.option("--max-learn-share", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.5,
              show_default=True, help="Without --finetune-epochs: freeze at the latest after this share of the budget.")
@click.option("--project/--no-project", default=True, show_default=True,
              help="After freezing, drop (add) the least (most) probable channels until the predicted cost is "
                   "at the target, when it is more than --project-tolerance away.")
@click.option("--project-tolerance", type=click.FloatRange(min=0), default=0.02, show_default=True,
              help="Project when the frozen plan's cost is further than this from the target (0: whenever it is "
                   "off; it ends at the target or below).")
@click.option("--gate-init", type=click.Choice(["uniform", "norm"]), default="uniform", show_default=True,
              help="Start the gates nearly open (uniform) or graded by the weights' group norm.")
@click.option("--fix-weights", is_flag=True,
              help="Learn the gates with the weights fixed where the run starts; the weights train only in "
                   "fine-tuning, from there (a plan chosen for the weights it starts from).")
@click.option("--gate-temperature-final", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Anneal the Gumbel temperature from 1 to this over the learning steps.")
@click.option("--calibrate-bn", type=click.IntRange(min=0), default=0, show_default=True,
              help="Re-estimate batch-norm statistics with K batches under the frozen plan.")
@click.option("--ignore", multiple=True, metavar="NAME", help="Keep this layer's output channels ungated (repeatable).")
@click.option("--min-keep", type=click.IntRange(min=0), default=0, show_default=True,
              help="Keep at least K channels in each group that keeps any (a group may still collapse whole).")
@handle_errors
def learn(arch, data, out, epochs, batch_size, seed, num_classes, in_channels, image_size, device, limit,
          resume, as_json, weights, target, budget, lut, block, gate, granularity, lr, gate_lr, logit_bound, gate_restart, flops_weight, dependent_gate_lr, dependent_finetune, lam, lam_rate, tau, finetune_epochs, finetune_lr,
          finetune_schedule, distill, distill_temperature, distill_weight, max_learn_share, project,
          project_tolerance, gate_init, fix_weights, gate_temperature_final, calibrate_bn, ignore, min_keep):
    """Learn channel gates under one global target (Gumbel-softmax gates, Herrmann et al., ECCV 2020).

    Writes RUN/model.pt (a gated checkpoint, atomically every epoch and on Ctrl-C) and RUN/metrics.jsonl.
    Under torchrun the same command trains with DDP (NCCL on GPUs, gloo on CPU).
    """
    from chanprune.learn import LearnConfig
    from chanprune.runs import learn_run

    if block != "auto" and not (block.isdigit() and int(block) >= 1):
        raise BadInput(f"--block {block!r}: give auto or a positive integer")
    rate = _auto_or_positive(lam_rate, "--lam-rate")
    out = _run_dir(out, data, "learn", f"{arch}-t{target:g}", resume)
    cfg = LearnConfig(lut=lut, block=None if block == "auto" else int(block), epochs=epochs, batch_size=batch_size, lr=lr, gate_lr=gate_lr, logit_bound=logit_bound or None, gate_restart=gate_restart, flops_weight=flops_weight, dependent_gate_lr=dependent_gate_lr, dependent_finetune=dependent_finetune, lam=lam, lam_rate=rate, seed=seed, target=target,
                      budget=budget, gate=gate, granularity=granularity, tau=tau, min_keep=min_keep, finetune_epochs=finetune_epochs,
                      finetune_lr=finetune_lr, finetune_schedule=finetune_schedule, distill=distill,
                      distill_temperature=distill_temperature, distill_weight=distill_weight, max_learn_share=max_learn_share, project=project,
                      project_tolerance=project_tolerance, gate_init=gate_init, fix_weights=fix_weights,
                      gate_temperature_final=gate_temperature_final, calibrate_bn=calibrate_bn)
    rep = Reporter()
    res = _guarded(out, rep, lambda: learn_run(
        arch=arch, data=data, out=out, config=cfg, weights=weights, num_classes=num_classes, in_channels=in_channels,
        image_size=image_size, ignore=tuple(ignore), device=device, resume=resume, limit=limit, progress=rep))
    if res.get("already_complete"):
        _finish(res, as_json, [f"{res['model']} is complete"])
        return
    what = {"flops": "FLOPs"}.get(res["cost"], res["cost"])
    ex = res.get("executed_cost")
    head = (f"learned {arch} at target {target}: predicted {what} {res['cost_ratio']:.3f} of dense at tau {tau}, "
            f"{res['kept_channels']}/{res['gated_channels']} channels kept, {res['polarized']:.0%} of gates polarized"
            if ex is None else
            f"learned data-dependent gates for {arch} at target {target}: executed {what} {ex['mean']:.3f} of dense "
            f"per test input on average (from {ex['min']:.3f} to {ex['max']:.3f}), threshold at tau {tau}")
    lines = [head,
             f"val accuracy {res['val_accuracy']:.4f}, test accuracy {res['test_accuracy']:.4f}",
             f"wrote {res['model']}"]
    fr = res.get("frozen") or {}
    if fr:
        lines.insert(1, f"froze after {fr['steps']} steps ({fr['reason']}), then fine-tuned {fr['finetune_steps']} steps")
    if res.get("polarization_warning"):
        lines.append(f"warning: {res['polarization_warning']}")
    _finish(res, as_json, lines)


@click.command(cls=JsonCommand)
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--tau", type=click.FloatRange(0, 1), default=None,
              help="Preview the plan at this threshold (default: the plan the run deploys).")
@click.option("--arch", default=None, help="Needed only for a model built from module:function.")
@handle_errors
def inspect(model, tau, arch, as_json):
    """Polarization report and plan preview of a gated run (RUN or RUN/model.pt)."""
    from chanprune.runs import inspect_run

    r = inspect_run(model, tau=tau, arch=arch)
    if as_json:
        emit_json(r)
        return
    pol = r["polarization"]
    click.echo(f"{r['model']}: {r['arch']}, stage {r['stage']}, target {r['target']} ({r['cost']}), gate {r['gate']}")
    click.echo(f"  polarized     {pol['polarized']:.1%} (p<0.05: {pol['low']:.1%}, p>0.95: {pol['high']:.1%}) of {pol['gates']} gates")
    click.echo(f"  histogram     {' '.join(str(h) for h in pol['histogram'])}  (10 bins over [0, 1])")
    source = "the stored plan" if r["stored_plan"] else f"frozen at tau {r['tau']}"
    what = {"flops": "FLOPs"}.get(r["cost"], r["cost"])
    flops = "" if r["cost"] == "flops" else f" (FLOPs {r['flops_ratio_predicted']:.3f})"
    click.echo(f"  plan          {source}: {r['kept_channels']}/{r['gated_channels']} channels kept, "
               f"predicted {what} {r['cost_ratio']:.3f} of dense{flops}")
    fr = r.get("frozen")
    if fr:
        proj = fr.get("projected")
        click.echo(f"  froze         after {fr['steps']} steps ({fr['reason']}), cost {fr['cost_ratio_at_tau']:.3f} at tau"
                   + (f", projected to {proj['to']:.3f}" if proj else "") + f"; fine-tuned {fr.get('finetune_steps', 0)} steps")
    for g in r["groups"]:
        click.echo(f"    {g['name']:<40} {g['kept']:>5}/{g['total']}")
    if pol["warning"]:
        click.echo(f"  warning: {pol['warning']}")
