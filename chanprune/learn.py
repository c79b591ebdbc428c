"""Learning: plain training (`train`) and gate learning under a budget (`learn`), one loop for both.

The loop is `fit`: per batch one `train_step` (forward, the objective, backward, the optimizers);
per epoch a validation pass and a checkpoint. The objective (`objective.BudgetObjective`: CE plus
lambda times the budget term, lambda by dual ascent) and the bookkeeping (`checkpointer.Checkpointer`:
checkpoints, resume, RNG, Ctrl-C, metrics) are their own pieces.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .checkpoint import LoopState
from .checkpointer import Checkpointer, Interrupted
from .cost import Cost
from .data import Split
from .errors import ChanpruneError
from .freeze import polarization
from .gates import GateSet
from .objective import BudgetObjective, CrossEntropy, Distill

__all__ = ["TrainConfig", "LearnConfig", "fit", "train_step", "evaluate", "calibrate_bn_", "TrainingError", "gate_metrics",
           "SCHEDULES"]

SCHEDULES = ("cosine", "onecycle", "step")


class TrainingError(ChanpruneError):
    """Training cannot go on (a NaN loss); the last good checkpoint is kept."""


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    seed: int = 0
    # The weights' learning-rate schedule over the run's steps: "cosine" (to 0), "onecycle" (a 25%
    # warm-up to `lr`, then cosine down to lr/1e4; Smith 2018) or "step" (x0.1 at 60% and 80%:
    # Torch-Pruning's fine-tuning recipe).
    schedule: str = "cosine"
    max_steps: int | None = None  # stop after this many steps in all (the last epoch is cut short)


@dataclass
class LearnConfig(TrainConfig):
    target: float = 0.5
    budget: str = "flops"  # the registered cost the target is a fraction of (cost.list_costs())
    gate: str = "gumbel"  # the registered gate kind (gates.list_gates())
    lam: float = 5.0  # lambda's floor: the budget term's weight at the start
    # lambda grows (shrinks back to the floor) while the cost ratio is above (below) target, by
    # exp(lam_rate * relative excess) a step; None: scaled to the learning steps (`lambda_rate`)
    lam_rate: float | None = None  # 0.05 before 2026-12-03
    gate_lr: float = 1.0  # Adam on the gate logits, constant: they polarize within a few hundred steps
    # after each step the Gumbel logits' gap is clamped to +-logit_bound (p within 5e-5 of 0 or 1 at 10),
    # so a polarized gate keeps a gradient the budget can act on; None: unbounded (the default: on short
    # runs with lam_rate auto the bound cost accuracy, benchmarks/lam_rate.py)
    logit_bound: float | None = None
    # when a step's cost first crosses the target, zero the gate logits' Adam momentum (a restart, after
    # O'Donoghue & Candes 2015): in the first steps every logit moves about gate_lr a step, all one way,
    # and momentum carried a 0.7 plan to 0.41 before it turned. Once only: restarting at every crossing
    # (the sampled cost flips around the target every few steps) held polarization near 80%
    # (benchmarks/lam_rate.py --restarts)
    gate_restart: bool = True
    # with a budget other than FLOPs: subtract flops_weight x the sampled FLOPs ratio from the loss, so
    # that among plans of about the target's cost the gates lean to those that keep more FLOPs (the
    # latency budget's efficiency, speedup x FLOPs ratio); 0: off. On Lite0 it moved the FLOPs
    # little and the measured efficiency within noise (benchmarks/flops_weight.py)
    flops_weight: float = 0.0
    dependent_gate_lr: float = 0.01  # Adam on a data-dependent gate's network (an MLP, not logits)
    # data-dependent gates: learn them for `max_learn_share` of the budget, then freeze the gate network
    # and fine-tune the weights under its threshold decisions (each input's own) for the rest
    dependent_finetune: bool = False
    lr: float = 0.02  # the weights are pretrained: fine-tune gently
    tau: float = 0.5
    min_keep: int = 0
    # None: `epochs` is the whole budget; the gates freeze when ready (polarized and the cost at tau
    # within `ready_tolerance` of the target for `ready_window` steps; at the latest after
    # `max_learn_share` of the budget) and the cut, slim model is fine-tuned for the rest.
    # An integer: learn for `epochs`, then fine-tune for this many epochs (0: none).
    finetune_epochs: int | None = None
    ready_window: int = 50
    ready_tolerance: float = 0.02
    max_learn_share: float = 0.5
    project: bool = True  # after freezing, move the plan's cost onto the target if it is further than:
    project_tolerance: float | None = None  # None: ready_tolerance; 0: always (the cost ends at the target or below)
    # the projection's order: "margin" (the gates' logit gaps, `GateSet.margins()`) or "prob" (their
    # probabilities, the order before 2026-12-04: polarized gates tie at 1.0 in float32, and the ties
    # fell to the earliest groups first; the committed Lite0 runs never reached a tie)
    project_by: str = "margin"
    finetune_lr: float | None = None  # None: `lr`
    finetune_schedule: str = "onecycle"
    calibrate_bn: int = 0
    distill: bool | None = None  # None: on when the run starts from weights (the teacher)
    distill_temperature: float = 4.0
    distill_weight: float = 0.5
    teacher: str | None = None  # the weights the teacher was built from (recorded by `learn_run`)
    gate_init: str = "uniform"  # "uniform" (the authors' logits) or "norm" (from the weights' group norm)
    # learn the gates with the weights fixed where the run started (batch norms still use batch
    # statistics); the weights train only in fine-tuning, from there: the plan is chosen for the weights
    # it will start from, and no learning step moves a weight under a sampled mask
    fix_weights: bool = False
    gate_temperature_final: float | None = None  # anneal the Gumbel temperature to this over the learning
    lut: str | None = None  # the latency table of budget "latency" (a file, or "auto": profile first)
    # Gate blocks of this many channels (kept counts aligned by construction); None: auto, the
    # latency table's block with budget "latency", else 1 (every channel its own gate).
    block: int | None = None
    # channel: a gate per channel (or block); layer: one gate per inner group of a residual block, the
    # whole branch (with --gate dependent, AIG's granularity; with static gates, block removal)
    granularity: str = "channel"


def input_costs(cost, masks, batch: int) -> torch.Tensor:
    """Each of `batch` inputs' cost ratio under `masks` (static masks: the same for all), float64 on the CPU."""
    r = torch.as_tensor(cost.ratio_of(masks), dtype=torch.float64).detach().cpu().reshape(-1)
    return r.expand(batch) if r.numel() == 1 else r


def cost_summary(name: str, r: torch.Tensor, top: float = 1.0) -> dict:
    """Mean, extremes and a 10-bin histogram over [0, top] of per-input cost ratios."""
    return {"name": name, "mean": float(r.mean()), "min": float(r.min()), "max": float(r.max()),
            "histogram": torch.histc(r.float().clamp(0, top), bins=10, min=0, max=top).int().tolist()}


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, *, batch_size: int = 256, device: str = "cpu", gates=None,
             cost=None) -> dict:
    """Top-1 (and top-5 when there are more than 5 classes) accuracy and mean cross-entropy.

    With `gates` (attached to `model`) and a `cost`, also each input's executed cost under the masks
    its forward pass used, as a fraction of the dense cost: "cost" holds the mean, the extremes and
    a 10-bin histogram over [0, 1] (data-dependent gates differ per input; static ones do not)."""
    was = model.training
    model.eval()
    n = correct = correct5 = 0
    loss = 0.0
    per_input = []
    for x, y in split.batches(batch_size):
        x, y = x.to(device), y.to(device)
        out = model(x)
        if gates is not None and cost is not None:
            per_input.append(input_costs(cost, gates.current(), x.shape[0]))
        loss += F.cross_entropy(out, y, reduction="sum").item()
        correct += (out.argmax(1) == y).sum().item()
        if out.shape[1] > 5:
            correct5 += (out.topk(5, 1).indices == y[:, None]).any(1).sum().item()
        n += y.numel()
    model.train(was)
    res = {"accuracy": correct / max(n, 1), "loss": loss / max(n, 1), "count": n}
    if correct5:
        res["top5"] = correct5 / max(n, 1)
    if per_input:
        res["cost"] = cost_summary(cost.name, torch.cat(per_input))
    return res


@torch.no_grad()
def calibrate_bn_(model: nn.Module, split: Split, *, batches: int, batch_size: int = 256, device: str = "cpu") -> nn.Module:
    """Re-estimate batch-norm statistics (paper 4.1: forward passes in train mode at lr 0) with
    whatever masks are attached, e.g. the frozen plan: do it before the cut, so parity holds."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns or batches <= 0:
        return model
    saved = [(m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    was = model.training
    model.train()
    for i, (x, _) in enumerate(split.batches(batch_size, shuffle=True, seed=12345)):
        if i >= batches:
            break
        model(x.to(device))
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.train(was)
    return model


def train_step(net: nn.Module, x: torch.Tensor, y: torch.Tensor, objective, opts, scheds,
               gates: GateSet | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """One optimizer step; returns (logits, loss, the objective's figures) for the bookkeeping."""
    logits = net(x)
    loss, stats = objective(logits, y, gates.current() if gates is not None else None, inputs=x)
    if not torch.isfinite(loss):
        raise TrainingError(f"the loss became {loss.item()}; lower --lr (the last good checkpoint is kept)")
    for o in opts:
        o.zero_grad(set_to_none=True)
    loss.backward()
    for o in opts:
        o.step()
    for sc in scheds:
        sc.step()
    if "rate" in stats and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        # every rank's lambda and gate restarts follow the same rate (the batch's across ranks), so the
        # gates' optimizer states, which see the same averaged gradients, stay the same everywhere
        rate = stats["rate"].detach().clone()
        dist.all_reduce(rate)
        stats = {**stats, "rate": rate / dist.get_world_size()}
    objective.update(stats)
    return logits.detach(), loss.detach(), stats


def _optimizers(model: nn.Module, gates: GateSet | None, config: TrainConfig, total_steps: int):
    # the weights' SGD comes first when there is one (`fix_weights` learns the gates alone)
    weights = [p for p in model.parameters() if p.requires_grad]
    opts = ([torch.optim.SGD([{"params": weights, "weight_decay": config.weight_decay, "lr": config.lr}],
                             lr=config.lr, momentum=config.momentum)] if weights else [])
    if gates is not None:
        # The budget's gradient on one gate scales like 1/|G| (one channel's share of the cost), so
        # SGD would need a learning rate per architecture; Adam's step size does not depend on it.
        # Gate weight decay wd * 20 / |G| (DESIGN.md: the paper's gates are channels).
        # A data-dependent gate's network (DependentGate: fc1, bn, fc2) is a small MLP, not a logit
        # per channel: at the logits' step size of 1.0 it overshot the budget within 5 steps and its
        # decisions in eval mode were noise (3.9% test accuracy from a 92% baseline). It takes
        # `dependent_gate_lr`; a static part (static+dependent) stays with the logits.
        n_gates = sum(g.num_channels for g in gates.gates)
        wd = config.weight_decay * 20 / max(n_gates, 1)
        network = [q for g in gates.gates for q in g.network_parameters()]
        ids = set(map(id, network))
        logits = [q for q in gates.parameters() if id(q) not in ids]
        groups = [{"params": ps, "lr": lr, "logits": is_logits}
                  for ps, lr, is_logits in ((logits, config.gate_lr, True),
                                            (network, getattr(config, "dependent_gate_lr", 0.01), False)) if ps]
        if groups:
            opts.append(torch.optim.Adam(groups, lr=config.gate_lr, weight_decay=wd))
    # The weights follow `config.schedule`; the gates keep their step size, so they go on polarizing.
    scheds = [_schedule(opts[0], config.schedule, max(1, total_steps))] if weights else []
    scheds += [torch.optim.lr_scheduler.ConstantLR(o, factor=1.0) for o in opts[1 if weights else 0:]]
    return opts, scheds


def _schedule(opt: torch.optim.Optimizer, name: str, total: int):
    S = torch.optim.lr_scheduler
    if name == "cosine":
        return S.CosineAnnealingLR(opt, T_max=total)
    if name == "onecycle":
        # a warm-up of a quarter, and at least 1.5 steps: OneCycleLR divides by each phase's length
        pct = max(0.25, 1.5 / (total + 1)) if total >= 1 else 0.25
        return S.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=total + 1, pct_start=pct,
                            div_factor=25.0, final_div_factor=1e4 / 25.0, cycle_momentum=False)
    if name == "step":
        return S.MultiStepLR(opt, milestones=[int(0.6 * total), int(0.8 * total)], gamma=0.1)
    raise ValueError(f"unknown schedule {name!r}; choose one of {SCHEDULES}")


def fit(model: nn.Module, data_train: Split, data_val: Split, config: TrainConfig, *,
        checkpointer: Checkpointer | None = None, gates: GateSet | None = None, cost: Cost | None = None,
        resume: LoopState | None = None, earlier_rows: list[dict] = (),
        progress: Callable[[str, dict], None] | None = None, device: str = "cpu", rank: int = 0, world: int = 1,
        wrapped: nn.Module | None = None, distill: Distill | None = None,
        stop_when: Callable[[int], str | None] | None = None, reward: Cost | None = None) -> LoopState:
    """Train `model` (and `gates` under `cost`'s budget when both are given, with `config` a LearnConfig).

    With a `checkpointer`, `model.pt` is written every epoch and on SIGINT and `metrics.jsonl` grows by
    one row per epoch; `resume` (a checkpoint's loop state) continues exactly where it stopped.
    `distill` mixes a teacher's term into the loss; `reward` (a cost, the FLOPs) is subtracted from it
    at `config.flops_weight`. `stop_when(steps_done)` is asked after every
    step; a reason ends training there (the partial epoch is validated and logged, and the reason
    is `loop.stopped`).
    """
    learning = gates is not None
    if learning and cost is None:
        raise ValueError("learning gates needs a cost")
    train_net = wrapped or model
    torch.manual_seed(config.seed + rank)
    steps_per_epoch = data_train.num_batches(config.batch_size, world)
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    opts, scheds = _optimizers(model, gates, config, total_steps)
    weights_train = any(p.requires_grad for p in model.parameters())
    objective = (BudgetObjective(cost, config.target, lam=config.lam, lam_rate=lambda_rate(config, total_steps),
                                 distill=distill, reward=(reward, getattr(config, "flops_weight", 0.0)) if reward else None)
                 if learning else CrossEntropy(distill))
    anneal = _annealer(gates, config, total_steps) if learning else None
    loop = LoopState(lam=getattr(config, "lam", 0.0))
    if resume is not None:
        loop = resume
        if checkpointer is not None:
            checkpointer.restore(loop, opts, scheds, earlier_rows=earlier_rows)
        else:
            Checkpointer.restore_state(loop, opts, scheds)
    if learning:
        objective.lam = loop.lam or objective.lam
        objective.side = loop.side
        gates.tau = config.tau  # validation sees the network frozen at the run's own tau

    def save(tag: str) -> None:
        if checkpointer is not None:
            if learning:
                loop.lam, loop.side = objective.lam, objective.side
            checkpointer.save(model, loop, opts, scheds, tag=tag, gates=gates, seed=config.seed)

    guard = checkpointer.catching_sigint() if checkpointer is not None else contextlib.nullcontext()
    try:
        with guard:
            while loop.epoch < config.epochs and loop.stopped is None:
                if loop.epoch * steps_per_epoch + loop.step >= total_steps:
                    break
                train_net.train()
                t0 = time.perf_counter()
                sums = {"loss": 0.0, "ce": 0.0, "rate": 0.0, "correct": 0, "n": 0}
                for x, y in data_train.batches(config.batch_size, shuffle=True, seed=config.seed, epoch=loop.epoch,
                                               skip=loop.step, rank=rank, world=world):
                    x, y = x.to(device), y.to(device)
                    done = loop.epoch * steps_per_epoch + loop.step
                    if anneal is not None:
                        anneal(done)
                    try:
                        logits, loss, stats = train_step(train_net, x, y, objective, opts, scheds, gates)
                        if learning:
                            gates.bound_(getattr(config, "logit_bound", None))
                            if objective.crossed and loop.first_crossing is None:
                                loop.first_crossing = done + 1
                                if getattr(config, "gate_restart", False):
                                    for o in opts:  # only the group marked "logits" restarts
                                        restart_momentum(o)
                    except TrainingError as e:
                        raise TrainingError(f"at epoch {loop.epoch + 1}, step {loop.step + 1}: {e}") from None
                    loop.step += 1
                    n = y.numel()
                    sums["loss"] += loss.item() * n
                    sums["ce"] += stats["ce"].item() * n
                    sums["rate"] += stats["rate"].item() * n if "rate" in stats else 0.0
                    sums["correct"] += (logits.argmax(1) == y).sum().item()
                    sums["n"] += n
                    if progress and rank == 0:
                        progress("step", {"epoch": loop.epoch + 1, "step": loop.step, "steps": steps_per_epoch,
                                          "loss": sums["loss"] / sums["n"], "acc": sums["correct"] / sums["n"],
                                          **({"rate": sums["rate"] / sums["n"]} if learning else {})})
                    if checkpointer is not None and checkpointer.interrupted:
                        raise Interrupted()
                    done += 1
                    if stop_when is not None:
                        loop.stopped = stop_when(done)
                    if loop.stopped is not None or done >= total_steps:
                        break
                n = max(sums["n"], 1)
                row = {"epoch": loop.epoch + 1, "train_loss": sums["loss"] / n, "train_ce": sums["ce"] / n,
                       "train_acc": sums["correct"] / n, "epoch_seconds": time.perf_counter() - t0,
                       "lr": scheds[0].get_last_lr()[0] if weights_train else 0.0, "steps": loop.step}
                if loop.stopped is not None:
                    row["stopped"] = loop.stopped
                if learning:
                    row["train_rate"] = sums["rate"] / n
                    row["lambda"] = objective.lam
                    row["lambda_rate"] = objective.rate
                    row["first_crossing"] = loop.first_crossing  # where the gates' momentum restarted (gate_restart)
                    row.update(gate_metrics(gates, cost, config))
                per_input = learning and gates is not None and bool(gates.dependent)  # each input's own cost
                row.update({f"val_{k}": v for k, v in evaluate(train_net, data_val, device=device,
                                                               gates=gates if per_input else None, cost=cost).items()
                            if k != "count"})
                loop.epoch += 1
                loop.step = 0
                loop.history.append(row)
                if loop.best is None or row["val_accuracy"] >= loop.best["val_accuracy"]:
                    loop.best = {"epoch": row["epoch"], "val_accuracy": row["val_accuracy"]}
                save("epoch")  # the checkpoint first: metrics.jsonl never names an epoch the checkpoint lacks
                if checkpointer is not None:
                    checkpointer.log(row)
                if progress and rank == 0:
                    progress("epoch", row)
    except Interrupted:
        save("interrupted")
        raise KeyboardInterrupt from None
    if learning:
        loop.lam, loop.side = objective.lam, objective.side
    return loop


def restart_momentum(opt: torch.optim.Optimizer) -> None:
    """Zero the first moment of the gate logits in `opt` (its group marked "logits"; a data-dependent
    gate's network keeps its own). Adam's second moment and step count stay, so the step size after a
    restart is set by the new gradients alone and grows back as they agree."""
    for group in opt.param_groups:
        if group.get("logits"):
            for q in group["params"]:
                st = opt.state.get(q)
                if st and "exp_avg" in st:
                    st["exp_avg"].zero_()


def learning_steps(config: LearnConfig, total_steps: int) -> int:
    """The steps the gates learn for: all of them with a fixed split, else up to `max_learn_share`."""
    return max(1, int(total_steps * (config.max_learn_share if config.finetune_epochs is None else 1.0)))


# the fixed rate (the default before 2026-12-03), kept by every run of more than ~370 learning steps under "auto"
LAM_RATE_FLOOR = 0.05
LAM_RISE, LAM_EXCESS = 100.0, 0.25


def lambda_rate(config: LearnConfig, total_steps: int) -> float:
    """The dual-ascent rate: `config.lam_rate`, or under None the rate at which lambda grows
    `LAM_RISE`-fold over the learning steps while the cost stays `LAM_EXCESS` (relative) above target,
    never below `LAM_RATE_FLOOR`. A fixed rate needs its number of steps: at 0.05 and 30% over target
    lambda grows 1.5% a step, 5 to 69 in 180 steps, too slow to pull a short run's plan to its target."""
    rate = getattr(config, "lam_rate", LAM_RATE_FLOOR)
    if rate is not None:
        return rate
    return max(LAM_RATE_FLOOR, math.log(LAM_RISE) / (LAM_EXCESS * learning_steps(config, total_steps)))


def _annealer(gates: GateSet, config: LearnConfig, total_steps: int):
    """Anneal every gate's temperature geometrically from its own to `gate_temperature_final`
    over the learning steps (those up to `max_learn_share` of them when the gates freeze when ready)."""
    final = getattr(config, "gate_temperature_final", None)
    if final is None:
        return None
    start = [float(g.temperature) for g in gates.gates]
    span = learning_steps(config, total_steps)

    def anneal(step: int) -> None:
        f = min(1.0, step / span)
        for g, t0 in zip(gates.gates, start):
            g.temperature = t0 * (final / t0) ** f

    return anneal


def gate_metrics(gates: GateSet, cost: Cost, config: LearnConfig) -> dict:
    probs = gates.probs()
    masks = gates.threshold_masks(config.tau)
    return {"polarized": polarization(probs).polarized, "kept_channels": int(sum(m.sum().item() for m in masks)),
            "gated_channels": sum(m.numel() for m in masks), "cost_ratio_at_tau": float(cost.ratio_of(masks))}
