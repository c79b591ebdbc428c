"""FLOPs by fvcore (one multiply-add = one FLOP) and parameter counts.

>>> import torch
>>> report = count_flops(torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.zeros(1, 3, 4, 4))
>>> report.total  # 8 outputs x 16 pixels x 27 multiply-adds
3456
"""
from __future__ import annotations

import logging
import warnings
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["FlopReport", "count_flops", "count_params"]


@dataclass
class FlopReport:
    total: int
    by_module: dict[str, int] = field(default_factory=dict)
    by_operator: dict[str, int] = field(default_factory=dict)
    unsupported: dict[str, int] = field(default_factory=dict)


def count_flops(model: nn.Module, inputs: torch.Tensor) -> FlopReport:
    """fvcore's count for `model` on `inputs` (the model is put in eval mode and restored)."""
    with warnings.catch_warnings():
        # fvcore's focal loss module calls the deprecated torch.jit.script at import time.
        warnings.simplefilter("ignore", FutureWarning)
        from fvcore.nn import FlopCountAnalysis

    was_training = model.training
    model.eval()
    # fvcore logs a warning per unsupported op and uncalled module; we return them instead.
    logger = logging.getLogger("fvcore")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with torch.no_grad():
            a = FlopCountAnalysis(model, (inputs,))
            a.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
            total = int(a.total())
            by_module = {k: int(v) for k, v in a.by_module().items()}
            by_op = {k: int(v) for k, v in a.by_operator().items()}
            unsupported = dict(Counter(a.unsupported_ops()))
    finally:
        logger.setLevel(level)
        model.train(was_training)
    return FlopReport(total, by_module, by_op, unsupported)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
