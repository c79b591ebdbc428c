"""Shared pieces of the commands: bad input -> one line and exit 2, shapes, JSON output."""
from __future__ import annotations

import functools
import json
import math
import sys

import click


class BadInput(click.ClickException):
    """One clear line on stderr, exit code 2 (click's UsageError also exits 2)."""

    exit_code = 2


class InputShape(click.ParamType):
    """N,C,H,W (or N,C,L / N,C,D,H,W): positive integers."""

    name = "N,C,H,W"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        try:
            dims = [int(v) for v in str(value).replace("x", ",").split(",")]
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of integers like 1,3,224,224", param, ctx)
        if not 3 <= len(dims) <= 5 or any(d <= 0 for d in dims):
            self.fail(f"{value!r} must be 3 to 5 positive integers like 1,3,224,224", param, ctx)
        return dims


INPUT_SHAPE = InputShape()


class Tolerance(click.ParamType):
    """A finite, non-negative float."""

    name = "FLOAT"

    def convert(self, value, param, ctx):
        try:
            v = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(v) or v < 0:
            self.fail(f"{value!r} must be a finite number >= 0", param, ctx)
        return v


TOLERANCE = Tolerance()


def handle_errors(fn):
    """Turn chanprune's input errors into `BadInput` (exit 2, one line, no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from chanprune.errors import ChanpruneError

        try:
            return fn(*args, **kwargs)
        except click.ClickException:
            raise
        except ChanpruneError as e:
            raise BadInput(str(e)) from None
        except (ValueError, TypeError) as e:
            raise BadInput(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
        except OSError as e:
            raise BadInput(f"{getattr(e, 'filename', '') or ''}: {e.strerror or e}".lstrip(": ")) from None

    return wrapper


def _clean(obj):
    """JSON-safe: non-finite floats become null (strict JSON has no NaN/Infinity)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def echo_json(obj) -> None:
    click.echo(json.dumps(_clean(obj), indent=1, allow_nan=False))


def fmt_count(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def stderr(msg: str) -> None:
    click.echo(msg, err=True)


def is_tty() -> bool:
    return sys.stderr.isatty()
