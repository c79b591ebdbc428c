"""The embedded default until learning lands: can these models be pruned exactly?

For each model: gate every channel group, cut a random plan (half of each group, and one group
removed whole where the model has one), and compare slim vs gated torch and onnxruntime vs slim.
Run: `make demo` (or `python examples/check_models.py`).
"""
import time

import torch

from chanprune import build_model, check_model
from chanprune.check import perturb_batchnorm_

MODELS = [("resnet20", 32, None), ("resnet18", 64, None), ("mobilenet_v2", 64, None),
          ("densenet121", 64, None), ("efficientnet_lite0", 64, "DEFAULT"), ("shufflenet_v2_x0_5", 64, None)]


def main():
    torch.set_num_threads(2)
    print(f"{'model':<20}{'groups':>7}{'zero-w':>7}{'FLOPs kept':>11}{'params kept':>12}"
          f"{'slim-gated':>12}{'ORT-slim':>10}{'exact':>7}{'time':>7}")
    ok = True
    for arch, size, weights in MODELS:
        t = time.perf_counter()
        model = build_model(arch, num_classes=None if weights else 10, weights=weights)
        if weights is None:
            perturb_batchnorm_(model)
        r = check_model(model, arch=arch, input_shape=[1, 3, size, size])
        ok &= r.exact
        print(f"{arch:<20}{r.groups:>7}{r.zero_width_groups:>7}{r.flops_slim / r.flops_dense:>11.1%}"
              f"{r.params_slim / r.params_dense:>12.1%}{r.max_abs_diff:>12.1e}{r.onnx_max_abs_diff:>10.1e}"
              f"{str(r.exact):>7}{time.perf_counter() - t:>6.1f}s")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
