"""Learning: plain baseline training (`train`) and Gumbel gate learning under a FLOPs target (`learn`).

The objective (Herrmann et al. 2020, made exact): L = CE + lambda * (t - FLOPs(Z) / FLOPs_dense)^2,
with Z one hard straight-through Gumbel sample per example, FLOPs(Z) the cost model's per-example
count averaged over the batch (so that Property 1, E[L_B] = (t - E[Q])^2 + Var(Q), drives the gates
to polarize), or `budget="channels"`: the paper's batch activation loss (t - mean Z)^2.
"""
from __future__ import annotations

import json
import math
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .artifacts import DENSE_FORMAT, GATED_FORMAT, atomic_save, provenance
from .budget import CostModel
from .data import Split
from .errors import ChanpruneError
from .freeze import polarization
from .gates import GateSet

__all__ = ["TrainConfig", "LearnConfig", "fit", "evaluate", "calibrate_bn_", "budget_loss", "TrainingError"]

BUDGETS = ("flops", "channels")


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


@dataclass
class LearnConfig(TrainConfig):
    target: float = 0.5
    budget: str = "flops"
    lam: float = 5.0  # lambda's floor: the budget term's weight at the start
    lam_rate: float = 0.05  # lambda grows (shrinks back to the floor) while the FLOPs rate is above (below) target
    gate_lr: float = 1.0  # Adam on the gate logits, constant: they polarize within a few hundred steps
    lr: float = 0.02  # the weights are pretrained: fine-tune gently
    tau: float = 0.5
    min_keep: int = 0
    finetune_epochs: int = 0
    calibrate_bn: int = 0


def budget_loss(cost: CostModel | None, z: list[torch.Tensor], target: float, budget: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(t - rate)^2 and the rate: the batch-mean FLOPs ratio, or the mean activation (`channels`)."""
    if budget == "flops":
        rate = cost.ratio(z).mean()
    elif budget == "channels":
        rate = torch.cat([zz.reshape(zz.shape[0], -1) for zz in z], 1).mean()
    else:
        raise ValueError(f"unknown budget {budget!r}; choose one of {BUDGETS}")
    return (target - rate) ** 2, rate


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, *, batch_size: int = 256, device: str = "cpu") -> dict:
    """Top-1 (and top-5 when there are more than 5 classes) accuracy and mean cross-entropy."""
    was = model.training
    model.eval()
    n = correct = correct5 = 0
    loss = 0.0
    for x, y in split.batches(batch_size):
        x, y = x.to(device), y.to(device)
        out = model(x)
        loss += F.cross_entropy(out, y, reduction="sum").item()
        correct += (out.argmax(1) == y).sum().item()
        if out.shape[1] > 5:
            correct5 += (out.topk(5, 1).indices == y[:, None]).any(1).sum().item()
        n += y.numel()
    model.train(was)
    res = {"accuracy": correct / max(n, 1), "loss": loss / max(n, 1), "count": n}
    if correct5:
        res["top5"] = correct5 / max(n, 1)
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


def _rng_state() -> dict:
    # Only torch's generator drives training (Gumbel samples, data order and augmentation).
    return {"torch": torch.get_rng_state()}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])


class _Interrupted(Exception):
    pass


@dataclass
class FitState:
    epoch: int = 0  # epochs completed
    step: int = 0  # steps completed inside the current epoch
    history: list[dict] = field(default_factory=list)
    best: dict | None = None
    lam: float = 0.0


def fit(model: nn.Module, data_train: Split, data_val: Split, config: TrainConfig, *, out: Path,
        header: dict, gates: GateSet | None = None, cost: CostModel | None = None,
        resume: dict | None = None, progress: Callable[[str, dict], None] | None = None,
        device: str = "cpu", rank: int = 0, world: int = 1, wrapped: nn.Module | None = None,
        checkpoint_format: str | None = None) -> FitState:
    """Train `model` (with `gates` when learning), checkpointing `out/model.pt` atomically every epoch
    and on SIGINT, appending `out/metrics.jsonl`. `resume` is a checkpoint dict to continue from."""
    learning = gates is not None
    train_net = wrapped or model
    torch.manual_seed(config.seed + rank)
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": config.weight_decay,
               "lr": config.lr}]
    opts = [torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)]
    if learning:
        # The budget's gradient on one gate scales like 1/|G| (one channel's share of the FLOPs), so
        # SGD would need a learning rate per architecture; Adam's step size does not depend on it.
        n_gates = sum(g.num_channels for g in gates.gates)
        opts.append(torch.optim.Adam(gates.parameters(), lr=config.gate_lr,
                                     weight_decay=config.weight_decay * 20 / max(n_gates, 1)))
    steps_per_epoch = data_train.num_batches(config.batch_size, world)
    # Cosine for the weights; the gates keep their step size, so they go on polarizing to the end.
    scheds = [torch.optim.lr_scheduler.CosineAnnealingLR(opts[0], T_max=max(1, config.epochs * steps_per_epoch))]
    scheds += [torch.optim.lr_scheduler.ConstantLR(o, factor=1.0) for o in opts[1:]]
    state = FitState(lam=getattr(config, "lam", 0.0))
    if resume is not None:
        for o, sd in zip(opts, resume["optimizer"]):
            o.load_state_dict(sd)
        for sc, sd in zip(scheds, resume["scheduler"]):
            sc.load_state_dict(sd)
        st = resume["state"]
        state = FitState(st["epoch"], st["step"], list(st["history"]), st.get("best"), st.get("lam", state.lam))
        _set_rng_state(resume["rng"])
        if rank == 0:  # the log restarts from the checkpoint's history: no epoch twice, none missing
            from .artifacts import atomic_write_text

            rows = list(resume.get("learn_history") or []) + state.history
            atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    out.mkdir(parents=True, exist_ok=True)

    def save(tag: str) -> None:
        if rank != 0:
            return
        ckpt = dict(header)
        ckpt.update({
            "format": checkpoint_format or (GATED_FORMAT if learning else DENSE_FORMAT),
            "state_dict": model.state_dict(),
            "config": asdict(config),
            "metrics": state.history[-1] if state.history else {},
            "optimizer": [o.state_dict() for o in opts], "scheduler": [sc.state_dict() for sc in scheds],
            "rng": _rng_state(),
            "state": {"epoch": state.epoch, "step": state.step, "history": state.history, "best": state.best,
                      "lam": state.lam},
            "provenance": provenance(config.seed), "saved": tag,
        })
        if learning:
            ckpt["gate_logits"] = gates.state_dict()
        atomic_save(ckpt, out / "model.pt")

    interrupted = {"flag": False}
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum, frame):
        interrupted["flag"] = True

    try:
        signal.signal(signal.SIGINT, on_sigint)
    except ValueError:  # not the main thread
        previous = None
    try:
        while state.epoch < config.epochs:
            train_net.train()
            t0 = time.perf_counter()
            sums = {"loss": 0.0, "ce": 0.0, "rate": 0.0, "correct": 0, "n": 0}
            for x, y in data_train.batches(config.batch_size, shuffle=True, seed=config.seed, epoch=state.epoch,
                                           skip=state.step, rank=rank, world=world):
                x, y = x.to(device), y.to(device)
                out_logits = train_net(x)
                ce = F.cross_entropy(out_logits, y)
                loss = ce
                if learning:
                    bl, rate = budget_loss(cost, gates.current(), config.target, config.budget)
                    loss = ce + state.lam * bl
                    sums["rate"] += rate.item() * y.numel()
                    # Dual ascent on lambda: the squared penalty alone settles where the classifier's
                    # pull balances it, above the target; a lambda that grows with the excess does not.
                    state.lam = max(config.lam, state.lam * math.exp(config.lam_rate * (rate.item() - config.target)
                                                                     / max(config.target, 1e-3)))
                if not torch.isfinite(loss):
                    raise TrainingError(f"the loss became {loss.item()} at epoch {state.epoch + 1}, step "
                                        f"{state.step + 1}; lower --lr (the last good checkpoint is kept)")
                for o in opts:
                    o.zero_grad(set_to_none=True)
                loss.backward()
                for o in opts:
                    o.step()
                for sc in scheds:
                    sc.step()
                state.step += 1
                sums["loss"] += loss.item() * y.numel()
                sums["ce"] += ce.item() * y.numel()
                sums["correct"] += (out_logits.argmax(1) == y).sum().item()
                sums["n"] += y.numel()
                if progress and rank == 0:
                    progress("step", {"epoch": state.epoch + 1, "step": state.step, "steps": steps_per_epoch,
                                      "loss": sums["loss"] / sums["n"], "acc": sums["correct"] / sums["n"],
                                      **({"rate": sums["rate"] / sums["n"]} if learning else {})})
                if interrupted["flag"]:
                    raise _Interrupted()
            n = max(sums["n"], 1)
            row = {"epoch": state.epoch + 1, "train_loss": sums["loss"] / n, "train_ce": sums["ce"] / n,
                   "train_acc": sums["correct"] / n, "epoch_seconds": time.perf_counter() - t0,
                   "lr": scheds[0].get_last_lr()[0]}
            if learning:
                row["train_rate"] = sums["rate"] / n
                row["lambda"] = state.lam
                row.update(_gate_metrics(gates, cost, config))
            row.update({f"val_{k}": v for k, v in evaluate(train_net, data_val, device=device).items() if k != "count"})
            state.epoch += 1
            state.step = 0
            state.history.append(row)
            if state.best is None or row["val_accuracy"] >= state.best["val_accuracy"]:
                state.best = {"epoch": row["epoch"], "val_accuracy": row["val_accuracy"]}
            save("epoch")  # the checkpoint first: metrics.jsonl never names an epoch the checkpoint lacks
            if rank == 0:
                with open(out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
            if progress and rank == 0:
                progress("epoch", row)
    except _Interrupted:
        save("interrupted")
        raise KeyboardInterrupt from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return state


def _gate_metrics(gates: GateSet, cost: CostModel | None, config: LearnConfig) -> dict:
    probs = gates.probs()
    pol = polarization(probs)
    masks = [(p > config.tau).float() for p in probs]
    res = {"polarized": pol.polarized, "kept_channels": int(sum(m.sum().item() for m in masks)),
           "gated_channels": sum(m.numel() for m in masks)}
    if cost is not None:
        res["flops_ratio_at_tau"] = float(cost.ratio([m.detach() for m in masks]))
    return res
