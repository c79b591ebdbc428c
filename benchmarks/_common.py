"""What the benchmark scripts share: resumable result rows, the CLI stages, and Torch-Pruning baselines.

Every script appends one JSON object per finished measurement to a `results/*.jsonl` file (written
line by line, flushed and fsynced), keyed by `key`. Rerunning a script skips the keys it already
has, so a grid that takes hours can be stopped at any point and continued later, also in another
checkout once the rows are committed.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CLI = [sys.executable, "-m", "chanprune_cli.main"]


class Rows:
    """An append-only JSON-lines file of result rows, each with a unique `key`."""

    def __init__(self, name: str):
        self.path = RESULTS / f"{name}.jsonl"
        self.rows: dict[str, dict] = {}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    self.rows[row["key"]] = row

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def get(self, key: str) -> dict | None:
        return self.rows.get(key)

    def add(self, row: dict) -> dict:
        row = {**row, "machine": machine(), "date": time.strftime("%Y-%m-%d")}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.rows[row["key"]] = row
        return row


def machine() -> str:
    import torch

    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {os.cpu_count()} cores, torch {torch.__version__.split('+')[0]}"


def run_stage(args: list[str], run: Path, *, done: bool) -> None:
    """Run `chanprune ARGS --out RUN`, resuming a run that was cut short; skip a finished one."""
    if done:
        return
    cmd = CLI + args + ["--out", str(run)]
    if (run / "model.pt").exists():
        cmd.append("--resume")
    print("+ chanprune", " ".join(args + ["--out", str(run)]), flush=True)
    subprocess.run(cmd, check=True)


def run_finished(run: Path) -> bool:
    """A gated run whose learning (and fine-tuning) is complete."""
    import torch

    ckpt = run / "model.pt"
    if not ckpt.is_file():
        return False
    obj = torch.load(ckpt, map_location="cpu", weights_only=True)
    if obj.get("stage") == "done":
        return True
    return obj["format"] == "chanprune.dense/1" and obj["state"]["epoch"] >= obj["config"]["epochs"]


def export(model_pt: Path, out: Path, *extra: str) -> dict:
    """`chanprune export MODEL --out OUT ...`, once; its export.json."""
    if not (out / "export.json").is_file():
        args = ["export", str(model_pt), "--out", str(out), *extra]
        print("+ chanprune", " ".join(args), flush=True)
        subprocess.run(CLI + args + ["--json"], check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "export.json").read_text())


# --- Torch-Pruning, the tool users would pick instead -------------------------------------------

IMPORTANCE = {
    # Filter magnitude of the pruned layer alone (L1, Li et al. 2017): the classic criterion.
    "magnitude": lambda tp: tp.importance.MagnitudeImportance(p=1, normalizer=None, group_reduction="first"),
    # DepGraph's group norm: L2 over every coupled layer of the group.
    "group-norm": lambda tp: tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean"),
    # Filter pruning via the geometric median (He et al. 2019), Torch-Pruning's defaults.
    "fpgm": lambda tp: tp.importance.FPGMImportance(p=2),
}


def head_layers(model):
    from chanprune.zoo import _head

    head = _head(model)
    return [head[1]] if head else []


def tp_prune(model, example_inputs, ratio: float, *, importance: str = "magnitude", round_to: int | None = None):
    """Torch-Pruning's MetaPruner, one shot, the same ratio for every layer (its default); in place."""
    import torch_pruning as tp

    pruner = tp.pruner.MetaPruner(model, example_inputs, importance=IMPORTANCE[importance](tp),
                                  pruning_ratio=ratio, ignored_layers=head_layers(model), round_to=round_to)
    pruner.step()
    return model


def tp_prune_to_flops(make_model, example_inputs, flops_target: int, **kwargs):
    """Bisect MetaPruner's uniform ratio so that fvcore's FLOPs land as close to `flops_target` as the
    ratio allows, not above it. Returns (model, ratio, flops)."""
    from chanprune.measure.flops import count_flops

    lo, hi = 0.0, 0.95
    best = None
    for _ in range(14):
        mid = (lo + hi) / 2
        m = tp_prune(make_model(), example_inputs, mid, **kwargs)
        f = count_flops(m, example_inputs).total
        if f <= flops_target:
            hi = mid
            if best is None or f > best[2]:
                best = (m, mid, f)
        else:
            lo = mid
    if best is None:
        m = tp_prune(make_model(), example_inputs, hi, **kwargs)
        best = (m, hi, count_flops(m, example_inputs).total)
    return best


def measure_vs_dense(rows: Rows, arch: str, t: float, variants: dict[str, dict], dense_onnx: Path,
                     batches: list[int], deploy: list[int], timing: dict[int, dict], extra=None) -> dict:
    """Time every variant's ONNX (`v["onnx"]`) against the dense one, interleaved in one run per
    batch size (onnxruntime CPU, 2 threads), and add a `latency` row per variant and batch; batches
    whose rows are all there are skipped. `extra(v, b)` adds fields to a row. Returns
    {(method, batch): row}, rows already there included."""
    import numpy as np

    from chanprune.measure.latency import make_runner, measure_interleaved, ratio_stats

    got = {}
    for b in batches:
        keys = {m: f"lat/{arch}/t{t}/{m}/b{b}" for m in variants}
        if all(k in rows for k in keys.values()):
            got.update({(m, b): rows.get(k) for m, k in keys.items()})
            continue
        shape = [b, *deploy[1:]]
        runners = {"dense": make_runner(dense_onnx, "ort-cpu", shape, threads=2)}
        runners.update({m: make_runner(v["onnx"], "ort-cpu", shape, threads=2) for m, v in variants.items()})
        times = measure_interleaved(runners, **timing[b])
        print(f"{arch} t={t} batch {b}: dense {np.median(times['dense']):.1f} ms", flush=True)
        for m, v in variants.items():
            speedup, spread = ratio_stats(times["dense"], times[m])
            row = rows.add({
                "key": keys[m], "kind": "latency", "arch": arch, "target": t, "method": m, "batch": b,
                "backend": "ort-cpu", "threads": 2, "input_shape": shape, **(extra(v, b) if extra else {}),
                "flops_ratio": v["flops_ratio"], "dense_ms": float(np.median(times["dense"])),
                "slim_ms": float(np.median(times[m])), "speedup": speedup, "speedup_p10_p90": spread,
                "efficiency": speedup * v["flops_ratio"], **timing[b],
            })
            got[(m, b)] = row
            print(f"  {m:<18} FLOPs {row['flops_ratio']:.3f}  {row['slim_ms']:8.1f} ms  speedup {speedup:.2f}x  "
                  f"efficiency {row['efficiency']:.2f}"
                  + (f"  (predicted {row['predicted_speedup']:.2f}x)" if row.get("predicted_speedup") else ""),
                  flush=True)
    return got
