"""Runs: what `chanprune train`, `learn` and `inspect` do, from names to files in RUN/.

The run-folder rules live here, so the Python API obeys them as the CLI does: a new run never
writes over an existing one (`prepare_run_dir`), and `resume=True` continues the one there.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .artifacts import DENSE_FORMAT, _safe_torch_load, check_format
from .checkpoint import DenseCheckpoint, GatedCheckpoint, LoopState
from .checkpointer import Checkpointer
from .cut import SlimTwin
from .cost import list_costs, make_cost
from .data import load_data
from .errors import ArtifactError, ChanpruneError
from .freeze import freeze, polarization, project_plan
from .gates import GRANULARITIES, GateSet, dependent_sites, gate_kind, list_gates
from .graph import find_groups
from .importance import group_norm
from .measure.lut import LatencyTable, machine_mismatch
from .learn import LearnConfig, TrainConfig, gate_metrics, calibrate_bn_, evaluate, fit
from .objective import Distill
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
    torch.manual_seed(seed)  # the random initialisation too: the same --seed, the same run
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
    """Learn gates under the budget; then freeze, fine-tune and optionally recalibrate BN.

    RUN/model.pt goes through the stages "learn", "finetune" (the frozen plan is stored from here
    on: export deploys it) and "done"; `resume` continues from any of them. With
    `config.finetune_epochs` None, `config.epochs` is the whole budget: the gates freeze when ready
    and the slim model is fine-tuned for the steps left (`_Readiness`). Fine-tuning runs on the cut
    model (`cut.SlimTwin`) and writes its weights back, so the checkpoint stays the gated model.
    With weights to start from, the dense model is the teacher of both phases (`config.distill`)."""
    device = _check_device(device)
    if config.budget not in list_costs():
        raise ChanpruneError(f"--budget {config.budget!r}: unknown cost; choose one of {', '.join(list_costs())}")
    if config.gate not in list_gates():
        raise ChanpruneError(f"--gate {config.gate!r}: unknown gate kind; choose one of {', '.join(list_gates())}")
    dependent = gate_kind(config.gate).input_dependent
    if config.granularity not in GRANULARITIES:
        raise ChanpruneError(f"--granularity {config.granularity!r}: choose one of {', '.join(GRANULARITIES)}")
    if config.granularity == "layer":
        if config.block not in (None, 1):
            raise ChanpruneError("--granularity layer gates whole residual branches: drop --block")
        if config.gate_init == "norm":
            raise ChanpruneError("--granularity layer has one gate per branch: --gate-init norm grades channels, "
                                 "drop it")
        config = dataclasses.replace(config, block=1)
    if dependent:  # conditional computation learns for the whole budget, as the paper does (or, with
        # --dependent-finetune, for max_learn_share of it, then the weights train under frozen decisions)
        if config.finetune_epochs:
            raise ChanpruneError(f"--gate {config.gate} learns its gates for the whole budget (--epochs): "
                                 "drop --finetune-epochs")
        if config.block not in (None, 1):
            raise ChanpruneError(f"--gate {config.gate} decides per channel and per input: drop --block")
        config = dataclasses.replace(config, finetune_epochs=None if config.dependent_finetune else 0, block=1,
                                     project=False)
    elif config.dependent_finetune:
        raise ChanpruneError("--dependent-finetune freezes a data-dependent gate network: it needs --gate dependent "
                             "or static+dependent")
    if out is None:
        out = default_run_dir("learn", f"{arch}-t{config.target:g}", resume=resume)
    out = prepare_run_dir(out, resume=resume)
    rank, world = _distributed(device)
    ckpt = _resume_checkpoint(out, GatedCheckpoint, arch) if resume else None
    if ckpt is not None and ckpt.stage == "done":
        if progress:
            progress("done", ckpt.result or {})
        return {"run": str(out), "model": str(out / "model.pt"), "already_complete": True, **(ckpt.result or {})}
    if ckpt is not None:
        stored = ckpt.learn_config
        if weights is None and stored.get("distill") and stored.get("teacher"):
            weights = stored["teacher"]  # the teacher is rebuilt from the weights the run started from
    weights, saved_kwargs = _load_weights_arg(weights, arch)
    model, bundle, classes, channels, shape = _setup(arch, data, weights=weights, num_classes=num_classes,
                                                     in_channels=in_channels, image_size=image_size,
                                                     seed=config.seed, limit=limit, saved_kwargs=saved_kwargs)
    config = dataclasses.replace(config, distill=bool(weights) if config.distill is None else config.distill,
                                 teacher=str(weights) if weights else None)
    if config.distill and not weights:
        raise ChanpruneError("--distill needs --weights: the dense model it starts from is the teacher")
    distill = (Distill(copy.deepcopy(model).to(device), temperature=config.distill_temperature,
                       weight=config.distill_weight) if config.distill else None)
    x = torch.zeros(shape)
    slow_bn = [m.momentum for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
               and m.momentum is not None and m.momentum < 0.05]
    if slow_bn and not config.calibrate_bn and progress:
        progress("warning", {"message": (
            f"{arch}'s batch norms update their statistics with momentum {min(slow_bn):g}: after pruning and a short "
            "budget they still describe the unpruned network, and eval-mode accuracy can collapse. Pass --calibrate-bn K "
            "(or export --calibrate-bn K --data D) to re-estimate them")})
    graph = find_groups(model, x, ignored=ignore)
    if not graph.groups:
        raise ChanpruneError(f"{arch} has no channel group that can be gated exactly: " +
                             "; ".join(f"{u['name']}: {u['reason']}" for u in graph.unsupported[:3]))
    cost, block = _make_cost(config, ckpt, arch, model, x, graph, shape, progress)
    config = dataclasses.replace(config, block=block)
    if not config.flops_weight >= 0:  # NaN too
        raise ChanpruneError(f"--flops-weight must be >= 0, got {config.flops_weight}")
    if config.flops_weight and config.budget == "flops":
        raise ChanpruneError("--flops-weight rewards kept FLOPs under another budget (latency); under --budget flops "
                             "it would only fight the target")
    reward = make_cost("flops", model, x, graph) if config.flops_weight else None
    floor = cost.floor()
    if config.target < floor + 0.01:
        raise ChanpruneError(f"--target {config.target} is below what {arch} can reach: its ungated layers alone "
                             f"cost {floor:.3f} of the dense {config.budget} (ungate fewer layers or raise the target)")
    gate_config = (dict((ckpt.gate or {}).get("config") or {}) if ckpt is not None
                   else ({"block": block} if block > 1 else None))
    if (dependent or config.granularity == "layer") and ckpt is None:
        sites = dependent_sites(model, graph)
        if not sites:
            what = f"--gate {config.gate}" if dependent else "--granularity layer"
            raise ChanpruneError(f"{what}: {arch} has no channel group a data-dependent or layer gate can control "
                                 "(a conv, batch norms and the convs that consume it, inside a block)")
        gate_config = ({"dependent": sites} if dependent else {"layers": sorted(sites)})
        if config.granularity == "layer":
            gate_config["granularity"] = "layer"
    gates = GateSet(graph, kind=config.gate, tau=config.tau, config=gate_config)
    if config.project_by not in ("margin", "prob"):
        raise ChanpruneError(f"project_by {config.project_by!r}: choose margin or prob")
    if config.gate_init not in ("uniform", "norm"):
        raise ChanpruneError(f"--gate-init {config.gate_init!r}: choose uniform or norm")
    if block > 1 and ckpt is None:  # a block holds channels of like importance (the weights' group norm)
        gates.rank_blocks_(group_norm(model, graph, x))
    if config.gate_init == "norm" and ckpt is None:
        try:
            for g, s in zip(gates.gates, group_norm(model, graph, x)):
                g.init_from_scores_(s)
        except NotImplementedError as e:
            raise ChanpruneError(f"--gate-init norm: {e}") from None
    model.to(device)
    gates.to(device).attach_(model)
    if ckpt is None:  # groups whose closing leaves a constant network keep a unit (a residual stream)
        gates.find_essential_(model, x.to(device))
    template = GatedCheckpoint(
        arch, {"num_classes": classes, "in_channels": channels}, shape, {}, data=data, config=asdict(config),
        stage="learn", learn_config=asdict(config), gate={"kind": gates.kind, "config": gates.config},
        cost={**cost.describe(), **({"table": cost.table.to_dict()} if hasattr(cost, "table") else {})},
        ignore=list(ignore), group_names=[g.name for g in graph.groups],
        group_sizes=[g.size for g in graph.groups])
    if ckpt is not None:
        model.load_state_dict(ckpt.state_dict)
        gates.load_state_dict(ckpt.gate_state)
        if progress:
            progress("resume", {"stage": ckpt.stage, "epoch": ckpt.loop.epoch if ckpt.loop else 0,
                                "step": ckpt.loop.step if ckpt.loop else 0})
    steps_per_epoch = bundle.train.num_batches(config.batch_size, world)
    budget = config.epochs * steps_per_epoch
    auto = config.finetune_epochs is None
    learn_history = ckpt.learn_history if ckpt is not None else []
    frozen = ckpt.frozen if ckpt is not None else None
    if ckpt is None or ckpt.stage == "learn":
        ready = _Readiness(gates, cost, config, budget) if auto else None
        trainable = [p for p in model.parameters() if p.requires_grad]
        if config.fix_weights:  # the gates learn alone; the weights train in fine-tuning
            for p in trainable:
                p.requires_grad_(False)
        try:
            loop = fit(model, bundle.train, bundle.val, config, checkpointer=Checkpointer(out, template, rank=rank),
                       gates=gates, cost=cost, resume=ckpt.loop if ckpt else None, progress=progress, device=device,
                       rank=rank, world=world, wrapped=_wrap(model, gates, world, device), distill=distill,
                       stop_when=ready, reward=reward)
        finally:
            for p in trainable:
                p.requires_grad_(True)
        learn_history = loop.history
        learned = sum(r.get("steps", steps_per_epoch) for r in learn_history)
        frozen = {"reason": loop.stopped or "epochs", "steps": learned, "epochs": round(learned / steps_per_epoch, 3),
                  **gate_metrics(gates, cost, config)}
        if progress and not dependent:  # data-dependent gates have no static plan to freeze
            progress("frozen", frozen)
        ckpt = None
        plan = freeze(graph, gates.probs(), tau=config.tau, min_keep=config.min_keep, arch=arch, input_shape=shape,
                      cost=cost, essential=gates.essential(), units=gates.units())
        if block > 1:
            plan.meta["block"] = block
        if config.project:
            tol = config.ready_tolerance if config.project_tolerance is None else config.project_tolerance
            plan = project_plan(plan, graph, cost, config.target, tolerance=tol, min_keep=config.min_keep,
                                units=gates.units(), whole=frozenset(gates.config.get("layers") or ()),
                                scores=([m.cpu().tolist() for m in gates.margins()]
                                        if getattr(config, "project_by", "margin") == "margin" else None))
            if "projected" in plan.meta:
                frozen["projected"] = plan.meta["projected"]
    else:
        plan = ckpt.plan
    agree = _ranks_agree(plan, world)
    gates.fix_(plan.keep_masks(graph))
    ft_steps = (budget - frozen["steps"]) if auto else config.finetune_epochs * steps_per_epoch
    frozen = {**frozen, "finetune_steps": max(0, ft_steps)}
    template = dataclasses.replace(template, plan=plan, learn_history=learn_history, frozen=frozen)
    if ft_steps > 0:
        ft = TrainConfig(epochs=-(-ft_steps // steps_per_epoch), batch_size=config.batch_size,
                         lr=config.finetune_lr or config.lr, momentum=config.momentum,
                         weight_decay=config.weight_decay, seed=config.seed + 1, schedule=config.finetune_schedule,
                         max_steps=ft_steps)
        template = dataclasses.replace(template, stage="finetune", config=asdict(ft), gate_state=gates.state_dict())
        # data-dependent gates keep deciding per input: no slim twin; the gate network is frozen and the
        # weights train under its threshold decisions
        twin = None if dependent else _slim_twin(model, gates, graph, plan, x, world)
        if dependent:
            gates.deterministic = True
            gates.requires_grad_(False)
        ckpt_ft = Checkpointer(out, template, rank=rank, state_fn=twin.full_state if twin else None)
        if ckpt is None and rank == 0:  # the switch itself is a checkpoint: --resume fine-tunes from here
            ckpt_ft.save(model, LoopState(), [], [], tag="frozen", gates=gates, seed=config.seed)
        net = twin.slim if twin else model
        net.train()
        fit(net, bundle.train, bundle.val, ft, checkpointer=ckpt_ft,
            resume=ckpt.loop if ckpt and ckpt.loop and ckpt.loop.optimizer else None, earlier_rows=learn_history,
            progress=progress, device=device, rank=rank, world=world,
            wrapped=_wrap(net, None, world, device), distill=distill)
        if twin:
            twin.write_back_()
            gates.attach_(model)
        gates.deterministic = False
    if config.calibrate_bn:
        calibrate_bn_(model, bundle.train, batches=config.calibrate_bn, device=device)
    val = evaluate(model, bundle.val, device=device)
    test = evaluate(model, bundle.test or bundle.val, device=device, gates=gates if dependent else None, cost=cost)
    ratio = cost.ratio(plan)
    pol = polarization(gates.probs())
    result = {"val_accuracy": val["accuracy"], "test_accuracy": test["accuracy"], "cost": cost.name,
              "cost_ratio": ratio, "polarized": pol.polarized, "world_size": world, "ranks_agree": agree,
              "frozen": frozen}
    if dependent:  # each input's own cost in the threshold mode; the static plan keeps every channel
        result["executed_cost"] = test["cost"]
        ratio = result["cost_ratio"] = test["cost"]["mean"]
    if rank == 0:
        final = GatedCheckpoint.load(out / "model.pt")
        dataclasses.replace(final, state_dict=model.state_dict(), gate_state=gates.state_dict(), plan=plan,
                            learn_history=learn_history, stage="done", saved="final", result=result,
                            frozen=frozen).save(out / "model.pt")
    return {"run": str(out), "model": str(out / "model.pt"), "cost": cost.name, "cost_ratio": ratio, "tau": config.tau,
            "polarized": pol.polarized, "polarization_warning": pol.warning, "kept_channels": plan.kept_channels,
            "gated_channels": plan.total_channels, "val_accuracy": val["accuracy"], "test_accuracy": test["accuracy"],
            "frozen": frozen, **({"executed_cost": result["executed_cost"]} if dependent else {})}


def _make_cost(config: LearnConfig, ckpt, arch: str, model: nn.Module, x: torch.Tensor, graph, shape, progress):
    """The budget's cost and the gate block. A latency budget reads its table from `config.lut`
    (or, on resume, from the checkpoint, which stores it), or profiles first with "auto"."""
    options = {}
    if config.budget == "latency":
        stored = (ckpt.cost or {}).get("table") if ckpt is not None else None
        if stored is not None:
            table = LatencyTable.from_dict(stored)
        elif config.lut in (None, ""):
            raise ChanpruneError("--budget latency needs --lut FILE (made by chanprune profile) or --lut auto")
        elif config.lut == "auto":
            from .profile import profile_model  # the profiler is a stage of its own; it times for minutes

            # the model as it is learned (its own classifier); latency does not depend on the weights
            table = profile_model(model, [1, *shape[1:]], arch=arch, progress=progress)
        else:
            try:
                table = LatencyTable.load(config.lut)
            except ValueError as e:
                raise ChanpruneError(f"--lut: {e}") from None
        warning = machine_mismatch(table)
        if warning and progress:
            progress("warning", {"message": warning})
        options["lut"] = table
    elif config.lut:
        raise ChanpruneError("--lut is only for --budget latency")
    try:
        cost = make_cost(config.budget, model, x, graph, **options)
    except ValueError as e:
        raise ChanpruneError(f"--budget {config.budget}: {e}") from None
    if config.block is not None and config.block < 1:
        raise ChanpruneError(f"--block must be >= 1, got {config.block}")
    block = config.block if config.block is not None else (cost.table.block if config.budget == "latency" else 1)
    return cost, block


class _Readiness:
    """`fit`'s stop rule while learning: "ready" once the gates are polarized and the cost at tau
    has stayed within `ready_tolerance` of the target for `ready_window` steps; "deadline" at
    `max_learn_share` of the budget. Checked every few steps (the check prices the plan)."""

    EVERY = 5

    def __init__(self, gates: GateSet, cost, config: LearnConfig, budget: int):
        self.gates, self.cost, self.config = gates, cost, config
        self.deadline = max(1, int(config.max_learn_share * budget))
        self.since: int | None = None

    def __call__(self, done: int) -> str | None:
        if done >= self.deadline:
            return "deadline"
        if done % self.EVERY:
            return None
        with torch.no_grad():
            probs = self.gates.probs()
            ratio = float(self.cost.ratio_of(self.gates.threshold_masks(self.config.tau)))
        if polarization(probs).ok and abs(ratio - self.config.target) <= self.config.ready_tolerance:
            self.since = done if self.since is None else self.since
            if done - self.since >= self.config.ready_window:
                return "ready"
        else:
            self.since = None
        return None


def _slim_twin(model: nn.Module, gates: GateSet, graph, plan: PrunePlan, x: torch.Tensor,
               world: int) -> SlimTwin | None:
    """The cut model to fine-tune, with the gates detached from `model` (re-attach after the write
    back); or None, gates still attached, where it cannot be traced back (then the gated model,
    frozen under the plan, is fine-tuned: the same function, slower per step)."""
    if world > 1:
        return None
    gates.detach_()
    try:
        return SlimTwin(model, graph, plan, x)
    except Exception:  # noqa: BLE001 - any surgery or tracing failure: fine-tune the gated model instead
        gates.attach_(model)
        return None


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
        "zero_width_groups": plan.zero_width_groups, "metrics": gm.ckpt.metrics, "frozen": gm.ckpt.frozen,
    }
