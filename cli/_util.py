"""Shared pieces of the commands: bad input -> one line and exit 2, shapes, JSON output."""
from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import math
import os
import sys

import click


class BadInput(click.ClickException):
    """One clear line on stderr, exit code 2 (click's UsageError also exits 2)."""

    exit_code = 2


class Failed(click.ClickException):
    """A run that failed (a NaN loss): one line on stderr, exit code 1."""

    exit_code = 1


class Interrupted(click.ClickException):
    """Ctrl-C after the checkpoint was saved: the message alone on stderr, exit code 130."""

    exit_code = 130

    def show(self, file=None) -> None:
        click.echo(self.format_message(), err=True)


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


def batch_sizes_option(value: str) -> tuple[int, ...]:
    """--batch-size 1,32 -> (1, 32); a bad list is a BadParameter (exit 2)."""
    try:
        sizes = tuple(int(b) for b in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers", param_hint="--batch-size")
    if any(b < 1 for b in sizes):
        raise click.BadParameter("batch sizes must be >= 1", param_hint="--batch-size")
    return sizes


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


def _write_json(obj) -> None:
    click.echo(json.dumps(_clean(obj), indent=1, allow_nan=False))
    sys.stdout.flush()


_RESULT = "chanprune.json_result"


def emit_json(obj) -> None:
    """Hand the command's result to `JsonCommand`, which prints it on stdout when the command ends."""
    meta = click.get_current_context().meta
    if meta.get(_RESULT) is not None:
        raise RuntimeError("a command emits one JSON object")
    meta[_RESULT] = obj


def _flush_all() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__):
        if stream is not None:
            stream.flush()
    # C code buffers in its own stdio `stdout`; flush it while fd 1 still points at stderr, or it
    # would reach the real stdout at exit. CDLL(None) is the process itself (not on Windows).
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).fflush(None)


@contextlib.contextmanager
def stdout_to_stderr():
    """Point file descriptor 1 and `sys.stdout` at stderr for the block; restore both after it.

    `contextlib.redirect_stdout` alone is not enough: C++ code (torch's TorchScript ONNX exporter
    dumps its graph on failure) writes to file descriptor 1 directly.
    """
    _flush_all()
    saved_fd, saved_stdout = os.dup(1), sys.stdout
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        _flush_all()
        sys.stdout = saved_stdout
        os.dup2(saved_fd, 1)
        os.close(saved_fd)


def _error(message: str, exit_code: int) -> dict:
    return {"error": message, "exit_code": exit_code}


def _outcome(result, exc: BaseException) -> dict:
    """What stdout gets when the command raised `exc` (SystemExit included)."""
    if result is not None and isinstance(exc, SystemExit):
        return result  # the command ran to its result and chose the exit code (1: not exact, a regression)
    if isinstance(exc, click.ClickException):
        return _error(exc.format_message(), exc.exit_code)
    if isinstance(exc, SystemExit):
        code = exc.code if isinstance(exc.code, int) else 1
        return _error(f"exited with code {code} without a result", code)
    if isinstance(exc, (KeyboardInterrupt, click.Abort)):
        return _error("interrupted", 1)
    first = str(exc).splitlines()[0] if str(exc) else ""
    return _error(f"{type(exc).__name__}: {first}".rstrip(": "), 1)


class JsonCommand(click.Command):
    """A command with `--json`: stdout then carries exactly one JSON object, on every path.

    For the whole command, file descriptor 1 and `sys.stdout` point at stderr, so whatever else
    prints (third-party code, C++ writing to fd 1, warnings, progress) lands on stderr. When the
    command ends, the real stdout gets one object: the result the command passed to `emit_json`
    (also when it then exits 1, as a check that is not exact), or else
    `{"error": "<the message stderr shows>", "exit_code": N}`: 2 for bad input, including what
    click rejects while parsing the options, 1 for a failure, 130 for Ctrl-C.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.params.append(click.Option(["--json", "as_json"], is_flag=True,
                                        help="Print one JSON object on stdout; everything else goes to stderr."))

    def parse_args(self, ctx, args):
        tokens = list(args)
        try:
            return super().parse_args(ctx, args)
        except click.ClickException as e:
            # the options did not parse, so look for the flag itself (after a "--" it would be an argument)
            options = tokens[:tokens.index("--")] if "--" in tokens else tokens
            if "--json" in options:
                _write_json(_error(e.format_message(), e.exit_code))
            raise

    def invoke(self, ctx):
        if not ctx.params.get("as_json"):
            return super().invoke(ctx)
        ctx.meta[_RESULT] = None
        try:
            with stdout_to_stderr():
                super().invoke(ctx)
            if ctx.meta[_RESULT] is None:
                raise RuntimeError(f"{ctx.command_path} ended without a JSON result")  # a bug in the command
        except BaseException as e:  # written as the error object, then raised on for click to report
            _write_json(_outcome(ctx.meta[_RESULT], e))
            raise
        _write_json(ctx.meta[_RESULT])


def fmt_count(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def stderr(msg: str) -> None:
    click.echo(msg, err=True)


def is_tty() -> bool:
    return sys.stderr.isatty()
