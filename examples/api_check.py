"""The Python API end to end: build, gate, learn briefly on digits, freeze, cut, export, bench.

Run: python examples/api_check.py
"""
import tempfile
from pathlib import Path

import torch

import chanprune as cp
from chanprune.data import load_data
from chanprune.export import DEFAULT_ATOL, DEFAULT_RTOL, within_tolerance
from chanprune.learn import LearnConfig, evaluate, fit
from chanprune.measure.latency import make_runner, measure_interleaved


def require_parity(what: str, diff: float, reference_scale: float) -> None:
    """chanprune's one tolerance, |a - b| <= atol + rtol * max|reference|; exit 1 outside it."""
    if not within_tolerance(diff, reference_scale, atol=DEFAULT_ATOL, rtol=DEFAULT_RTOL):
        raise SystemExit(f"{what}: max |diff| {diff:.1e} is outside the tolerance "
                         f"(atol {DEFAULT_ATOL:g} + rtol {DEFAULT_RTOL:g} * {reference_scale:.3g})")


def main():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    data = load_data("digits", channels=3)                # scikit-learn's 8x8 digits, no download
    model = cp.build_model("resnet20", num_classes=10)
    x = torch.zeros(1, 3, 8, 8)

    graph = cp.find_groups(model, x)                      # channel groups (torch-pruning)
    cost = cp.make_cost("flops", model, x, graph)         # FLOPs as a function of the gate masks
    gates = cp.attach_gates(model, graph)                 # one Gumbel gate per group
    fit(model, data.train, data.val, LearnConfig(epochs=6, batch_size=64, lr=0.1, target=0.5), gates=gates, cost=cost)

    plan = cp.freeze(graph, gates.probs(), tau=0.5, arch="resnet20", input_shape=list(x.shape))
    print(f"kept {plan.kept_channels}/{plan.total_channels} channels, predicted FLOPs {cost.ratio(plan):.1%}, "
          f"polarized {cp.polarization(gates.probs()).polarized:.0%}")
    model.eval()
    gates.fix_(plan.keep_masks(graph))                    # the frozen gated model
    gated_acc = evaluate(model, data.test)["accuracy"]

    torch.manual_seed(1)
    xb = torch.randn(4, 3, 8, 8)
    res = cp.cut(model, graph, plan, xb, gates=gates)     # physical removal, checked against the gated model
    slim = res.slim
    print(f"test accuracy gated {gated_acc:.4f}, slim {evaluate(slim, data.test)['accuracy']:.4f}; "
          f"slim vs gated max |diff| {res.max_abs_diff:.1e}; FLOPs {cp.count_flops(slim, x).total / cost.dense():.1%} "
          "of dense (fvcore)")
    require_parity("slim vs gated", res.max_abs_diff, float(res.gated_output.abs().max()))

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cp.save_slim(tmp / "slim.pt", slim, arch="resnet20", plan=plan, input_shape=list(x.shape),
                     build_kwargs={"num_classes": 10})
        reloaded, _ = cp.load_slim(tmp / "slim.pt")
        slim_onnx = cp.export_onnx(reloaded, x, tmp / "slim.onnx")
        dense_onnx = cp.export_onnx(model, x, tmp / "dense.onnx")
        y_ort = cp.run_onnx(cp.onnx_session(slim_onnx), xb)
        with torch.no_grad():
            y_slim = reloaded(xb).numpy()
        d_ort = float(abs(y_ort - y_slim).max())
        print(f"onnxruntime vs slim: max |diff| {d_ort:.1e}")
        require_parity("onnxruntime vs slim", d_ort, float(abs(y_slim).max()))

        shape = [32, 3, 8, 8]
        t = measure_interleaved({"slim": make_runner(slim_onnx, "ort-cpu", shape, threads=2),
                                 "dense": make_runner(dense_onnx, "ort-cpu", shape, threads=2)}, rounds=9)
        ratios = sorted(d / s for d, s in zip(t["dense"], t["slim"]))
        print(f"onnxruntime CPU, batch 32: speedup {ratios[len(ratios) // 2]:.2f}x (median of {len(ratios)} rounds)")


if __name__ == "__main__":
    main()
