"""`chanprune.artifacts`: atomic writes, safe loads, format tags, slim models rebuilt from files."""
from __future__ import annotations

import copy
import json
import os
import pickle
import random
import sys

import pytest
import torch

import chanprune
from chanprune import artifacts
from chanprune.artifacts import (DENSE_FORMAT, GATED_FORMAT, SLIM_FORMAT, atomic_save, atomic_write_text,
                                 load_artifact, load_state_dict_file)
from chanprune.load import load_slim, save_slim
from chanprune.check import collapsible_groups, perturb_batchnorm_
from chanprune.errors import ArtifactError, UnknownArchError
from chanprune.freeze import random_plan
from chanprune.graph import find_groups
from chanprune.plan import PrunePlan
from chanprune.surgery import apply_plan_
from chanprune.zoo import build_model
from tests import nets


def tmp_files(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ----------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("fmt", [DENSE_FORMAT, GATED_FORMAT, SLIM_FORMAT], ids=["dense", "gated", "slim"])
def test_atomic_save_load_round_trip(tmp_path, fmt):
    obj = {"format": fmt, "state_dict": {"w": torch.randn(3, 4), "b": torch.arange(5)},
           "meta": {"epochs": 3, "lr": 0.1, "name": "x", "shape": [1, 3, 8, 8], "none": None}}
    path = atomic_save(obj, tmp_path / "a.pt")
    assert path == tmp_path / "a.pt" and path.is_file()
    for expected in (fmt, (fmt, DENSE_FORMAT), None):
        back = load_artifact(path, expected)
        assert back["format"] == fmt and back["meta"] == obj["meta"]
        assert set(back["state_dict"]) == {"w", "b"}
        assert all(torch.equal(back["state_dict"][k], obj["state_dict"][k]) for k in obj["state_dict"])
    assert tmp_files(tmp_path) == []


def test_atomic_save_replaces_existing_file(tmp_path):
    path = tmp_path / "a.pt"
    atomic_save({"format": DENSE_FORMAT, "v": 1}, path)
    atomic_save({"format": DENSE_FORMAT, "v": 2}, path)
    assert load_artifact(path, DENSE_FORMAT)["v"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]


def test_atomic_save_accepts_str_path_and_relative_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    atomic_save({"format": DENSE_FORMAT}, "rel.pt")
    atomic_save({"format": DENSE_FORMAT}, str(tmp_path / "abs.pt"))
    assert load_artifact("rel.pt")["format"] == DENSE_FORMAT
    assert load_artifact(str(tmp_path / "abs.pt"))["format"] == DENSE_FORMAT


# ----------------------------------------------------------------------------- bad files
def _missing(p):
    return p / "missing.pt"


def _empty(p):
    (p / "empty.pt").write_bytes(b"")
    return p / "empty.pt"


def _folder(p):
    (p / "dir.pt").mkdir()
    return p / "dir.pt"


def _truncated(p):
    atomic_save({"format": DENSE_FORMAT, "state_dict": {"w": torch.randn(64, 64)}}, p / "full.pt")
    data = (p / "full.pt").read_bytes()
    (p / "cut.pt").write_bytes(data[: len(data) // 2])
    return p / "cut.pt"


def _random_bytes(seed):
    def make(p):
        (p / "noise.pt").write_bytes(random.Random(seed).randbytes(1000))
        return p / "noise.pt"
    return make


def _hello(p):
    (p / "hello.pt").write_text("hello world\n")
    return p / "hello.pt"


def _zip_noise(p):
    (p / "zip.pt").write_bytes(b"PK\x03\x04" + random.Random(5).randbytes(500))
    return p / "zip.pt"


def _json(p):
    (p / "plan.pt").write_text(json.dumps({"format": SLIM_FORMAT, "arch": "resnet20"}))
    return p / "plan.pt"


def _tensor(p):
    torch.save(torch.zeros(3), p / "tensor.pt")
    return p / "tensor.pt"


def _untagged_dict(p):
    torch.save({"w": torch.zeros(3)}, p / "sd.pt")
    return p / "sd.pt"


BAD_FILES = {
    "missing": (_missing, "no such file"),
    "empty": (_empty, "empty"),
    "folder": (_folder, "folder"),
    "truncated": (_truncated, "truncated or corrupt"),
    "random-bytes-0": (_random_bytes(0), "not a PyTorch file"),
    "random-bytes-1": (_random_bytes(1), "not a PyTorch file"),
    "random-bytes-3": (_random_bytes(3), "not a"),
    "random-bytes-2": (_random_bytes(2), "not a"),
    "random-bytes-20": (_random_bytes(20), "not a"),
    "random-bytes-61": (_random_bytes(61), "not a"),
    "hello-world-text": (_hello, "not a"),
    "zip-magic-then-noise": (_zip_noise, "truncated or corrupt"),
    "json-named-pt": (_json, "not a PyTorch file"),
    "bare-tensor": (_tensor, "no 'format' tag"),
    "untagged-dict": (_untagged_dict, "no 'format' tag"),
}


@pytest.mark.parametrize("expected", [None, SLIM_FORMAT], ids=["any-kind", "expect-slim"])
@pytest.mark.parametrize("make,needle", list(BAD_FILES.values()), ids=list(BAD_FILES))
def test_load_artifact_rejects_bad_files(tmp_path, make, needle, expected):
    path = make(tmp_path)
    with pytest.raises(ArtifactError) as info:
        load_artifact(path, expected)
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert str(path) in msg  # the message says which file
    assert "\n" not in msg  # one line for the CLI
    if needle:
        assert needle in msg


@pytest.mark.parametrize("make", [_missing, _empty, _folder, _truncated, _json],
                         ids=["missing", "empty", "folder", "truncated", "json"])
def test_load_state_dict_file_rejects_bad_files(tmp_path, make):
    with pytest.raises(ArtifactError):
        load_state_dict_file(make(tmp_path))


@pytest.mark.parametrize("have,want,have_word,want_word", [
    (SLIM_FORMAT, GATED_FORMAT, "slim", "gated"),
    (GATED_FORMAT, SLIM_FORMAT, "gated", "slim"),
    (DENSE_FORMAT, SLIM_FORMAT, "dense", "slim"),
    (SLIM_FORMAT, (DENSE_FORMAT, GATED_FORMAT), "slim", "dense"),
], ids=["slim-for-gated", "gated-for-slim", "dense-for-slim", "slim-for-dense-or-gated"])
def test_load_artifact_wrong_kind_names_both(tmp_path, have, want, have_word, want_word):
    path = atomic_save({"format": have, "state_dict": {}}, tmp_path / "a.pt")
    with pytest.raises(ArtifactError) as info:
        load_artifact(path, want)
    msg = str(info.value)
    assert have_word in msg and want_word in msg
    assert msg.index(have_word) < msg.index(want_word)  # "<file> is a slim ..., expected a gated ..."


@pytest.mark.parametrize("tag", ["chanprune.slim/2", "chanprune.future/1", "something-else", ""],
                         ids=["next-version", "future-kind", "foreign", "empty-tag"])
def test_load_artifact_unknown_format(tmp_path, tag):
    path = atomic_save({"format": tag}, tmp_path / "a.pt")
    with pytest.raises(ArtifactError) as info:
        load_artifact(path)
    msg = str(info.value)
    assert repr(tag) in msg
    assert all(k in msg for k in (DENSE_FORMAT, GATED_FORMAT, SLIM_FORMAT))  # what it can read
    with pytest.raises(ArtifactError, match="expected a slim model"):
        load_artifact(path, SLIM_FORMAT)


# ----------------------------------------------------------------------------- security
class _OpenMarker:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _SystemMarker:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _torch_save(obj, path):
    torch.save(obj, path)


def _pickle_dump(protocol):
    def dump(obj, path):
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=protocol)
    return dump


@pytest.mark.parametrize("payload", [_OpenMarker, _SystemMarker], ids=["open", "os.system"])
@pytest.mark.parametrize("writer,needle", [
    (_torch_save, "refused"),
    (_pickle_dump(2), "refused"),
    # torch's weights-only unpickler stops at protocol 4+ opcodes before it sees the global
    (_pickle_dump(pickle.HIGHEST_PROTOCOL), "refused|not a PyTorch file"),
], ids=["torch.save", "pickle-p2", "pickle-highest"])
@pytest.mark.parametrize("wrapped", [True, False], ids=["in-tagged-dict", "bare"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, payload, writer, needle, wrapped):
    marker = tmp_path / "pwned"
    evil = payload(marker)
    obj = {"format": SLIM_FORMAT, "state_dict": {"w": evil}} if wrapped else evil
    path = tmp_path / "evil.pt"
    writer(obj, path)
    assert not marker.exists()
    with pytest.raises(ArtifactError, match=needle):
        load_artifact(path, SLIM_FORMAT)
    assert not marker.exists()
    with pytest.raises(ArtifactError):
        load_state_dict_file(path)
    assert not marker.exists()
    with pytest.raises(ArtifactError):
        load_slim(path)
    assert not marker.exists()


# ----------------------------------------------------------------------------- atomicity
def _boom(*args, **kwargs):
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("fn", ["replace", "fsync"])
def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch, fn):
    path = atomic_save({"format": DENSE_FORMAT, "v": 1}, tmp_path / "a.pt")
    before = path.read_bytes()
    monkeypatch.setattr(artifacts.os, fn, _boom)
    with pytest.raises(ArtifactError, match="No space left"):
        atomic_save({"format": DENSE_FORMAT, "v": 2}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_artifact(path, DENSE_FORMAT)["v"] == 1
    assert tmp_files(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]


@pytest.mark.parametrize("fn", ["replace", "fsync"])
def test_failed_first_write_creates_nothing(tmp_path, monkeypatch, fn):
    monkeypatch.setattr(artifacts.os, fn, _boom)
    with pytest.raises(ArtifactError):
        atomic_write_text(tmp_path / "plan.json", "{}")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_cleans_up_and_propagates(tmp_path, monkeypatch):
    path = atomic_save({"format": DENSE_FORMAT, "v": 1}, tmp_path / "a.pt")

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(artifacts.os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):  # not swallowed, not turned into ArtifactError
        atomic_save({"format": DENSE_FORMAT, "v": 2}, path)
    monkeypatch.undo()
    assert load_artifact(path)["v"] == 1
    assert tmp_files(tmp_path) == []


def test_serialisation_failure_touches_nothing(tmp_path):
    path = atomic_save({"format": DENSE_FORMAT, "v": 1}, tmp_path / "a.pt")
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):  # Python's own error, unchanged
        atomic_save({"format": DENSE_FORMAT, "v": lambda: 2}, path)  # fails before any file is opened
    assert load_artifact(path)["v"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]


def test_write_into_missing_folder(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        atomic_save({"format": DENSE_FORMAT}, tmp_path / "no" / "such" / "a.pt")
    with pytest.raises(ArtifactError, match="does not exist"):
        atomic_write_text(tmp_path / "nope" / "plan.json", "{}")
    assert list(tmp_path.iterdir()) == []


def test_write_onto_a_folder(tmp_path):
    (tmp_path / "a.pt").mkdir()
    with pytest.raises(ArtifactError):
        atomic_save({"format": DENSE_FORMAT}, tmp_path / "a.pt")
    assert (tmp_path / "a.pt").is_dir() and tmp_files(tmp_path) == []


# ----------------------------------------------------------------------------- slim models
SHAPE = [1, 3, 32, 32]


@pytest.fixture(scope="module")
def resnet20_slim():
    torch.manual_seed(0)
    model = perturb_batchnorm_(build_model("resnet20", num_classes=10))
    x = torch.randn(*SHAPE)
    graph = find_groups(model, x)
    zero = collapsible_groups(model, graph, x)
    assert len(zero) == 1
    plan = random_plan(graph, keep=0.5, seed=0, zero=(zero[0],), arch="resnet20", input_shape=SHAPE)
    slim = apply_plan_(copy.deepcopy(model), plan, x, graph=graph).eval()
    return model, slim, plan


def test_slim_round_trip_is_bit_identical(tmp_path, resnet20_slim):
    model, slim, plan = resnet20_slim
    assert plan.zero_width_groups  # a group removed whole: ZeroChannels/ConstantOutput must survive
    path = save_slim(tmp_path / "slim.pt", slim, arch="resnet20", plan=plan, input_shape=SHAPE,
                     build_kwargs={"num_classes": 10}, seed=7)
    loaded, obj = load_slim(path)
    assert not loaded.training
    assert obj["format"] == SLIM_FORMAT and obj["arch"] == "resnet20" and obj["input_shape"] == SHAPE
    assert PrunePlan.from_dict(obj["plan"]) == PrunePlan.from_dict(plan.to_dict())
    prov = obj["provenance"]
    assert prov["chanprune"] == chanprune.__version__ and prov["torch"] == torch.__version__
    assert prov["seed"] == 7
    x = torch.randn(3, *SHAPE[1:])
    with torch.no_grad():
        assert torch.equal(loaded(x), slim(x))
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in slim.parameters())
    assert sum(p.numel() for p in slim.parameters()) < sum(p.numel() for p in model.parameters())
    same, _ = load_slim(path, arch="resnet20")  # naming the zoo arch again is allowed
    with torch.no_grad():
        assert torch.equal(same(x), slim(x))
    with pytest.raises(ArtifactError, match="resnet32"):
        load_slim(path, arch="resnet32")


def test_provenance_holds_plain_values_that_load_safely(tmp_path):
    prov = artifacts.provenance(seed=3)
    assert prov["chanprune"] == chanprune.__version__ and prov["torch"] == torch.__version__
    # plain str, not torch's TorchVersion subclass, which weights_only=True refuses to unpickle
    assert type(prov["chanprune"]) is str and type(prov["torch"]) is str
    assert prov["seed"] == 3
    path = atomic_save({"format": DENSE_FORMAT, "provenance": prov}, tmp_path / "p.pt")
    assert load_artifact(path, DENSE_FORMAT)["provenance"] == prov


def test_load_slim_rejects_weights_that_do_not_fit(tmp_path, resnet20_slim):
    model, _, plan = resnet20_slim
    path = save_slim(tmp_path / "slim.pt", model, arch="resnet20", plan=plan, input_shape=SHAPE,
                     build_kwargs={"num_classes": 10})  # dense weights under a plan that cuts
    with pytest.raises(ArtifactError, match="do not fit"):
        load_slim(path)


def test_load_slim_of_other_kinds(tmp_path):
    path = atomic_save({"format": DENSE_FORMAT, "state_dict": {}}, tmp_path / "dense.pt")
    with pytest.raises(ArtifactError, match="slim") as info:
        load_slim(path)
    assert "dense" in str(info.value)


def _user_slim(tmp_path):
    model = perturb_batchnorm_(nets.chain()).eval()
    x = torch.randn(1, 3, 16, 16)
    graph = find_groups(model, x)
    plan = random_plan(graph, keep=0.5, seed=1)
    slim = apply_plan_(copy.deepcopy(model), plan, x, graph=graph).eval()
    path = save_slim(tmp_path / "user.pt", slim, arch="tests.nets:chain", plan=plan, input_shape=[1, 3, 16, 16],
                     build_kwargs={"num_classes": 5})
    return slim, path


def test_load_slim_user_arch_needs_explicit_arch(tmp_path):
    slim, path = _user_slim(tmp_path)
    with pytest.raises(ArtifactError, match="--arch") as info:
        load_slim(path)
    assert "tests.nets:chain" in str(info.value)
    with pytest.raises(ArtifactError):
        load_slim(path, arch="tests.nets:hidden_mix")  # another user arch is not this one
    loaded, obj = load_slim(path, arch="tests.nets:chain")
    assert obj["arch"] == "tests.nets:chain"
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), slim(x))


def test_load_slim_never_imports_user_code_by_default(tmp_path):
    mod = "no_such_module_xyz"
    assert mod not in sys.modules
    path = atomic_save({"format": SLIM_FORMAT, "arch": f"{mod}:make", "build_kwargs": {},
                        "input_shape": [1, 3, 16, 16], "plan": PrunePlan([]).to_dict(), "state_dict": {}},
                       tmp_path / "user.pt")
    with pytest.raises(ArtifactError, match="--arch") as info:
        load_slim(path)
    assert type(info.value) is ArtifactError
    assert not isinstance(info.value, (ModuleNotFoundError, UnknownArchError))
    assert mod not in sys.modules
    # only when the caller names it again does chanprune try to import it
    with pytest.raises(UnknownArchError, match=mod):
        load_slim(path, arch=f"{mod}:make")


# ----------------------------------------------------------------------------- state_dict files
def _state():
    return nets.chain().state_dict()


def _same_state(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_load_state_dict_file_plain(tmp_path):
    sd = _state()
    torch.save(sd, tmp_path / "plain.pt")
    back = load_state_dict_file(tmp_path / "plain.pt")
    assert _same_state(back, sd)
    nets.chain().load_state_dict(back, strict=True)


@pytest.mark.parametrize("fmt", [DENSE_FORMAT, GATED_FORMAT], ids=["dense", "gated"])
def test_load_state_dict_file_checkpoint(tmp_path, fmt):
    sd = _state()
    atomic_save({"format": fmt, "state_dict": sd, "epoch": 3}, tmp_path / "ckpt.pt")
    assert _same_state(load_state_dict_file(tmp_path / "ckpt.pt"), sd)


def test_load_state_dict_file_rejects_slim(tmp_path):
    path = atomic_save({"format": SLIM_FORMAT, "arch": "tests.nets:chain", "state_dict": _state()},
                       tmp_path / "slim.pt")
    with pytest.raises(ArtifactError, match="slim model") as info:
        load_state_dict_file(path)
    assert "dense weights" in str(info.value)


@pytest.mark.parametrize("obj", [
    pytest.param({"format": DENSE_FORMAT}, id="dense-without-state_dict"),
    pytest.param({"format": DENSE_FORMAT, "state_dict": [torch.zeros(1)]}, id="state_dict-list"),
    pytest.param({"w": torch.zeros(1), "epoch": 3}, id="non-tensor-values"),
    pytest.param(torch.zeros(3), id="bare-tensor"),
    pytest.param({"format": "chanprune.future/1", "state_dict": {}}, id="unknown-format"),
])
def test_load_state_dict_file_rejects_non_state_dicts(tmp_path, obj):
    torch.save(obj, tmp_path / "x.pt")
    with pytest.raises(ArtifactError):
        load_state_dict_file(tmp_path / "x.pt")
