"""What a latency table's point should time: the whole call (wall) or onnxruntime's kernels (kernel),
and whether correcting each layer to its time inside whole models (wall+context) helps.

For each model, `chanprune profile --timing wall`, `--timing kernel` and `--timing wall --in-context`
(no cache, onnxruntime CPU, 2 threads, batch 1 and 32), one after the other, and each table's calibration against whole
cut models: the worst relative error over the fitted plans (the dense model and 3 random aligned
plans) and the error on a held-out plan. Measure it alone: the whole-model timings are the truth.

    python benchmarks/profile_timing.py [--archs resnet20,resnet18,mobilenet_v2,efficientnet_lite0]

Rows go to benchmarks/results/profile_timing.jsonl (one per arch and timing).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from _common import CLI, Rows

SHAPES = {"resnet20": "1,1,28,28"}  # the demo's model at its own size; the rest at 224
VARIANTS = ("wall", "kernel", "wall+context")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="resnet20,resnet18,mobilenet_v2,efficientnet_lite0")
    ap.add_argument("--variants", default=None, help=f"Comma-separated, of {', '.join(VARIANTS)} (default: all).")
    a = ap.parse_args()
    rows = Rows("profile_timing")
    for arch in a.archs.split(","):
        shape = SHAPES.get(arch, "1,3,224,224")
        for variant in VARIANTS if a.variants is None else a.variants.split(","):
            timing, context = variant.split("+")[0], variant.endswith("+context")
            key = f"{arch}/{shape}/{variant}"
            if key in rows:
                print(f"{key}: done")
                continue
            with tempfile.TemporaryDirectory() as tmp:
                args = ["profile", "--arch", arch, "--num-classes", "10", "--input-shape", shape, "--batch-size", "1,32",
                        "--no-cache", "--timing", timing, *(["--in-context"] if context else []), "--json",
                        "--out", str(Path(tmp) / "lut.json")]
                out = subprocess.run(CLI + args, check=True, capture_output=True, text=True).stdout
            d = json.loads(out)
            rows.add({"key": key, "arch": arch, "input_shape": [int(v) for v in shape.split(",")], "timing": variant,
                      "command": "chanprune " + " ".join(args[:-2]), "seconds": d["seconds"],
                      "calibration": d["calibration"]})
            cal = {b: f"worst {c['max_abs_rel_error']:.1%}, holdout {c['holdout_rel_error']:+.1%}"
                   for b, c in d["calibration"].items()}
            print(f"{arch} {variant}: {d['seconds']:.0f} s; " + "; ".join(f"batch {b}: {v}" for b, v in cal.items()))


if __name__ == "__main__":
    main()
