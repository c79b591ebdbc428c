"""Progress for long work: a tqdm bar on a terminal, plain lines (one per epoch) otherwise."""
from __future__ import annotations

import sys

import click


class Reporter:
    def __init__(self, *, quiet: bool = False):
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.bar = None
        self.epoch = None

    def __call__(self, kind: str, row: dict) -> None:
        if self.quiet:
            return
        if kind == "resume":
            stage = f" ({row['stage']})" if row.get("stage") else ""
            click.echo(f"resuming{stage} after epoch {row['epoch']}, step {row['step']}", err=True)
        elif kind == "frozen":
            self.close()
            click.echo(f"froze after {row['steps']} steps ({row['reason']}): cost {row['cost_ratio_at_tau']:.3f} "
                       f"at tau, {row['polarized']:.0%} polarized", err=True)
        elif kind == "warning":
            self.close()
            click.echo(f"warning: {row['message']}", err=True)
        elif kind == "graph":  # --lut auto: the profiler's stages
            click.echo(f"profiling (--lut auto): {row['layers']} gated layers, {row['points']} points", err=True)
        elif kind == "recheck" and row["dropped"]:
            table = row.get("of") == "table"
            click.echo(f"profiling: the cached {'table' if table else 'points'} re-timed at {row['ratio']:.2f}x their "
                       "cached time; " + ("profiling anew" if table else "timing every point anew"), err=True)
        elif kind == "calibrate":
            click.echo(f"profiling: calibrating batch {row['batch']} against {row['models']} whole models", err=True)
        elif kind == "cached":
            click.echo(f"profiling: using the cached table {row['path']}", err=True)
        elif kind == "done":
            click.echo("the run is already complete; nothing to resume", err=True)
        elif kind == "step" and self.tty:
            from tqdm import tqdm

            if self.bar is None or self.epoch != row["epoch"]:
                self.close()
                self.epoch = row["epoch"]
                self.bar = tqdm(total=row["steps"], desc=f"epoch {row['epoch']}", file=sys.stderr, leave=False,
                                initial=row["step"] - 1)
            self.bar.update(1)
            post = {"loss": f"{row['loss']:.3f}", "acc": f"{row['acc']:.3f}"}
            if "rate" in row:
                post["cost"] = f"{row['rate']:.3f}"
            self.bar.set_postfix(post, refresh=False)
        elif kind == "epoch":
            self.close()
            parts = [f"epoch {row['epoch']}", f"loss {row['train_loss']:.4f}", f"train acc {row['train_acc']:.4f}",
                     f"val acc {row['val_accuracy']:.4f}"]
            if "val_cost" in row:  # data-dependent gates: each input's own cost, averaged over validation
                parts += [f"executed cost {row['val_cost']['mean']:.3f} (val mean)", f"lambda {row['lambda']:.1f}"]
            elif "cost_ratio_at_tau" in row:
                parts += [f"cost {row['cost_ratio_at_tau']:.3f} at tau", f"polarized {row['polarized']:.0%}",
                          f"lambda {row['lambda']:.1f}"]
            parts.append(f"{row['epoch_seconds']:.1f}s")
            click.echo("  ".join(parts), err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
