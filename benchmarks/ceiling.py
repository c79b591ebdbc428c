"""How much efficiency can any aligned channel plan reach under the latency table? A greedy bound.

Efficiency (speedup x FLOPs ratio) >= 1 needs the latency to fall at least as fast as the FLOPs. For each
latency-grid plan (`benchmarks/latency_budget.py`'s cp-latency run of an arch and target), this builds the
plan that keeps the most FLOPs at the same predicted latency, blind to the data: from the dense model it
drops, one at a time, the block (the run's own gate blocks, so the plan stays aligned) that gives up the
fewest FLOPs per millisecond of predicted latency saved, until the table's latency ratio is down to the
learned plan's. Both plans are then exported at 224x224 and timed against dense, interleaved (onnxruntime
CPU, 2 threads, as the grid times). Greedy is not proven optimal: the figure bounds what the table can
find, not what a better search could.

It is a bound on a figure, not a method: FLOPs are not accuracy. `TablePlanner` is the same greedy from a
dense model alone (blocks ranked by the weights' group norm, the table at batch 1); benchmarks/accuracy.py's
latency suite fine-tunes its plan at cp-latency's measured latency as `table-greedy+cp`.

    python benchmarks/ceiling.py [--archs mobilenet_v2,efficientnet_lite0] [--targets 0.5] [--no-time]
                                 [--out runs/bench/latency_budget]

Rows go to benchmarks/results/ceiling.jsonl; rerunning skips what is there.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

import latency_budget as lb
from _common import Rows, measure_vs_dense


def greedy(graph, cost, flops, pools: list[list[list[int]]], essential: list[bool], target: float, progress=None):
    """0/1 masks that keep the most FLOPs (greedily) with `cost`'s ratio at or below `target`.

    `pools[g]`: group g's blocks that may go, in the order they go (least important first); each step
    drops the next block of the group that gives up the fewest FLOPs per unit of cost saved. A group
    marked `essential` keeps its last block. Returns (masks, cost ratio, FLOPs ratio, drops): drops
    lists (group, block, cost ratio, FLOPs ratio) after each step, so any prefix is a plan too."""
    pools = [list(p) for p in pools]
    masks = [torch.ones(g.size) for g in graph.groups]
    lat, fl = float(cost.ratio_of(masks)), float(flops.ratio_of(masks))
    drops = []
    while lat > target:
        best = None
        for gi, pool in enumerate(pools):
            if not pool or (essential[gi] and len(pool) == 1):
                continue
            m = masks[gi].clone()
            m[pool[0]] = 0
            trial = masks[:gi] + [m] + masks[gi + 1:]
            dl = lat - float(cost.ratio_of(trial))
            if dl <= 0:
                continue
            score = (fl - float(flops.ratio_of(trial))) / dl
            if best is None or score < best[0]:
                best = (score, gi, m)
        if best is None:
            break
        _, gi, m = best
        masks[gi] = m
        block = pools[gi].pop(0)
        lat, fl = float(cost.ratio_of(masks)), float(flops.ratio_of(masks))
        drops.append((gi, block, lat, fl))
        if progress and len(drops) % 20 == 0:
            progress(f"  {len(drops)} blocks dropped: latency {lat:.3f}, FLOPs {fl:.3f}")
    return masks, lat, fl, drops


def pools_of(graph, units, scores) -> list[list[list[int]]]:
    """Per group, its blocks (`units`; single channels where None) ordered by `scores`, the lowest
    block maximum first; a grouped conv's group (`partition`) keeps all of them."""
    pools = []
    for gi, g in enumerate(graph.groups):
        blocks = [b for b in (units[gi] if units[gi] is not None else [[c] for c in range(g.size)]) if b]
        s = scores[gi].detach().float().cpu()
        pools.append([] if g.partition else sorted(blocks, key=lambda b: (float(s[b].max()), b[0])))
    return pools


class TablePlanner:
    """The greedy plan from a dense model alone: blocks of `block` channels ranked by the weights' group
    norm (as `learn` forms its gate blocks), the latency table's cost at batch 1, drops down to
    `floor` of the dense latency recorded once in `out/drops.json`; any prefix is a plan."""

    def __init__(self, base_pt: Path, lut: Path, out: Path, *, floor: float = 0.3, block: int = lb.BLOCK_RT):
        from chanprune.cost import FlopsCost, make_cost
        from chanprune.gates import GateSet
        from chanprune.graph import find_groups
        from chanprune.importance import group_norm
        from chanprune.load import load_dense

        self.dense, _ = load_dense(base_pt)
        self.dense.eval()
        model = copy.deepcopy(self.dense)
        x = torch.zeros(lb.DEPLOY)
        self.graph = find_groups(model, x)
        cost = make_cost("latency", model, x, self.graph, lut=str(lut), batch_sizes=[1])
        flops = FlopsCost(model, x, self.graph)
        gates = GateSet(self.graph, config={"block": block})
        scores = group_norm(model, self.graph, x)
        gates.rank_blocks_(scores)
        gates.attach_(model)
        gates.find_essential_(model, x)
        gates.detach_()
        self.units = gates.units()
        out.mkdir(parents=True, exist_ok=True)
        f = out / "drops.json"
        if f.is_file():
            self.drops = [tuple(d) for d in json.loads(f.read_text())]
        else:
            _, _, _, self.drops = greedy(self.graph, cost, flops, pools_of(self.graph, self.units, scores),
                                         gates.essential(), floor, progress=lambda s: print(s, flush=True))
            f.write_text(json.dumps(self.drops))

    def masks(self, k: int) -> list[torch.Tensor]:
        masks = [torch.ones(g.size) for g in self.graph.groups]
        for gi, block, _, _ in self.drops[:k]:
            masks[gi][block] = 0
        return masks

    def slim(self, k: int) -> torch.nn.Module:
        """The dense model cut to the first `k` drops (checked against the masked dense model)."""
        return cut_dense(self.dense, self.graph, self.masks(k), {"table_greedy": k}, "table-greedy")

    def at_latency(self, dense_onnx: Path, latency_ratio: float, out: Path) -> dict:
        """The fastest prefix not faster than `latency_ratio` of dense at batch 1, by bisection on measured
        latency (each probe timed against dense, interleaved), as `latency_budget.tp_at_latency`."""
        if (out / "greedy.json").is_file():
            return json.loads((out / "greedy.json").read_text())
        from chanprune.export import export_onnx
        from chanprune.measure.latency import make_runner, measure_interleaved, ratio_stats

        shape = [1, *lb.DEPLOY[1:]]
        lo, hi, best = 0, len(self.drops), None
        for i in range(10):
            if lo >= hi:
                break
            mid = (lo + hi + 1) // 2
            onnx = out.parent / f"{out.name}_try{i}" / "model.onnx"
            onnx.parent.mkdir(parents=True, exist_ok=True)
            export_onnx(self.slim(mid).eval(), torch.zeros(lb.DEPLOY), onnx)
            times = measure_interleaved({"dense": make_runner(dense_onnx, "ort-cpu", shape, threads=2),
                                         "g": make_runner(onnx, "ort-cpu", shape, threads=2)},
                                        warmup=3, rounds=7, per_round=3)
            r = ratio_stats(times["g"], times["dense"])[0]
            print(f"  table-greedy probe {i}: {mid} drops, predicted {self.drops[mid - 1][2]:.3f}, measured {r:.3f}",
                  flush=True)
            if r >= latency_ratio:  # not faster than the reference: drop more
                lo = mid
                if best is None or r < best["probe_latency_ratio"]:
                    best = {"drops": mid, "probe_latency_ratio": r, "onnx": str(onnx)}
            else:
                hi = mid - 1
        if best is None:
            raise SystemExit(f"{out}: every greedy prefix tried ran faster than {latency_ratio:.3f} of dense")
        k = best["drops"]
        best.update(predicted_latency_ratio=self.drops[k - 1][2], predicted_flops_ratio=self.drops[k - 1][3])
        out.mkdir(parents=True, exist_ok=True)
        (out / "greedy.json").write_text(json.dumps(best, indent=1))
        return best


def cut_dense(dense: torch.nn.Module, graph, masks, meta: dict, what: str) -> torch.nn.Module:
    """A copy of `dense` cut to 0/1 `masks` at lb.DEPLOY, checked against the masked dense model (`what`
    names the plan in the error)."""
    from chanprune.cut import cut

    plan = plan_of(graph, masks, None, lb.DEPLOY, meta)
    torch.manual_seed(0)
    res = cut(copy.deepcopy(dense), graph, plan, torch.randn(2, *lb.DEPLOY[1:]))
    if not res.exact:
        raise SystemExit(f"{what}: the cut model differs from the masked one by {res.max_abs_diff:.3g}")
    return res.slim


def plan_of(graph, masks, probs, input_shape, meta: dict, arch: str | None = None):
    """A PrunePlan keeping the channels where `masks` are 1 (`probs`: the gates' probabilities, or None)."""
    from chanprune.plan import GroupPlan, PrunePlan

    groups = [GroupPlan(g.name, g.size, [int(i) for i in torch.nonzero(m > 0).flatten()],
                        None if probs is None else [float(x) for x in probs[gi].detach().float().cpu()])
              for gi, (g, m) in enumerate(zip(graph.groups, masks))]
    return PrunePlan(groups, arch, input_shape, None, meta)


def export_plan(gm, plan, out: Path) -> dict:
    """Cut `plan` from the gated model and export it to ONNX (the same checks as `chanprune export`)."""
    from chanprune.cut import cut
    from chanprune.export import export_onnx
    from chanprune.measure.flops import count_flops

    out.mkdir(parents=True, exist_ok=True)
    if (out / "ceiling.json").is_file():
        return json.loads((out / "ceiling.json").read_text())
    plan.validate(gm.graph)
    torch.manual_seed(0)
    x = torch.randn(2, *gm.input_shape[1:])
    res = cut(gm.model, gm.graph, plan, x, gates=gm.gates)
    if not res.exact:
        raise SystemExit(f"{out}: the cut model differs from the gated one by {res.max_abs_diff:.3g}")
    onnx_path = export_onnx(res.slim, x[:1], out / "model.onnx")
    d = {"onnx": str(onnx_path), "flops_ratio": count_flops(res.slim, x[:1]).total / gm.flops.dense(),
         "plan": json.loads(plan.to_json())}
    (out / "ceiling.json").write_text(json.dumps(d))
    return d


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="mobilenet_v2,efficientnet_lite0")
    ap.add_argument("--targets", default="0.5")
    ap.add_argument("--no-time", action="store_true", help="predict only: export nothing, time nothing")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/latency_budget"))
    a = ap.parse_args()
    from chanprune.load import GatedModel

    rows = Rows("ceiling")
    for arch in a.archs.split(","):
        dense_onnx = a.out / f"{arch}_dense" / "model.onnx"
        for t in map(float, a.targets.split(",")):
            run = a.out / f"{arch}_t{t}"
            key = f"{arch}/t{t}"
            if key in rows and (a.no_time or f"lat/{arch}/t{t}/greedy/b{lb.BATCHES[-1]}" in rows):
                continue
            gm = GatedModel.load(run / "latency" / "model.pt", input_shape=lb.DEPLOY)
            learned = gm.plan()
            lm = learned.keep_masks(gm.graph)
            l_lat, l_fl = float(gm.cost.ratio_of(lm)), float(gm.flops.ratio_of(lm))
            t0 = time.time()
            pools = pools_of(gm.graph, gm.gates.units(), gm.gates.probs())
            masks, lat, fl, _ = greedy(gm.graph, gm.cost, gm.flops, pools, gm.gates.essential(), l_lat,
                                    progress=lambda s: print(s, flush=True))
            secs = time.time() - t0
            pred = {"greedy": gm.cost.speedup(masks), "cp-latency": gm.cost.speedup(lm)}
            row = {"key": key, "arch": arch, "target": t, "latency_ratio": {"cp-latency": l_lat, "greedy": lat},
                   "flops_ratio_predicted": {"cp-latency": l_fl, "greedy": fl}, "predicted_speedup": pred,
                   "predicted_efficiency": {m: {b: s * (fl if m == "greedy" else l_fl) for b, s in p.items()}
                                            for m, p in pred.items()},
                   "kept": {"cp-latency": int(sum(float(m.sum()) for m in lm)),
                            "greedy": int(sum(float(m.sum()) for m in masks))},
                   "search_s": round(secs, 1)}
            if key not in rows:
                rows.add(row)
            print(json.dumps(row), flush=True)
            if a.no_time:
                continue
            plan = plan_of(gm.graph, masks, gm.gates.probs(), gm.input_shape,
                           {"ceiling": {"latency_ratio": lat, "of": str(run / "latency" / "model.pt")}}, gm.arch)
            variants = {"greedy": export_plan(gm, plan, run / "greedy"),
                        "cp-latency": {**json.loads((run / "latency" / "slim" / "export.json").read_text())}}
            measure_vs_dense(rows, arch, t, variants, dense_onnx, lb.BATCHES, lb.DEPLOY, lb.TIMING)


if __name__ == "__main__":
    main()
