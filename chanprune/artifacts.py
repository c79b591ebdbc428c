"""Artifacts on disk: atomic writes, safe loads (`weights_only=True`), format tags, provenance.

No module is ever pickled: a slim model is saved as {arch, build kwargs, plan, state_dict} and
rebuilt on load by building the arch, applying the plan and loading the weights.
"""
from __future__ import annotations

import io
import os
import pickle
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
from torch import nn

from .errors import ArtifactError
from .plan import PrunePlan

__all__ = ["atomic_save", "atomic_write_bytes", "atomic_write_text", "load_artifact", "provenance",
           "save_slim", "load_slim", "load_state_dict_file", "DENSE_FORMAT", "GATED_FORMAT", "SLIM_FORMAT"]

DENSE_FORMAT = "chanprune.dense/1"
GATED_FORMAT = "chanprune.gated/1"
SLIM_FORMAT = "chanprune.slim/1"
_KNOWN = {DENSE_FORMAT: "a dense checkpoint (chanprune train)", GATED_FORMAT: "a gated checkpoint (chanprune learn)",
          SLIM_FORMAT: "a slim model (chanprune export)"}


# ----------------------------------------------------------------------------- writing
def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` via a temporary file in the same folder, fsync, then rename:
    a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ArtifactError(f"cannot write {path}: folder {parent} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    except OSError as e:
        raise ArtifactError(f"cannot write {path}: {e.strerror or e}") from e
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; an artifact is an ordinary file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise ArtifactError(f"cannot write {path}: {e.strerror or e}") from e
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_save(obj: dict, path: str | os.PathLike) -> Path:
    """`torch.save` made atomic (the whole object is serialised in memory first)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


# ----------------------------------------------------------------------------- reading
def load_artifact(path: str | os.PathLike, expected: str | tuple[str, ...] | None = None) -> dict:
    """Load a chanprune artifact safely and check its `format` tag.

    Raises:
        ArtifactError: missing, empty, truncated or foreign files, or a file of another kind.
    """
    path = Path(path)
    return check_format(_safe_torch_load(path), path, expected)


def check_format(obj, path: str | os.PathLike, expected: str | tuple[str, ...] | None = None) -> dict:
    """`obj` (loaded from `path`) as a chanprune artifact of an `expected` kind, or ArtifactError."""
    expected = (expected,) if isinstance(expected, str) else expected
    fmt = obj.get("format") if isinstance(obj, dict) else None
    if fmt is None:
        raise ArtifactError(f"{path}: not a chanprune artifact (no 'format' tag)")
    if expected and fmt not in expected:
        what = _KNOWN.get(fmt, f"format {fmt!r}")
        want = " or ".join(_KNOWN.get(e, e) for e in expected)
        raise ArtifactError(f"{path} is {what}, expected {want}")
    if fmt not in _KNOWN:
        raise ArtifactError(f"{path}: unknown format {fmt!r}; this chanprune reads {', '.join(_KNOWN)} "
                            "(upgrade chanprune or re-create the file)")
    return obj


def _safe_torch_load(path: Path):
    if not path.exists():
        raise ArtifactError(f"{path}: no such file")
    if path.is_dir():
        raise ArtifactError(f"{path} is a folder, not a file")
    if path.stat().st_size == 0:
        raise ArtifactError(f"{path}: the file is empty")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if re.search(r"Unsupported global|Unsupported class|GLOBAL|REDUCE|Trying to call|Can only build", str(e)):
            raise ArtifactError(f"{path}: refused to load: it holds Python objects that are not weights "
                                "(chanprune loads with weights_only=True and never runs code from a file)") from e
        raise ArtifactError(f"{path}: not a PyTorch file (unreadable pickle data)") from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, UnicodeDecodeError, IndexError,
            KeyError, TypeError, AttributeError) as e:  # torch's safe unpickler raises all of these on garbage
        raise ArtifactError(f"{path}: not a readable PyTorch file (truncated or corrupt: {type(e).__name__})") from e


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Weights from a dense or gated chanprune checkpoint, or a plain state_dict file."""
    obj = _safe_torch_load(Path(path))
    if isinstance(obj, dict) and "format" in obj:
        if obj["format"] not in (DENSE_FORMAT, GATED_FORMAT):
            raise ArtifactError(f"{path} is {_KNOWN.get(obj['format'], obj['format'])}; --weights takes dense weights")
        obj = obj.get("state_dict")
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ArtifactError(f"{path}: not a state_dict (a mapping of names to tensors)")
    return obj


# ----------------------------------------------------------------------------- provenance
def provenance(seed: int | None = None) -> dict:
    from . import __version__

    rev = None
    try:
        here = Path(__file__).resolve().parent
        rev = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"chanprune": str(__version__), "torch": str(torch.__version__), "seed": seed,
            "command": " ".join([_program(), *sys.argv[1:]]), "git": rev}


def _program() -> str:
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    return "chanprune" if name in ("chanprune", "main.py", "__main__.py") else name


# ----------------------------------------------------------------------------- slim models
def save_slim(path: str | os.PathLike, slim: nn.Module, *, arch: str, plan: PrunePlan, input_shape: list[int],
              build_kwargs: dict | None = None, seed: int | None = None) -> Path:
    return atomic_save({
        "format": SLIM_FORMAT, "arch": arch, "build_kwargs": dict(build_kwargs or {}),
        "input_shape": list(input_shape), "plan": plan.to_dict(), "state_dict": slim.state_dict(),
        "provenance": provenance(seed)}, path)


def load_slim(path: str | os.PathLike, *, arch: str | None = None) -> tuple[nn.Module, dict]:
    """Rebuild a slim model: build the arch, apply the plan, load the weights (strictly).

    An arch given as `module:function` is imported only when the caller names it again (`arch`).
    """
    from .surgery import apply_plan_
    from .zoo import build_model, saved_arch

    obj = load_artifact(path, SLIM_FORMAT)
    saved = saved_arch(obj, path, arch)
    if arch is not None and arch != saved:
        raise ArtifactError(f"{path} holds a {saved}, not a {arch}")
    plan = PrunePlan.from_dict(obj.get("plan"))
    kwargs = obj.get("build_kwargs") or {}
    if not isinstance(kwargs, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for k, v in kwargs.items()
                                               if k in ("num_classes", "in_channels")):
        raise ArtifactError(f"{path}: 'build_kwargs' must map num_classes/in_channels to integers")
    shape = obj.get("input_shape")
    if (not isinstance(shape, list) or len(shape) < 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
        raise ArtifactError(f"{path}: 'input_shape' must be a list of positive integers")
    model = build_model(saved, **{k: v for k, v in kwargs.items() if k in ("num_classes", "in_channels")})
    apply_plan_(model, plan, torch.zeros([1, *shape[1:]]))
    try:
        model.load_state_dict(obj["state_dict"], strict=True)
    except (RuntimeError, KeyError) as e:
        raise ArtifactError(f"{path}: the weights do not fit the rebuilt slim model ({str(e).splitlines()[0]})") from e
    return model.eval(), obj
