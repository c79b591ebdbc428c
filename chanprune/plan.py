"""`PrunePlan`: which channels of each group to keep. JSON types only, versioned, validated."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import torch

from .errors import ArtifactError, PlanError
from .graph import ChannelGraph

__all__ = ["GroupPlan", "PrunePlan", "PLAN_FORMAT"]


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

PLAN_FORMAT = "chanprune.plan"
PLAN_SCHEMA_VERSION = 1


@dataclass
class GroupPlan:
    name: str
    size: int
    keep: list[int]
    probs: list[float] | None = None

    @property
    def zero_width(self) -> bool:
        return not self.keep

    def keep_mask(self) -> torch.Tensor:
        m = torch.zeros(self.size)
        m[list(self.keep)] = 1.0
        return m


@dataclass
class PrunePlan:
    groups: list[GroupPlan]
    arch: str | None = None
    input_shape: list[int] | None = None
    tau: float | None = None
    meta: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ queries
    def group(self, name: str) -> GroupPlan | None:
        return next((g for g in self.groups if g.name == name), None)

    @property
    def zero_width_groups(self) -> list[str]:
        return [g.name for g in self.groups if g.zero_width]

    @property
    def kept_channels(self) -> int:
        return sum(len(g.keep) for g in self.groups)

    @property
    def total_channels(self) -> int:
        return sum(g.size for g in self.groups)

    def keep_masks(self, graph: ChannelGraph) -> list[torch.Tensor]:
        """0/1 masks in the order of `graph.groups`; a group the plan omits keeps everything."""
        out = []
        for g in graph.groups:
            gp = self.group(g.name)
            out.append(gp.keep_mask() if gp is not None else torch.ones(g.size))
        return out

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        return {
            "format": PLAN_FORMAT,
            "schema_version": PLAN_SCHEMA_VERSION,
            "arch": self.arch,
            "input_shape": self.input_shape,
            "tau": self.tau,
            "meta": self.meta,
            "groups": [
                {"name": g.name, "size": g.size, "keep": list(g.keep),
                 **({"probs": [round(float(p), 6) for p in g.probs]} if g.probs is not None else {})}
                for g in self.groups
            ],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "PrunePlan":
        if not isinstance(d, dict) or d.get("format") != PLAN_FORMAT:
            raise ArtifactError("not a chanprune plan (no 'format': 'chanprune.plan')")
        v = d.get("schema_version")
        if type(v) is not int or v != PLAN_SCHEMA_VERSION:
            raise ArtifactError(f"plan schema_version {v!r} is not supported (this chanprune reads "
                                f"{PLAN_SCHEMA_VERSION}); re-export the plan with this version")
        groups = d.get("groups")
        if not isinstance(groups, list):
            raise ArtifactError("plan 'groups' must be a list")
        out = []
        for i, g in enumerate(groups):
            if not isinstance(g, dict):
                raise ArtifactError(f"plan group {i} must be an object")
            name, size, keep, probs = g.get("name"), g.get("size"), g.get("keep"), g.get("probs")
            if not isinstance(name, str) or not name:
                raise ArtifactError(f"plan group {i}: 'name' must be a non-empty string")
            if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
                raise ArtifactError(f"plan group {name!r}: 'size' must be a positive integer")
            if not isinstance(keep, list) or not all(isinstance(k, int) and not isinstance(k, bool) for k in keep):
                raise ArtifactError(f"plan group {name!r}: 'keep' must be a list of integers")
            if len(set(keep)) != len(keep) or any(k < 0 or k >= size for k in keep):
                raise ArtifactError(f"plan group {name!r}: 'keep' indices must be unique and in [0, {size})")
            if probs is not None and (not isinstance(probs, list) or len(probs) != size
                                      or not all(_is_number(p) and 0.0 <= p <= 1.0 for p in probs)):
                raise ArtifactError(f"plan group {name!r}: 'probs' must be {size} numbers in [0, 1]")
            if any(o.name == name for o in out):
                raise ArtifactError(f"plan group {name!r} appears twice")
            out.append(GroupPlan(name, size, sorted(keep), [float(p) for p in probs] if probs is not None else None))
        shape = d.get("input_shape")
        if shape is not None and (not isinstance(shape, list)
                                  or not all(type(s) is int and s > 0 for s in shape)):
            raise ArtifactError("plan 'input_shape' must be a list of positive integers")
        tau = d.get("tau")
        if tau is not None and not (_is_number(tau) and 0.0 <= tau <= 1.0):
            raise ArtifactError("plan 'tau' must be a number in [0, 1]")
        arch = d.get("arch")
        if arch is not None and not isinstance(arch, str):
            raise ArtifactError("plan 'arch' must be a string")
        meta = d.get("meta") or {}
        if not isinstance(meta, dict):
            raise ArtifactError("plan 'meta' must be an object")
        return cls(out, arch, shape, tau, meta)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "PrunePlan":
        try:
            d = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ArtifactError(f"plan is not valid JSON: {e}") from e
        return cls.from_dict(d)

    # ------------------------------------------------------------------ validation
    def validate(self, graph: ChannelGraph) -> "PrunePlan":
        """Check the plan against the model's groups before it touches the model."""
        names = [gp.name for gp in self.groups]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise PlanError(f"plan group {dup!r} appears twice")
        for gp in self.groups:
            try:
                g = graph.group(gp.name)
            except KeyError:
                raise PlanError(f"plan group {gp.name!r} is not a channel group of this model "
                                f"(the plan belongs to another architecture or input shape)") from None
            if g.size != gp.size:
                raise PlanError(f"plan group {gp.name!r} has size {gp.size}, the model's has {g.size}")
            if any(k < 0 or k >= g.size for k in gp.keep):
                raise PlanError(f"plan group {gp.name!r}: keep index out of range [0, {g.size})")
            if g.partition:
                keep = set(gp.keep)
                counts = {sum(1 for r in part if r in keep) for part in g.partition}
                if len(counts) > 1:
                    raise PlanError(f"plan group {gp.name!r} feeds a grouped conv or a chunk: it must keep "
                                    f"equal channels in each of its {len(g.partition)} parts")
        return self
