"""Conditional computation, real speed: does the dynamic model turn skipped FLOPs into time?

The mechanism only, at batch 1 on the CPU (2 threads), with gates that keep about `--keep` of each
inner residual group and a little input dependence, and random weights (latency does not depend on
them). At `--granularity channel` each gate is open on a random subset of its group's channels; at
`layer` (one decision per residual branch, AIG's granularity) a random subset of the branches runs.
The models, timed in one interleaved run on one backend:

  dense     the network without gates
  masked    the gated network as every public implementation runs it: all channels computed, then
            multiplied by the masks (AIG, Channel Gating NN, the paper's code)
  dynamic   torch: chanprune.dynamic, only the kept filters and the matching inputs run (exact, per
            input). onnxruntime: `onnx_dynamic_model`, one row per way: `gather` (the kept filters
            gathered per input, the weights no longer constants) and, at layer granularity, `if`
            (each gated conv inside an ONNX If, constant weights in the branch that runs)
  static    the same kept counts as a static slim model (`cut` of a plan with those counts): the
            speed a static plan of equal FLOPs gets

Rows: milliseconds, speedups over dense, the executed FLOPs ratio, and the ratio of the measured
speedup to the FLOPs-predicted one (1 / FLOPs ratio). The gap between dynamic and static is the
price of deciding per input: the gates, gathering weights per call (no prepacked weights, no blocked
layout), control flow, and in torch the Python around each gated conv.

    python benchmarks/conditional.py [--arch resnet18] [--size 224] [--keep 0.5]
                                     [--backend torch-cpu|ort-cpu] [--granularity channel|layer]

Trained models (`--trained RUN --static STATIC_RUN`): a run of `learn --gate dependent` (or
static+dependent, any granularity) and, for the comparison, a static run (`learn`, exported to
STATIC_RUN/slim/slim.pt) from the conditional accuracy suite. Each model runs the same `--inputs`
test images one at a time, in turn (the dynamic model decides per image), on torch and on
onnxruntime; the row gives the mean per-image milliseconds, the speedups over the dense
architecture, the executed FLOPs of those images, and both runs' test accuracy from their rows.
`--size S` deploys at S x S (the test images resized): plans learned at 64 px, timed at 224, as the
latency grid does; the executed FLOPs are then those of the learned size's cost model.

    python benchmarks/conditional.py --trained runs/bench/accuracy/resnet56_L12000-e3_t0.5_s0_cd-dependent \
        --static runs/bench/accuracy/resnet56_L12000-e3_t0.5_s0_cd-static

Where the time goes (`--backend ort-cpu --profile`): the same models through onnxruntime's own profiler
(benchmarks/why.py's), kernel time per kind of node: blocked (NCHWc) and plain convs, the gathers and
NonZero of the `gather` way, an If's own time (its branch's nodes counted on their own), reorders.

Rows go to benchmarks/results/conditional.jsonl; rerunning skips what is there.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import Rows, machine


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--size", type=int, default=None,
                    help="Input size (default 224; with --trained: the size the run learned at, upsampled from there).")
    ap.add_argument("--keep", type=float, default=0.5)
    ap.add_argument("--backend", choices=["torch-cpu", "ort-cpu"], default="torch-cpu")
    ap.add_argument("--granularity", choices=["channel", "layer"], default="channel")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--trained", type=Path, default=None, help="A learn run with data-dependent gates.")
    ap.add_argument("--static", type=Path, default=None, help="With --trained: a static run exported to RUN/slim.")
    ap.add_argument("--inputs", type=int, default=32, help="With --trained: test images run in turn.")
    ap.add_argument("--profile", action="store_true",
                    help="With --backend ort-cpu: onnxruntime's own profile of each model, kernel time by kind of node "
                         "(rows keyed profile/...), instead of the timing.")
    a = ap.parse_args()
    if a.trained is not None:
        return trained(a)
    a.size = a.size or 224
    import numpy as np
    import onnxruntime as ort
    import torch

    from chanprune.cost import make_cost
    from chanprune.cut import cut
    from chanprune.dynamic import dynamic_model, onnx_dynamic_model
    from chanprune.export import export_onnx
    from chanprune.gates import GateSet, dependent_sites
    from chanprune.graph import find_groups
    from chanprune.measure.flops import count_flops
    from chanprune.measure.latency import make_runner, measure_interleaved, ratio_stats
    from chanprune.plan import GroupPlan, PrunePlan
    from chanprune.zoo import build_model

    torch.set_num_threads(2)
    rows = Rows("conditional")
    key = f"{a.arch}/{a.size}/keep{a.keep}/{a.backend}/b1" + ("/layer" if a.granularity == "layer" else "")
    if a.profile:
        if a.backend != "ort-cpu":
            raise SystemExit("--profile: onnxruntime's profiler; add --backend ort-cpu")
        key = f"profile/{key}"
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
    gates = GateSet(graph, kind="dependent", config={"dependent": dependent_sites(gated, graph),
                                                     "granularity": a.granularity}).attach_(gated)
    gen = torch.Generator().manual_seed(0)
    dep = gates.dependent
    branches = torch.randperm(len(dep), generator=gen)[: max(1, round(a.keep * len(dep)))].tolist()
    for j, gi in enumerate(dep):
        g = gates.gates[gi]
        n = g.fc2.out_features // 2  # decisions: channels, or 1 per branch
        if a.granularity == "channel":
            open_ = torch.randperm(n, generator=gen)[: max(1, round(a.keep * n))]
        else:
            open_ = torch.tensor([0] if j in branches else [], dtype=torch.long)
        gap = torch.full((n,), -4.0)
        gap[open_] = 4.0
        with torch.no_grad():
            g.fc2.weight.normal_(0, 0.05, generator=gen)
            g.fc2.bias.view(n, 2)[:, 0] = 0.0
            g.fc2.bias.view(n, 2)[:, 1] = gap
    gates.eval()
    # the input every runner gets (make_runner's for onnxruntime): the dynamic models decide on it
    xin = (torch.from_numpy(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
           if a.backend == "ort-cpu" else torch.randn(shape))
    with torch.no_grad():
        ref = gated(xin)
        z = [m.clone() for m in gates.current()]
    flops_ratio = float(cost.ratio_of(z).reshape(-1)[0])
    plan = PrunePlan([GroupPlan(g.name, g.size, [int(i) for i in torch.nonzero(m[0]).flatten()])
                      for g, m in zip(graph.groups, z)], a.arch, shape, 0.5, {})
    gates.detach_()
    static = cut(gated, graph, plan, xin).slim.eval()
    gates.attach_(gated)
    static_ratio = count_flops(static, x).total / count_flops(dense, x).total
    diffs = {}
    if a.backend == "torch-cpu":
        dyn = dynamic_model(gated, graph, gates)
        with torch.no_grad():
            diffs["dynamic"] = float((dyn(xin) - ref).abs().max())
        runners = {name: make_runner(m, "torch-cpu", shape, threads=2) for name, m in (("dense", dense), ("static", static))}
        # one fixed input for every runner: the dynamic model takes that input's decisions every call
        for name, m in (("masked", gated), ("dynamic", dyn)):
            runners[name] = _fixed_input(m, xin)
        runners = {k: runners[k] for k in ("dense", "masked", "dynamic", "static")}
    else:
        tmp = Path(tempfile.mkdtemp(prefix="conditional-"))
        models = {"dense": dense, "masked": _WithGates(gated, gates), "static": static}
        ways = ["gather"] + (["if"] if a.granularity == "layer" else [])
        for way in ways:
            models[f"dynamic-{way}"] = onnx_dynamic_model(gated, graph, gates, way)
        runners = {}
        for name, m in models.items():
            path = tmp / f"{name}.onnx"
            export_onnx(m, xin, path, dynamic_batch=False, exporter="torchscript")
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            out = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: xin.numpy()})[0])
            if name != "dense":
                diffs[name] = float((out - ref).abs().max())
            runners[name] = make_runner(path, "ort-cpu", shape, threads=2)
        if a.profile:  # the same input as the runners (make_runner's), so the same decisions
            from why import profile

            row = {"key": key, "arch": a.arch, "size": a.size, "keep": a.keep, "backend": a.backend,
                   "granularity": a.granularity, "batch": 1, "threads": 2, "executed_flops_ratio": flops_ratio,
                   "runs": 50, "machine": machine(),
                   "models": {name: profile(tmp / f"{name}.onnx", 1, 50) for name in models}}
            rows.add(row)
            for name, p in row["models"].items():
                top = ", ".join(f"{k} {v:.2f}" for k, v in list(p["ms_per_kind"].items())[:7])
                print(f"{name:<15} {p['ms_total']:.2f} ms in kernels: {top}")
            return
    times = measure_interleaved(runners, warmup=5, rounds=a.rounds, per_round=5)
    row = {"key": key, "arch": a.arch, "size": a.size, "keep": a.keep, "backend": a.backend,
           "granularity": a.granularity, "batch": 1, "threads": 2, "executed_flops_ratio": flops_ratio,
           "static_flops_ratio": static_ratio, "max_abs_diff_vs_gated": diffs, "machine": machine(),
           "rounds": a.rounds, "ms": {k: sorted(v)[len(v) // 2] for k, v in times.items()}}
    for name in runners:
        if name == "dense":
            continue
        s = 1 / ratio_stats(times[name], times["dense"])[0]
        row[f"speedup_{name}"] = s
        ratio = static_ratio if name == "static" else flops_ratio
        row[f"measured_over_predicted_{name}"] = s * (ratio if name != "masked" else 1.0)
    rows.add(row)
    print(f"{a.arch} at {a.size}, keep {a.keep}, {a.granularity} gates, batch 1, {a.backend}: executed FLOPs "
          f"{flops_ratio:.3f} (vs the gated model: " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()) + ")")
    for name in runners:
        sp = row.get(f"speedup_{name}", 1.0)
        print(f"  {name:<15} {row['ms'][name]:7.2f} ms  speedup {sp:.2f}x")


def trained(a) -> None:
    """Real speed of a trained dynamic model against the dense architecture and a static model."""
    import copy
    import json

    import numpy as np
    import torch

    from chanprune.data import load_data
    from chanprune.dynamic import dynamic_model, onnx_dynamic_model
    from chanprune.export import export_onnx
    from chanprune.load import GatedModel, load_slim
    from chanprune.measure.latency import make_session, measure_interleaved, ratio_stats

    torch.set_num_threads(2)
    rows = Rows("conditional")
    acc = {json.loads(line)["command"].split("--out ")[-1]: json.loads(line)
           for line in (Path(__file__).parent / "results" / "accuracy.jsonl").read_text().splitlines()
           if '"suite": "conditional"' in line}
    dyn_row, static_row = acc.get(str(a.trained)), acc.get(str(a.static))
    if dyn_row is None or static_row is None:
        raise SystemExit(f"{a.trained} and {a.static} must be runs of the conditional accuracy suite (rows in accuracy.jsonl)")
    g = GatedModel.load(a.trained)
    learned = list(g.input_shape)
    key = f"trained/{dyn_row['key']}" + (f"/at{a.size}" if a.size and a.size != learned[2] else "")
    if static_row["target"] != dyn_row["target"]:  # a static model of another budget (of equal accuracy, say)
        key += f"/vs-{static_row['method']}-t{static_row['target']}"
    if key in rows:
        print(f"{key}: done")
        return
    model, graph, gates = g.model.eval(), g.graph, g.gates.eval()
    shape = learned[:2] + [a.size or learned[2]] * 2
    bundle = load_data("fashion-mnist", channels=shape[1], size=shape[2], seed=0)
    xs, _ = next(iter(bundle.test.batches(a.inputs)))
    with torch.no_grad():
        ref = model(xs)
        z = [m.clone() for m in gates.current()]
    executed = g.flops.ratio_of(z).reshape(-1).double()
    gates.detach_()
    dense = copy.deepcopy(model).eval()
    gates.attach_(model)
    static, _ = load_slim(a.static / "slim" / "slim.pt")
    static.eval()
    diffs = {}
    models_t = {"dense": dense, "masked": model, "dynamic": dynamic_model(model, graph, gates), "static": static}
    with torch.no_grad():
        diffs["torch dynamic"] = float((models_t["dynamic"](xs) - ref).abs().max())
    one = [xs[i:i + 1] for i in range(len(xs))]

    def torch_runner(m):
        def run():
            with torch.inference_mode():
                for x in one:
                    m(x)
        return run

    runners = {f"torch {k}": torch_runner(m) for k, m in models_t.items()}
    tmp = Path(tempfile.mkdtemp(prefix="conditional-trained-"))
    onnx_models = {"dense": dense, "static": static, "masked": _WithGates(model, gates),
                   "gather": onnx_dynamic_model(model, graph, gates, "gather")}
    if gates.granularity == "layer":
        onnx_models["if"] = onnx_dynamic_model(model, graph, gates, "if")
    for name, m in onnx_models.items():
        path = export_onnx(m, xs[:1], tmp / f"{name}.onnx", dynamic_batch=False, exporter="torchscript")
        sess = make_session(path, "ort-cpu", threads=2)
        feeds = [{sess.get_inputs()[0].name: x.numpy()} for x in one]
        if name in ("masked", "gather", "if"):
            out = np.concatenate([sess.run(None, f)[0] for f in feeds])
            diffs[f"ort {name}"] = float(np.abs(out - ref.numpy()).max())

        def run(sess=sess, feeds=feeds):
            for f in feeds:
                sess.run(None, f)
        runners[f"ort {name}"] = run
    times = measure_interleaved(runners, warmup=2, rounds=a.rounds, per_round=1)
    per_image = {k: sorted(v)[len(v) // 2] / len(one) for k, v in times.items()}
    speedup = {k: 1 / ratio_stats(times[k], times[f"{k.split()[0]} dense"])[0] for k in times if not k.endswith("dense")}
    row = {"key": key, "arch": g.arch, "method": dyn_row["method"], "target": dyn_row["target"], "seed": dyn_row["seed"],
           "static_method": static_row["method"], "static_target": static_row["target"], "inputs": len(one), "input_shape": shape, "learned_shape": learned, "batch": 1, "threads": 2,
           "granularity": gates.granularity, "executed_flops_ratio": float(executed.mean()),
           "executed_flops_range": [float(executed.min()), float(executed.max())],
           "static_flops_ratio": static_row["flops_ratio"], "test_accuracy": dyn_row["test_accuracy"],
           "static_test_accuracy": static_row["test_accuracy"], "max_abs_diff_vs_gated": diffs,
           "ms_per_image": per_image, "speedup": speedup, "machine": machine(), "rounds": a.rounds}
    rows.add(row)
    print(f"{g.arch} {dyn_row['method']} t={dyn_row['target']} seed {dyn_row['seed']}: executed FLOPs "
          f"{row['executed_flops_ratio']:.3f} over {len(one)} test images (static {row['static_flops_ratio']:.3f}); "
          f"test accuracy {row['test_accuracy']:.4f} (static {row['static_test_accuracy']:.4f})")
    for k in runners:
        print(f"  {k:<15} {per_image[k]:7.3f} ms per image  speedup {speedup.get(k, 1.0):.2f}x")


def _WithGates(model, gates):
    """The gated model with its gates as submodules, so that the exporter sees their weights."""
    from torch import nn

    class WithGates(nn.Module):
        def __init__(self):
            super().__init__()
            self.model, self.gates = model, gates

        def forward(self, x):
            return self.model(x)

    return WithGates().eval()


def _fixed_input(model, x):
    import torch

    def run():
        torch.set_num_threads(2)
        with torch.inference_mode():
            model(x)

    return run


if __name__ == "__main__":
    main()
