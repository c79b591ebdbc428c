"""A latency table: one model's gated layers timed on one backend, as a function of kept channels.

The data object between `chanprune profile` (which measures it) and the `latency` cost (which
learns against it). For every gated conv, depthwise conv, grouped conv or linear layer the table
holds the layer's latency on a grid of kept (input, output) channel counts, each count a multiple
of the runtime's block (the last one the layer's full width), timed as a one-layer ONNX graph with
the deployment's session settings. A calibration per batch size maps the sum of the layers onto
whole-model timings: `model_ms = scale * sum(layers) + offset_ms`; `offset_ms` is what no gate
touches. A table calibrated by parts (`chanprune.profile`, the default) has its layers' grids
rewritten by the fit instead, and predicts with scale 1 and offset 0. Between grid points the
latency is bilinear in the two counts; a count of 0 (the layer is cut away) costs 0, so the table
is also differentiable in soft, expected counts.

The table records the machine it was measured on (`machine_info`); `machine_mismatch` says why a
table does not describe this machine.
"""
from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

__all__ = ["LayerTable", "LatencyTable", "machine_info", "machine_mismatch", "cpu_isa", "default_block",
           "kept_counts", "LUT_VERSION"]

LUT_VERSION = 1


@dataclass
class LayerTable:
    module: str  # the layer's name in the model
    kind: str  # "conv" (dense or grouped conv), "dw" (depthwise: one count) or "linear"
    channels_in: int
    channels_out: int
    grid_in: list[int]  # kept input counts timed, ascending, > 0 (dw: the kept channels)
    grid_out: list[int]  # kept output counts timed, ascending, > 0 (dw: [channels_out], unused)
    ms: dict[str, list[list[float]]]  # batch size (a string) -> ms[i][j] at (grid_in[i], grid_out[j])
    attrs: dict = field(default_factory=dict)  # kernel, stride, padding, groups, input size: what was timed

    def at(self, kin, kout, batch: int):
        """Milliseconds at kept counts (floats or tensors, soft counts allowed); 0 kept costs 0."""
        gi, go, full = self._tensors(batch, kin.device if torch.is_tensor(kin) else None)
        if self.kind == "dw":
            return _interp1(gi, full[:, 1], kin)
        return _interp2(gi, go, full, kin, kout)

    def _tensors(self, batch: int, device):
        """The grids with the 0 point and the table padded with its 0 row and column (cached)."""
        cache = self.__dict__.setdefault("_cache", {})
        key = (batch, str(device))
        if key not in cache:
            table = torch.tensor(self.ms[str(batch)], dtype=torch.float64)
            gi = torch.tensor([0] + list(self.grid_in), dtype=torch.float64)
            go = torch.tensor([0] + list(self.grid_out), dtype=torch.float64)
            full = torch.zeros(len(gi), len(go), dtype=torch.float64)
            full[1:, 1:] = table
            cache[key] = tuple(t.to(device) for t in (gi, go, full)) if device is not None else (gi, go, full)
        return cache[key]


def _segment(grid: torch.Tensor, x):
    """Index i and weight w with x = (1 - w) grid[i] + w grid[i + 1] (linear beyond the ends)."""
    x = torch.as_tensor(x, dtype=torch.float64, device=grid.device)
    i = torch.clamp(torch.searchsorted(grid, x.detach().contiguous(), right=True) - 1, 0, len(grid) - 2)
    w = (x - grid[i]) / (grid[i + 1] - grid[i])
    return i, w


def _interp1(grid, values, x):
    i, w = _segment(grid, x)
    return values[i] * (1 - w) + values[i + 1] * w


def _interp2(gi, go, table, kin, kout):
    i, u = _segment(gi, kin)
    j, v = _segment(go, kout)
    return (table[i, j] * (1 - u) * (1 - v) + table[i + 1, j] * u * (1 - v)
            + table[i, j + 1] * (1 - u) * v + table[i + 1, j + 1] * u * v)


@dataclass
class LatencyTable:
    arch: str | None
    input_shape: list[int]  # one example's shape, e.g. [3, 64, 64]
    backend: str  # "ort-cpu", "ort-cuda", "torch-cpu", "torch-cuda"
    threads: int
    batch_sizes: list[int]
    block: int  # the alignment grid: kept counts were timed at multiples of it
    machine: dict
    layers: list[LayerTable]
    calibration: dict[str, dict]  # batch -> {"scale", "offset_ms", "dense_ms", "error": {...}}
    meta: dict = field(default_factory=dict)  # how it was made: sampling, seconds, plans timed
    version: int = LUT_VERSION

    def layer(self, module: str) -> LayerTable | None:
        for t in self.layers:
            if t.module == module:
                return t
        return None

    def dense_ms(self, batch: int) -> float:
        return float(self.calibration[str(batch)]["dense_ms"])

    def predict_ms(self, counts: dict[str, tuple], batch: int):
        """Whole-model milliseconds at `batch` with each layer's (kept in, kept out); a layer not
        named keeps its full width."""
        cal = self.calibration[str(batch)]
        total = 0.0
        for t in self.layers:
            kin, kout = counts.get(t.module, (t.channels_in, t.channels_out))
            total = total + t.at(kin, kout, batch)
        return cal["scale"] * total + cal["offset_ms"]

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict:
        """Plain JSON types only (a checkpoint stores it and loads with weights_only=True)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> "LatencyTable":
        if not isinstance(d, dict) or d.get("version") != LUT_VERSION or "layers" not in d:
            raise ValueError(f"not a chanprune latency table (version {LUT_VERSION})")
        layers = [LayerTable(**t) for t in d["layers"]]
        return cls(**{**d, "layers": layers})

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatencyTable":
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: cannot read a latency table ({e.__class__.__name__})") from None
        try:
            return cls.from_dict(d)
        except (TypeError, KeyError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None


def kept_counts(table: LatencyTable, graph, masks) -> dict[str, tuple]:
    """Each layer of `table`: (kept in, kept out) under one mask per channel group, in the order of
    `graph.groups` (a `graph.ChannelGraph`). Masks may be 0/1 or soft, (C,) or batched (B, C): the
    counts are then tensors (per example), differentiable in the masks, ready for `predict_ms`.
    A side no group touches keeps its full width; a depthwise layer's two counts are its one count."""
    sites: dict[tuple[str, str], list] = {}
    for gi, g in enumerate(graph.groups):
        for s in g.sites:
            sites.setdefault((s.module, s.role), []).append((gi, s))

    def kept(module: str, role: str, width: int):
        found = sites.get((module, role))
        if not found:
            return width
        total = float(width - sum(len(s.layer_idxs) for _, s in found))
        for gi, s in found:
            z = masks[gi]
            total = total + z[..., torch.as_tensor(s.root_idxs, dtype=torch.long, device=z.device)].sum(-1)
        return total

    out = {}
    for t in table.layers:
        if t.kind == "dw":
            k = kept(t.module, "dw", t.channels_in)
            out[t.module] = (k, k)
        else:
            out[t.module] = (kept(t.module, "in", t.channels_in), kept(t.module, "out", t.channels_out))
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_isa() -> str:
    """The widest vector ISA onnxruntime's blocked kernels use here: "avx512", "avx2" or the machine."""
    try:
        flags = set()
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        flags = set()
    if "avx512f" in flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    return platform.machine()


def default_block(backend: str = "ort-cpu", isa: str | None = None) -> int:
    """The channel block a backend's fast kernels want: onnxruntime's NCHWc convolutions (MLAS) block
    channels by the vector width, 16 floats with AVX-512 and 8 with AVX2; GPUs want multiples of 8."""
    if backend.endswith("cuda"):
        return 8
    isa = isa or cpu_isa()
    return {"avx512": 16, "avx2": 8}.get(isa, 4)


def machine_info(backend: str, threads: int) -> dict:
    """What a table depends on besides the model: CPU (or GPU), ISA, the backend's version, threads."""
    info = {"cpu": _cpu_model(), "isa": cpu_isa(), "backend": backend, "threads": threads,
            "torch": str(torch.__version__)}
    if backend.startswith("ort"):
        import onnxruntime as ort

        info["backend_version"] = str(ort.__version__)
    else:
        info["backend_version"] = str(torch.__version__)
    if backend.endswith("cuda") and torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
    return info


def machine_mismatch(table: LatencyTable) -> str | None:
    """Why `table` may not describe this machine (one line), or None."""
    here = machine_info(table.backend, table.threads)
    diffs = [f"{k} {table.machine.get(k)!r} here {here.get(k)!r}" for k in ("cpu", "isa", "backend_version", "device")
             if table.machine.get(k) != here.get(k)]
    if not diffs:
        return None
    return "latency table measured on another machine (" + "; ".join(diffs) + "): its predictions may not hold here"
