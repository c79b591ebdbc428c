"""chanprune: learn which channels to drop (Gumbel-softmax gates), then cut them for real.

The pipeline, one stage per module::

    zoo.build_model -> graph.find_groups -> gates.attach_gates -> (learn.fit under a cost.Cost)
    -> freeze.freeze -> cut.cut (surgery.apply_plan_ + parity) -> export.export_onnx -> measure

Layers (enforced by import-linter, see setup.cfg): the CLI (`chanprune_cli`) calls commands
(runs, deploy, evaluate, bench, check, report), which call stages (learn, freeze, cut, load, ...),
which use the core (graph, gates, cost, plan, checkpoint, zoo, data, export, measure, artifacts).
"""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("chanprune")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from .artifacts import atomic_save, load_artifact
from .check import CheckReport, check_arch, check_list, check_model
from .checkpoint import DenseCheckpoint, GatedCheckpoint
from .cost import ChannelsCost, Cost, FlopsCost, list_costs, make_cost, register_cost
from .cut import CutResult, cut
from .errors import ArtifactError, ChanpruneError, PlanError, UnknownArchError, UnsupportedModelError
from .export import export_onnx, onnx_session, run_onnx
from .freeze import PolarizationReport, freeze, polarization, random_plan, round_plan
from .gates import Gate, GateSet, GumbelGate, TrainableGate, attach_gates, list_gates, make_gate, register_gate
from .graph import ChannelGraph, ChannelGroup, Site, find_groups
from .load import GatedModel, load_slim, save_slim
from .measure import FlopReport, count_flops, count_params
from .plan import GroupPlan, PrunePlan
from .surgery import ConstantOutput, ZeroChannels, apply_plan_
from .zoo import ArchProvider, build_model, list_archs, provider_for, register_arch, register_provider

__all__ = [
    "__version__",
    "ArtifactError", "ChanpruneError", "PlanError", "UnknownArchError", "UnsupportedModelError",
    "ArchProvider", "build_model", "list_archs", "provider_for", "register_arch", "register_provider",
    "ChannelGraph", "ChannelGroup", "Site", "find_groups",
    "Gate", "GateSet", "GumbelGate", "TrainableGate", "attach_gates", "list_gates", "make_gate", "register_gate",
    "PolarizationReport", "freeze", "polarization", "random_plan", "round_plan",
    "GroupPlan", "PrunePlan",
    "Cost", "FlopsCost", "ChannelsCost", "list_costs", "make_cost", "register_cost",
    "ConstantOutput", "ZeroChannels", "apply_plan_", "CutResult", "cut",
    "DenseCheckpoint", "GatedCheckpoint", "GatedModel",
    "atomic_save", "load_artifact", "load_slim", "save_slim",
    "export_onnx", "onnx_session", "run_onnx",
    "FlopReport", "count_flops", "count_params",
    "CheckReport", "check_arch", "check_list", "check_model",
]
