"""The Python API end to end: build, gate, learn briefly on digits, freeze, cut, export, bench.

Run: python examples/api_check.py
"""
import copy
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
    if not within_tolerance(diff, reference_scale):
        raise SystemExit(f"{what}: max |diff| {diff:.1e} is outside the tolerance "
                         f"(atol {DEFAULT_ATOL:g} + rtol {DEFAULT_RTOL:g} * {reference_scale:.3g})")


def main():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    data = load_data("digits", channels=3)                # scikit-learn's 8x8 digits, no download
    model = cp.build_model("resnet20", num_classes=10)
    x = torch.zeros(1, 3, 8, 8)

    graph = cp.find_groups(model, x)                      # channel groups (torch-pruning)
    cost = cp.CostModel(model, x, graph)                  # FLOPs as a function of the gate masks
    gates = cp.attach_gates(model, graph)                 # one Gumbel gate per group
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fit(model, data.train, data.val, LearnConfig(epochs=6, batch_size=64, lr=0.1, target=0.5), out=tmp / "run",
            header={"arch": "resnet20"}, gates=gates, cost=cost)

        plan = cp.freeze(graph, gates.probs(), tau=0.5, arch="resnet20", input_shape=list(x.shape))
        print(f"kept {plan.kept_channels}/{plan.total_channels} channels, predicted FLOPs "
              f"{cost.plan_flops(plan, graph) / cost.dense:.1%}, polarized {cp.polarization(gates.probs()).polarized:.0%}")
        model.eval()
        gates.fix_(plan.keep_masks(graph))                # the frozen gated model
        gated_acc = evaluate(model, data.test)["accuracy"]
        gates.detach_()

        slim = cp.apply_plan_(copy.deepcopy(model), plan, x, graph=graph)   # physical removal
        torch.manual_seed(1)
        xb = torch.randn(4, 3, 8, 8)
        gates.attach_(model)
        with torch.no_grad():
            y_gated = model(xb)
            diff = (slim(xb) - y_gated).abs().max().item()
        gates.detach_()
        print(f"test accuracy gated {gated_acc:.4f}, slim {evaluate(slim, data.test)['accuracy']:.4f}; "
              f"slim vs gated max |diff| {diff:.1e}; FLOPs {cp.count_flops(slim, x).total / cost.dense:.1%} of dense (fvcore)")
        require_parity("slim vs gated", diff, y_gated.abs().max().item())

        cp.save_slim(tmp / "slim.pt", slim, arch="resnet20", plan=plan, input_shape=list(x.shape),
                     build_kwargs={"num_classes": 10})
        reloaded, _ = cp.load_slim(tmp / "slim.pt")
        slim_onnx = cp.export_onnx(reloaded, x, tmp / "slim.onnx")
        dense_onnx = cp.export_onnx(model, x, tmp / "dense.onnx")
        y_ort = cp.run_onnx(cp.onnx_session(slim_onnx), xb)
        y_slim = reloaded(xb).detach().numpy()
        ort_diff = float(abs(y_ort - y_slim).max())
        print(f"onnxruntime vs slim: max |diff| {ort_diff:.1e}")
        require_parity("onnxruntime vs slim", ort_diff, float(abs(y_slim).max()))

        shape = [32, 3, 8, 8]
        t = measure_interleaved({"slim": make_runner(slim_onnx, "ort-cpu", shape, threads=2),
                                 "dense": make_runner(dense_onnx, "ort-cpu", shape, threads=2)}, rounds=9)
        ratios = sorted(d / s for d, s in zip(t["dense"], t["slim"]))
        print(f"onnxruntime CPU, batch 32: speedup {ratios[len(ratios) // 2]:.2f}x (median of {len(ratios)} rounds)")


if __name__ == "__main__":
    main()
