"""Artifacts on disk: atomic writes, safe loads (`weights_only=True`), format tags, provenance.

No module is ever pickled: every artifact is tensors and JSON types. What each kind holds is
defined where it is written and read: `checkpoint` (dense and gated checkpoints), `load` (slim
models), `plan` (plan.json).
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

from .errors import ArtifactError

__all__ = ["atomic_save", "atomic_write_bytes", "atomic_write_text", "load_artifact", "check_format", "provenance",
           "load_state_dict_file", "DENSE_FORMAT", "GATED_FORMAT", "GATED_FORMAT_V1", "SLIM_FORMAT"]

DENSE_FORMAT = "chanprune.dense/1"
GATED_FORMAT = "chanprune.gated/2"  # /2 records the gate kind and the budget's cost
GATED_FORMAT_V1 = "chanprune.gated/1"
SLIM_FORMAT = "chanprune.slim/1"
_KNOWN = {DENSE_FORMAT: "a dense checkpoint (chanprune train)", GATED_FORMAT: "a gated checkpoint (chanprune learn)",
          GATED_FORMAT_V1: "a gated checkpoint (chanprune learn)", SLIM_FORMAT: "a slim model (chanprune export)"}


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
        if obj["format"] not in (DENSE_FORMAT, GATED_FORMAT, GATED_FORMAT_V1):
            raise ArtifactError(f"{path} is {_KNOWN.get(obj['format'], obj['format'])}; --weights takes dense weights")
        obj = obj.get("state_dict")
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ArtifactError(f"{path}: not a state_dict (a mapping of names to tensors)")
    return obj


# ----------------------------------------------------------------------------- provenance
def provenance(seed: int | None = None) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    try:
        __version__ = version("chanprune")
    except PackageNotFoundError:
        __version__ = "0.0.0+unknown"
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
