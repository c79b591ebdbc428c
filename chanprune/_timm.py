"""`timm:NAME`: models from timm (PyTorch Image Models, >= 1.0), an optional dependency.

timm builds the model and takes `num_classes` and `in_chans` itself: its own head and stem
adaptation (with pretrained weights it re-initialises the classifier and folds the RGB stem into
the requested channels), not chanprune's. timm is imported only when a `timm:` name is built, so
`chanprune --help` stays fast and works without it. `zoo.TimmProvider` serves the prefix.

`FAMILIES` is the representative list `chanprune check --list timm` runs: one to three small models
per CNN family, each built with random weights (nothing is downloaded).
"""
from __future__ import annotations

import difflib

from torch import nn

from .errors import UnknownArchError

__all__ = ["FAMILIES", "PREFIX", "create_model", "family_archs"]

PREFIX = "timm"

# family -> timm model names (small variants, so the sweep runs on 2 cores)
FAMILIES: dict[str, tuple[str, ...]] = {
    "resnet": ("resnet10t", "resnet18"),
    "resnetd": ("resnet26d",),
    "seresnet": ("seresnet18",),
    "resnext": ("resnext26ts",),
    "efficientnet": ("efficientnet_b0", "tf_efficientnet_b0"),
    "efficientnet_lite": ("tf_efficientnet_lite0",),
    "efficientnetv2": ("tf_efficientnetv2_b0",),
    "mobilenetv3": ("mobilenetv3_small_050", "tf_mobilenetv3_small_075"),
    "mobilenetv4": ("mobilenetv4_conv_small_035",),
    "mnasnet": ("mnasnet_small",),
    "regnet": ("regnetx_002", "regnety_002"),
    "ghostnet": ("ghostnet_050", "ghostnetv2_100"),
    "rexnet": ("rexnet_100",),
    "mixnet": ("mixnet_s", "tf_mixnet_s"),
    "convnext": ("convnext_atto",),
    "cspnet": ("cspresnet50", "cs3darknet_s", "cs3darknet_focus_s"),
    "dla": ("dla34", "dla46_c"),
    "dpn": ("dpn48b",),
    "hrnet": ("hrnet_w18_small",),
    "res2net": ("res2net50_14w_8s",),
    "repvgg": ("repvgg_a0",),
    "fbnet": ("fbnetc_100", "fbnetv3_b"),
    "lcnet": ("lcnet_050",),
    "densenet": ("densenet121",),
    "vovnet": ("ese_vovnet19b_dw",),
    "hardcorenas": ("hardcorenas_a",),
    "tinynet": ("tinynet_e",),
}


def family_archs() -> list[tuple[str, str]]:
    """(family, `timm:NAME`) for every model in `FAMILIES`, in table order.

    Raises:
        UnknownArchError: timm is not installed.
    """
    _timm()
    return [(family, f"{PREFIX}:{name}") for family, names in FAMILIES.items() for name in names]


def _timm():
    try:
        import timm
    except ImportError as e:  # optional dependency
        raise UnknownArchError("timm:NAME needs timm: `pip install chanprune[timm]` (or `pip install 'timm>=1.0'`)") from e
    return timm


def create_model(arch: str, *, num_classes: int | None, in_channels: int, weights: str | None) -> nn.Module:
    """Build `timm:NAME` (or `timm:NAME.TAG`, where TAG picks which of timm's pretrained weights).

    Args:
        num_classes: passed to timm as `num_classes` (None: the model's own, 1000 for most).
        in_channels: passed to timm as `in_chans`.
        weights: None (random init) or "DEFAULT": timm's pretrained weights (`pretrained=True`,
            downloaded from the Hugging Face Hub into timm's cache; a path for users, never taken
            by the tests). A weights file is loaded strictly by `zoo.build_model` afterwards.

    Raises:
        UnknownArchError: timm is missing, the name is not a timm model (the message names the
            closest ones), or the weights are named other than DEFAULT.
    """
    name = arch.partition(":")[2]
    if not name or any(c in name for c in ":/\\"):
        raise UnknownArchError(f"--arch {arch!r}: give a timm model name like timm:resnet50 "
                               "(timm's hf-hub: and local-dir: sources are not supported)")
    if weights not in (None, "DEFAULT"):
        raise UnknownArchError(f"--weights {weights!r}: a timm model takes DEFAULT (timm's pretrained weights; "
                               f"pick others with a tag, like timm:{name.split('.')[0]}.TAG) or a .pt file")
    timm = _timm()
    if not timm.is_model(name):
        raise UnknownArchError(_unknown(timm, name))
    kwargs = {"in_chans": in_channels}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return timm.create_model(name, pretrained=weights == "DEFAULT", **kwargs)


def _unknown(timm, name: str) -> str:
    base = name.split(".")[0]
    close = difflib.get_close_matches(base, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join('timm:' + c for c in close)}?" if close else ""
    return (f"timm has no model {base!r}{hint} (list them with "
            f"`python -c \"import timm; print(timm.list_models('*{base[:4]}*'))\"`)")
