"""`chanprune` entry point. Importing this module does not import torch: `--help` stays fast."""
from __future__ import annotations

import warnings

import click

from .check import check
from .deploy import bench, evaluate, export, report
from .learning import inspect, learn, train
from .profile import profile


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("chanprune")
    except PackageNotFoundError:
        return "0.0.0+unknown"


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(_version(), "--version", "-V", prog_name="chanprune")
def main():
    """chanprune: learn which channels to drop, then cut them for real.

    Gumbel-softmax channel gates (Herrmann, Bowen and Zabih, ECCV 2020) on torch-pruning's
    dependency groups; the slim dense model reproduces the frozen gated one, and exports to ONNX.

    Exit codes: 0 ok, 1 a check failed, 2 bad input.
    """
    # torch and fvcore warn about their own deprecations on import; they are not the user's business.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


main.add_command(check)
main.add_command(train)
main.add_command(learn)
main.add_command(inspect)
main.add_command(export)
main.add_command(evaluate)
main.add_command(bench)
main.add_command(profile)
main.add_command(report)

if __name__ == "__main__":  # pragma: no cover
    main()
