"""Runs: what `chanprune train`, `learn` and `inspect` do, from names to files in RUN/.

The run-folder rules live here, so the Python API obeys them as the CLI does: a new run never
writes over an existing one (`prepare_run_dir`), and `resume=True` continues the one there.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .artifacts import DENSE_FORMAT, _safe_torch_load, check_format
from .checkpoint import DenseCheckpoint, GatedCheckpoint
from .checkpointer import Checkpointer
from .cost import list_costs, make_cost
from .data import load_data
from .errors import ArtifactError, ChanpruneError
from .freeze import freeze, polarization
from .gates import GateSet, list_gates
from .graph import find_groups
from .learn import LearnConfig, TrainConfig, calibrate_bn_, evaluate, fit
from .load import GatedModel, resolve_checkpoint
from .plan import PrunePlan
from .zoo import build_model, provider_for

__all__ = ["train_run", "learn_run", "inspect_run", "prepare_run_dir", "default_run_dir"]

Progress = Callable[[str, dict], None]


def default_run_dir(kind: str, name: str, *, resume: bool = False, root: str | os.PathLike = "runs") -> Path:
    """`runs/<kind>/<name>` for a new run, or `<name>-2`, `-3`, ... when taken (nothing is ever
    overwritten); with `resume`, the newest existing one of those (the highest suffix)."""
    base = Path(root) / kind
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
    taken = [base / safe] + sorted((p for p in base.glob(f"{safe}-*") if p.name[len(safe) + 1:].isdigit()),
                                   key=lambda p: int(p.name[len(safe) + 1:]))
    taken = [p for p in taken if p.exists()]
    if resume:
        if not taken:
            raise ChanpruneError(f"--resume: no run to continue under {base}/{safe}[-N]; pass --out RUN")
        return taken[-1]
    if not taken:
        return base / safe
    n = max([1] + [int(p.name[len(safe) + 1:]) for p in taken if p.name != safe]) + 1
    return base / f"{safe}-{n}"


def prepare_run_dir(out: str | os.PathLike, *, resume: bool) -> Path:
    """The run folder `out`, made if needed: it must hold a checkpoint to resume, and must not
    hold one to start a new run (nothing is ever overwritten)."""
    out = Path(out)
    if resume:
        if not (out / "model.pt").is_file():
            raise ChanpruneError(f"--resume: {out / 'model.pt'} does not exist; start the run without --resume")
        return out
    if (out / "model.pt").exists():
        raise ChanpruneError(f"{out / 'model.pt'} exists: pass --resume to continue it, or choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ChanpruneError(f"--out {out}: cannot create the folder ({e.strerror})") from None
    if not os.access(out, os.W_OK):
        raise ChanpruneError(f"--out {out}: the folder is not writable")
    return out


def _distributed(device: str) -> tuple[int, int]:
    """(rank, world) under torchrun (DDP: NCCL on GPUs, gloo on CPU); (0, 1) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size()


class _Both(nn.Module):
    """Model and gates under one module, so DDP averages the gate gradients too."""

    def __init__(self, model: nn.Module, gates: GateSet | None):
        super().__init__()
        self.model = model
        self.gates = gates

    def forward(self, x):
        return self.model(x)


def _wrap(model: nn.Module, gates: GateSet | None, world: int, device: str) -> nn.Module | None:
    if world <= 1:
        return None
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(_Both(model, gates), device_ids=[int(os.environ.get("LOCAL_RANK", 0))] if device.startswith("cuda") else None)


def _setup(arch: str, data: str, *, weights: str | None, num_classes: int | None, in_channels: int | None,
           image_size: int | None, seed: int, limit: int | None, saved_kwargs: dict | None = None):
    """Model and data that fit each other: the data takes the model's input channels (grayscale is
    repeated to 3, colour averaged to 1) and the classifier the data's classes."""
    bundle = load_data(data, seed=seed, limit=limit)
    saved_kwargs = saved_kwargs or {}
    classes = num_classes or saved_kwargs.get("num_classes") or bundle.num_classes
    channels = in_channels or saved_kwargs.get("in_channels")
    if channels is None:
        channels = provider_for(arch).stem_in_channels(arch)
    model = build_model(arch, num_classes=classes, in_channels=channels, weights=weights)
    for split in (bundle.train, bundle.val, bundle.test):
        if split is not None:
            split.channels, split.size = channels, image_size
    size = image_size or bundle.image_size
    return model, bundle, classes, channels, [1, channels, size, size]


def _check_device(device: str) -> str:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ChanpruneError("--device cuda: no CUDA GPU is available here; use --device cpu")
    return device


def _resume_checkpoint(out: Path, cls, arch: str):
    ckpt = cls.load(out / "model.pt")
    if ckpt.arch != arch:
        raise ArtifactError(f"{out / 'model.pt'} holds a {ckpt.arch}, not a {arch}: --resume needs the same --arch")
    if ckpt.loop is None and getattr(ckpt, "stage", None) != "done":
        raise ArtifactError(f"{out / 'model.pt'} holds no training state to resume (optimizer, schedule, RNG)")
    return ckpt


def train_run(*, arch: str, data: str, out: Path | None, config: TrainConfig, weights: str | None = None,
              num_classes: int | None = None, in_channels: int | None = None, image_size: int | None = None,
              device: str = "cpu", resume: bool = False, limit: int | None = None,
              progress: Progress | None = None) -> dict:
    """Plain baseline training; writes RUN/model.pt (dense) and RUN/metrics.jsonl."""
    device = _check_device(device)
    out = prepare_run_dir(out if out is not None else default_run_dir("train", arch, resume=resume), resume=resume)
    rank, world = _distributed(device)
    model, bundle, classes, channels, shape = _setup(arch, data, weights=weights, num_classes=num_classes,
                                                     in_channels=in_channels, image_size=image_size,
                                                     seed=config.seed, limit=limit)
    model.to(device)
    template = DenseCheckpoint(arch, {"num_classes": classes, "in_channels": channels}, shape, {}, data=data,
                               config=asdict(config))
    loop = None
    if resume:
        ckpt = _resume_checkpoint(out, DenseCheckpoint, arch)
        model.load_state_dict(ckpt.state_dict)
        loop = ckpt.loop
        if progress:
            progress("resume", {"epoch": loop.epoch, "step": loop.step})
    loop = fit(model, bundle.train, bundle.val, config, checkpointer=Checkpointer(out, template, rank=rank),
               resume=loop, progress=progress, device=device, rank=rank, world=world,
               wrapped=_wrap(model, None, world, device))
    test = evaluate(model, bundle.test or bundle.val, device=device)
    return {"run": str(out), "model": str(out / "model.pt"), "epochs": loop.epoch, "best": loop.best,
            "final": loop.history[-1] if loop.history else {}, "test_accuracy": test["accuracy"]}


def _load_weights_arg(weights: str | None, arch: str) -> tuple[str | None, dict | None]:
    """A chanprune dense checkpoint carries its own build kwargs; anything else is passed to the zoo."""
    if weights and Path(weights).is_file():
        obj = _safe_torch_load(Path(weights))
        if isinstance(obj, dict) and "format" in obj:
            obj = check_format(obj, weights, DENSE_FORMAT)
            if obj.get("arch") != arch:
                raise ArtifactError(f"--weights {weights} holds a {obj.get('arch')}, not a {arch}")
            return weights, obj.get("build_kwargs")
    return weights, None


def learn_run(*, arch: str, data: str, out: Path | None, config: LearnConfig, weights: str | None = None,
              num_classes: int | None = None, in_channels: int | None = None, image_size: int | None = None,
              ignore: tuple[str, ...] = (), device: str = "cpu", resume: bool = False, limit: int | None = None,
              progress: Progress | None = None) -> dict:
    """Learn gates under the budget; then freeze, optionally fine-tune and recalibrate BN.

    RUN/model.pt goes through the stages "learn", "finetune" (the frozen plan is stored from here
    on: export deploys it) and "done"; `resume` continues from any of them."""
    device = _check_device(device)
    if config.budget not in list_costs():
        raise ChanpruneError(f"--budget {config.budget!r}: unknown cost; choose one of {', '.join(list_costs())}")
    if config.gate not in list_gates():
        raise ChanpruneError(f"--gate {config.gate!r}: unknown gate kind; choose one of {', '.join(list_gates())}")
    if out is None:
        out = default_run_dir("learn", f"{arch}-t{config.target:g}", resume=resume)
    out = prepare_run_dir(out, resume=resume)
    rank, world = _distributed(device)
    weights, saved_kwargs = _load_weights_arg(weights, arch)
    model, bundle, classes, channels, shape = _setup(arch, data, weights=weights, num_classes=num_classes,
                                                     in_channels=in_channels, image_size=image_size,
                                                     seed=config.seed, limit=limit, saved_kwargs=saved_kwargs)
    x = torch.zeros(shape)
    graph = find_groups(model, x, ignored=ignore)
    if not graph.groups:
        raise ChanpruneError(f"{arch} has no channel group that can be gated exactly: " +
                             "; ".join(f"{u['name']}: {u['reason']}" for u in graph.unsupported[:3]))
    cost = make_cost(config.budget, model, x, graph)
    floor = cost.floor()
    if config.target < floor + 0.01:
        raise ChanpruneError(f"--target {config.target} is below what {arch} can reach: its ungated layers alone "
                             f"cost {floor:.3f} of the dense {config.budget} (ungate fewer layers or raise the target)")
    model.to(device)
    gates = GateSet(graph, kind=config.gate, tau=config.tau).to(device).attach_(model)
    template = GatedCheckpoint(
        arch, {"num_classes": classes, "in_channels": channels}, shape, {}, data=data, config=asdict(config),
        stage="learn", learn_config=asdict(config), gate={"kind": gates.kind, "config": gates.config},
        cost=cost.describe(), ignore=list(ignore), group_names=[g.name for g in graph.groups],
        group_sizes=[g.size for g in graph.groups])
    ckpt = None
    if resume:
        ckpt = _resume_checkpoint(out, GatedCheckpoint, arch)
        if ckpt.stage == "done":
            if progress:
                progress("done", ckpt.result or {})
            return {"run": str(out), "model": str(out / "model.pt"), "already_complete": True, **(ckpt.result or {})}
        model.load_state_dict(ckpt.state_dict)
        gates.load_state_dict(ckpt.gate_state)
        if progress:
            progress("resume", {"stage": ckpt.stage, "epoch": ckpt.loop.epoch, "step": ckpt.loop.step})
    learn_history = ckpt.learn_history if ckpt is not None else []
    if ckpt is None or ckpt.stage == "learn":
        learn_history = fit(model, bundle.train, bundle.val, config, checkpointer=Checkpointer(out, template, rank=rank),
                            gates=gates, cost=cost, resume=ckpt.loop if ckpt else None, progress=progress,
                            device=device, rank=rank, world=world, wrapped=_wrap(model, gates, world, device)).history
        ckpt = None
    plan = freeze(graph, gates.probs(), tau=config.tau, min_keep=config.min_keep, arch=arch, input_shape=shape, cost=cost)
    agree = _ranks_agree(plan, world)
    gates.fix_(plan.keep_masks(graph))
    template = dataclasses.replace(template, plan=plan, learn_history=learn_history)
    if config.finetune_epochs:
        ft = TrainConfig(epochs=config.finetune_epochs, batch_size=config.batch_size, lr=config.lr,
                         momentum=config.momentum, weight_decay=config.weight_decay, seed=config.seed + 1)
        # the gates are pinned to the plan: fine-tune the weights of the network the plan keeps
        template = dataclasses.replace(template, stage="finetune", config=asdict(ft), gate_state=gates.state_dict())
        fit(model, bundle.train, bundle.val, ft, checkpointer=Checkpointer(out, template, rank=rank),
            resume=ckpt.loop if ckpt else None, earlier_rows=learn_history, progress=progress, device=device,
            rank=rank, world=world, wrapped=_wrap(model, None, world, device))
    if config.calibrate_bn:
        calibrate_bn_(model, bundle.train, batches=config.calibrate_bn, device=device)
    val = evaluate(model, bundle.val, device=device)
    test = evaluate(model, bundle.test or bundle.val, device=device)
    ratio = cost.ratio(plan)
    pol = polarization(gates.probs())
    result = {"val_accuracy": val["accuracy"], "test_accuracy": test["accuracy"], "cost": cost.name,
              "cost_ratio": ratio, "polarized": pol.polarized, "world_size": world, "ranks_agree": agree}
    if rank == 0:
        final = GatedCheckpoint.load(out / "model.pt")
        dataclasses.replace(final, state_dict=model.state_dict(), gate_state=gates.state_dict(), plan=plan,
                            learn_history=learn_history, stage="done", saved="final", result=result).save(out / "model.pt")
    return {"run": str(out), "model": str(out / "model.pt"), "cost": cost.name, "cost_ratio": ratio, "tau": config.tau,
            "polarized": pol.polarized, "polarization_warning": pol.warning, "kept_channels": plan.kept_channels,
            "gated_channels": plan.total_channels, "val_accuracy": val["accuracy"], "test_accuracy": test["accuracy"]}


def _ranks_agree(plan: PrunePlan, world: int) -> bool:
    """Under DDP every rank must freeze the same plan (the gates are averaged, so they do)."""
    if world <= 1:
        return True
    import hashlib

    import torch.distributed as dist

    digest = hashlib.sha256(str([g.keep for g in plan.groups]).encode()).hexdigest()
    gathered: list = [None] * world
    dist.all_gather_object(gathered, digest)
    if len(set(gathered)) != 1:
        raise ChanpruneError("DDP ranks froze different plans; the gate gradients were not synchronised")
    return True


def inspect_run(path: str | os.PathLike, *, tau: float | None = None, arch: str | None = None) -> dict:
    """Polarization and the plan the run deploys (`GatedModel.plan`; `tau` previews another)."""
    path = resolve_checkpoint(path)
    gm = GatedModel.load(path, arch=arch)
    plan = gm.plan(tau)
    pol = polarization(gm.gates.probs())
    return {
        "model": str(path), "arch": gm.arch, "tau": plan.tau, "stage": gm.ckpt.stage,
        "target": gm.ckpt.learn_config.get("target"), "gate": gm.ckpt.gate["kind"], "cost": gm.cost.name,
        "cost_ratio": gm.cost.ratio(plan), "flops_ratio_predicted": gm.flops.ratio(plan),
        "stored_plan": gm.ckpt.plan is not None and plan is gm.ckpt.plan, "polarization": pol.to_dict(),
        "kept_channels": plan.kept_channels, "gated_channels": plan.total_channels,
        "groups": [{"name": g.name, "kept": len(g.keep), "total": g.size} for g in plan.groups],
        "zero_width_groups": plan.zero_width_groups, "metrics": gm.ckpt.metrics,
    }
