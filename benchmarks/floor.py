"""Why plans that thin every layer stay below efficiency 1 on the mobile nets: the floor of the same depth.

Efficiency = speedup x FLOPs ratio. Some of a model's time does not shrink with its channels: each
layer's call, a depthwise conv's pass over memory, what no gate touches. Call the latency of the
thinnest aligned network of the same depth (every channel group kept at one block of 16) the floor f,
as a fraction of dense. If the time above the floor fell in proportion to the FLOPs, a plan that keeps
every layer would reach a latency ratio t keeping (t - f) / (1 - f) of the FLOPs, an efficiency of

    (t - f) / ((1 - f) t)     (below 1 for any f > 0 and t < 1)

For each arch (the latency grid's baseline and table, `benchmarks/latency_budget.py`), this predicts the
floor from the table per batch size, and the uniform plans (every group at the same share of its
blocks, as Torch-Pruning's one ratio with round_to=16 keeps): their predicted latency and FLOPs at the
latency targets, next to the formula. Then it exports the floor plan and the uniform plan at the
middle target (batch 1) and times both against dense, interleaved (onnxruntime CPU, 2 threads, as the
grid times), so that the floor and one uniform efficiency are measured here, not only predicted.

    python benchmarks/floor.py [--archs efficientnet_lite0,mobilenet_v2,resnet34] [--targets 0.3,0.5,0.7]
                               [--no-time] [--out runs/bench/latency_budget]

Rows go to benchmarks/results/floor.jsonl; rerunning skips what is there. The baselines and tables
must exist (the grid makes them: `python benchmarks/latency_budget.py --archs A`).
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

import latency_budget as lb
from _common import Rows, measure_vs_dense


class Uniform:
    """An arch's dense model, channel graph, gate blocks, FLOPs and per-batch latency costs."""

    def __init__(self, base_pt: Path, lut: Path, block: int = lb.BLOCK_RT):
        from chanprune.cost import FlopsCost, make_cost
        from chanprune.gates import GateSet
        from chanprune.graph import find_groups
        from chanprune.load import load_dense

        self.dense, _ = load_dense(base_pt)
        self.dense.eval()
        model = copy.deepcopy(self.dense)
        x = torch.zeros(lb.DEPLOY)
        self.graph = find_groups(model, x)
        self.costs = {b: make_cost("latency", model, x, self.graph, lut=str(lut), batch_sizes=[b]) for b in lb.BATCHES}
        self.flops = FlopsCost(model, x, self.graph)
        self.units = GateSet(self.graph, config={"block": block}).units()

    def masks(self, share: float) -> list[torch.Tensor]:
        """Every group keeps round(share x its blocks), at least one (a grouped conv's group: all)."""
        out = []
        for g, units in zip(self.graph.groups, self.units):
            m = torch.zeros(g.size)
            blocks = [b for b in (units if units is not None else [[c] for c in range(g.size)]) if b]
            if g.partition:
                m[:] = 1
            else:
                for b in blocks[:max(1, round(share * len(blocks)))]:
                    m[b] = 1
            out.append(m)
        return out

    def predict(self, masks) -> dict:
        return {"latency_ratio": {str(b): float(c.ratio_of(masks)) for b, c in self.costs.items()},
                "flops_ratio": float(self.flops.ratio_of(masks))}

    def at_latency(self, t: float, batch: int) -> tuple[float, dict]:
        """The uniform share whose predicted latency ratio at `batch` is t (bisection on the share)."""
        lo, hi = 0.0, 1.0
        for _ in range(30):
            mid = (lo + hi) / 2
            if self.predict(self.masks(mid))["latency_ratio"][str(batch)] > t:
                hi = mid
            else:
                lo = mid
        return lo, self.predict(self.masks(lo))

    def export(self, masks, out: Path) -> dict:
        """Cut `masks` from the dense model (checked exact) and export it at the deployment shape."""
        from ceiling import cut_dense
        from chanprune.export import export_onnx

        if (out / "plan.json").is_file():
            return json.loads((out / "plan.json").read_text())
        slim = cut_dense(self.dense, self.graph, masks, {"floor": str(out)}, str(out))
        out.mkdir(parents=True, exist_ok=True)
        d = {"onnx": str(export_onnx(slim.eval(), torch.zeros(lb.DEPLOY), out / "model.onnx")),
             "flops_ratio": float(self.flops.ratio_of(masks))}
        (out / "plan.json").write_text(json.dumps(d))
        return d


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="efficientnet_lite0,mobilenet_v2,resnet34")
    ap.add_argument("--targets", default="0.3,0.5,0.7")
    ap.add_argument("--no-time", action="store_true", help="predict only: export nothing, time nothing")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/latency_budget"))
    a = ap.parse_args()
    targets = [float(t) for t in a.targets.split(",")]
    rows = Rows("floor")
    for arch in a.archs.split(","):
        base, lut = a.out / f"{arch}_base" / "model.pt", a.out / f"{arch}_lut.json"
        if not (base.is_file() and lut.is_file()):
            raise SystemExit(f"{arch}: no baseline or table under {a.out}; run benchmarks/latency_budget.py --archs "
                             f"{arch} first")
        key = f"{arch}/floor"
        u = Uniform(base, lut)
        if key not in rows:
            floor = u.predict(u.masks(0.0))
            uniform = {}
            for b in lb.BATCHES:
                f = floor["latency_ratio"][str(b)]
                for t in targets:
                    share, p = u.at_latency(t, b)
                    lat = p["latency_ratio"][str(b)]
                    uniform[f"{t}/b{b}"] = {"share": share, "latency_ratio": lat, "flops_ratio": p["flops_ratio"],
                                            "efficiency": p["flops_ratio"] / lat,
                                            "formula": (lat - f) / ((1 - f) * lat)}
            row = rows.add({"key": key, "kind": "predicted", "arch": arch, "block": lb.BLOCK_RT, "table": str(lut),
                            "floor": floor, "uniform": uniform})
            print(json.dumps(row), flush=True)
        if a.no_time:
            continue
        mid = targets[len(targets) // 2]
        share, _ = u.at_latency(mid, 1)
        variants = {"floor": u.export(u.masks(0.0), a.out / f"{arch}_floor" / "floor"),
                    "uniform": u.export(u.masks(share), a.out / f"{arch}_floor" / f"uniform{mid}")}
        measure_vs_dense(rows, arch, mid, variants, lb.dense_onnx(arch, base, a.out), lb.BATCHES, lb.DEPLOY, lb.TIMING)


if __name__ == "__main__":
    main()
