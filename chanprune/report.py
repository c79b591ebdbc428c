"""`report`: figures and a summary of a run (matplotlib, written atomically)."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

from .artifacts import atomic_write_bytes, atomic_write_text
from .errors import ArtifactError

__all__ = ["make_report"]


def _save(fig, path: Path) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return str(path)


def _jsons(run: Path, suffix: str) -> list[dict]:
    out = []
    for p in sorted(run.rglob(f"*{suffix}")):
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return out


def _cost_label(name: str) -> str:
    return {"flops": "FLOPs"}.get(name, name)


def make_report(run: str | os.PathLike) -> dict:
    """PNGs (kept channels per group, gate histogram, learning curves) and summary.md in RUN."""
    run = Path(run)
    ckpt_path = run / "model.pt"
    if not run.is_dir() or not ckpt_path.is_file():
        raise ArtifactError(f"{run}: not a run folder (no model.pt inside)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .artifacts import GATED_FORMAT, GATED_FORMAT_V1, load_artifact
    from .runs import inspect_run

    files, rows = {}, []
    ckpt = load_artifact(ckpt_path)
    info = inspect_run(ckpt_path) if ckpt["format"] in (GATED_FORMAT, GATED_FORMAT_V1) else None
    if info:
        groups = info["groups"]
        fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(groups)), 3.5))
        xs = range(len(groups))
        ax.bar(xs, [g["total"] for g in groups], color="#d9d9d9", label="original")
        ax.bar(xs, [g["kept"] for g in groups], color="#3b75af", label="kept")
        ax.set_xticks(list(xs), [g["name"] for g in groups], rotation=90, fontsize=7)
        ax.set_ylabel("channels")
        ax.set_title(f"{info['arch']}: kept channels per group ({_cost_label(info['cost'])} {info['cost_ratio']:.1%} of dense)")
        ax.legend()
        files["channels"] = _save(fig, run / "channels.png")
        plt.close(fig)
        pol = info["polarization"]
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.bar([i / 10 + 0.05 for i in range(10)], pol["histogram"], width=0.09, color="#3b75af")
        ax.set_xlabel("gate probability p")
        ax.set_ylabel("gates")
        ax.set_title(f"polarization {pol['polarized']:.1%} (p<0.05 or p>0.95)")
        files["polarization"] = _save(fig, run / "polarization.png")
        plt.close(fig)
    metrics = run / "metrics.jsonl"
    if metrics.is_file():
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(range(1, len(rows) + 1), [r["train_acc"] for r in rows], label="train acc")
        ax.plot(range(1, len(rows) + 1), [r["val_accuracy"] for r in rows], label="val acc")
        if any("cost_ratio_at_tau" in r for r in rows):
            label = f"{_cost_label(info['cost']) if info else 'cost'} at tau"
            ax.plot(range(1, len(rows) + 1), [r.get("cost_ratio_at_tau", float("nan")) for r in rows], label=label)
            ax.plot(range(1, len(rows) + 1), [r.get("polarized", float("nan")) for r in rows], label="polarized")
        ax.set_xlabel("epoch (learning, then fine-tuning)")
        ax.legend(fontsize=8)
        ax.set_title("learning curves")
        files["curves"] = _save(fig, run / "curves.png")
        plt.close(fig)
    exports, evals, benches = _jsons(run, "export.json"), _jsons(run, ".eval.json"), _jsons(run, ".bench.json")
    skipped = next((ev for ev in evals if ev.get("skipped_per_group") and ev.get("cost")), None)
    if skipped:  # an eval in an inference mode: the work each group skipped, and each input's executed cost
        share, cost = skipped["skipped_per_group"], skipped["cost"]
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(max(8, 0.35 * len(share) + 4), 3.5),
                                      gridspec_kw={"width_ratios": [max(2, len(share) // 4), 1]})
        ax.bar(range(len(share)), list(share.values()), color="#3b75af")
        ax.set_xticks(list(range(len(share))), list(share), rotation=90, fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_ylabel("share of channels switched off")
        ax.set_title(f"work skipped per group ({skipped['mode']}, {skipped['count']} {skipped['split']} inputs)")
        runs = skipped.get("samples", 1)
        width = runs / len(cost["histogram"])
        ax2.bar([width * (i + 0.5) for i in range(len(cost["histogram"]))], cost["histogram"], width=0.9 * width,
                color="#3b75af")
        ax2.set_xlabel(f"executed {_cost_label(cost['name'])} per input (of dense)")
        ax2.set_ylabel("inputs")
        ax2.set_title(f"mean {cost['mean']:.3f}")
        files["skipped"] = _save(fig, run / "skipped.png")
        plt.close(fig)

    def where(path: str) -> str:  # a model by its path in the run: model.onnx and round4/model.onnx differ
        p = Path(path)
        try:
            return str(p.resolve().relative_to(run.resolve()))
        except ValueError:
            return str(p)

    lines = [f"# {run.name}", "", "| what | value |", "|---|---|"]
    if info:
        lines += [f"| arch | {info['arch']} |", f"| target | {info['target']} |",
                  f"| predicted {_cost_label(info['cost'])} at tau {info['tau']} | {info['cost_ratio']:.4f} |",
                  f"| kept channels | {info['kept_channels']}/{info['gated_channels']} |",
                  f"| polarized | {info['polarization']['polarized']:.1%} |"]
    for e in exports:
        kind = f"{where(str(Path(e['slim']).parent))}/ ({'dense' if e.get('dense') else 'slim'})"
        lines += [f"| {kind} FLOPs (fvcore) | {e['flops_slim']:,} ({e['flops_ratio']:.1%} of {e['flops_dense']:,}) |",
                  f"| {kind} params | {e['params_slim']:,} |",
                  f"| {kind} parity | slim vs gated {e['slim_vs_gated']:.1e}"
                  + (f", ORT vs slim {e['onnx_vs_slim']:.1e} |" if e.get("onnx_vs_slim") is not None else " |")]
    for ev in evals:
        mode = f", {ev['mode']}" if ev.get("mode") else ""
        lines.append(f"| accuracy of {where(ev['model'])} ({ev['kind']}{mode}, {ev['split']}) | {ev['accuracy']:.4f} |")
        if ev.get("cost"):
            c = ev["cost"]
            lines.append(f"| executed {_cost_label(c['name'])} per input ({ev.get('mode')}) | mean {c['mean']:.4f} "
                         f"(from {c['min']:.4f} to {c['max']:.4f}) |")
    for b in benches:
        for r in b.get("results", []):
            sp = f", speedup {r['speedup']:.2f}x vs {where(b['vs'])}" if "speedup" in r else ""
            lines.append(f"| latency {where(b['model'])} {r['backend']} batch {r['batch']} | "
                         f"p50 {r['p50_ms']:.3f} ms{sp} |")
    lines += ["", *[f"![{k}]({Path(v).name})" for k, v in files.items()], ""]
    atomic_write_text(run / "summary.md", "\n".join(lines))
    files["summary"] = str(run / "summary.md")
    return {"run": str(run), "files": files, "summary": "\n".join(lines)}
