"""Runs: what `chanprune train`, `learn` and `inspect` do, from names to files in RUN/."""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .artifacts import DENSE_FORMAT, GATED_FORMAT, _safe_torch_load, atomic_save, check_format, load_artifact
from .budget import CostModel
from .data import load_data
from .errors import ArtifactError, ChanpruneError
from .freeze import freeze, polarization
from .gates import GateSet
from .graph import ChannelGraph, find_groups
from .learn import LearnConfig, TrainConfig, calibrate_bn_, evaluate, fit
from .plan import PrunePlan
from .zoo import build_model, saved_arch

__all__ = ["train_run", "learn_run", "inspect_run", "GatedModel"]

Progress = Callable[[str, dict], None]


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
    from .zoo import _first_conv

    bundle = load_data(data, seed=seed, limit=limit)
    saved_kwargs = saved_kwargs or {}
    classes = num_classes or saved_kwargs.get("num_classes") or bundle.num_classes
    channels = in_channels or saved_kwargs.get("in_channels")
    if channels is None:
        stem = _first_conv(build_model(arch, num_classes=classes))
        channels = stem[1].in_channels if stem else 3
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


def _header(arch: str, num_classes: int, in_channels: int, input_shape: list[int], data: str, extra: dict) -> dict:
    return {"arch": arch, "build_kwargs": {"num_classes": num_classes, "in_channels": in_channels},
            "input_shape": input_shape, "data": data, **extra}


def _resume_checkpoint(out: Path, fmt: str, arch: str) -> dict:
    ckpt = load_artifact(out / "model.pt", fmt)
    if ckpt.get("arch") != arch:
        raise ArtifactError(f"{out / 'model.pt'} holds a {ckpt.get('arch')}, not a {arch}: --resume needs the same --arch")
    return ckpt


def train_run(*, arch: str, data: str, out: Path, config: TrainConfig, weights: str | None = None,
              num_classes: int | None = None, in_channels: int | None = None, image_size: int | None = None,
              device: str = "cpu", resume: bool = False, limit: int | None = None,
              progress: Progress | None = None) -> dict:
    """Plain baseline training; writes RUN/model.pt (dense) and RUN/metrics.jsonl."""
    device = _check_device(device)
    rank, world = _distributed(device)
    model, bundle, classes, channels, shape = _setup(arch, data, weights=weights, num_classes=num_classes,
                                                     in_channels=in_channels, image_size=image_size,
                                                     seed=config.seed, limit=limit)
    model.to(device)
    header = _header(arch, classes, channels, shape, data, {})
    ckpt = None
    if resume:
        ckpt = _resume_checkpoint(out, DENSE_FORMAT, arch)
        model.load_state_dict(ckpt["state_dict"])
        if progress:
            progress("resume", {"epoch": ckpt["state"]["epoch"], "step": ckpt["state"]["step"]})
    state = fit(model, bundle.train, bundle.val, config, out=out, header=header, resume=ckpt, progress=progress,
                device=device, rank=rank, world=world, wrapped=_wrap(model, None, world, device))
    test = evaluate(model, bundle.test or bundle.val, device=device)
    return {"run": str(out), "model": str(out / "model.pt"), "epochs": state.epoch, "best": state.best,
            "final": state.history[-1] if state.history else {}, "test_accuracy": test["accuracy"]}


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


def learn_run(*, arch: str, data: str, out: Path, config: LearnConfig, weights: str | None = None,
              num_classes: int | None = None, in_channels: int | None = None, image_size: int | None = None,
              ignore: tuple[str, ...] = (), device: str = "cpu", resume: bool = False, limit: int | None = None,
              progress: Progress | None = None) -> dict:
    """Learn gates under the FLOPs target; then freeze, optionally recalibrate BN and fine-tune."""
    device = _check_device(device)
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
    cost = CostModel(model, x, graph)
    floor = float(cost.ratio([torch.zeros(g.size) for g in graph.groups]))
    if config.budget == "flops" and config.target < floor + 0.01:
        raise ChanpruneError(f"--target {config.target} is below what {arch} can reach: its ungated layers alone "
                             f"cost {floor:.3f} of the dense FLOPs (ungate fewer layers or raise the target)")
    header = _header(arch, classes, channels, shape, data, {"target": config.target, "ignore": list(ignore),
                                                            "group_names": [g.name for g in graph.groups],
                                                            "group_sizes": [g.size for g in graph.groups]})
    model.to(device)
    gates = GateSet(graph).to(device).attach_(model)
    ckpt = None
    if resume:
        ckpt = _resume_checkpoint(out, GATED_FORMAT, arch)
        if ckpt.get("stage") == "done":
            if progress:
                progress("done", ckpt.get("result", {}))
            return {"run": str(out), "model": str(out / "model.pt"), "already_complete": True, **ckpt.get("result", {})}
        model.load_state_dict(ckpt["state_dict"])
        gates.load_state_dict(ckpt["gate_logits"])
        if progress:
            progress("resume", {"stage": ckpt.get("stage"), "epoch": ckpt["state"]["epoch"], "step": ckpt["state"]["step"]})
    learn_history = (ckpt or {}).get("learn_history") or []
    if ckpt is None or ckpt.get("stage", "learn") == "learn":
        learn_history = fit(model, bundle.train, bundle.val, config, out=out, header={**header, "stage": "learn"},
                            gates=gates, cost=cost, resume=ckpt, progress=progress, device=device, rank=rank,
                            world=world, wrapped=_wrap(model, gates, world, device)).history
        ckpt = None
    plan = freeze(graph, gates.probs(), tau=config.tau, min_keep=config.min_keep, arch=arch, input_shape=shape)
    agree = _ranks_agree(plan, world)
    gates.fix_(plan.keep_masks(graph))
    if config.finetune_epochs:
        ft = TrainConfig(epochs=config.finetune_epochs, batch_size=config.batch_size, lr=config.lr,
                         momentum=config.momentum, weight_decay=config.weight_decay, seed=config.seed + 1)
        # the gates are pinned to the plan: fine-tune the weights of the network the plan keeps
        fit(model, bundle.train, bundle.val, ft, out=out,
            header={**header, "stage": "finetune", "plan": plan.to_dict(), "learn_config": asdict(config),
                    "gate_logits": gates.state_dict(), "learn_history": learn_history}, checkpoint_format=GATED_FORMAT,
            resume=ckpt, progress=progress, device=device, rank=rank, world=world,
            wrapped=_wrap(model, None, world, device))
    if config.calibrate_bn:
        calibrate_bn_(model, bundle.train, batches=config.calibrate_bn, device=device)
    val = evaluate(model, bundle.val, device=device)
    test = evaluate(model, bundle.test or bundle.val, device=device)
    ratio = cost.plan_flops(plan, graph) / cost.dense
    pol = polarization(gates.probs())
    final = load_artifact(out / "model.pt", GATED_FORMAT) if rank == 0 else None
    if rank == 0:
        final.update({"state_dict": model.state_dict(), "gate_logits": gates.state_dict(),
                      "learn_config": asdict(config), "plan": plan.to_dict(), "stage": "done",
                      "result": {"val_accuracy": val["accuracy"], "test_accuracy": test["accuracy"],
                                 "flops_ratio": ratio, "polarized": pol.polarized, "world_size": world,
                                 "ranks_agree": agree}})
        atomic_save(final, out / "model.pt")
    return {"run": str(out), "model": str(out / "model.pt"), "flops_ratio_predicted": ratio,
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


class GatedModel:
    """A gated checkpoint rebuilt: the model with its gates attached, its graph and cost model."""

    def __init__(self, path: str | os.PathLike, *, arch: str | None = None, input_shape: list[int] | None = None):
        ckpt = load_artifact(path, GATED_FORMAT)
        saved = saved_arch(ckpt, path, arch)
        kwargs = ckpt.get("build_kwargs") or {}
        shape = ckpt.get("input_shape")
        if not isinstance(shape, list) or not all(isinstance(s, int) for s in shape):
            raise ArtifactError(f"{path}: missing 'input_shape'")
        if input_shape is not None:
            if len(input_shape) != len(shape) or input_shape[1] != shape[1]:
                raise ChanpruneError(f"--input-shape {input_shape}: the model was learned on inputs like {shape} "
                                     "(same rank and channels needed)")
            shape = list(input_shape)
        self.ckpt, self.arch, self.input_shape = ckpt, saved, shape
        self.model = build_model(saved, num_classes=kwargs.get("num_classes"), in_channels=kwargs.get("in_channels", 3))
        try:
            self.model.load_state_dict(ckpt["state_dict"], strict=True)
        except (RuntimeError, KeyError) as e:
            raise ArtifactError(f"{path}: the weights do not fit {saved} ({str(e).splitlines()[0][:200]})") from e
        x = torch.zeros(shape)
        self.graph: ChannelGraph = find_groups(self.model, x, ignored=tuple(ckpt.get("ignore") or ()))
        self.gates = GateSet(self.graph)
        sizes = ckpt.get("group_sizes")
        if sizes is not None and sizes != [g.size for g in self.graph.groups]:
            raise ArtifactError(f"{path}: its channel groups differ from {saved}'s at input shape {shape}")
        try:
            self.gates.load_state_dict(ckpt["gate_logits"])
        except (RuntimeError, KeyError) as e:
            raise ArtifactError(f"{path}: the gate logits do not fit {saved}'s channel groups") from e
        self.cost = CostModel(self.model, x, self.graph)  # on the dense model, before the gates hook in
        self.gates.attach_(self.model)
        self.saved_plan = PrunePlan.from_dict(ckpt["plan"]) if ckpt.get("stage") in ("finetune",) and ckpt.get("plan") else None

    def plan(self, tau: float = 0.5) -> PrunePlan:
        """The fine-tuned plan when there is one, else a freeze at `tau`."""
        if self.saved_plan is not None:
            return self.saved_plan
        return freeze(self.graph, self.gates.probs(), tau=tau, arch=self.arch, input_shape=self.input_shape)


def inspect_run(path: str | os.PathLike, *, tau: float = 0.5, arch: str | None = None) -> dict:
    gm = GatedModel(path, arch=arch)
    plan = gm.plan(tau)
    pol = polarization(gm.gates.probs())
    ratio = gm.cost.plan_flops(plan, gm.graph) / gm.cost.dense
    return {
        "model": str(path), "arch": gm.arch, "tau": tau, "stage": gm.ckpt.get("stage"),
        "target": gm.ckpt.get("target"), "flops_ratio_at_tau": ratio, "polarization": pol.to_dict(),
        "kept_channels": plan.kept_channels, "gated_channels": plan.total_channels,
        "groups": [{"name": g.name, "kept": len(g.keep), "total": g.size} for g in plan.groups],
        "zero_width_groups": plan.zero_width_groups, "metrics": gm.ckpt.get("metrics", {}),
    }
