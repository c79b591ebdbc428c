"""Does simplifying the exported ONNX (onnxslim, onnxsim) change onnxruntime's latency?

For resnet18 and mobilenet_v2 at 224x224 under a plan (resnet18: the CI guard's learned plan;
mobilenet_v2: a random plan keeping half of each group, rounded to 16), the slim model is exported
as `chanprune export` writes it, then simplified with each tool, and each simplified file is timed
against the plain one interleaved (`chanprune bench --vs`), batch 1 and 32, 2 threads. Rows go to
results/simplify.jsonl (resumable: finished keys are skipped).

    python benchmarks/simplify.py
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from _common import CLI, Rows

HERE = Path(__file__).resolve().parent
SHAPE = [1, 3, 224, 224]
ROUNDS = {1: 30, 32: 7}
TOOLS = ("onnxslim", "onnxsim")


def build(arch: str, folder: Path) -> Path:
    import torch

    from chanprune.cut import cut
    from chanprune.export import export_onnx
    from chanprune.freeze import random_plan, round_plan
    from chanprune.graph import find_groups
    from chanprune.plan import PrunePlan
    from chanprune.zoo import build_model

    torch.manual_seed(0)
    model = build_model(arch, num_classes=10).eval()
    graph = find_groups(model, torch.zeros(SHAPE))
    if arch == "resnet18":
        plan = PrunePlan.from_json((HERE / "guard" / "resnet18_t0.5_r16.plan.json").read_text())
    else:
        plan = round_plan(random_plan(graph, keep=0.5, seed=0), graph, 16)
    res = cut(model, graph, plan, torch.randn(SHAPE))
    if not res.exact:
        raise SystemExit(f"{arch}: the slim model differs from the gated one by {res.max_abs_diff:.2e}")
    return export_onnx(res.slim, torch.zeros(SHAPE), folder / "plain" / "model.onnx")


def main():
    from chanprune.export import max_abs_diff, onnx_session, run_onnx, simplify_onnx

    import numpy as np

    rows = Rows("simplify")
    for arch in ("resnet18", "mobilenet_v2"):
        if all(f"{arch}/{tool}/b{b}" in rows for tool in TOOLS for b in ROUNDS):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            (tmp / "plain").mkdir()
            plain = build(arch, tmp)
            x = np.random.default_rng(0).standard_normal([2, *SHAPE[1:]]).astype("float32")
            import torch

            ref = run_onnx(onnx_session(plain), torch.from_numpy(x))
            for tool in TOOLS:
                (tmp / tool).mkdir()
                path = tmp / tool / "model.onnx"
                shutil.copy(plain, path)
                nodes = simplify_onnx(path, tool)
                diff = max_abs_diff(run_onnx(onnx_session(path), torch.from_numpy(x)), ref)
                for b, rounds in ROUNDS.items():
                    key = f"{arch}/{tool}/b{b}"
                    if key in rows:
                        continue
                    cmd = CLI + ["bench", str(path), "--vs", str(plain), "--backend", "ort-cpu", "--threads", "2",
                                 "--batch-size", str(b), "--rounds", str(rounds), "--json"]
                    r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)["results"][0]
                    rows.add({"key": key, "arch": arch, "tool": tool, "batch": b, **nodes,
                              "max_abs_diff_vs_plain": diff, "plain_p50_ms": r["vs_p50_ms"],
                              "simplified_p50_ms": r["p50_ms"], "speedup": r["speedup"],
                              "speedup_p10_p90": r.get("speedup_spread"), "rounds": rounds,
                              "command": "python benchmarks/simplify.py"})
                    print(json.dumps(rows.get(key)))


if __name__ == "__main__":
    main()
