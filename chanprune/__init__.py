"""chanprune: learn which channels to drop (Gumbel-softmax gates), then cut them for real.

The pipeline, one stage per module::

    zoo.build_model -> graph.find_groups -> gates.attach_gates -> (learn) -> freeze.freeze
    -> surgery.apply_plan_ -> export.export_onnx -> measure
"""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("chanprune")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from .artifacts import atomic_save, load_artifact, load_slim, save_slim
from .budget import CostModel
from .check import CheckReport, check_model
from .errors import ArtifactError, ChanpruneError, PlanError, UnknownArchError, UnsupportedModelError
from .export import export_onnx, onnx_session, run_onnx
from .freeze import PolarizationReport, freeze, polarization, random_plan
from .gates import GateSet, GumbelGate, attach_gates
from .graph import ChannelGraph, ChannelGroup, Site, find_groups
from .measure import FlopReport, count_flops, count_params
from .plan import GroupPlan, PrunePlan
from .surgery import ConstantOutput, ZeroChannels, apply_plan_
from .zoo import ArchProvider, build_model, list_archs, provider_for, register_arch, register_provider

__all__ = [
    "__version__",
    "ArtifactError", "ChanpruneError", "PlanError", "UnknownArchError", "UnsupportedModelError",
    "ArchProvider", "build_model", "list_archs", "provider_for", "register_arch", "register_provider",
    "ChannelGraph", "ChannelGroup", "Site", "find_groups",
    "GateSet", "GumbelGate", "attach_gates",
    "PolarizationReport", "freeze", "polarization", "random_plan",
    "GroupPlan", "PrunePlan",
    "CostModel",
    "ConstantOutput", "ZeroChannels", "apply_plan_",
    "atomic_save", "load_artifact", "load_slim", "save_slim",
    "export_onnx", "onnx_session", "run_onnx",
    "FlopReport", "count_flops", "count_params",
    "CheckReport", "check_model",
]
