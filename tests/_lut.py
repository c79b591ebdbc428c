"""A synthetic latency table for tests: each layer's milliseconds are its multiply-adds at the kept
counts, plus a fixed per-layer overhead, on the same grids `chanprune profile` uses (no timing)."""
import torch
from torch import nn

from chanprune.graph import find_groups
from chanprune.measure.lut import LatencyTable, LayerTable, machine_info


def _grid(width: int, block: int, gated: bool) -> list[int]:
    if not gated:
        return [width]
    return sorted({*range(block, width + 1, block), width})


def synthetic_table(model: nn.Module, x: torch.Tensor, *, block: int = 4, batch_sizes=(1,), overhead_ms: float = 0.01,
                    arch: str | None = None) -> LatencyTable:
    graph = find_groups(model, x)
    roles: dict[str, set] = {}
    for g in graph.groups:
        for s in g.sites:
            roles.setdefault(s.module, set()).add(s.role)
    sizes = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: sizes.__setitem__(n, (i[0].shape, o.shape)))
             for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    layers = []
    for name, m in model.named_modules():
        r = roles.get(name, set())
        if name not in sizes or not r & {"in", "out", "dw"}:
            continue
        out_shape = sizes[name][1]
        pixels = out_shape[2] * out_shape[3] if len(out_shape) == 4 else 1
        k = m.kernel_size[0] * m.kernel_size[1] if isinstance(m, nn.Conv2d) else 1
        if "dw" in r:
            c = m.out_channels
            grid = _grid(c, block, True)
            ms = {str(b): [[overhead_ms + b * kk * pixels * k * 1e-6] for kk in grid] for b in batch_sizes}
            layers.append(LayerTable(name, "dw", c, c, grid, [c], ms))
            continue
        cin, cout = (m.in_channels, m.out_channels) if isinstance(m, nn.Conv2d) else (m.in_features, m.out_features)
        gi, go = _grid(cin, block, "in" in r), _grid(cout, block, "out" in r)
        ms = {str(b): [[overhead_ms + b * i * o * pixels * k * 1e-6 for o in go] for i in gi] for b in batch_sizes}
        layers.append(LayerTable(name, "linear" if isinstance(m, nn.Linear) else "conv", cin, cout, gi, go, ms))
    dense = {b: sum(t.at(t.channels_in, t.channels_out, b) for t in layers) for b in batch_sizes}
    cal = {str(b): {"scale": 1.0, "offset_ms": 0.05, "dense_ms": float(dense[b]) + 0.05, "error": {}} for b in batch_sizes}
    return LatencyTable(arch, list(x.shape[1:]), "ort-cpu", 2, list(batch_sizes), block, machine_info("ort-cpu", 2),
                        layers, cal, {"synthetic": True})
