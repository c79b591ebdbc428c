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


# rows a later run of the same arch and target replaced, kept apart: file -> what they were
REPLACED_GRID_ROWS = {
    "latency_budget_2026-12-01": "learned with lambda's rate 0.05, before the default `--lam-rate auto`",
    "latency_budget_stale-table": ("the mobile nets', learned against a table timed on another day than they were "
                                   "measured (efficientnet_lite0: every point from the point cache of earlier days, "
                                   "\"Cached points against a fresh profile\" below; mobilenet_v2: profiled the evening "
                                   "before, its batch-1 fit off by up to 18%)"),
    "latency_budget_fixed-rate": ("ResNet-18's and ResNet-34's, learned with lambda's fixed rate 0.05 (ResNet-34's 0.3 "
                                  "plan at 0.357) against tables whose batch-1 fit was off by up to 16% and 12%"),
}


REPLACED_WHY_ROWS = {
    "why_2026-12-01": "profiles of the grid plans learned with lambda's rate 0.05",
    "why_stale-table": "the mobile nets', of the plans learned against a table of another day",
    "why_fixed-rate": "ResNet-18's, of the plans learned with lambda's fixed rate 0.05",
}


def replaced(files: dict[str, str], by: str = "run of the same arch and target") -> str:
    """' Rows replaced by a later BY are kept: WHY, in FILE; ...' for the files that hold rows."""
    kept = [f"{why}, in `benchmarks/results/{name}.jsonl`" for name, why in files.items() if load(name)]
    return f" Rows replaced by a later {by} are kept: " + "; ".join(kept) + "." if kept else ""


def latency_budget_section() -> list[str]:
    rows = load("latency_budget")
    lat = [r for r in rows if r.get("kind") == "latency"]
    plans = {(r["arch"], r["target"]): r for r in rows if r.get("kind") == "plan"}
    if not lat:
        return []
    cell = {(r["arch"], r["target"], r["method"], r["batch"]): r for r in lat}
    methods = list(dict.fromkeys(r["method"] for r in lat))
    p0 = next(iter(plans.values()), {})
    out = ["### Latency as the budget (onnxruntime CPU, 224x224, 2 threads)", "",
           ("`python benchmarks/latency_budget.py` (rows: `benchmarks/results/latency_budget.jsonl`). Baselines trained "
            f"here at 64 px on the first {p0.get('limit', '?')} Fashion-MNIST images (efficientnet_lite0: its ImageNet "
            "weights, moved the same way); one latency table per model (`chanprune profile`, batch 1 and 32); plans "
            f"learned at 64 px for {p0.get('epochs', '?')} epoch(s) without fine-tuning, deployed at 224. The target is "
            "the fraction of the dense latency (mean over batch 1 and 32). `cp-latency`: `--budget latency`, gates over "
            "blocks (aligned by construction); `cp-latency-b1-r16`: the same with `--block 1`, rounded to 16 at export; "
            "`cp-flops-r16`: `--budget flops` at cp-latency's FLOPs, rounded to 16; `tp-r16@flops` / `tp-r16@latency`: "
            "Torch-Pruning MetaPruner (magnitude, uniform, round_to=16) at cp-latency's FLOPs / at its measured batch-1 "
            "latency (bisection on measured latency). Speedup: median per-round dense/slim ratio, interleaved in one "
            "process; predicted: from the table. Efficiency = speedup x FLOPs ratio. Bold: efficiency >= 1.0. "
            f"Machine: {machines(lat)}." + replaced(REPLACED_GRID_ROWS)), "",
           "| arch | target | method | FLOPs | b1 speedup (pred.) | b1 eff. | b32 speedup (pred.) | b32 eff. |",
           "|---|---|---|---|---|---|---|---|"]

    def part(r):
        if r is None:
            return "| - | -"
        bold = "**" if r["efficiency"] >= 1.0 else ""
        pred = f" ({r['predicted_speedup']:.2f}x)" if r.get("predicted_speedup") else ""
        return f"| {r['speedup']:.2f}x{pred} | {bold}{r['efficiency']:.2f}{bold}"

    archs = list(dict.fromkeys(r["arch"] for r in lat))
    for arch in archs:
        for t in sorted({r["target"] for r in lat if r["arch"] == arch}):
            for m in methods:
                b1, b32 = cell.get((arch, t, m, 1)), cell.get((arch, t, m, 32))
                if b1 or b32:
                    out.append(f"| {arch} | {t} | {m} | {(b1 or b32)['flops_ratio']:.3f} {part(b1)} {part(b32)} |")
    out += ["", "Mean efficiency per arch (goal: >= 1.0 at batch 1 and 32 for cp-latency):", "",
            "| arch | " + " | ".join(f"{m} b1 | {m} b32" for m in methods) + " |",
            "|---|" + "---|" * (2 * len(methods))]
    for arch in archs:
        cells = []
        for m in methods:
            for b in (1, 32):
                e = [r["efficiency"] for r in lat if r["arch"] == arch and r["method"] == m and r["batch"] == b]
                cells.append(f"{statistics.fmean(e):.2f}" if e else "-")
        out.append(f"| {arch} | " + " | ".join(cells) + " |")
    out += ["", ("At equal measured latency. Torch-Pruning's uniform ratio with `round_to=16` moves in coarse steps "
                 "(resnet18's 64 channels have four multiples of 16), so no ratio lands on cp-latency's latency: "
                 "`tp-r16@flops` and `tp-r16@latency` usually bracket it. Interpolating FLOPs linearly in the latency "
                 "ratio between the two gives the FLOPs (and the efficiency) Torch-Pruning would have at exactly "
                 "cp-latency's measured latency; '-' where the two do not bracket it."), "",
            "| arch | target | batch | cp-latency latency ratio | its FLOPs | TP FLOPs at that latency (interp.) | "
            "efficiency cp / TP |", "|---|---|---|---|---|---|---|"]
    for arch in archs:
        for t in sorted({r["target"] for r in lat if r["arch"] == arch}):
            for b in (1, 32):
                ours, lo, hi = (cell.get((arch, t, m, b)) for m in ("cp-latency", "tp-r16@flops", "tp-r16@latency"))
                if not (ours and lo and hi):
                    continue
                r0, (r1, f1), (r2, f2) = 1 / ours["speedup"], (1 / lo["speedup"], lo["flops_ratio"]), (1 / hi["speedup"], hi["flops_ratio"])
                if not min(r1, r2) <= r0 <= max(r1, r2) or r1 == r2:
                    out.append(f"| {arch} | {t} | {b} | {r0:.3f} | {ours['flops_ratio']:.3f} | - | - |")
                    continue
                f = f1 + (r0 - r1) / (r2 - r1) * (f2 - f1)
                out.append(f"| {arch} | {t} | {b} | {r0:.3f} | {ours['flops_ratio']:.3f} | {f:.3f} | "
                           f"{ours['flops_ratio'] / r0:.2f} / {f / r0:.2f} |")
    out += ["", "Latency fidelity of cp-latency: the target, the table's prediction after learning (at tau) and after "
            "projection, and the measured ratio (mean of batch 1 and 32, interleaved). Lambda's rate: the budget's "
            "dual-ascent rate per step: 0.05, the fixed rate that was the default when the row was learned, or the "
            "rate the default `--lam-rate auto` chose for the run's learning steps:", "",
            "| arch | target | lambda's rate | learned | projected | measured b1 | measured b32 | measured mean | off by "
            "| aligned |", "|---|---|---|---|---|---|---|---|---|---|"]
    for (arch, t), p in plans.items():
        m1, m32 = cell.get((arch, t, "cp-latency", 1)), cell.get((arch, t, "cp-latency", 32))
        if not (m1 and m32):
            continue
        r1, r32 = 1 / m1["speedup"], 1 / m32["speedup"]
        mean = (r1 + r32) / 2
        f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        rate = f"auto ({p['lam_rate']:.3f})" if p.get("lam_rate") is not None else "0.05"
        out.append(f"| {arch} | {t} | {rate} | {f(p.get('latency_learned'))} | {f(p.get('latency_projected'))} | "
                   f"{r1:.3f} | {r32:.3f} | {mean:.3f} | {mean - t:+.3f} | "
                   f"{'yes' if p.get('aligned') else 'no'} |")
    prof = {}
    for (arch, _), p in plans.items():
        if p.get("profile"):
            prof.setdefault(arch, p["profile"])
    if prof:
        out += ["", "Profiling cost (`chanprune profile`, this machine) and the table's calibration error against "
                "whole models (fit plans: worst; holdout plan: not in the fit):", "",
                "| arch | seconds | unique layers | grid points | b1 worst / holdout | b32 worst / holdout |",
                "|---|---|---|---|---|---|"]
        for arch, pr in prof.items():
            cal = pr.get("calibration") or {}
            c = lambda b: ("-" if b not in cal else  # noqa: E731
                           f"{100 * cal[b]['max_abs_rel_error']:.1f}% / {100 * cal[b]['holdout_rel_error']:+.1f}%")
            reused = f" ({pr['points_reused']} points from the cache: calibration only)" if pr.get("points_reused") else ""
            out.append(f"| {arch} | {pr['seconds']:.0f}{reused} | {pr.get('unique_layers')} | {pr.get('points')} | "
                       f"{c('1')} | {c('32')} |")
    return out + [""]


def repredict_section() -> list[str]:
    rows = load("repredict")
    if not rows:
        return []
    t0 = rows[0]["tables"]
    out = [("Cached points against a fresh profile (`python benchmarks/repredict.py --arch A`, rows: "
            "`benchmarks/results/repredict.jsonl`): the grid's plans of one arch predicted by its table (built "
            f"{t0['cached']['created'][:10]} from {t0['cached']['points_reused']} points reused from the point cache, only "
            f"the calibration timed that day) and by the same profile with `--no-cache` ({t0['fresh']['points_timed']} "
            f"points timed, {t0['fresh']['created'][:10]}), against the speedup the grid measured. Error: predicted over "
            "measured, minus 1." + (
                " These plans were then learned again against a table profiled afresh (the grid above); the rows they "
                "replaced, whose speedups these are, are in `benchmarks/results/latency_budget_stale-table.jsonl`."
                if {r["arch"] for r in load("latency_budget_stale-table")} & {r["arch"] for r in rows} else "")), "",
           "| arch | target | method | batch | measured | cached table | error | fresh table | error |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for b in ("1", "32"):
            m, c, f = r["measured"][b], r["predicted_cached"][b], r["predicted_fresh"][b]
            out.append(f"| {r['arch']} | {r['target']} | {r['method']} | {b} | {m:.2f}x | {c:.2f}x | "
                       f"{100 * (c / m - 1):+.1f}% | {f:.2f}x | {100 * (f / m - 1):+.1f}% |")
    out.append("")
    for b in ("1", "32"):
        for name in ("cached", "fresh"):
            e = [abs(r[f"predicted_{name}"][b] / r["measured"][b] - 1) for r in rows]
            ours = [abs(r[f"predicted_{name}"][b] / r["measured"][b] - 1) for r in rows if r["method"] == "cp-latency"]
            out.append(f"- Batch {b}, {name} table: mean absolute error {100 * statistics.fmean(e):.1f}% over all plans, "
                       f"{100 * statistics.fmean(ours):.1f}% on cp-latency's.")
    return out + [""]


def ceiling_section() -> list[str]:
    rows = load("ceiling")
    plans = [r for r in rows if "latency_ratio" in r]
    if not plans:
        return []
    lat = {(r["arch"], r["target"], r["method"], r["batch"]): r for r in rows if r.get("kind") == "latency"}
    out = ["#### How much efficiency the table allows: a greedy most-FLOPs plan", "",
           ("`python benchmarks/ceiling.py --archs A --targets t` (rows: `benchmarks/results/ceiling.jsonl`): from the "
            "dense model, drop the gate block that gives up the fewest FLOPs per unit of predicted latency saved, "
            "until the table's latency ratio is down to the learned plan's (cp-latency of the grid above, the same "
            "blocks and table); then both are exported at 1x3x224x224 and timed against dense in one interleaved "
            "run per batch size. The greedy plan sees no data: it bounds the efficiency a plan can reach here, not "
            f"its accuracy. Machine: {machines(plans)}."), "",
           "| arch | target | plan | predicted latency | FLOPs | channels kept | speedup b1 / b32 | efficiency b1 / b32 | search |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in plans:
        for m in ("cp-latency", "greedy"):
            got = [lat.get((r["arch"], r["target"], m, b)) for b in (1, 32)]
            sp = " / ".join(f"{g['speedup']:.2f}x" if g else "-" for g in got)
            ef = " / ".join(f"{g['efficiency']:.2f}" if g else "-" for g in got)
            out.append(f"| {r['arch']} | {r['target']} | {m} | {r['latency_ratio'][m]:.3f} | "
                       f"{r['flops_ratio_predicted'][m]:.3f} | {r['kept'][m]} | {sp} | {ef} | "
                       f"{str(round(r['search_s'])) + ' s' if m == 'greedy' else '-'} |")
    return out + [""]


def floor_section() -> list[str]:
    rows = load("floor")
    preds = [r for r in rows if r.get("kind") == "predicted"]
    if not preds:
        return []
    lat = {(r["arch"], r["method"], r["batch"]): r for r in rows if r.get("kind") == "latency"}
    grid = {(r["arch"], r["target"], r["batch"]): r for r in load("latency_budget")
            if r.get("kind") == "latency" and r.get("method") == "tp-r16@latency"}
    out = ["#### Why plans that thin every layer stay below 1: the floor of the same depth", "",
           ("`python benchmarks/floor.py --archs A` (rows: `benchmarks/results/floor.jsonl`), from the grid's baseline "
            "and table of each arch. Floor: the table's latency of the thinnest aligned network of the same depth "
            "(every channel group at one block of 16), as a fraction of dense. If the time above the floor f fell in "
            "proportion to the FLOPs, a plan that keeps every layer would reach a latency ratio t with an efficiency "
            "of (t - f) / ((1 - f) t) (formula). Uniform: every group kept at the same share of its blocks (what "
            "Torch-Pruning's one ratio with round_to=16 keeps), the share set so that the table predicts t at that "
            "batch size; its predicted FLOPs / latency is its efficiency. TP measured: the grid's tp-r16@latency "
            "efficiency at that target and batch (timed on the grid's machine, another day). Measured here: the floor "
            "plan and the uniform plan at the middle target (its share set at batch 1) exported at 1x3x224x224 and "
            f"timed against dense, interleaved. Machine: {machines(preds)}."), "",
           "| arch | batch | floor (predicted) | floor (measured) | t | uniform: latency, FLOPs | uniform efficiency "
           "(predicted) | formula | TP measured (grid) |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in preds:
        for b in (1, 32):
            fm = lat.get((r["arch"], "floor", b))
            floor = f"{r['floor']['latency_ratio'][str(b)]:.3f} | {1 / fm['speedup']:.3f}" if fm else \
                f"{r['floor']['latency_ratio'][str(b)]:.3f} | -"
            for k, u in r["uniform"].items():
                t, kb = k.split("/")
                if kb == f"b{b}":
                    tp = grid.get((r["arch"], float(t), b))
                    tp = f"{tp['efficiency']:.2f}" if tp else "-"
                    out.append(f"| {r['arch']} | {b} | {floor} | {t} | {u['latency_ratio']:.3f}, {u['flops_ratio']:.3f} "
                               f"| {u['efficiency']:.2f} | {u['formula']:.2f} | {tp} |")
    notes = [(r["arch"], m) for r in preds for b in (1, 32) if (m := lat.get((r["arch"], "uniform", b)))]
    if notes:
        out.append("")
    for arch, m in notes:
        out.append(f"- {arch}, the uniform plan of t = {m['target']} timed at batch {m['batch']}: {1 / m['speedup']:.3f} "
                   f"of dense, FLOPs {m['flops_ratio']:.3f}, efficiency {m['efficiency']:.2f}.")
    return out + [""]


def flops_weight_section() -> list[str]:
    rows = load("flops_weight")
    plans = [r for r in rows if r.get("kind") == "plan"]
    if not plans:
        return []
    lat = {(r["arch"], r["target"], r["method"], r["batch"]): r for r in rows if r.get("kind") == "latency"}
    out = ["#### Rewarding kept FLOPs under the latency budget", "",
           ("`python benchmarks/flops_weight.py --archs A --targets t --weights 0,1` (rows: "
            "`benchmarks/results/flops_weight.jsonl`): the grid's cp-latency learn (its baseline, table and command: "
            "one epoch at 64 px, plans only) with `--flops-weight W`, which subtracts W x the sampled FLOPs ratio "
            "from the loss (0: off, the default), all W learned from the same baseline and timed against dense in "
            "one interleaved run per batch size at 1x3x224x224 (a row with `--logit-bound` was learned and timed "
            "against dense after the others, `--logit-bound B`). Projected: the table's latency ratio after the "
            "projection. Polarized: the share of gates below 0.05 or above 0.95 when learning ended. Val: accuracy on "
            "the validation subset of the projected plan, before any fine-tuning. "
            f"Bold: efficiency >= 1.0. Machine: {machines(plans)}."), "",
           "| arch | target | --flops-weight | polarized | projected latency | FLOPs | val | measured latency b1 / b32 | "
           "speedup b1 / b32 (predicted) | efficiency b1 / b32 |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in plans:
        m = r.get("method") or f"fw{r['flops_weight']:g}"
        got = [lat.get((r["arch"], r["target"], m, b)) for b in (1, 32)]
        ml = " / ".join(f"{1 / g['speedup']:.3f}" if g else "-" for g in got)
        sp = " / ".join(f"{g['speedup']:.2f}x ({g['predicted_speedup']:.2f}x)" if g and g.get("predicted_speedup")
                        else "-" for g in got)
        ef = " / ".join((f"**{g['efficiency']:.2f}**" if g['efficiency'] >= 1.0 else f"{g['efficiency']:.2f}")
                        if g else "-" for g in got)
        val = f"{100 * r['val_accuracy']:.2f}" if r.get("val_accuracy") is not None else "-"
        bound = f" (--logit-bound {r['logit_bound']:g})" if r.get("logit_bound") else ""
        pol = f"{100 * r['polarized']:.1f}%" if r.get("polarized") is not None else "-"
        out.append(f"| {r['arch']} | {r['target']} | {r['flops_weight']:g}{bound} | {pol} | {r['latency_projected']:.3f} | "
                   f"{r['flops_ratio_224']:.3f} | {val} | {ml} | {sp} | {ef} |")
    return out + [""]


def why_section() -> list[str]:
    rows = load("why")
    if not rows:
        return []
    out = [("Where the time goes (`python benchmarks/why.py --arch A --target T`, rows: `benchmarks/results/why.jsonl`): "
           "onnxruntime's own profile at batch 1, kernel time per run, by the kind of node in the graph it actually "
           "runs (after folding batch norm and fusing activations). NCHWc: the channels-blocked AVX-512 kernels, "
           "which need channel counts in multiples of 16; NCHW: the fallback (im2col + GEMM), plus reorder nodes "
           "between the two layouts."), "",
           "Grid latency: FLOPs plans of `benchmarks/latency.py` (FLOPs target 0.5); grid latency_budget: the plans of "
           "`benchmarks/latency_budget.py` (latency targets; `--grid latency_budget`)."
           + replaced(REPLACED_WHY_ROWS, "profile of the same grid, arch and model"), "",
           "| grid | arch | target | model | kernel ms | convs on NCHWc | conv ms NCHWc / NCHW | depthwise conv ms | 1x1 conv ms | reorders ms |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        k = r.get("ms_per_kind", {})
        nchwc = sum(v for n, v in k.items() if "(NCHWc)" in n)
        nchw = sum(v for n, v in k.items() if "(NCHW)" in n)
        dw = sum(v for n, v in k.items() if n.startswith("depthwise"))
        one = sum(v for n, v in k.items() if n.startswith("1x1"))
        reorder = sum(v for n, v in k.items() if n.startswith("Reorder"))
        convs = sum(v for n, v in r["nodes"].items() if n.endswith("Conv"))
        out.append(f"| {r.get('grid', 'latency')} | {r['arch']} | {r.get('target', 0.5)} | {r['model']} | {r['ms_total']:.2f} | {r['nodes'].get('com.microsoft.nchwc:Conv', 0)}/{convs} | "
                   f"{nchwc:.2f} / {nchw:.2f} | {dw:.2f} | {one:.2f} | {reorder:.2f} |")
    return out + [""]


def fidelity_section() -> list[str]:
    learn = [r for r in load("latency") if r.get("kind") == "learn"]
    acc = [r for r in load("accuracy_2026-11") if r.get("method") == "chanprune"]
    acc += [r for r in load("accuracy") if r.get("setup") and r.get("method") == "chanprune"]
    if not (learn or acc):
        return []
    out = ["### Target fidelity: asked FLOPs ratio -> measured (fvcore on the slim model, frozen at tau 0.5, no search)", "",
           "| arch | where learned | asked t | measured | polarized | runs |", "|---|---|---|---|---|---|"]
    for r in sorted(learn, key=lambda r: (r["arch"], r["target"])):
        out.append(f"| {r['arch']} | Fashion-MNIST 64 px, 200 steps from scratch | {r['target']} | "
                   f"{r['flops_ratio_224']:.3f} | {r['polarized']:.1%} | 1 |")
    by = defaultdict(list)
    for r in acc:
        if not r.get("setup"):
            by[(r["arch"], r["target"])].append(r)
    for (arch, t), rs in sorted(by.items()):
        f = [r["flops_ratio"] for r in rs]
        out.append(f"| {arch} | Fashion-MNIST 28 px, 1 epoch from the baseline | {t} | "
                   f"{min(f):.3f}-{max(f):.3f} | {min(r['polarized'] for r in rs):.1%}+ | {len(rs)} |")
    by = defaultdict(list)
    for r in load("accuracy"):
        if r.get("setup") and r.get("method") == "chanprune":
            by[(r["arch"], r["target"])].append(r)
    for (arch, t), rs in sorted(by.items()):
        f = [r["flops_ratio"] for r in rs]
        why = ", ".join(sorted({f"{r['frozen']['reason']} at step {r['frozen']['steps']}" for r in rs if r.get("frozen")}))
        out.append(f"| {arch} | Fashion-MNIST {rs[0].get('image_size', 28)} px, {rs[0]['setup']} from the baseline, "
                   f"frozen ({why}), projected | {t} | "
                   f"{min(f):.3f}-{max(f):.3f} | {min(r['polarized'] for r in rs):.1%}+ | {len(rs)} |")
    return out + [""]


LEVERS = {
    "cp-default": "the default: distil, freeze when ready, project, slim one-cycle fine-tune",
    "cp-no-distill": "no distillation",
    "cp-fixed-split": "no freeze-when-ready: learn 1 epoch, fine-tune 2",
    "cp-cosine": "cosine fine-tuning instead of one-cycle",
    "cp-gate-init-norm": "gates start from the weights' group norm",
    "cp-anneal": "Gumbel temperature annealed 1 -> 0.2",
    "cp-trainable-gate": "the trainable gate of Kim et al. instead of Gumbel",
    "cp-learn-quarter": "freeze at the latest after a quarter of the budget, not half",
    "cp-lam-rate-auto": "lambda's rise scaled to the learning steps (`--lam-rate auto`), not 0.05 a step",
    "cp-gate-restart": "as cp-lam-rate-auto, and the gates' momentum restarted where the cost first crosses the "
                       "target (`--gate-restart`)",
    "cp-old-recipe": "the recipe before: no distillation, fixed split, cosine",
    "cp-finetune-lr-0.01": "fine-tuning's peak learning rate 0.01, not 0.02",
    "cp-finetune-lr-0.005": "fine-tuning's peak learning rate 0.005, not 0.02",
}


def _paired_cell(diffs, count: str = "wins") -> str:
    """Paired differences (fractions) as points: mean, ± sd over seeds, and in how many the first is ahead."""
    if not diffs:
        return "-"
    return (f"{100 * statistics.fmean(diffs):+.2f}" + (f" ± {100 * statistics.stdev(diffs):.2f}" if len(diffs) > 1 else "")
            + f" ({count} {sum(d > 0 for d in diffs)}/{len(diffs)})")


def _train_time(rs) -> str:
    """Mean train seconds over the rows not timed beside other jobs (`contended`), saying how many."""
    quiet = [r["train_seconds"] for r in rs if not r.get("contended")]
    if not quiet:
        return "-"
    return f"{statistics.fmean(quiet):.0f} s" + (f" ({len(quiet)} of {len(rs)} seeds)" if len(quiet) < len(rs) else "")


def _paired(cell, arch, setup, t, method, ref="chanprune"):
    """ref minus method, per shared seed (a pair only where both runs started from the same baseline)."""
    pairs = [(cell[(arch, setup, t, s, ref)], cell[(arch, setup, t, s, method)])
             for (a, su, tt, s, m) in cell if (a, su, tt, m) == (arch, setup, t, method) and (arch, setup, t, s, ref) in cell]
    return [x["test_accuracy"] - y["test_accuracy"] for x, y in pairs if x.get("baseline_key") == y.get("baseline_key")]


def accuracy_section() -> list[str]:
    rows = load("accuracy")
    runs = [r for r in rows if r.get("method") not in (None, "baseline") and r.get("setup")
            and r.get("suite") not in ("latency", "conditional", "modes")]
    if not runs:
        return []
    # the main suite's baseline per arch; where its runs re-estimate their batch norms (`-bnK`), the
    # baseline's accuracy with its own re-estimated the same way
    bn = {r["arch"]: r["bn_batches"] for r in runs if r.get("bn_batches")}
    # a run may name another baseline than its arch's (`baseline_key`: one retrained later); its change
    # is measured from that one
    other = {r["key"]: r for r in rows if r.get("method") == "baseline" and r.get("retrained")}
    baselines = _baselines(rows)
    base = {r["arch"]: r for r in baselines if r.get("bn_batches") == bn.get(r["arch"])}
    stale = {r["arch"]: f"{pct(r['test_accuracy'])}%" for r in baselines if not r.get("bn_batches")}
    own = lambda r: other[r["baseline_key"]] if r.get("baseline_key") in other else base.get(r["arch"])  # noqa: E731
    cell = {(r["arch"], r["setup"], r["target"], r["seed"], r["method"]): r for r in runs}
    ablation = [r for r in runs if r["method"].startswith("cp-")]
    main = [r for r in runs if not r["method"].startswith("cp-")]
    setups = sorted({r["setup"] for r in runs})
    out = ["### Accuracy at matched FLOPs, same training budget (Fashion-MNIST)", "",
           ("`python benchmarks/accuracy.py --suite main` and `--suite ablations` (rows: "
            "`benchmarks/results/accuracy.jsonl`; the rows of the previous setup, 2 epochs on all the data, are kept "
            "in `accuracy_2026-11.jsonl`). Setup " + ", ".join(f"`{x}`" for x in setups) + ": every method trains "
            "the same number of epochs after the same baseline, on the same fixed subset (`L12000`: the first "
            "12,000 training images, 10% held out for validation; `e3`: 3 epochs); final accuracy on the whole test "
            "split (10,000 images). chanprune: `chanprune learn --weights BASE --target t --epochs 3 --limit 12000`. "
            "Torch-Pruning: MetaPruner one shot from the baseline (magnitude, group norm, FPGM; one ratio for "
            "every layer, bisected to t x the dense FLOPs), or GroupNormPruner's sparse learning for a third of the "
            "budget first (`group-sl`); then fine-tuned with its documented recipe (SGD lr 0.01, wd 5e-4, x0.1 at "
            "60%/80%) or, `+cp`, with chanprune's (distillation from the baseline, one-cycle at lr 0.02, wd 1e-4). "
            "`@wall`: the same method given as much training time as chanprune's run of that seed took (its steps "
            "scaled by the ratio of the two train times): the comparison at equal wall time. "
            "After pruning: validation accuracy right after the cut (chanprune: at the freeze; this split was "
            "part of the baseline's training data, so it reads high). Train time: the "
            "training loops' own seconds. Rerun a row: delete it from the .jsonl and run the suite again. "
            "A baseline row stores a digest of the weights it measured; when the baseline file later holds other "
            "weights (retrained), the suite measures them in a second row and the runs from them name it "
            "(`baseline_key`): their change is measured from it, and a seed pairs two runs only from the same one. "
            + "".join(f"The transfer scenario ({arch}, setup `-64px-bn{k}`): Lite0 with its ImageNet weights, moved "
                      "to Fashion-MNIST at 64 px (the latency grid's baseline), then every method at 64 px, and every "
                      f"model's batch norms re-estimated on {k} batches at the end, the baseline's too: Lite0's "
                      "momentum of 0.01 leaves running statistics that still describe an earlier network after a short "
                      f"budget (the same baseline without re-estimation scores {stale.get(arch, '-')}). "
                      for arch, k in bn.items())
            + f"Machine: {machines(runs)}."), "",
           ("| arch | target | method | FLOPs | after pruning (val) | final test (mean ± sd) | change vs baseline | "
            "chanprune minus this, paired by seed | train time | seeds |"),
           "|---|---|---|---|---|---|---|---|---|---|"]
    goals = []
    for arch in dict.fromkeys(r["arch"] for r in main):
        b = base.get(arch)
        if b:
            what = f"baseline (batch norms re-estimated on {b['bn_batches']} batches)" if b.get("bn_batches") else "baseline"
            out.append(f"| {arch} | - | {what} | 1.000 | - | {pct(b['test_accuracy'])} | - | - | - | - |")
        for key, o in other.items():
            used = sorted({(r["target"], r["seed"]) for r in main if r.get("baseline_key") == key})
            if o["arch"] == arch and used:
                def which(t, sd):  # the (target, seed), or the methods of it that used this baseline
                    rs = [r for r in main if (r["arch"], r["target"], r["seed"]) == (arch, t, sd)]
                    ms = [r["method"] for r in rs if r.get("baseline_key") == key]
                    return f"t={t} seed {sd}" + ("" if len(ms) == len(rs) else f" ({', '.join(ms)})")
                where = ", ".join(which(t, sd) for t, sd in used)
                out.append(f"| {arch} | - | baseline retrained with the same command ({o.get('date', '?')}), the "
                           f"runs of {where} | 1.000 | - | {pct(o['test_accuracy'])} | - | - | - | - |")
        for setup in setups:
            for t in sorted({r["target"] for r in main if r["arch"] == arch and r["setup"] == setup}, reverse=True):
                means, losses = {}, {}
                for m in dict.fromkeys(r["method"] for r in main):
                    rs = [r for r in main if (r["arch"], r["setup"], r["target"], r["method"]) == (arch, setup, t, m)]
                    if not rs:
                        continue
                    acc = [r["test_accuracy"] for r in rs]
                    means[m] = statistics.fmean(acc)
                    sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
                    diffs = _paired(cell, arch, setup, t, m)
                    paired = "-" if m == "chanprune" else _paired_cell(diffs)
                    if all(own(r) for r in rs):  # each run from its own baseline
                        losses[m] = statistics.fmean(own(r)["test_accuracy"] - r["test_accuracy"] for r in rs)
                    change = f"{-100 * losses[m]:+.2f}" if m in losses else "-"
                    out.append(f"| {arch} | {t} | {m} | {statistics.fmean(r['flops_ratio'] for r in rs):.3f} | "
                               f"{pct(statistics.fmean(r['val_after_pruning'] for r in rs))} | "
                               f"{pct(means[m])} ± {100 * sd:.2f} | {change} | {paired} | "
                               f"{_train_time(rs)} | {len(rs)} |")
                goals += _goals(arch, setup, t, means, losses, cell)
    out += [""] + goals
    if ablation:
        out += ["", "#### Ablations: one lever each (ResNet-20, t = 0.5, one seed)", "",
                ("`python benchmarks/accuracy.py --suite ablations`. Each lever at t itself (not at the matched "
                 "FLOPs), against `cp-default`, the default recipe at t. One seed: a difference below the test "
                 "split's standard error (about 0.28 points at 91%) is noise. Train times above 300 s were "
                 "measured while other jobs (the test suite, another training) ran beside them; compare those rows on "
                 "accuracy only."), "",
                "| method | lever | FLOPs | froze | final test | vs the default | train time |", "|---|---|---|---|---|---|---|"]
        ref = {(r["arch"], r["setup"], r["target"], r["seed"]): r for r in runs if r["method"] == "cp-default"}
        for r in sorted(ablation, key=lambda r: r["method"] != "cp-default"):
            d = ref.get((r["arch"], r["setup"], r["target"], r["seed"]))
            fr = r.get("frozen") or {}
            froze = f"{fr.get('reason')} at step {fr.get('steps')}" if fr.get("reason") else "-"
            vs = "-" if r["method"] == "cp-default" or d is None else f"{100 * (r['test_accuracy'] - d['test_accuracy']):+.2f}"
            out.append(f"| {r['method']} | {LEVERS.get(r['method'], '')} | {r['flops_ratio']:.3f} | {froze} | "
                       f"{pct(r['test_accuracy'])} | {vs} | {r['train_seconds']:.0f} s |")
    return out + [""]


LATENCY_ACCURACY_REPLACED = "accuracy_latency_2026-12-02"  # the latency suite's rows of the learner before 2026-12-03


def _latency_accuracy_table(runs: list[dict], bases: list[dict]) -> list[str]:
    """One block of rows per baseline: a run names its baseline (baseline_key) where it is not the arch's
    first (`ARCH/latency-baseline`); runs on different baselines are neither averaged nor paired."""
    out = ["| arch | baseline | setup | latency target | method | measured latency (b1) | FLOPs | "
           "final test (mean ± sd) | cp-latency minus this, paired by seed | train time | seeds |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for b in bases:
        arch, first = b["arch"], f"{b['arch']}/latency-baseline"  # runs from the first name no baseline_key
        mine = [r for r in runs if r["arch"] == arch and r.get("baseline_key", first) == b["key"]]
        if not mine and b["key"] != first:
            continue
        name = f"{b['sha256'][:8]}, {b.get('date', '-')}" if "sha256" in b else b.get("date", "-")
        bn = [v for k, v in b.items() if k.startswith("test_accuracy_bn")]
        acc = pct(b["test_accuracy"]) + (f" ({pct(bn[0])} with its batch norms re-estimated)" if bn else "")
        cpu = b.get("machine", "-").split(",")[0]
        out.append(f"| {arch} | {name} | - | - | baseline (ImageNet weights, moved; {cpu}) | 1.000 | 1.000 | {acc} "
                   "| - | - | - |")
        cell = {(r["arch"], r["setup"], r["latency_target"], r["seed"], r["method"]): r for r in mine}
        for setup, t in dict.fromkeys((r["setup"], r["latency_target"]) for r in mine):
            for m in dict.fromkeys(r["method"] for r in mine):
                rs = [r for r in mine if (r["setup"], r["latency_target"], r["method"]) == (setup, t, m)]
                if not rs:
                    continue
                acc = [r["test_accuracy"] for r in rs]
                sd = f" ± {100 * statistics.stdev(acc):.2f}" if len(acc) > 1 else ""  # one seed has no spread
                paired = "-" if m == "cp-latency" else _paired_cell(_paired(cell, arch, setup, t, m, ref="cp-latency"))
                out.append(f"| {arch} | {name} | {setup} | {t} | {m} | "
                           f"{statistics.fmean(r['latency_ratio_b1'] for r in rs):.3f} | "
                           f"{statistics.fmean(r['flops_ratio'] for r in rs):.3f} | "
                           f"{pct(statistics.fmean(acc))}{sd} | {paired} | {_train_time(rs)} "
                           f"| {len(rs)} |")
    return out


def latency_accuracy_section() -> list[str]:
    runs = [r for r in load("accuracy") if r.get("suite") == "latency" and r.get("method") != "baseline"]
    if not runs:
        return []
    base = [r for r in load("accuracy") if r.get("suite") == "latency" and r.get("method") == "baseline"]
    out = ["### Accuracy at equal measured latency: EfficientNet-Lite0 from ImageNet (Fashion-MNIST, 64 px)", "",
           ("`python benchmarks/accuracy.py --suite latency` (rows: `benchmarks/results/accuracy.jsonl`, `suite: "
            "latency`). The baseline is the latency grid's: Lite0 with its ImageNet weights moved to Fashion-MNIST "
            "at 64 px. Each method then trains the same epochs at 64 px after pruning with chanprune's recipe "
            "(distillation from the baseline, one-cycle); its ONNX at 1x3x224x224 is timed at batch 1 against the "
            "dense one (interleaved, 2 threads). cp-latency: `learn --budget latency --target t`; cp-flops-r16: "
            "`learn --budget flops` at cp-latency's FLOPs, exported with `--round-to 16`; tp-r16+cp: Torch-Pruning "
            "uniform `round_to=16`, its ratio bisected on measured latency to cp-latency's; table-greedy+cp: the "
            "latency table's greedy most-FLOPs plan (`benchmarks/ceiling.py`, blocks of 16 ranked by the weights' "
            "group norm, no data, no learning), the prefix of its drops bisected on measured latency the same way; "
            "cp-latency-ls0.25: cp-latency freezing at the latest after a quarter of the budget (`--max-learn-share "
            "0.25`, default half), so that the slim model fine-tunes for three quarters (cp-latency-ls0.75: after three quarters, "
            "`--max-learn-share 0.75`); cp-latency-norm: "
            "cp-latency with its gates started graded by the weights' group norm (`--gate-init norm`, default "
            "uniform); cp-latency-fw1: cp-latency rewarding kept FLOPs (`--flops-weight 1`, default 0; "
            "`benchmarks/flops_weight.py`); cp-latency-fixed: cp-latency learning its gates with the weights fixed "
            "(`--fix-weights`), so that they train only after the cut, from the baseline's, as tp-r16+cp's do; "
            "cp-latency-b1: cp-latency learned per channel (`--block 1`), exported with `--round-to 16` (rounding down, "
            "then up where the table's cost allows: aligned afterwards, not by construction). "
            "Baseline: its weights' "
            "digest and day; the suite retrains it where its file is missing, and on another CPU the same command can "
            "train other bits, so a retrained baseline starts its own block: its runs are neither averaged nor "
            "paired with another baseline's. Train time: the "
            "training loops' own seconds, over the seeds not trained beside other jobs. Final accuracy: the "
            "exported slim model on the whole test split. Setup `L12000-e2-bn100`: the first 12,000 training images, "
            "2 epochs, and every method's batch norms re-estimated on 100 batches at the end (Lite0's momentum is "
            "0.01, so after a short budget its running statistics still describe the unpruned network); "
            "`L12000-e4-bn100`: the same with 4 epochs (`--epochs 4`: twice the steps to learn and to fine-tune); "
            "`L12000-e2`: the same without re-estimation, one row (in the replaced table below) kept to show what "
            "it does. "
            f"Machine: {machines(runs)}."), ""]
    out += _latency_accuracy_table(runs, base)
    old = [r for r in load(LATENCY_ACCURACY_REPLACED) if r.get("method") != "baseline"]
    old_base = [r for r in load(LATENCY_ACCURACY_REPLACED) if r.get("method") == "baseline"]
    if old:
        out += ["", (f"Replaced (`benchmarks/results/{LATENCY_ACCURACY_REPLACED}.jsonl`): the same suite with cp-latency "
                     "learned on 2026-12-02, against the table profiled that day from cached points (see the grid's "
                     "\"Why the relearn\") and with lambda's fixed rate 0.05, the learner's defaults then; cp-flops-r16 "
                     "and tp-r16+cp are matched to those plans, and table-greedy+cp (run 2026-12-03) too."), ""]
        out += _latency_accuracy_table(old, old_base)
    return out + [""]


def lam_rate_section() -> list[str]:
    rows = load("lam_rate")
    if not rows:
        return []
    out = ["#### Lambda's rate, the logit bound and the gates' restart on a short run", "",
           ("`python benchmarks/lam_rate.py --archs A --targets T --bounds 0,10` (rows: "
            "`benchmarks/results/lam_rate.jsonl`): the grid's cp-latency plan (same baseline, table and command, one "
            "epoch at 64 px, plans only) learned with `--lam-rate 0.05` and `--lam-rate auto` (the default since 2026-12-03), with the "
            "gates' logit gap unbounded (`--logit-bound 0`, the default) or bounded (`--logit-bound 10`), and with "
            "the gates' momentum restarted where the cost crosses the target (`--gate-restart`, the default since "
            "2026-12-04; `--restarts on,off`) or not (every row before it). ResNet-34's rows start from a baseline "
            "trained and a table profiled again on 2026-12-04 (the grid's runs were gone), by the grid's own "
            "commands, so they pair with each other, not with the grid's rows. First crossing: the step whose "
            "cost first crossed the target (recorded since the restart; never: it did not cross; '-': not "
            "recorded). "
            "Learned: the table's predicted latency ratio at tau when learning ended; it must be within 0.05 of the "
            "target. Projected: after the projection (within 0.02). Polarized: the share of gates below 0.05 or "
            "above 0.95 when learning ended. Val: accuracy on the validation subset when learning ended, before "
            "the projection and without fine-tuning (one epoch of learning on 12,800 images). "
            f"Machine: {machines(rows)}."), "",
           "| arch | target | --lam-rate | --logit-bound | restart | first crossing | rate used | steps | lambda at the end | "
           "polarized | learned | off by | projected | val |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["arch"], r["target"], r.get("logit_bound", 0.0), r["lam_rate"] != "0.05",
                                         bool(r.get("gate_restart")))):
        off = r["latency_learned"] - r["target"]
        bound = r.get("logit_bound", 0.0)
        first = r.get("first_crossing")
        out.append(f"| {r['arch']} | {r['target']} | {r['lam_rate']} | {f'{bound:g}' if bound else 'none'} | "
                   f"{'on' if r.get('gate_restart') else 'off'} | {'-' if 'first_crossing' not in r else 'never' if first is None else f'step {first}'} | "
                   f"{r['rate_used']:.3f} | {r['steps']} | "
                   f"{r['lambda_end']:.0f} | {r['polarized']:.1%} | {r['latency_learned']:.3f} | "
                   f"{'**' if abs(off) <= 0.05 else ''}{off:+.3f}{'**' if abs(off) <= 0.05 else ''} | "
                   f"{r['latency_projected']:.3f} | {pct(r['val_accuracy'])} |")
    return out + ["", "Bold: the learned figure within 0.05 of the target.", ""]


def profile_timing_section() -> list[str]:
    rows = load("profile_timing")
    if not rows:
        return []
    out = ["#### What a table's point times: the whole call or the kernels", "",
           ("`python benchmarks/profile_timing.py` (rows: `benchmarks/results/profile_timing.jsonl`): `chanprune "
            "profile --timing wall` (the default: each one-layer graph's session call, reorders and call overhead "
            "included) against `--timing kernel` (onnxruntime's own profile of the same graph, its kernels only, the "
            "layout reorders around a lone blocked conv left out) and `wall+context` (`--in-context`: each layer's "
            "row then corrected to its kernel time inside the calibration models), each calibrated against the same kind of whole "
            "cut models (the dense one and 3 random aligned plans in the fit, one more held out), run one after the "
            "other, alone. Relative error of the calibrated prediction: worst over the fitted models / on the "
            f"held-out plan. Bold: the best of the variants. Machine: {machines(rows)}."), "",
           "| arch | input | timing | seconds | b1 worst | b1 holdout | b32 worst | b32 holdout | b1 scale, offset ms |",
           "|---|---|---|---|---|---|---|---|---|"]
    def err(r, b, k):
        c = r["calibration"].get(b)
        return None if c is None else c["max_abs_rel_error"] if k == "worst" else c["holdout_rel_error"]

    for r in rows:
        others = [o for o in rows if o["arch"] == r["arch"] and o is not r]

        def cell(b, k, r=r, others=others):
            v = err(r, b, k)
            if v is None:
                return "-"
            rest = [abs(e) for e in (err(o, b, k) for o in others) if e is not None]
            text = f"{v:+.1%}" if k == "holdout" else f"{v:.1%}"
            return f"**{text}**" if rest and abs(v) < min(rest) else text

        c1 = r["calibration"]["1"]
        shape = "x".join(map(str, r["input_shape"][2:]))
        out.append(f"| {r['arch']} | {shape} | {r['timing']} | {r['seconds']:.0f} | {cell('1', 'worst')} | "
                   f"{cell('1', 'holdout')} | {cell('32', 'worst')} | {cell('32', 'holdout')} | "
                   f"{c1['scale']:.2f}, {c1['offset_ms']:.2f} |")
    return out + [""]


def profile_fit_section() -> list[str]:
    rows = load("profile_fit")
    prof = [r for r in rows if r["key"].startswith("profile/")]
    if not prof:
        return []
    out = ["#### How a table is calibrated: one scale, or by parts", "",
           ("`python benchmarks/profile_fit.py` (rows: `benchmarks/results/profile_fit.jsonl`): one `chanprune profile "
            "--fit parts` per model (onnxruntime CPU, 2 threads; the table keeps what was timed, so both fits come from "
            "the same points and the same whole-model timings). `scale`: model = scale x the layers' sum + offset "
            "(`--fit scale`, the fit before this one). `parts`: each layer's grid split into an intercept, the terms "
            "linear in one count and the product of the two, one non-negative weight each (the default). Errors: "
            "relative, worst over the fitted models (the dense one and 3 random aligned plans) / on a held-out plan. "
            "Seconds: the profile with the points already timed on this machine (its point cache); only the "
            "calibration models were timed in it. "
            f"Machine: {machines(prof)}."), "",
           "| arch | input | seconds | b1 worst: scale / parts | b1 holdout | b32 worst | b32 holdout "
           "| parts weights b1 (intercept, linear, product) | b32 |",
           "|---|---|---|---|---|---|---|---|---|"]

    def pair(c, k):
        a, v = c["alternative"][k], c[k]
        f = (lambda e: f"{e:+.1%}") if "holdout" in k else (lambda e: f"{e:.1%}")
        return f"{f(a)} / " + (f"**{f(v)}**" if abs(v) < abs(a) else f(v))

    def weights(c):
        w = c.get("weights") or {}
        return ", ".join(f"{w[k]:.2f}" for k in ("intercept", "linear", "product")) if w else "-"

    for r in prof:
        c1, c32 = r["calibration"]["1"], r["calibration"]["32"]
        shape = "x".join(map(str, r["input_shape"][1:]))
        out.append(f"| {r['arch']} | {shape} | {r['seconds']:.0f}{' (points cached)' if r.get('cached') else ''} | "
                   f"{pair(c1, 'max_abs_rel_error')} | {pair(c1, 'holdout_rel_error')} | "
                   f"{pair(c32, 'max_abs_rel_error')} | {pair(c32, 'holdout_rel_error')} | {weights(c1)} | {weights(c32)} |")
    plans = [r for r in rows if r["key"].startswith("plan/")]
    if plans:
        out += ["", ("Learned plans, none of them in either fit (the CI guard's two resnet18 plans; MobileNetV2's three "
                     "plans of the latency grid at target 0.7), cut, exported and timed against the dense model in one "
                     "interleaved run per batch size, against the speedup each table predicted:"), "",
                "| arch | plan | batch | measured | predicted: scale | error | parts | error |", "|---|---|---|---|---|---|---|---|"]
        for r in plans:
            ps, pp = r["predicted"]["scale"], r["predicted"]["parts"]
            bold = abs(pp["rel_error"]) < abs(ps["rel_error"])
            err = f"**{pp['rel_error']:+.1%}**" if bold else f"{pp['rel_error']:+.1%}"
            out.append(f"| {r['arch']} | `{Path(r['plan']).name}` | {r['batch']} | {r['speedup']:.2f}x | "
                       f"{ps['speedup']:.2f}x | {ps['rel_error']:+.1%} | {pp['speedup']:.2f}x | {err} |")
        mean = {k: statistics.mean(abs(r["predicted"][k]["rel_error"]) for r in plans) for k in ("scale", "parts")}
        out += ["", f"Mean absolute error over these {len(plans)} rows: scale {mean['scale']:.1%}, parts {mean['parts']:.1%}."]
    return out + [""]


def conditional_trained_section() -> list[str]:
    rows = [r for r in load("conditional") if r["key"].startswith("trained/")]
    if not rows:
        return []
    out = ["#### Trained: the dynamic model against a static model (batch 1)", "",
           ("`python benchmarks/conditional.py --trained RUN --static STATIC_RUN` (rows: "
            "`benchmarks/results/conditional.jsonl`, keys `trained/...`). The runs of the conditional accuracy suite "
            "(below), timed on the same test images one at a time, in turn (each image takes its own path), 2 threads. "
            "Speedups over the dense architecture on the same backend; static: the suite's cd-static slim model "
            "(exported without `--round-to`) of the same seed, at the same target t unless the column names "
            "another (a static model of about equal accuracy). torch dynamic: `dynamic_model`; ort: `onnx_dynamic_model` by gathers, or "
            f"`if` at layer granularity. Machine: {machines(rows)}."), "",
           "| arch | input (learned at) | method (t, seed) | executed FLOPs (range) | test acc. | static: FLOPs, test acc. | "
           "torch: masked | torch: dynamic | torch: static | ort: masked | ort: gather | ort: if | ort: static | "
           "dynamic measured / predicted (torch, ort) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for r in rows:
        sp = r["speedup"]
        cell = (lambda k: f"{sp[k]:.2f}x" if k in sp else "-")  # noqa: E731
        lo, hi = r["executed_flops_range"]
        size, learned = r["input_shape"][-1], r.get("learned_shape", r["input_shape"])[-1]
        best = {b: max(v for k, v in sp.items() if k.startswith(b) and k.split()[1] in ("dynamic", "gather", "if"))
                for b in ("torch", "ort")}
        fid = ", ".join(f"{best[b] * r['executed_flops_ratio']:.2f}" for b in ("torch", "ort"))
        other_t = r.get("static_target", r["target"]) != r["target"]
        static_t = f"(t={r['static_target']}) " if other_t else ""
        out.append(f"| {r['arch']} | {size} ({learned}) | {r['method']} ({r['target']}, {r['seed']}) | "
                   f"{r['executed_flops_ratio']:.3f} ({lo:.2f}-{hi:.2f}) | {pct(r['test_accuracy'])} | "
                   f"{static_t}{r['static_flops_ratio']:.3f}, {pct(r['static_test_accuracy'])} | {cell('torch masked')} | "
                   f"{cell('torch dynamic')} | {cell('torch static')} | {cell('ort masked')} | {cell('ort gather')} | "
                   f"{cell('ort if')} | {cell('ort static')} | {fid} |")
        acc = "more" if r["test_accuracy"] > r["static_test_accuracy"] else "less"
        faster = [b for b in ("torch", "ort") if best[b] > sp[f"{b} static"]]
        notes.append(f"- {r['arch']} at {size}, {r['method']} (t={r['target']}, seed {r['seed']}): the dynamic model is "
                     f"{acc} accurate than the static one" + (f" of t={r['static_target']}" if other_t else "")
                     + f" ({pct(r['test_accuracy'])} against "
                     f"{pct(r['static_test_accuracy'])}) and "
                     + ("faster on " + " and ".join(faster) if faster else "slower on both backends")
                     + f" (best dynamic {best['torch']:.2f}x / {best['ort']:.2f}x against static "
                     f"{sp['torch static']:.2f}x / {sp['ort static']:.2f}x, torch / onnxruntime): the goal "
                     + ("is met" if faster and acc == "more" else "is missed") + ".")
    return out + [""] + notes + [""]


def conditional_accuracy_section() -> list[str]:
    rows = load("accuracy")
    runs = [r for r in rows if r.get("suite") == "conditional"]
    if not runs:
        return []
    base = {r["arch"]: r for r in _baselines(rows) if not r.get("bn_batches")}  # without re-estimation
    cell = {(r["arch"], r["setup"], r["target"], r["seed"], r["method"]): r for r in runs}
    out = ["### Conditional computation against pruning at equal average FLOPs (Fashion-MNIST)", "",
           ("`python benchmarks/accuracy.py --suite conditional` (rows: `benchmarks/results/accuracy.jsonl`, "
            "`suite: conditional`). From the same baseline, every method trains the same epochs on the same subset "
            f"as the main accuracy table (setup {', '.join(sorted({r['setup'] for r in runs}))}) at an average FLOPs "
            "target t. cd-static: `learn --target t` "
            "(static pruning, the default recipe, FLOPs of the slim model); cd-dependent: `--gate dependent` "
            "(channel gates per input); cd-dependent-layer: `--granularity layer` (one decision per residual "
            "branch, AIG-style); cd-static+dependent: `--gate static+dependent` (learned together); cd-static-layer: "
            "static gates over whole branches (`--granularity layer`: the same blocks removed for every input, the "
            "paper's Table 4 partner of cd-dependent-layer); cd-dependent-ft: `--gate dependent --dependent-finetune` (the "
            "gate network learns for half the budget, then the weights train under its frozen per-input decisions). "
            "resnet18 (setup -64px): learned at 64 px from the latency grid's 64 px baseline, one seed, for the speed "
            "rows above. For the "
            "data-dependent ones, FLOPs is each test input's executed FLOPs, averaged (with the range over inputs), "
            "and accuracy is at the threshold tau = 0.5. The paper's claim: conditional computation beats pruning "
            f"at equal FLOPs. Machine: {machines(runs)}."), "",
           "| arch | target | method | FLOPs (mean; range over inputs) | final test (mean ± sd) | change vs baseline | "
           "this minus cd-static, paired by seed | train time | seeds |", "|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for arch, setup, t in dict.fromkeys((r["arch"], r["setup"], r["target"]) for r in runs):
        b = base.get(arch)
        for m in dict.fromkeys(r["method"] for r in runs):
            rs = [r for r in runs if (r["arch"], r["setup"], r["target"], r["method"]) == (arch, setup, t, m)]
            if not rs:
                continue
            acc = [r["test_accuracy"] for r in rs]
            sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
            diffs = [-d for d in _paired(cell, arch, setup, t, m, ref="cd-static")]
            paired = "-" if m == "cd-static" else _paired_cell(diffs, "ahead")
            lo, hi = min(r.get("flops_min", r["flops_ratio"]) for r in rs), max(r.get("flops_max", r["flops_ratio"]) for r in rs)
            rng = "" if "dependent" not in m else f"; {lo:.2f}-{hi:.2f}"
            change = f"{100 * (statistics.fmean(acc) - b['test_accuracy']):+.2f}" if b else "-"
            out.append(f"| {arch} | {t} | {m} | {statistics.fmean(r['flops_ratio'] for r in rs):.3f}{rng} | "
                       f"{pct(statistics.fmean(acc))} ± {100 * sd:.2f} | {change} | {paired} | "
                       f"{_train_time(rs)} | {len(rs)} |")
            if m != "cd-static" and len(diffs) > 1:
                gap, spread = statistics.fmean(diffs), statistics.stdev(diffs)
                holds = gap > spread
                static = statistics.fmean(r["flops_ratio"] for r in runs if (r["arch"], r["setup"], r["target"],
                                                                                   r["method"]) == (arch, setup, t, "cd-static"))
                fl = statistics.fmean(r["flops_ratio"] for r in rs)
                notes.append(f"- {arch} t={t}, {m}: {'ahead of' if gap > 0 else 'behind'} static pruning by "
                             f"{100 * gap:+.2f} points, paired spread {100 * spread:.2f} over {len(diffs)} seeds, at "
                             f"{fl:.3f} average FLOPs against {static:.3f}: the claim "
                             f"{'holds' if holds else 'does not hold'} here"
                             + (" (but not at equal FLOPs)" if holds and fl > static + 0.02 else "") + ".")
    return out + [""] + notes + ([""] if notes else []) + _modes_table(rows)


def _modes_table(rows) -> list[str]:
    modes = [r for r in rows if r.get("suite") == "modes"]
    if not modes:
        return []
    out = ["#### Inference modes (paper, section 3)", "",
           ("`python benchmarks/accuracy.py --suite conditional --seeds S --targets t --modes K`: each run of the table "
            "above through `chanprune eval --mode threshold|stochastic|ensemble --samples K`. threshold: the gates at "
            "tau (what the dynamic model deploys); stochastic: every gate draws a sample per input; ensemble: the mean "
            "class probabilities of K stochastic runs, its cost the sum of theirs. Cost: executed FLOPs per test "
            "input as a fraction of the dense model's, mean (min-max)."), "",
           "| arch | target | seed | method | threshold: test, cost | stochastic: test, cost | ensemble: test, cost |",
           "|---|---|---|---|---|---|---|"]
    cell = {}
    for r in modes:
        cell.setdefault((r["arch"], r["setup"], r["target"], r["seed"], r["method"]), {})[r["mode"]] = r
    for (arch, _, t, seed, m), by in cell.items():
        def fmt(mode):
            r = by.get(mode)
            if r is None:
                return "-"
            k = f" (K={r['samples']})" if mode == "ensemble" else ""
            return f"{pct(r['test_accuracy'])}, {r['cost_mean']:.3f} ({r['cost_min']:.2f}-{r['cost_max']:.2f}){k}"
        out.append(f"| {arch} | {t} | {seed} | {m} | {fmt('threshold')} | {fmt('stochastic')} | {fmt('ensemble')} |")
    return out + [""]


def _baselines(rows) -> list[dict]:
    """The main suite's baseline rows (per arch: as trained, and with batch norms re-estimated), not the
    latency suite's and not a retrained file's (those only the runs that name them use)."""
    return [r for r in rows if r.get("method") == "baseline" and not r.get("suite") and not r.get("retrained")]


def _goals(arch, setup, t, means, losses, cell) -> list[str]:
    """The issue's two goals for one (arch, target), stated from the rows (`losses`: each method's mean
    loss from its runs' own baselines)."""
    if "chanprune" not in means:
        return []
    tp_cp = {m: v for m, v in means.items() if m.startswith("tp-") and m.endswith("+cp")}
    tp_doc = {m: v for m, v in means.items() if m.startswith("tp-") and "+" not in m and "@" not in m}
    lines = []
    if tp_cp:
        best = max(tp_cp, key=(lambda m: -losses[m]) if all(m in losses for m in tp_cp) else tp_cp.get)
        diffs = _paired(cell, arch, setup, t, best)
        spread = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
        gap = statistics.fmean(diffs) if diffs else means["chanprune"] - tp_cp[best]
        ok = len(diffs) > 1 and gap > spread
        lines.append(f"- {arch} t={t}, same recipe: chanprune {'ahead of' if gap > 0 else 'behind'} the best "
                     f"Torch-Pruning method ({best}) by {100 * gap:+.2f} points; paired spread "
                     f"{100 * spread:.2f} over {len(diffs)} seeds: goal {'met' if ok else 'missed'}.")
    if tp_doc and "chanprune" in losses and all(m in losses for m in tp_doc):
        best = max(tp_doc, key=lambda m: -losses[m])
        ours, theirs = losses["chanprune"], losses[best]
        ok = ours <= theirs / 2
        lines.append(f"- {arch} t={t}, documented recipe: chanprune loses {100 * ours:.2f} points, the best Torch-Pruning "
                     f"method ({best}) {100 * theirs:.2f}: goal (at most half) {'met' if ok else 'missed'}.")
    return lines


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


def conditional_section() -> list[str]:
    rows = [r for r in load("conditional") if not r["key"].startswith(("trained/", "profile/"))]
    if not rows:
        return []
    out = ["### Conditional computation: does skipping reach the wall clock? (CPU, batch 1)", "",
           ("`python benchmarks/conditional.py --arch A --size S --keep 0.5 --backend torch-cpu|ort-cpu "
            "--granularity channel|layer` (rows: `benchmarks/results/conditional.jsonl`). "
            "The mechanism only, not a trained model: random weights, data-dependent gates that keep about half of "
            "each inner residual group's channels (channel) or about half of the residual branches (layer). "
            "masked: the gated network as public implementations run it (everything computed, then multiplied by "
            "the masks); dynamic: in torch `chanprune.dynamic.dynamic_model` (only the kept filters and inputs run), "
            "on onnxruntime `onnx_dynamic_model` by gathers (`gather`) or, at layer granularity, an ONNX If per gated "
            "conv (`if`); every dynamic model is exact against the masked one; static: a static slim model with the "
            "same kept counts. Speedups over dense, 2 threads. Measured / predicted: the best dynamic model's "
            "measured speedup over the FLOPs-predicted one (1 / FLOPs ratio). The rows measured before the `if` way "
            "got branch-local weights and one If per branch, and before the four-op gate decision, are kept in "
            f"`benchmarks/results/conditional_2026-12-01.jsonl`. Machine: {machines(rows)}."), "",
           "| arch | input | backend | gates | executed FLOPs | dense ms | masked | dynamic (torch) or gather (ort) | if (ort) | static "
           "| dynamic: measured / predicted |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        gather = r.get("speedup_dynamic", r.get("speedup_dynamic-gather"))
        way_if = r.get("speedup_dynamic-if")
        best = max(v for v in (gather, way_if) if v is not None)
        out.append(f"| {r['arch']} | {r['size']}x{r['size']} | {r.get('backend', 'torch-cpu')} | "
                   f"{r.get('granularity', 'channel')} | {r['executed_flops_ratio']:.3f} | {r['ms']['dense']:.2f} | "
                   f"{r['speedup_masked']:.2f}x | {gather:.2f}x | {f'{way_if:.2f}x' if way_if else '-'} | "
                   f"{r['speedup_static']:.2f}x | {best * r['executed_flops_ratio']:.2f} |")
    return out + [""]


# onnxruntime op types of the dynamic models, by what they are there for (convs are split by layout apart)
_PROFILE_GROUPS = {
    "gate network and decisions": ("ReduceMean", "MatMul", "Gemm", "FusedGemm", "Sigmoid", "Sub", "Greater", "Cast", "Softmax"),
    "indexing: Gather, NonZero, shapes": ("Gather", "NonZero", "GatherElements", "Reshape", "Concat", "Slice", "Shape",
                                          "Squeeze", "Unsqueeze", "Expand", "Where", "Equal", "ConstantOfShape",
                                          "ScatterND", "Transpose", "Flatten", "Split"),
    "BatchNormalization, Relu, Add, Mul (unfused)": ("BatchNormalization", "Relu", "Add", "Mul", "Sum"),
    "If (its own time)": ("If",),
    "reorders": ("ReorderInput", "ReorderOutput"),
}


def _profile_groups(kinds: dict) -> dict:
    out = {"convs NCHWc": 0.0, "convs NCHW": 0.0, **{k: 0.0 for k in _PROFILE_GROUPS}, "other": 0.0}
    for kind, ms in kinds.items():
        if "conv (" in kind:
            out["convs NCHWc" if "NCHWc" in kind else "convs NCHW"] += ms
            continue
        out[next((g for g, ops in _PROFILE_GROUPS.items() if kind in ops), "other")] += ms
    return out


def conditional_profile_section() -> list[str]:
    rows = [r for r in load("conditional") if r["key"].startswith("profile/")]
    if not rows:
        return []
    heads = ["convs NCHWc", "convs NCHW", *_PROFILE_GROUPS, "other"]
    out = ["#### Where the time goes on onnxruntime (batch 1, the mechanism's models)", "",
           ("`python benchmarks/conditional.py --arch A --size S --backend ort-cpu --granularity G --profile` (rows: "
            "`benchmarks/results/conditional.jsonl`, keys `profile/...`): the same models and input as the timing "
            "rows above, through onnxruntime's own profiler (benchmarks/why.py's), kernel milliseconds per run, "
            "by what the nodes are for. Convs: channels-blocked (NCHWc, weights pre-packed) or plain NCHW. An If's own "
            "time excludes its branch's nodes, which are counted in their groups. Batch norm and ReLU fold into "
            "the conv only where the conv's weights are constants of the main graph, so the dynamic models run "
            f"them on their own. Machine: {machines(rows)}."), "",
           "| arch | input | gates | model | kernel ms | " + " | ".join(heads) + " |",
           "|---|---|---|---|---|" + "---|" * len(heads)]
    for r in rows:
        for name, p in r["models"].items():
            g = _profile_groups(p["ms_per_kind"])
            out.append(f"| {r['arch']} | {r['size']}x{r['size']} | {r['granularity']} | {name} | {p['ms_total']:.2f} | "
                       + " | ".join(f"{g[h]:.2f}" for h in heads) + " |")
    return out + [""]


def guard_section() -> list[str]:
    plans = [(name, path) for name, path in (("flops", HERE / "baseline.json"), ("latency", HERE / "baseline_latency.json"))
             if path.is_file()]
    if not plans:
        return []
    out = ["### CI latency guard", "",
           ("`.ci/run` runs `python benchmarks/guard.py` after the tests: resnet18 at 224 with each committed learned "
            "plan, slim against dense ONNX, through `chanprune bench --vs ... --baseline B --max-regression R`. "
            "The flops plan was learned with a FLOPs target of 0.5 and exported with `--round-to 16`; the latency "
            "plan with `--budget latency --target 0.5` (gates over blocks of 16)."), "",
           "| plan | key | baseline speedup | repeated measurements | allowed drop | baseline file, written by |",
           "|---|---|---|---|---|---|"]
    for name, path in plans:
        b = json.loads(path.read_text())
        out += [f"| {name} (`benchmarks/guard/{b['plan']}`) | {k} | {v:.2f}x | "
                f"{', '.join(f'{s:.2f}' for s in b['measured'][k])} | {b['max_regression']:.0%} | "
                f"`benchmarks/{path.name}`, `{b['command']}` on {b['machine']} |" for k, v in b["speedups"].items()]
    return out + ["", "Allowed drop: twice the worst drop between repeated runs, at least 15%.", ""]


def render() -> str:
    return "\n".join(latency_section() + latency_budget_section() + repredict_section() + ceiling_section() + floor_section() + flops_weight_section() + lam_rate_section() + profile_timing_section() + profile_fit_section() + why_section() + fidelity_section() + accuracy_section() + latency_accuracy_section() + costs_section() + conditional_section() + conditional_profile_section() + conditional_trained_section() + conditional_accuracy_section() + guard_section())


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
