"""Conditional computation, real speed: does the dynamic model turn skipped FLOPs into time?

The mechanism only, at batch 1 in torch on the CPU (2 threads), with gates that keep about `--keep`
of each inner residual group (each gate open on a random subset of its channels, with a little
input dependence), and random weights (latency does not depend on them). Four models, timed in one
interleaved run:

  dense     the network without gates
  masked    the gated network as every public implementation runs it: all channels computed, then
            multiplied by the masks (AIG, Channel Gating NN, the paper's code)
  dynamic   chanprune.dynamic: only the kept filters and the matching inputs run (exact, per input)
  static    the same kept counts as a static slim model (`cut` of a plan with those counts): the
            speed a static plan of equal FLOPs gets

Rows: milliseconds, speedups over dense, the executed FLOPs ratio, and the ratio of the measured
speedup to the FLOPs-predicted one (1 / FLOPs ratio). The gap between dynamic and static is the
price of deciding per input: the gates, the index_select of weights per call (no prepacked
weights), and the Python around each gated conv.

    python benchmarks/conditional.py [--arch resnet18] [--size 224] [--keep 0.5]

Rows go to benchmarks/results/conditional.jsonl; rerunning skips what is there.
"""
from __future__ import annotations

import argparse

from _common import Rows, machine


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--keep", type=float, default=0.5)
    ap.add_argument("--rounds", type=int, default=15)
    a = ap.parse_args()
    import torch

    from chanprune.cost import make_cost
    from chanprune.cut import cut
    from chanprune.dynamic import dynamic_model
    from chanprune.gates import GateSet, dependent_sites
    from chanprune.graph import find_groups
    from chanprune.measure.flops import count_flops
    from chanprune.measure.latency import make_runner, measure_interleaved, ratio_stats
    from chanprune.plan import GroupPlan, PrunePlan
    from chanprune.zoo import build_model

    torch.set_num_threads(2)
    rows = Rows("conditional")
    key = f"{a.arch}/{a.size}/keep{a.keep}/torch-cpu/b1"
    if key in rows:
        print(f"{key}: done")
        return
    torch.manual_seed(0)
    shape = [1, 3, a.size, a.size]
    dense = build_model(a.arch, num_classes=10).eval()
    gated = build_model(a.arch, num_classes=10).eval()
    gated.load_state_dict(dense.state_dict())
    x = torch.zeros(shape)
    graph = find_groups(gated, x)
    cost = make_cost("flops", gated, x, graph)
    gates = GateSet(graph, kind="dependent", config={"dependent": dependent_sites(gated, graph)}).attach_(gated)
    gen = torch.Generator().manual_seed(0)
    for gi in gates.dependent:
        g = gates.gates[gi]
        n = g.num_channels
        open_ = torch.randperm(n, generator=gen)[: max(1, round(a.keep * n))]
        gap = torch.full((n,), -4.0)
        gap[open_] = 4.0
        with torch.no_grad():
            g.fc2.weight.normal_(0, 0.05, generator=gen)
            g.fc2.bias.view(n, 2)[:, 0] = 0.0
            g.fc2.bias.view(n, 2)[:, 1] = gap
    gates.eval()
    xin = torch.randn(shape)
    with torch.no_grad():
        ref = gated(xin)
        z = [m.clone() for m in gates.current()]
    dyn = dynamic_model(gated, graph, gates)
    with torch.no_grad():
        diff = float((dyn(xin) - ref).abs().max())
    flops_ratio = float(cost.ratio_of(z).reshape(-1)[0])
    plan = PrunePlan([GroupPlan(g.name, g.size, [int(i) for i in torch.nonzero(m[0]).flatten()])
                      for g, m in zip(graph.groups, z)], a.arch, shape, 0.5, {})
    gates.detach_()
    static = cut(gated, graph, plan, xin).slim.eval()
    gates.attach_(gated)
    static_ratio = count_flops(static, x).total / count_flops(dense, x).total
    runners = {name: make_runner(m, "torch-cpu", shape, threads=2)
               for name, m in (("dense", dense), ("masked", gated), ("dynamic", dyn), ("static", static))}
    # one fixed input for every runner: the dynamic model takes that input's decisions every call
    for name, m in (("masked", gated), ("dynamic", dyn)):
        runners[name] = _fixed_input(m, xin)
    times = measure_interleaved(runners, warmup=5, rounds=a.rounds, per_round=5)
    row = {"key": key, "arch": a.arch, "size": a.size, "keep": a.keep, "backend": "torch-cpu", "batch": 1,
           "threads": 2, "executed_flops_ratio": flops_ratio, "static_flops_ratio": static_ratio,
           "dynamic_vs_gated_max_abs_diff": diff, "machine": machine(), "rounds": a.rounds,
           "ms": {k: sorted(v)[len(v) // 2] for k, v in times.items()}}
    for name in ("masked", "dynamic", "static"):
        s = 1 / ratio_stats(times[name], times["dense"])[0]
        row[f"speedup_{name}"] = s
        ratio = flops_ratio if name != "static" else static_ratio
        row[f"measured_over_predicted_{name}"] = s * (ratio if name != "masked" else 1.0)
    rows.add(row)
    print(f"{a.arch} at {a.size}, keep {a.keep}, batch 1, torch CPU: executed FLOPs {flops_ratio:.3f} "
          f"(dynamic vs gated {diff:.1e})")
    for name in ("dense", "masked", "dynamic", "static"):
        sp = row.get(f"speedup_{name}", 1.0)
        print(f"  {name:<8} {row['ms'][name]:7.2f} ms  speedup {sp:.2f}x")


def _fixed_input(model, x):
    import torch

    def run():
        torch.set_num_threads(2)
        with torch.inference_mode():
            model(x)

    return run


if __name__ == "__main__":
    main()
