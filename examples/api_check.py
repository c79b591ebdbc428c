"""The Python API end to end on one model: groups -> gates -> plan -> cut -> ONNX, with parity.

Run: python examples/api_check.py
"""
import copy
import tempfile
from pathlib import Path

import torch

import chanprune as cp


def main():
    torch.manual_seed(0)
    model = cp.build_model("resnet20", num_classes=10)
    x = torch.randn(1, 3, 32, 32)

    graph = cp.find_groups(model, x)                     # channel groups (torch-pruning)
    cost = cp.CostModel(model, x, graph)                 # FLOPs as a function of the masks
    gates = cp.attach_gates(model, graph)                # one Gumbel gate per group
    with torch.no_grad():                                # pretend learning closed ~half the gates
        for g in gates.gates:
            g.logits[torch.rand(g.num_channels) < 0.5, 1] = -4.0
    plan = cp.freeze(graph, gates.probs(), tau=0.5, arch="resnet20", input_shape=[1, 3, 32, 32])
    print(f"kept {plan.kept_channels}/{plan.total_channels} channels, "
          f"predicted FLOPs {cost.plan_flops(plan, graph) / cost.dense:.1%}, "
          f"polarized {cp.polarization(gates.probs()).polarized:.0%}")

    gates.fix_(plan.keep_masks(graph))                   # the frozen gated model
    with torch.no_grad():
        y_gated = model(x)
    gates.detach_()
    slim = cp.apply_plan_(copy.deepcopy(model), plan, x, graph=graph)
    with torch.no_grad():
        y_slim = slim(x)
    print(f"slim vs gated: max |diff| {(y_slim - y_gated).abs().max():.1e}; "
          f"FLOPs {cp.count_flops(slim, x).total / cost.dense:.1%} of dense (fvcore)")

    with tempfile.TemporaryDirectory() as tmp:
        cp.save_slim(Path(tmp) / "slim.pt", slim, arch="resnet20", plan=plan, input_shape=[1, 3, 32, 32],
                     build_kwargs={"num_classes": 10})
        reloaded, _ = cp.load_slim(Path(tmp) / "slim.pt")
        onnx_path = cp.export_onnx(reloaded, x, Path(tmp) / "slim.onnx")
        y_ort = cp.run_onnx(cp.onnx_session(onnx_path), x)
        print(f"onnxruntime vs slim: max |diff| {abs(y_ort - y_slim.numpy()).max():.1e}")


if __name__ == "__main__":
    main()
