"""Training checkpoints as typed data: `DenseCheckpoint` (`train`) and `GatedCheckpoint` (`learn`).

Each is written and read here alone: `to_dict()` gives what `torch.save` stores (tensors and JSON
types only, so `torch.load(weights_only=True)` reads it), `from_dict()` validates a loaded object
and names the first thing wrong, `save()` writes atomically and `load()` reads safely.

A gated checkpoint records everything a loader needs to rebuild the gated model: the arch and its
build arguments, the input shape, the layers left ungated, the gate kind and its settings, the
cost the budget constrained, and, once the gates are frozen, the plan the weights were tuned with.
`chanprune.gated/1` files (before gate kinds and costs were recorded) are read as Gumbel gates
under the cost their config names.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from .artifacts import DENSE_FORMAT, GATED_FORMAT, GATED_FORMAT_V1, atomic_save, check_format, load_artifact
from .errors import ArtifactError
from .plan import PrunePlan

__all__ = ["DenseCheckpoint", "GatedCheckpoint", "LoopState", "load_checkpoint", "STAGES"]

STAGES = ("learn", "finetune", "done")  # learning the gates; fine-tuning under the frozen plan; finished


@dataclass
class LoopState:
    """Where a training loop stands: enough to resume it exactly (optimizers, schedules, RNG, data order)."""

    epoch: int = 0  # epochs completed
    step: int = 0  # steps completed inside the current epoch
    history: list[dict] = field(default_factory=list)
    best: dict | None = None
    lam: float = 0.0  # the budget term's weight (learning only)
    side: int = 0  # where the last step's cost stood against the target: +1 above, -1 not (learning only)
    first_crossing: int | None = None  # the step whose cost first crossed the target (learning only)
    optimizer: list[dict] = field(default_factory=list)
    scheduler: list[dict] = field(default_factory=list)
    rng: dict = field(default_factory=dict)
    stopped: str | None = None  # why the loop ended before its budget (not saved: a stage change follows)

    def to_dict(self) -> dict:
        return {"state": {"epoch": self.epoch, "step": self.step, "history": self.history, "best": self.best,
                          "lam": self.lam, "side": self.side, "first_crossing": self.first_crossing},
                "optimizer": self.optimizer, "scheduler": self.scheduler, "rng": self.rng}

    @classmethod
    def from_dict(cls, d: dict, path) -> "LoopState":
        st = d.get("state")
        if not isinstance(st, dict) or not all(isinstance(st.get(k), int) for k in ("epoch", "step")):
            raise ArtifactError(f"{path}: missing or malformed training 'state'")
        if not isinstance(st.get("history", []), list):
            raise ArtifactError(f"{path}: training 'history' must be a list")
        opt, sched, rng = d.get("optimizer", []), d.get("scheduler", []), d.get("rng", {})
        if not isinstance(opt, list) or not isinstance(sched, list) or not isinstance(rng, dict):
            raise ArtifactError(f"{path}: malformed optimizer, scheduler or RNG state")
        side, first = st.get("side", 0), st.get("first_crossing")
        if side not in (-1, 0, 1) or not (first is None or (type(first) is int and first > 0)):
            raise ArtifactError(f"{path}: training 'side' must be -1, 0 or 1 and 'first_crossing' a step or null")
        return cls(st["epoch"], st["step"], list(st.get("history") or []), st.get("best"),
                   float(st.get("lam") or 0.0), int(side), first, opt, sched, rng)


def _shape(v, path) -> list[int]:
    if not isinstance(v, list) or len(v) < 2 or not all(type(s) is int and s > 0 for s in v):
        raise ArtifactError(f"{path}: 'input_shape' must be a list of positive integers")
    return list(v)


def _kwargs(v, path) -> dict:
    if not isinstance(v, dict) or not all(type(v.get(k)) is int for k in ("num_classes", "in_channels") if k in v):
        raise ArtifactError(f"{path}: 'build_kwargs' must map num_classes/in_channels to integers")
    return dict(v)


def _state_dict(v, path, key="state_dict") -> dict:
    if not isinstance(v, dict) or not all(isinstance(t, torch.Tensor) for t in v.values()):
        raise ArtifactError(f"{path}: '{key}' must map names to tensors")
    return v


@dataclass
class DenseCheckpoint:
    """What `chanprune train` writes: a dense model and the loop that trained it."""

    FORMAT = DENSE_FORMAT

    arch: str
    build_kwargs: dict
    input_shape: list[int]
    state_dict: dict
    data: str | None = None
    config: dict = field(default_factory=dict)
    loop: LoopState | None = None
    metrics: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    saved: str = "epoch"  # why it was written: "epoch", "interrupted" or "final"

    def to_dict(self) -> dict:
        d = {"format": self.FORMAT}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "loop":
                d.update(v.to_dict() if v is not None else {})
            elif f.name == "plan":
                d["plan"] = v.to_dict() if v is not None else None
            else:
                d[f.name] = v
        return d

    @classmethod
    def _common(cls, obj: dict, path) -> dict:
        arch = obj.get("arch")
        if not isinstance(arch, str) or not arch:
            raise ArtifactError(f"{path}: missing 'arch'")
        kw = {"arch": arch, "build_kwargs": _kwargs(obj.get("build_kwargs") or {}, path),
              "input_shape": _shape(obj.get("input_shape"), path), "state_dict": _state_dict(obj.get("state_dict"), path),
              "data": obj.get("data"), "metrics": obj.get("metrics") or {}, "provenance": obj.get("provenance") or {},
              "saved": obj.get("saved") or "epoch"}
        if "optimizer" in obj:  # resumable; a shipped model may keep only a summary of its training
            kw["loop"] = LoopState.from_dict(obj, path)
        return kw

    @classmethod
    def from_dict(cls, obj: dict, path: str | os.PathLike = "<checkpoint>") -> "DenseCheckpoint":
        check_format(obj, path, cls.FORMAT)
        config = obj.get("config") or {}
        if not isinstance(config, dict):
            raise ArtifactError(f"{path}: 'config' must be an object")
        return cls(**cls._common(obj, path), config=config)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "DenseCheckpoint":
        return cls.from_dict(load_artifact(path, cls.FORMAT), path)

    def save(self, path: str | os.PathLike) -> Path:
        return atomic_save(self.to_dict(), path)


@dataclass
class GatedCheckpoint(DenseCheckpoint):
    """What `chanprune learn` writes: the model, its gates, and where learning stands."""

    FORMAT = GATED_FORMAT

    stage: str = "learn"
    learn_config: dict = field(default_factory=dict)
    gate: dict = field(default_factory=lambda: {"kind": "gumbel", "config": {}})  # kind + settings
    gate_state: dict = field(default_factory=dict)
    cost: dict = field(default_factory=lambda: {"name": "flops"})  # the budget's cost: name + description
    ignore: list[str] = field(default_factory=list)
    group_names: list[str] = field(default_factory=list)
    group_sizes: list[int] = field(default_factory=list)
    plan: PrunePlan | None = None  # the frozen plan, from the moment fine-tuning starts
    learn_history: list[dict] = field(default_factory=list)  # learning's epochs, kept through fine-tuning
    result: dict | None = None  # the final figures, once stage is "done"
    frozen: dict | None = None  # when and why the gates froze: reason, steps learned, cost and polarization then

    @property
    def tuned_for_plan(self) -> bool:
        """Whether the weights were adapted to the stored plan (fine-tuned or BN-recalibrated under it)."""
        cfg = self.learn_config
        tuned = (self.frozen or {}).get("finetune_steps") or cfg.get("finetune_epochs") or cfg.get("calibrate_bn")
        return self.plan is not None and bool(tuned)

    @classmethod
    def from_dict(cls, obj: dict, path: str | os.PathLike = "<checkpoint>") -> "GatedCheckpoint":
        check_format(obj, path, (GATED_FORMAT, GATED_FORMAT_V1))
        if obj["format"] == GATED_FORMAT_V1:
            obj = _upgrade_v1(obj)
        kw = cls._common(obj, path)
        stage = obj.get("stage", "learn")
        if stage not in STAGES:
            raise ArtifactError(f"{path}: unknown stage {stage!r}; expected one of {STAGES}")
        gate = obj.get("gate")
        if not isinstance(gate, dict) or not isinstance(gate.get("kind"), str) or not isinstance(gate.get("config", {}), dict):
            raise ArtifactError(f"{path}: 'gate' must name a gate kind and its settings")
        cost = obj.get("cost")
        if not isinstance(cost, dict) or not isinstance(cost.get("name"), str):
            raise ArtifactError(f"{path}: 'cost' must name the budget's cost")
        names, sizes = obj.get("group_names") or [], obj.get("group_sizes") or []
        if not isinstance(names, list) or not isinstance(sizes, list) or not all(type(s) is int for s in sizes):
            raise ArtifactError(f"{path}: malformed 'group_names' / 'group_sizes'")
        learn_config = obj.get("learn_config") or obj.get("config") or {}
        if not isinstance(learn_config, dict):
            raise ArtifactError(f"{path}: 'learn_config' must be an object")
        try:
            plan = PrunePlan.from_dict(obj["plan"]) if obj.get("plan") is not None else None
        except ArtifactError as e:
            raise ArtifactError(f"{path}: its stored {e}") from None
        return cls(**kw, config=obj.get("config") or {}, stage=stage, learn_config=learn_config,
                   gate={"kind": gate["kind"], "config": dict(gate.get("config") or {})},
                   gate_state=_state_dict(obj.get("gate_state"), path, "gate_state"), cost=dict(cost),
                   ignore=list(obj.get("ignore") or []), group_names=names, group_sizes=sizes, plan=plan,
                   learn_history=list(obj.get("learn_history") or []), result=obj.get("result"),
                   frozen=obj.get("frozen") if isinstance(obj.get("frozen"), dict) else None)


def _upgrade_v1(obj: dict) -> dict:
    """A `chanprune.gated/1` checkpoint in today's layout: Gumbel gates, the cost its config names."""
    config = obj.get("learn_config") or obj.get("config") or {}
    return {**obj, "format": GATED_FORMAT, "gate": {"kind": "gumbel", "config": {}},
            "gate_state": obj.get("gate_logits"), "cost": {"name": config.get("budget", "flops")}}


def load_checkpoint(path: str | os.PathLike) -> DenseCheckpoint | GatedCheckpoint:
    """A dense or gated checkpoint, whichever `path` holds."""
    obj = load_artifact(path, (DENSE_FORMAT, GATED_FORMAT, GATED_FORMAT_V1))
    cls = DenseCheckpoint if obj["format"] == DENSE_FORMAT else GatedCheckpoint
    return cls.from_dict(obj, path)
