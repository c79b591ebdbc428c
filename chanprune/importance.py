"""Importance scores per gated channel, from the weights alone (no data).

`group_norm(model, graph, inputs)`: DepGraph's group L2 norm (Torch-Pruning's
`GroupMagnitudeImportance(p=2)`), summed over every layer a channel group touches: the one-shot
criterion chanprune's gates are compared with, here used to start the gates from it
(`learn --gate-init norm`).
"""
from __future__ import annotations

import torch
from torch import nn

from .graph import ChannelGraph, build_dependency_graph

__all__ = ["group_norm"]


@torch.no_grad()
def group_norm(model: nn.Module, graph: ChannelGraph, inputs: torch.Tensor) -> list[torch.Tensor]:
    """One score per channel of each group of `graph` (higher: more important)."""
    import torch_pruning as tp

    DG = build_dependency_graph(model, inputs[:1])
    mods = dict(model.named_modules())
    imp = tp.importance.GroupMagnitudeImportance(p=2, group_reduction="sum", normalizer=None)
    scores = []
    for g in graph.groups:
        root = mods[g.name]
        pruner = DG.get_pruner_of_module(root)
        group = DG.get_pruning_group(root, pruner.prune_out_channels, list(range(g.size)))
        s = imp(group)
        scores.append(torch.ones(g.size) if s is None else s.detach().float().cpu().reshape(-1)[: g.size])
    return scores
