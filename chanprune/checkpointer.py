"""The bookkeeping of a training loop, apart from the loop: checkpoints, resume, RNG, Ctrl-C, metrics.

`out/model.pt` is written atomically (every epoch and on SIGINT) from a template checkpoint that
holds what does not change while training (arch, input shape, gates' kind, ...); `out/metrics.jsonl`
gets one row per finished epoch, after the checkpoint that contains it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
from pathlib import Path

import torch
from torch import nn

from .artifacts import atomic_write_text, provenance
from .checkpoint import DenseCheckpoint, GatedCheckpoint, LoopState

__all__ = ["Checkpointer", "Interrupted"]


class Interrupted(Exception):
    """Ctrl-C arrived during a step; the checkpoint has been saved."""


class Checkpointer:
    """Saves `template` with the live weights, gates and loop state into `out/model.pt` (rank 0 only)."""

    def __init__(self, out: str | Path, template: DenseCheckpoint, *, rank: int = 0, state_fn=None):
        """`state_fn(model)` gives the state dict to store (default `model.state_dict()`): a slim
        model being fine-tuned stores its gated twin's (`cut.SlimTwin.full_state`)."""
        self.out, self.template, self.rank = Path(out), template, rank
        self.state_fn = state_fn or (lambda m: m.state_dict())
        self.interrupted = False
        if rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)

    @property
    def path(self) -> Path:
        return self.out / "model.pt"

    # ------------------------------------------------------------------ writing
    def save(self, model: nn.Module, loop: LoopState, opts, scheds, *, tag: str, gates: nn.Module | None = None,
             seed: int | None = None) -> None:
        if self.rank != 0:
            return
        loop.optimizer = [o.state_dict() for o in opts]
        loop.scheduler = [s.state_dict() for s in scheds]
        loop.rng = {"torch": torch.get_rng_state()}  # only torch's generator drives training
        changes = {"state_dict": self.state_fn(model), "loop": loop, "saved": tag, "provenance": provenance(seed),
                   "metrics": loop.history[-1] if loop.history else {}}
        if isinstance(self.template, GatedCheckpoint) and gates is not None:
            changes["gate_state"] = gates.state_dict()
        dataclasses.replace(self.template, **changes).save(self.path)

    def log(self, row: dict) -> None:
        if self.rank == 0:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")

    # ------------------------------------------------------------------ resuming
    def restore(self, loop: LoopState, opts, scheds, *, earlier_rows: list[dict] = ()) -> LoopState:
        """Load optimizer, schedule and RNG state; the log restarts from the checkpoint's history
        (`earlier_rows` first: a previous stage's epochs), so no epoch appears twice or goes missing."""
        self.restore_state(loop, opts, scheds)
        if self.rank == 0:
            rows = list(earlier_rows) + loop.history
            atomic_write_text(self.out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        return loop

    @staticmethod
    def restore_state(loop: LoopState, opts, scheds) -> LoopState:
        for o, sd in zip(opts, loop.optimizer):
            o.load_state_dict(sd)
        for s, sd in zip(scheds, loop.scheduler):
            s.load_state_dict(sd)
        if loop.rng.get("torch") is not None:
            torch.set_rng_state(loop.rng["torch"])
        return loop

    # ------------------------------------------------------------------ Ctrl-C
    @contextlib.contextmanager
    def catching_sigint(self):
        """SIGINT sets a flag that the loop checks after each step (then saves and stops)."""
        def on_sigint(signum, frame):
            self.interrupted = True

        try:
            previous = signal.signal(signal.SIGINT, on_sigint)
        except ValueError:  # not the main thread: leave signals alone
            previous = None
        try:
            yield self
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
