"""Freeze: decide a `PrunePlan` from gate probabilities (tau-thresholding), and move a plan onto a
hardware grid (`round_plan`) under any cost. Touches no model."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from .cost import Cost
from .graph import ChannelGraph, ChannelGroup
from .plan import GroupPlan, PrunePlan

__all__ = ["freeze", "project_plan", "round_plan", "random_plan", "polarization", "PolarizationReport"]


@dataclass
class PolarizationReport:
    gates: int
    polarized: float  # share of gates with p < 0.05 or p > 0.95
    low: float  # share with p < 0.05
    high: float  # share with p > 0.95
    histogram: list[int]  # 10 bins over [0, 1]
    threshold: float = 0.9

    @property
    def ok(self) -> bool:
        return self.polarized >= self.threshold

    @property
    def warning(self) -> str | None:
        if self.ok:
            return None
        return (f"gates are not polarized: only {self.polarized:.0%} have p<0.05 or p>0.95 "
                f"(want >= {self.threshold:.0%}); thresholding will change the network's behaviour")

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok, "warning": self.warning}


def polarization(probs: list[torch.Tensor], *, threshold: float = 0.9) -> PolarizationReport:
    p = torch.cat([q.detach().flatten().float().cpu() for q in probs]) if probs else torch.zeros(0)
    n = max(p.numel(), 1)
    low, high = (p < 0.05).sum().item() / n, (p > 0.95).sum().item() / n
    hist = torch.histc(p, bins=10, min=0.0, max=1.0).long().tolist() if p.numel() else [0] * 10
    return PolarizationReport(p.numel(), low + high, low, high, hist, threshold)


def _equalise(keep: list[int], scores: torch.Tensor, group: ChannelGroup) -> list[int]:
    """Grouped convs: the same kept count in every part, chosen by score within each part."""
    if not group.partition:
        return keep
    kept = set(keep)
    per = [sum(1 for r in part if r in kept) for part in group.partition]
    k = int(math.floor(sum(per) / len(per) + 0.5))
    out = []
    for part in group.partition:
        idx = torch.tensor(part)
        order = torch.argsort(scores[idx], descending=True, stable=True)
        out.extend(int(idx[i]) for i in order[:k])
    return sorted(out)


def freeze(graph: ChannelGraph, probs: list[torch.Tensor], *, tau: float = 0.5, min_keep: int = 0,
           arch: str | None = None, input_shape: list[int] | None = None, cost: Cost | None = None,
           essential: list[bool] | None = None, units: list[list[list[int]] | None] | None = None) -> PrunePlan:
    """Keep channel i of a group iff p_i > tau (Herrmann et al. 2020, 3.3).

    Grouped convolutions keep equal counts per conv group (the nearest to the thresholded counts,
    chosen by p): the frozen gated model is then the model frozen with *this* plan. A group that
    keeps some but fewer than `min_keep` channels keeps its `min_keep` most probable ones; a group
    that keeps none stays removed whole (the surgeon collapses it exactly). With a `cost`, the
    plan's predicted cost ratio is recorded in its meta. A group marked in `essential`
    (`GateSet.essential()`) that keeps none keeps its most probable unit instead: the channel, or
    its block in `units` (`GateSet.units()`), as the gated model does.
    """
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must be in [0, 1], got {tau}")
    if min_keep < 0:
        raise ValueError(f"min_keep must be >= 0, got {min_keep}")
    groups = []
    for gi, (g, p) in enumerate(zip(graph.groups, probs)):
        p = p.detach().float().cpu()
        keep = [int(i) for i in torch.nonzero(p > tau).flatten()]
        if not keep and essential is not None and essential[gi]:
            top = int(torch.argmax(p))
            blocks = units[gi] if units is not None and units[gi] is not None else [[top]]
            keep = sorted(next(b for b in blocks if top in b))
        if 0 < len(keep) < min_keep:
            keep = sorted(int(i) for i in torch.argsort(p, descending=True, stable=True)[:min(min_keep, g.size)])
        groups.append(GroupPlan(g.name, g.size, _equalise(keep, p, g), [float(x) for x in p]))
    plan = PrunePlan(groups, arch, input_shape, tau, {"min_keep": min_keep} if min_keep else {})
    if cost is not None:
        plan.meta["cost"] = {"name": cost.name, "ratio": cost.ratio(plan)}
    return plan


def project_plan(plan: PrunePlan, graph: ChannelGraph, cost: Cost, target: float, *, tolerance: float = 0.02,
                 min_keep: int = 0, units: list[list[list[int]] | None] | None = None,
                 whole: frozenset[str] = frozenset(), scores: list | None = None) -> PrunePlan:
    """Move a frozen plan's predicted cost onto `target` when it is further than `tolerance` away.

    Above: drop kept channels, the least probable first (over all groups), as few as bring the cost
    to the target or below. Below: add back dropped channels, the most probable first, as many as
    keep it at or below the target (skipping those that would pass it). `scores` (per group, one
    per channel, in the probabilities' order: `GateSet.margins()`) rank instead of the plan's
    probabilities, which tie at exactly 1.0 or 0.0 once the gates polarize: ties fell to the
    earliest groups first. A group is never emptied
    or revived by this, keeps at least
    `min_keep`, and groups with equal counts per part (grouped convs) are left as they are. With
    `units` (per group, the channel blocks that move together, `GateSet.units()`), whole blocks move:
    an aligned plan stays aligned. The groups named in `whole` (layer granularity: residual branches,
    one gate each) move whole: they may be emptied or revived. The plan's meta records both ratios (`projected`).
    """
    r0 = cost.ratio(plan)
    if abs(r0 - target) <= tolerance:
        return plan
    above = r0 > target
    cands = []  # (score, group index, first channel, channels)
    for gi, gp in enumerate(plan.groups):
        rank = gp.probs if scores is None else scores[gi]
        g = graph.group(gp.name)
        one = gp.name in whole
        blocks = ([list(range(gp.size))] if one else
                  units[gi] if units is not None and units[gi] is not None else [[c] for c in range(gp.size)])
        blocks = [b for b in blocks if b]
        if g.partition or (not gp.keep and not one) or gp.probs is None:
            continue
        kept = set(gp.keep)
        pool = [b for b in blocks if (set(b) <= kept if above else not set(b) & kept)]
        if above:
            floor = 0 if one else max(1, min_keep)
            ranked = sorted(pool, key=lambda b: (max(rank[c] for c in b), b[0]))
            left, take = len(kept), []
            for b in ranked:
                if left - len(b) < floor:
                    break
                take.append(b)
                left -= len(b)
        else:
            take = sorted(pool, key=lambda b: (max(rank[c] for c in b), b[0]), reverse=True)
        cands += [(max(rank[c] for c in b), gi, b[0], b) for b in take]
    cands.sort(key=lambda t: (t[0], t[1], t[2]), reverse=not above)

    def moved(chosen: list) -> PrunePlan:
        change: dict[int, set] = {}
        for _, gi, _, chans in chosen:
            change.setdefault(gi, set()).update(chans)
        groups = []
        for gi, gp in enumerate(plan.groups):
            d = change.get(gi, set())
            keep = sorted(set(gp.keep) - d) if above else sorted(set(gp.keep) | d)
            groups.append(GroupPlan(gp.name, gp.size, keep, gp.probs))
        return PrunePlan(groups, plan.arch, plan.input_shape, plan.tau, dict(plan.meta))

    if above:
        chosen = _drops_within(cands, moved, cost, target, tolerance)
    else:  # add back the most probable first, skipping any that would pass the target
        chosen = []
        for c in cands:
            if cost.ratio(moved([*chosen, c])) <= target:
                chosen.append(c)
    out = moved(chosen)
    r1 = cost.ratio(out)
    moved_channels = sum(len(t[3]) for t in chosen)
    out.meta["projected"] = {"from": r0, "to": r1, "channels": moved_channels, "units": len(chosen), "tolerance": tolerance}
    out.meta["cost"] = {"name": cost.name, "ratio": r1}
    return out


def _drops_within(cands: list, moved, cost: Cost, target: float, tolerance: float) -> list:
    """Which of `cands` (least probable first) to drop so that the cost ends at the target or below,
    within `tolerance` of it where possible, moving as few channels as possible. Two ways, the better
    one kept (within the tolerance first, then the fewer channels):

    - in order, the fewest drops that reach the target, then the earlier of them taken back, the
      most probable first, while the cost stays at or below it;
    - in order, each drop taken unless it would pass below target - tolerance, until the cost is at
      or below the target. A block of a wide, early layer can be worth several points of latency;
      the first way can end far below the target on it, and this one steps around it."""
    lo, hi = 0, len(cands)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if cost.ratio(moved(cands[:mid])) <= target else (mid + 1, hi)
    fewest = cands[:lo]
    for c in reversed(fewest[:-1]):
        rest = [d for d in fewest if d is not c]
        if cost.ratio(moved(rest)) <= target:
            fewest = rest
    ways = [fewest]
    around: list = []
    for c in cands:
        r = cost.ratio(moved([*around, c]))
        if r < target - tolerance:
            continue
        around.append(c)
        if r <= target:
            ways.append(around)
            break

    def rank(chosen: list) -> tuple[bool, int]:
        return cost.ratio(moved(chosen)) < target - tolerance, sum(len(c[3]) for c in chosen)

    return min(ways, key=rank)


def round_plan(plan: PrunePlan, graph: ChannelGraph, n: int, cost: Cost | None = None) -> PrunePlan:
    """Kept counts per group become multiples of `n`, choosing channels by gate probability.

    Each count first rounds down (to at least `n`, or the group's size; a removed group stays
    removed). With a cost, groups are then rounded up, those that lost most first, while the
    predicted cost stays within the unrounded plan's: the target holds. Groups that feed a grouped
    conv keep their plan (equal counts per conv group come first).
    """
    if n < 1:
        raise ValueError(f"--round-to must be >= 1, got {n}")

    def pick(gp, k):
        probs = (torch.tensor(gp.probs) if gp.probs is not None
                 else torch.zeros(gp.size).index_fill_(0, torch.tensor(gp.keep, dtype=torch.long), 1.0))
        return GroupPlan(gp.name, gp.size, sorted(int(i) for i in torch.argsort(probs, descending=True, stable=True)[:k]),
                         gp.probs)

    groups, lost = [], []
    for i, gp in enumerate(plan.groups):
        g = graph.group(gp.name)
        k = len(gp.keep)
        if k == 0 or g.partition or n == 1 or k == g.size:
            groups.append(gp)
            continue
        down = min(g.size, max(n, (k // n) * n))
        groups.append(pick(gp, down))
        if down < k:
            lost.append((k - down, i))
    out = PrunePlan(groups, plan.arch, plan.input_shape, plan.tau, {**plan.meta, "round_to": n})
    if cost is not None:
        budget = cost.plan_cost(plan)
        for _, i in sorted(lost, reverse=True):
            gp = plan.groups[i]
            up = min(gp.size, len(out.groups[i].keep) + n)
            trial = list(out.groups)
            trial[i] = pick(gp, up)
            cand = PrunePlan(trial, out.arch, out.input_shape, out.tau, out.meta)
            if cost.plan_cost(cand) <= budget:
                out = cand
        out.meta["cost"] = {"name": cost.name, "ratio": cost.ratio(out)}
    return out


def random_plan(graph: ChannelGraph, *, keep: float = 0.5, seed: int = 0, zero: tuple[str, ...] = (),
                arch: str | None = None, input_shape: list[int] | None = None) -> PrunePlan:
    """A random plan keeping about `keep` of each group (at least one channel), and none of the
    groups named in `zero` (removed whole). Grouped convs keep equal counts per conv group."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    names = {g.name for g in graph.groups}
    unknown = [z for z in zero if z not in names]
    if unknown:
        raise ValueError(f"no channel group named {unknown[0]!r}")
    gen = torch.Generator().manual_seed(seed)
    groups = []
    for g in graph.groups:
        scores = torch.rand(g.size, generator=gen)
        if g.name in zero:
            kept = []
        else:
            k = max(1, int(round(keep * g.size)))
            kept = _equalise(sorted(int(j) for j in torch.argsort(scores, descending=True)[:k]), scores, g)
            if not kept:  # equal counts per conv group rounded to zero: keep one per conv group
                kept = _top_per_part(scores, g, 1)
        groups.append(GroupPlan(g.name, g.size, kept, None))
    return PrunePlan(groups, arch, input_shape, None, {"random": True, "keep": keep, "seed": seed, "zero": list(zero)})


def _top_per_part(scores: torch.Tensor, group: ChannelGroup, k: int) -> list[int]:
    out = []
    for part in group.partition or [list(range(group.size))]:
        idx = torch.tensor(part)
        out.extend(int(idx[i]) for i in torch.argsort(scores[idx], descending=True)[:k])
    return sorted(out)
