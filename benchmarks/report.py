"""The README's benchmark tables, generated from benchmarks/results/*.jsonl and benchmarks/baseline.json.

    python benchmarks/report.py            # print the markdown
    python benchmarks/report.py --readme   # replace the block between the BENCHMARKS markers in README.md
"""
from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- BENCHMARKS:BEGIN (python benchmarks/report.py --readme) -->", "<!-- BENCHMARKS:END -->"


def load(name: str) -> list[dict]:
    path = HERE / "results" / f"{name}.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def machines(rows: list[dict]) -> str:
    return "; ".join(sorted({r["machine"] for r in rows if "machine" in r}))


def pct(x: float) -> str:
    return f"{100 * x:.2f}"


def latency_section() -> list[str]:
    rows = load("latency")
    lat = [r for r in rows if r.get("kind") == "latency"]
    if not lat:
        return []
    cell = {(r["arch"], r["target"], r["method"], r["batch"]): r for r in lat}
    methods = list(dict.fromkeys(r["method"] for r in lat))
    out = ["### Latency efficiency at 224x224 (onnxruntime CPU, 2 threads)", "",
           ("`python benchmarks/latency.py` (rows: `benchmarks/results/latency.jsonl`). Plans learned on "
           "Fashion-MNIST at 64 px (`chanprune learn --image-size 64 --limit 12800 --epochs 1`, from scratch), "
           "exported at 224 (`--input-shape 1,3,224,224`); Torch-Pruning's MetaPruner (magnitude, one ratio "
           "for every layer) prunes the same weights to the same fvcore FLOPs. Speedup: median of per-round "
           "dense/slim latency ratios, interleaved in one process. Efficiency = speedup x FLOPs ratio "
           f"(1.0: latency falls as fast as FLOPs). Torch-Pruning's ratio moves in steps under round_to, so its rows "
           "take the largest FLOPs not above chanprune's. Rerun a row: delete it from the .jsonl, then "
           "`python benchmarks/latency.py --archs A --targets t`. Bold: efficiency >= 1.0. "
           f"Machine: {machines(lat)}."), "",
           "| arch | target | method | FLOPs | batch 1: ms (dense) | speedup | efficiency | batch 32: ms (dense) | speedup | efficiency |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for arch in dict.fromkeys(r["arch"] for r in lat):
        for t in sorted({r["target"] for r in lat if r["arch"] == arch}):
            for m in methods:
                b1, b32 = cell.get((arch, t, m, 1)), cell.get((arch, t, m, 32))
                if not (b1 or b32):
                    continue
                ref = b1 or b32

                def part(r):
                    if r is None:
                        return "| - | - | -"
                    bold = "**" if r["efficiency"] >= 1.0 else ""
                    return (f"| {r['slim_ms']:.1f} ({r['dense_ms']:.1f}) | {r['speedup']:.2f}x | "
                            f"{bold}{r['efficiency']:.2f}{bold}")

                out.append(f"| {arch} | {t} | {m} | {ref['flops_ratio']:.3f} {part(b1)} {part(b32)} |")
    effs = defaultdict(list)
    for r in lat:
        effs[(r["method"], r["batch"])].append(r["efficiency"])
    out += ["", "Mean efficiency over the rows above:", "",
            "| method | batch 1 | batch 32 | rows |", "|---|---|---|---|"]
    for m in methods:
        e1, e32 = effs.get((m, 1), []), effs.get((m, 32), [])
        out.append(f"| {m} | {statistics.fmean(e1):.2f} | {statistics.fmean(e32):.2f} | {len(e1)} |"
                   if e1 and e32 else f"| {m} | - | - | {len(e1)} |")
    return out + [""]


def why_section() -> list[str]:
    rows = load("why")
    if not rows:
        return []
    out = [("Where the time goes (`python benchmarks/why.py --arch A --target 0.5`, rows: `benchmarks/results/why.jsonl`): "
           "onnxruntime's own profile at batch 1, kernel time per run, by the kind of node in the graph it actually "
           "runs (after folding batch norm and fusing activations). NCHWc: the channels-blocked AVX-512 kernels, "
           "which need channel counts in multiples of 16; NCHW: the fallback (im2col + GEMM), plus reorder nodes "
           "between the two layouts."), "",
           "| arch | model | kernel ms | convs on NCHWc | conv ms NCHWc / NCHW | depthwise conv ms | 1x1 conv ms | reorders ms |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        k = r.get("ms_per_kind", {})
        nchwc = sum(v for n, v in k.items() if "(NCHWc)" in n)
        nchw = sum(v for n, v in k.items() if "(NCHW)" in n)
        dw = sum(v for n, v in k.items() if n.startswith("depthwise"))
        one = sum(v for n, v in k.items() if n.startswith("1x1"))
        reorder = sum(v for n, v in k.items() if n.startswith("Reorder"))
        convs = sum(v for n, v in r["nodes"].items() if n.endswith("Conv"))
        out.append(f"| {r['arch']} | {r['model']} | {r['ms_total']:.2f} | {r['nodes'].get('com.microsoft.nchwc:Conv', 0)}/{convs} | "
                   f"{nchwc:.2f} / {nchw:.2f} | {dw:.2f} | {one:.2f} | {reorder:.2f} |")
    return out + [""]


def fidelity_section() -> list[str]:
    learn = [r for r in load("latency") if r.get("kind") == "learn"]
    acc = [r for r in load("accuracy") if r.get("method") == "chanprune"]
    if not (learn or acc):
        return []
    out = ["### Target fidelity: asked FLOPs ratio -> measured (fvcore on the slim model, frozen at tau 0.5, no search)", "",
           "| arch | where learned | asked t | measured | polarized | runs |", "|---|---|---|---|---|---|"]
    for r in sorted(learn, key=lambda r: (r["arch"], r["target"])):
        out.append(f"| {r['arch']} | Fashion-MNIST 64 px, 200 steps from scratch | {r['target']} | "
                   f"{r['flops_ratio_224']:.3f} | {r['polarized']:.1%} | 1 |")
    by = defaultdict(list)
    for r in acc:
        by[(r["arch"], r["target"])].append(r)
    for (arch, t), rs in sorted(by.items()):
        f = [r["flops_ratio"] for r in rs]
        out.append(f"| {arch} | Fashion-MNIST 28 px, 1 epoch from the baseline | {t} | "
                   f"{min(f):.3f}-{max(f):.3f} | {min(r['polarized'] for r in rs):.1%}+ | {len(rs)} |")
    return out + [""]


def accuracy_section() -> list[str]:
    rows = load("accuracy")
    runs = [r for r in rows if r.get("method") not in (None, "baseline")]
    if not runs:
        return []
    base = {r["arch"]: r for r in rows if r.get("method") == "baseline"}
    out = ["### Accuracy at matched FLOPs, same training budget (Fashion-MNIST)", "",
           ("`python benchmarks/accuracy.py` (rows: `benchmarks/results/accuracy.jsonl`). Each method trains 2 epochs "
           "after the baseline: chanprune learns gates for 1 and fine-tunes for 1; Torch-Pruning prunes the baseline "
           "in one shot to chanprune's measured FLOPs for the same seed, then fine-tunes for 2 with the same "
           "optimizer. After pruning: validation split (6,000 images held out of training); final: test split "
           f"(10,000 images). Rerun a row: delete it from the .jsonl, then "
           "`python benchmarks/accuracy.py --targets t --seeds s`. "
           f"Machine: {machines(runs)}."), "",
           ("| arch | target | method | FLOPs | after pruning (val) | final test (mean ± sd) | change vs baseline | "
           "chanprune minus this, paired by seed | train time | seeds |"),
           "|---|---|---|---|---|---|---|---|---|---|"]
    cell = {(r["arch"], r["target"], r["seed"], r["method"]): r for r in runs}
    for arch in dict.fromkeys(r["arch"] for r in runs):
        b = base.get(arch)
        if b:
            out.append(f"| {arch} | - | baseline | 1.000 | - | {pct(b['test_accuracy'])} | - | - | - | - |")
        for t in sorted({r["target"] for r in runs if r["arch"] == arch}, reverse=True):
            for m in dict.fromkeys(r["method"] for r in runs):
                rs = [r for r in runs if (r["arch"], r["target"], r["method"]) == (arch, t, m)]
                if not rs:
                    continue
                acc = [r["test_accuracy"] for r in rs]
                sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
                diffs = [cell[(arch, t, r["seed"], "chanprune")]["test_accuracy"] - r["test_accuracy"]
                         for r in rs if (arch, t, r["seed"], "chanprune") in cell]
                paired = "-" if m == "chanprune" or not diffs else (
                    f"{100 * statistics.fmean(diffs):+.2f}" + (f" ± {100 * statistics.stdev(diffs):.2f}" if len(diffs) > 1 else "")
                    + f" (wins {sum(d > 0 for d in diffs)}/{len(diffs)})")
                change = f"{100 * (statistics.fmean(acc) - b['test_accuracy']):+.2f}" if b else "-"
                out.append(f"| {arch} | {t} | {m} | {statistics.fmean(r['flops_ratio'] for r in rs):.3f} | "
                           f"{pct(statistics.fmean(r['val_after_pruning'] for r in rs))} | "
                           f"{pct(statistics.fmean(acc))} ± {100 * sd:.2f} | {change} | {paired} | "
                           f"{statistics.fmean(r['train_seconds'] for r in rs):.0f} s | {len(rs)} |")
    return out + [""]


def costs_section() -> list[str]:
    rows = load("costs")
    if not rows:
        return []
    latest = {}
    for r in rows:
        latest[r["key"].rsplit("/", 1)[0]] = r
    out = ["### Costs", "", f"`python benchmarks/costs.py` (rows: `benchmarks/results/costs.jsonl`). Machine: {machines(rows)}.", "",
           "| what | figure |", "|---|---|"]
    for r in latest.values():
        if r["kind"] == "step":
            out.append(f"| training step, {r['arch']}, batch {'x'.join(map(str, r['batch_shape']))}: plain / gate learning | "
                       f"{r['plain_ms']:.0f} ms / {r['gated_ms']:.0f} ms (ratio {r['ratio']:.2f}, p10-p90 "
                       f"{r['ratio_p10_p90'][0]:.2f}-{r['ratio_p10_p90'][1]:.2f}; {r['gates']} gates) |")
        elif r["kind"] == "export":
            s = r["stages_seconds"]
            out.append(f"| freeze + surgery + ONNX export, {r['arch']} at 224 (in process) | {r['stages_total_seconds']:.1f} s: "
                       + ", ".join(f"{k.replace('_', ' ')} {v:.1f} s" for k, v in s.items()) + " |")
            out.append(f"| the same as a command, `{r['command']}` (imports, parity checks, slim.pt, plan.json) | "
                       f"{r['cli_seconds']:.1f} s |")
    return out + [""]


def guard_section() -> list[str]:
    path = HERE / "baseline.json"
    if not path.is_file():
        return []
    b = json.loads(path.read_text())
    return ["### CI latency guard", "",
            (f"`.ci/run` runs `python benchmarks/guard.py` after the tests: resnet18 at 224 with the committed learned plan "
            f"`benchmarks/guard/{b['plan']}`, slim against dense ONNX, through `chanprune bench --vs ... --baseline "
            f"benchmarks/baseline.json --max-regression {b['max_regression']}`. Baseline written by `{b['command']}` "
            f"on {b['machine']}:"), "",
            "| key | baseline speedup | repeated measurements |", "|---|---|---|"] + [
            f"| {k} | {v:.2f}x | {', '.join(f'{s:.2f}' for s in b['measured'][k])} |" for k, v in b["speedups"].items()] + [
            "", f"Allowed drop: {b['max_regression']:.0%} (twice the worst drop between repeated runs, at least 15%).", ""]


def render() -> str:
    return "\n".join(latency_section() + why_section() + fidelity_section() + accuracy_section() + costs_section() + guard_section())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--readme", action="store_true")
    a = ap.parse_args()
    text = render()
    if not a.readme:
        print(text)
        return
    readme = HERE.parent / "README.md"
    doc = readme.read_text()
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{readme}: no {BEGIN} ... {END} block")
    head, rest = doc.split(BEGIN, 1)
    readme.write_text(head + BEGIN + "\n" + text + "\n" + END + rest.split(END, 1)[1])
    print(f"updated {readme}")


if __name__ == "__main__":
    main()
