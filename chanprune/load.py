"""Rebuild models from chanprune's files: gated checkpoints, slim models, dense checkpoints, ONNX.

No file holds a module: each names its arch and build arguments, and the model is rebuilt by the
zoo, then gated or cut as the file says, then given its weights (strictly). A `module:function`
arch is imported only when the caller names it again (`arch=`): a file never makes us import code.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .artifacts import DENSE_FORMAT, GATED_FORMAT, GATED_FORMAT_V1, SLIM_FORMAT, atomic_save, load_artifact, provenance
from .checkpoint import DenseCheckpoint, GatedCheckpoint
from .cost import Cost, FlopsCost, make_cost
from .errors import ArtifactError, ChanpruneError
from .freeze import freeze
from .gates import GateSet
from .graph import ChannelGraph, find_groups
from .measure.lut import LatencyTable
from .plan import PrunePlan
from .surgery import apply_plan_
from .zoo import build_model, saved_arch

__all__ = ["GatedModel", "load_any", "load_dense", "save_slim", "load_slim", "resolve_checkpoint"]


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A run folder means the checkpoint inside it: `RUN` and `RUN/model.pt` are the same."""
    path = Path(path)
    if path.is_dir():
        if not (path / "model.pt").is_file():
            raise ArtifactError(f"{path} is a folder without a model.pt inside (not a run folder)")
        return path / "model.pt"
    return path


class GatedModel:
    """A gated checkpoint rebuilt: the model with its gates attached, its graph, the budget's cost
    (`cost`) and fvcore's FLOPs (`flops`, the same object when the budget is FLOPs)."""

    def __init__(self, ckpt: GatedCheckpoint, *, path: str | os.PathLike = "<checkpoint>", arch: str | None = None,
                 input_shape: list[int] | None = None):
        saved = saved_arch({"arch": ckpt.arch}, path, arch)
        shape = list(ckpt.input_shape)
        if input_shape is not None:
            if len(input_shape) != len(shape) or input_shape[1] != shape[1]:
                raise ChanpruneError(f"--input-shape {input_shape}: the model was learned on inputs like {shape} "
                                     "(same rank and channels needed)")
            shape = list(input_shape)
        self.ckpt, self.arch, self.input_shape, self.path = ckpt, saved, shape, Path(path)
        kwargs = ckpt.build_kwargs
        self.model = build_model(saved, num_classes=kwargs.get("num_classes"), in_channels=kwargs.get("in_channels", 3))
        try:
            self.model.load_state_dict(ckpt.state_dict, strict=True)
        except (RuntimeError, KeyError) as e:
            raise ArtifactError(f"{path}: the weights do not fit {saved} ({str(e).splitlines()[0][:200]})") from e
        x = torch.zeros(shape)
        self.graph: ChannelGraph = find_groups(self.model, x, ignored=tuple(ckpt.ignore))
        if ckpt.group_sizes and ckpt.group_sizes != [g.size for g in self.graph.groups]:
            raise ArtifactError(f"{path}: its channel groups differ from {saved}'s at input shape {shape}")
        config = ckpt.learn_config
        try:
            self.gates = GateSet(self.graph, kind=ckpt.gate["kind"], config=ckpt.gate.get("config"),
                                 tau=config.get("tau", 0.5))
            self.gates.load_state_dict(ckpt.gate_state)
        except (RuntimeError, KeyError) as e:
            raise ArtifactError(f"{path}: the gate state does not fit {saved}'s channel groups") from e
        except (ValueError, TypeError) as e:
            raise ArtifactError(f"{path}: {e}") from e
        # both on the dense model, before the gates hook in
        self.flops = FlopsCost(self.model, x, self.graph)
        name = ckpt.cost.get("name", "flops")
        try:
            options = {"lut": LatencyTable.from_dict(ckpt.cost["table"])} if "table" in ckpt.cost else {}
            self.cost: Cost = self.flops if name == "flops" else make_cost(name, self.model, x, self.graph, **options)
        except (ValueError, TypeError) as e:
            raise ArtifactError(f"{path}: {e}") from e
        self.gates.attach_(self.model)

    @classmethod
    def load(cls, path: str | os.PathLike, *, arch: str | None = None,
             input_shape: list[int] | None = None) -> "GatedModel":
        path = resolve_checkpoint(path)
        return cls(GatedCheckpoint.load(path), path=path, arch=arch, input_shape=input_shape)

    @property
    def tau(self) -> float:
        """The run's own freeze threshold."""
        return float(self.ckpt.learn_config.get("tau", 0.5))

    def plan(self, tau: float | None = None) -> PrunePlan:
        """The plan this checkpoint deploys.

        A stored plan (frozen by `learn` with its own tau and --min-keep) is used whenever there is
        one. A different `tau` re-freezes, except where the weights were fine-tuned or batch norms
        recalibrated under the stored plan: that is an error, since the weights fit that plan only.
        Without a stored plan (learning cut short), the gates are frozen at `tau` (default: the run's).
        """
        stored = self.ckpt.plan
        if stored is not None and (tau is None or tau == stored.tau):
            return stored
        if stored is not None and self.ckpt.tuned_for_plan:
            raise ChanpruneError(f"--tau {tau}: {self.path} was fine-tuned under the plan frozen at tau {stored.tau}, "
                                 f"and its weights fit that plan only; drop --tau (or pass --tau {stored.tau})")
        return freeze(self.graph, self.gates.probs(), tau=self.tau if tau is None else tau,
                      min_keep=int(self.ckpt.learn_config.get("min_keep", 0)), arch=self.arch,
                      input_shape=self.input_shape, cost=self.cost, essential=self.gates.essential(),
                      units=self.gates.units())


def load_dense(path: str | os.PathLike, *, arch: str | None = None) -> tuple[nn.Module, DenseCheckpoint]:
    """A dense checkpoint (`chanprune train`) rebuilt, in eval mode."""
    ckpt = DenseCheckpoint.load(path)
    kw = ckpt.build_kwargs
    model = build_model(saved_arch({"arch": ckpt.arch}, path, arch), num_classes=kw.get("num_classes"),
                        in_channels=kw.get("in_channels", 3))
    try:
        model.load_state_dict(ckpt.state_dict, strict=True)
    except (RuntimeError, KeyError) as e:
        raise ArtifactError(f"{path}: the weights do not fit {ckpt.arch} ({str(e).splitlines()[0][:200]})") from e
    return model.eval(), ckpt


def save_slim(path: str | os.PathLike, slim: nn.Module, *, arch: str, plan: PrunePlan, input_shape: list[int],
              build_kwargs: dict | None = None, seed: int | None = None) -> Path:
    return atomic_save({
        "format": SLIM_FORMAT, "arch": arch, "build_kwargs": dict(build_kwargs or {}),
        "input_shape": list(input_shape), "plan": plan.to_dict(), "state_dict": slim.state_dict(),
        "provenance": provenance(seed)}, path)


def load_slim(path: str | os.PathLike, *, arch: str | None = None) -> tuple[nn.Module, dict]:
    """Rebuild a slim model: build the arch, apply the plan, load the weights (strictly)."""
    obj = load_artifact(path, SLIM_FORMAT)
    saved = saved_arch(obj, path, arch)
    if arch is not None and arch != saved:
        raise ArtifactError(f"{path} holds a {saved}, not a {arch}")
    plan = PrunePlan.from_dict(obj.get("plan"))
    kwargs = obj.get("build_kwargs") or {}
    if not isinstance(kwargs, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for k, v in kwargs.items()
                                               if k in ("num_classes", "in_channels")):
        raise ArtifactError(f"{path}: 'build_kwargs' must map num_classes/in_channels to integers")
    shape = obj.get("input_shape")
    if (not isinstance(shape, list) or len(shape) < 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
        raise ArtifactError(f"{path}: 'input_shape' must be a list of positive integers")
    model = build_model(saved, **{k: v for k, v in kwargs.items() if k in ("num_classes", "in_channels")})
    apply_plan_(model, plan, torch.zeros([1, *shape[1:]]))
    try:
        model.load_state_dict(obj["state_dict"], strict=True)
    except (RuntimeError, KeyError) as e:
        raise ArtifactError(f"{path}: the weights do not fit the rebuilt slim model ({str(e).splitlines()[0]})") from e
    return model.eval(), obj


def load_any(path: str | os.PathLike, *, tau: float | None = None, arch: str | None = None):
    """(kind, torch model or onnxruntime session, input shape) for a .pt of any kind or a .onnx.

    A gated checkpoint comes frozen under the plan it deploys (`GatedModel.plan`)."""
    path = resolve_checkpoint(path)
    if path.suffix == ".onnx":
        from .export import onnx_session

        sess = onnx_session(path)
        shape = [d if isinstance(d, int) else 1 for d in sess.get_inputs()[0].shape]
        return "onnx", sess, shape
    obj = load_artifact(path, (GATED_FORMAT, GATED_FORMAT_V1, SLIM_FORMAT, DENSE_FORMAT))
    if obj["format"] == SLIM_FORMAT:
        model, obj = load_slim(path, arch=arch)
        return "slim", model, obj["input_shape"]
    if obj["format"] in (GATED_FORMAT, GATED_FORMAT_V1):
        gm = GatedModel(GatedCheckpoint.from_dict(obj, path), path=path, arch=arch)
        gm.gates.fix_(gm.plan(tau).keep_masks(gm.graph))
        return "gated", gm.model.eval(), gm.input_shape
    model, ckpt = load_dense(path, arch=arch)
    return "dense", model, ckpt.input_shape
