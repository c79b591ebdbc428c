import sys

import pytest
import torch

from chanprune import zoo
from chanprune.errors import ArtifactError, UnknownArchError
from chanprune.zoo import (ArchProvider, build_model, list_archs, provider_for, register_arch, register_provider,
                           saved_arch)
from tests import nets


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


# ----------------------------------------------------------------------------- providers
class _TinyProvider(ArchProvider):
    """Serves `tiny:<net>` from tests/nets.py, as a `timm:` provider would serve `timm:<model>`."""

    name = "tiny"

    def names(self):
        return [f"tiny:{n}" for n in sorted(nets.NETS)]

    def build(self, arch, *, num_classes, in_channels, weights):
        return nets.NETS[arch.partition(":")[2]](num_classes=num_classes or 5)


class _Named(ArchProvider):
    def __init__(self, name, names):
        self.name, self._names = name, names

    def names(self):
        return list(self._names)


@pytest.fixture
def providers(monkeypatch):
    """Registrations made in a test are undone after it."""
    monkeypatch.setattr(zoo, "_NAMED", dict(zoo._NAMED))
    monkeypatch.setattr(zoo, "_PREFIXES", dict(zoo._PREFIXES))
    monkeypatch.setattr(zoo, "_REGISTRY", dict(zoo._REGISTRY))
    return monkeypatch


@pytest.mark.parametrize("arch,provider", [
    ("resnet20", "registered"), ("resnet110", "registered"), ("efficientnet_lite0", "efficientnet_lite"),
    ("resnet18", "torchvision"), ("mobilenet_v2", "torchvision"), ("tests.nets:chain", "module:function"),
    ("no_such_module_zz:f", "module:function"), ("timm:resnet50", "timm"),
])
def test_provider_for_routes_names(arch, provider):
    assert provider_for(arch).name == provider


def test_provider_for_unknown_lists_names():
    with pytest.raises(UnknownArchError, match="resnet20") as e:
        provider_for("resnet21")
    assert "resnet18" in str(e.value) and "efficientnet_lite0" in str(e.value)
    assert "module:function" in str(e.value)


def test_builtin_providers_do_not_overlap():
    seen: dict[str, str] = {}
    for p in zoo._NAMED.values():
        for name in p.names():
            assert name not in seen, f"{name} listed by {seen.get(name)} and {p.name}"
            seen[name] = p.name
    assert sorted(seen) == list_archs()


def test_prefix_provider_is_matched_first(providers):
    tiny = register_provider(_TinyProvider(), prefix="tiny")
    assert provider_for("tiny:chain") is tiny
    assert provider_for("tests.nets:chain").name == "module:function"  # other prefixes stay user code
    assert "tiny:residual" in list_archs()
    m = build_model("tiny:chain", num_classes=3)
    assert m(torch.zeros(1, 3, 16, 16)).shape == (1, 3) and not m.training
    with pytest.raises(UnknownArchError, match=r"tiny:NAME"):
        provider_for("nope")
    providers.undo()
    assert provider_for("tiny:chain").name == "module:function"
    assert "tiny:chain" not in list_archs()


def test_prefix_provider_gets_weight_files(providers, tmp_path):
    register_provider(_TinyProvider(), prefix="tiny")
    src = build_model("tiny:residual")
    torch.save(src.state_dict(), tmp_path / "w.pt")
    m = build_model("tiny:residual", weights=str(tmp_path / "w.pt"))
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), m.state_dict().values()))


def test_duplicate_registrations_raise(providers):
    register_provider(_TinyProvider(), prefix="tiny")
    with pytest.raises(ValueError, match="already"):
        register_provider(_TinyProvider(), prefix="tiny2")  # same provider name
    with pytest.raises(ValueError, match="'tiny'"):
        register_provider(_Named("other", []), prefix="tiny")  # same prefix
    with pytest.raises(ValueError, match="prefix"):
        register_provider(_Named("other", []), prefix="a:b")
    with pytest.raises(ValueError, match="resnet18.*torchvision"):
        register_provider(_Named("other", ["resnet18", "x_net"]))  # a name torchvision serves
    with pytest.raises(ValueError, match="already registered"):
        register_arch("resnet20")(lambda *, num_classes=10: nets.Chain(num_classes=num_classes))
    with pytest.raises(ValueError, match="torchvision"):
        register_arch("resnet18")(lambda *, num_classes=10: nets.Chain(num_classes=num_classes))


def test_register_arch_adds_a_name(providers):
    register_arch("tiny_residual")(lambda *, num_classes=10: nets.Residual(num_classes=num_classes))
    assert provider_for("tiny_residual").name == "registered"
    assert build_model("tiny_residual")(torch.zeros(1, 3, 16, 16)).shape == (1, 10)


@pytest.mark.parametrize("arch,trusted", [
    ("resnet20", True), ("resnet18", True), ("efficientnet_lite0", True), ("timm:resnet50", True),
    ("tests.nets:chain", False),
], ids=["cifar", "torchvision", "lite0", "timm", "module-function"])
def test_trusted_flags(arch, trusted):
    assert provider_for(arch).trusted is trusted


def test_saved_arch_refuses_untrusted_unless_named_again():
    mod = "no_such_module_qq"
    obj = {"arch": f"{mod}:make"}
    with pytest.raises(ArtifactError, match="--arch") as e:
        saved_arch(obj, "m.pt", None)
    assert f"{mod}:make" in str(e.value)
    with pytest.raises(ArtifactError):
        saved_arch(obj, "m.pt", "tests.nets:chain")
    assert saved_arch(obj, "m.pt", f"{mod}:make") == f"{mod}:make"
    assert mod not in sys.modules  # deciding trust imports nothing
    assert saved_arch({"arch": "resnet20"}, "m.pt", None) == "resnet20"


def test_saved_arch_trusts_by_provider(providers):
    obj = {"arch": "tiny:chain"}
    with pytest.raises(ArtifactError, match="user model"):
        saved_arch(obj, "m.pt", None)
    register_provider(_TinyProvider(), prefix="tiny")
    assert saved_arch(obj, "m.pt", None) == "tiny:chain"


@pytest.mark.parametrize("obj", [{"arch": "resnet21"}, {}, {"arch": 3}], ids=["unknown", "missing", "not-str"])
def test_saved_arch_bad_names(obj):
    with pytest.raises(ArtifactError, match="resnet21" if obj.get("arch") == "resnet21" else "missing 'arch'"):
        saved_arch(obj, "m.pt", None)


@pytest.mark.parametrize("arch,channels", [
    ("tests.nets:gray_chain", 1), ("tests.nets:chain", 3), ("resnet20", 3), ("resnet18", 3), ("efficientnet_lite0", 3),
], ids=["user-gray", "user-rgb", "cifar", "torchvision", "lite0"])
def test_stem_in_channels(arch, channels):
    assert provider_for(arch).stem_in_channels(arch) == channels


def test_gray_user_model_needs_its_channels():
    with pytest.raises(UnknownArchError, match="--in-channels 1"):
        build_model("tests.nets:gray_chain")
    m = build_model("tests.nets:gray_chain", in_channels=1, num_classes=4)
    assert m(torch.zeros(1, 1, 16, 16)).shape == (1, 4)
