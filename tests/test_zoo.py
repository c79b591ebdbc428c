import pytest
import torch

from chanprune.errors import ArtifactError, UnknownArchError
from chanprune.zoo import build_model, list_archs


@pytest.mark.parametrize("depth,params", [(20, 272474), (56, 855770)])
def test_cifar_resnets(depth, params):
    m = build_model(f"resnet{depth}", num_classes=10)
    assert sum(p.numel() for p in m.parameters()) == params
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_torchvision_with_keywords():
    m = build_model("resnet18", num_classes=7, in_channels=1)
    assert m(torch.zeros(1, 1, 32, 32)).shape == (1, 7)
    assert not m.training


def test_unknown_arch_lists_valid_names():
    with pytest.raises(UnknownArchError, match="resnet20") as e:
        build_model("resnet21")
    assert "module:function" in str(e.value)
    assert "resnet20" in list_archs() and "resnet18" in list_archs()


def test_module_function():
    m = build_model("tests.nets:chain", num_classes=3)
    assert m(torch.zeros(1, 3, 16, 16)).shape == (1, 3)
    with pytest.raises(UnknownArchError, match="not a torch.nn.Module"):
        build_model("tests.nets:not_a_model")
    with pytest.raises(UnknownArchError, match="cannot import"):
        build_model("no_such_module_zz:f")


def test_weights_from_file_strict(tmp_path):
    src = build_model("resnet20", num_classes=10)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    m = build_model("resnet20", num_classes=10, weights=str(tmp_path / "w.pt"))
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), m.state_dict().values()))
    with pytest.raises(ArtifactError, match="does not fit"):
        build_model("resnet32", num_classes=10, weights=str(tmp_path / "w.pt"))


def test_efficientnet_lite0_pretrained_loads_strictly():
    m = build_model("efficientnet_lite0", weights="DEFAULT")
    fresh = build_model("efficientnet_lite0")
    differs = [k for k, v in m.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, fresh.state_dict()[k])]
    assert len(differs) > 100  # the pretrained weights really were loaded
