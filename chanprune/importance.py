"""Importance scores per gated channel, from the weights alone (no data).

`group_norm(model, graph, inputs)`: DepGraph's group L2 norm (as Torch-Pruning's
`GroupMagnitudeImportance(p=2)`, computed here because its importance skips chanprune's own
grouped-conv pruner), over every layer a channel group touches: the one-shot
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
    """One score per channel of each group of `graph` (higher: more important): the L2 norm over
    every weight the channel touches, producers (conv/linear rows, norm scales) and consumers
    (conv/linear input columns), as DepGraph's group norm."""
    DG = build_dependency_graph(model, inputs[:1])
    mods = dict(model.named_modules())
    scores = []
    for g in graph.groups:
        root = mods[g.name]
        group = DG.get_pruning_group(root, DG.get_pruner_of_module(root).prune_out_channels, list(range(g.size)))
        sq = torch.zeros(g.size)
        for item in group.items:
            layer, idxs = item.dep.target.module, [int(i) for i in item.idxs]
            w = getattr(layer, "weight", None)
            if not isinstance(w, torch.Tensor) or len(idxs) != g.size:
                continue
            w = w.detach().float().cpu()
            out = DG.is_out_channel_pruning_fn(item.dep.handler)
            if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
                if out:
                    sq += w[idxs].flatten(1).square().sum(1)
                elif getattr(layer, "groups", 1) == 1:
                    sq += w[:, idxs].transpose(0, 1).flatten(1).square().sum(1)
            elif out and w.dim() == 1 and w.numel() > max(idxs):  # batch/group/layer norm scales
                sq += w[idxs].square()
        scores.append(sq.sqrt())
    return scores
