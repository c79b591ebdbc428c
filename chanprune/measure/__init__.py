"""Measurements: FLOPs and parameters (fvcore); latency lives in a later module."""
from .flops import FlopReport, count_flops, count_params

__all__ = ["FlopReport", "count_flops", "count_params"]
