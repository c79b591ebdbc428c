"""`timm:NAME` archs: routing, timm's own arguments, weights, exactness, and a run end to end.

Nothing here downloads: every timm model is built with random weights, and the pretrained path
(`--weights DEFAULT`) is checked by watching what is asked of `timm.create_model`.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm  # the [dev] extra installs it: a missing timm fails here, it is never skipped
import torch
from click.testing import CliRunner

from chanprune import _timm, check as check_mod
from chanprune.check import check_arch
from chanprune.errors import ArtifactError, UnknownArchError
from chanprune.zoo import build_model, provider_for, saved_arch
from chanprune_cli.main import main

REPO = Path(__file__).resolve().parents[1]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def ok(*args):
    r = invoke(*args)
    assert r.exit_code == 0, r.output + repr(r.exception)
    return r


@pytest.fixture
def create_calls(monkeypatch):
    """Record what `timm.create_model` is asked; the model is still built by timm, at random init."""
    calls = []
    real = timm.create_model

    def spy(name, pretrained=False, **kwargs):
        calls.append({"name": name, "pretrained": pretrained, **kwargs})
        return real(name, pretrained=False, **kwargs)  # never download, whatever was asked

    monkeypatch.setattr(timm, "create_model", spy)
    return calls


# ----------------------------------------------------------------------------- the provider
def test_timm_builds_with_its_own_arguments(create_calls):
    m = build_model("timm:resnet18", num_classes=7, in_channels=1)
    assert provider_for("timm:resnet18").name == "timm" and provider_for("timm:resnet18").trusted
    assert create_calls == [{"name": "resnet18", "pretrained": False, "num_classes": 7, "in_chans": 1}]
    assert isinstance(m, timm.models.ResNet) and not m.training
    assert m.conv1.in_channels == 1 and m.fc.out_features == 7  # timm's stem and head, not our surgery
    assert m(torch.zeros(1, 1, 32, 32)).shape == (1, 7)


def test_default_weights_ask_timm_for_pretrained(create_calls):
    """The documented user path: DEFAULT -> timm's pretrained weights (here not downloaded)."""
    build_model("timm:resnet10t.c3_in1k", num_classes=10, weights="DEFAULT")
    assert create_calls[-1]["pretrained"] is True and create_calls[-1]["name"] == "resnet10t.c3_in1k"
    assert create_calls[-1]["num_classes"] == 10


@pytest.mark.parametrize("arch,weights,match", [
    ("timm:resnet18x", None, r"timm:resnet18.*list_models"),
    ("timm:", None, "timm model name"),
    ("timm:hf-hub:timm/resnet18.a1_in1k", None, "not supported"),
    ("timm:resnet18", "IMAGENET1K_V1", "DEFAULT"),
], ids=["unknown-name", "empty", "hub-source", "named-weights"])
def test_bad_timm_names_say_what_to_do(arch, weights, match):
    with pytest.raises(UnknownArchError, match=match):
        build_model(arch, weights=weights)


def test_weights_file_loads_strictly(tmp_path):
    src = build_model("timm:resnet10t", num_classes=10)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    m = build_model("timm:resnet10t", num_classes=10, weights=str(tmp_path / "w.pt"))
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), m.state_dict().values()))
    with pytest.raises(ArtifactError, match="does not fit"):
        build_model("timm:resnet10t", num_classes=5, weights=str(tmp_path / "w.pt"))


def test_files_naming_a_timm_arch_are_trusted():
    assert saved_arch({"arch": "timm:resnet18"}, "m.pt", None) == "timm:resnet18"


def test_missing_timm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    with pytest.raises(UnknownArchError, match=r"pip install chanprune\[timm\]"):
        build_model("timm:resnet18")
    r = invoke("check", "--arch", "timm:resnet18")
    assert r.exit_code == 2 and "chanprune[timm]" in r.output and "Traceback" not in r.output


def test_importing_chanprune_does_not_import_timm():
    out = subprocess.run([sys.executable, "-c", "import sys, chanprune, chanprune.check; print('timm' in sys.modules)"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------- exactness
FAST = ["resnet10t", "tf_mobilenetv3_small_075"]


@pytest.mark.parametrize("name", FAST)
def test_small_timm_models_cut_exactly(name):
    """resnet10t (deep stem, avg-pool shortcut) and a tf_ MobileNetV3 (TF "same" padding through
    Conv2dSame, hard-swish, squeeze-excite, BatchNormAct2d) cut exactly, export exactly, and the
    cost model predicts fvcore's count of the slim model."""
    r = check_arch(f"timm:{name}", input_shape=[1, 3, 32, 32], num_classes=10)
    assert r.exact, r
    assert r.unsupported == [] and r.gated_flops_fraction >= 0.99
    assert r.zero_width_groups == 1 and r.flops_slim < r.flops_dense
    assert r.flops_predicted == pytest.approx(r.flops_slim, rel=5e-3)


def test_tf_variants_use_conv2d_same():
    m = build_model("timm:tf_mobilenetv3_small_075", num_classes=10)
    assert any(type(x).__name__ == "Conv2dSame" for x in m.modules())


def test_a_model_that_is_not_exact_names_the_layer():
    """GhostNet is not exact (see the README's timm table): never a silent pass, and the report
    names the first layer where slim and gated part."""
    r = check_arch("timm:ghostnet_050", input_shape=[1, 3, 32, 32], num_classes=10, onnx=False)
    assert not r.exact and not r.cut_exact
    assert r.diverges_at["layer"].startswith("blocks.") and r.diverges_at["reason"]


# ----------------------------------------------------------------------------- check --list
@pytest.fixture
def tiny_list(monkeypatch):
    monkeypatch.setitem(check_mod.CHECK_LISTS, "tiny", lambda: [("chain", "tests.nets:chain"),
                                                                  ("mix", "tests.nets:hidden_mix"),
                                                                  ("gone", "no_such_module_zz:make")])


def test_check_list_reports_every_model(tiny_list):
    r = invoke("check", "--list", "tiny", "--input-shape", "1,3,16,16", "--zero-width", "0", "--json")
    assert r.exit_code == 1, r.output
    out = json.loads(r.output)
    rows = {row["family"]: row for row in out["results"]}
    assert out["total"] == 3 and out["exact"] == 1 and "torch" in out["versions"]
    assert rows["chain"]["verdict"] == "exact" and rows["chain"]["why"] is None
    assert rows["mix"]["verdict"] == "not exact" and rows["mix"]["why"].startswith("b.0 (Conv2d)")
    assert rows["mix"]["report"]["diverges_at"]["after"] == "a"
    assert rows["gone"]["verdict"] == "error" and "cannot import" in rows["gone"]["why"]
    human = invoke("check", "--list", "tiny", "--input-shape", "1,3,16,16", "--zero-width", "0")
    assert human.exit_code == 1
    assert "| mix | tests.nets:hidden_mix | NOT EXACT |" in human.output and "1/3 exact" in human.output


def test_check_list_times_out_and_says_where(tiny_list, monkeypatch):
    import time

    def slow_groups(*args, **kwargs):
        time.sleep(5)

    monkeypatch.setattr(check_mod, "find_groups", slow_groups)
    rows = list(check_mod.check_list("tiny", input_shape=[1, 3, 16, 16], timeout=0.2))
    assert rows[0].verdict == "timeout" and "check_model" in rows[0].why and rows[0].seconds < 3


@pytest.mark.parametrize("args,match", [
    (["--list", "nope"], "timm"), (["--list", "timm", "--arch", "resnet20"], "one of"), ([], "one of"),
    (["--list", "timm", "--weights", "DEFAULT"], "random weights"),
])
def test_check_list_bad_input(args, match):
    r = invoke("check", *args)
    assert r.exit_code == 2 and match in r.output and "Traceback" not in r.output


# The sweep the README's timm table comes from (`make test-slow`, or `chanprune check --list timm`).
# Models known not to be exact, and why (see the README); every other model of the list must be.
NOT_EXACT = {
    "timm:ghostnet_050": "not exact",  # cat([x1, depthwise(x1)]) on a residual path
    "timm:ghostnetv2_100": "not exact",
    "timm:cs3darknet_s": "untraceable",  # torch-pruning's concat index mapping after x.split
    "timm:cs3darknet_focus_s": "untraceable",
    "timm:rexnet_100": "timeout",  # torch-pruning's grouping does not finish
}


@pytest.mark.slow
@pytest.mark.parametrize("family,arch", [(f, f"timm:{n}") for f, names in _timm.FAMILIES.items() for n in names],
                         ids=[n for names in _timm.FAMILIES.values() for n in names])
def test_timm_family_sweep(family, arch, monkeypatch):
    monkeypatch.setitem(check_mod.CHECK_LISTS, "one", lambda: [(family, arch)])
    (row,) = check_mod.check_list("one", input_shape=[1, 3, 64, 64], timeout=180)
    assert row.verdict == NOT_EXACT.get(arch, "exact"), row
    if row.verdict != "exact":
        assert row.why  # reported with its reason, never silently skipped
    else:
        assert row.report.flops_predicted == pytest.approx(row.report.flops_slim, rel=5e-3)
        assert row.report.zero_width_groups >= (0 if family == "repvgg" else 1)


# ----------------------------------------------------------------------------- end to end
def test_timm_learn_export_eval_bench(tmp_path):
    """A timm model through the whole pipeline on 8x8 digits at 32 px, like any other arch."""
    run = tmp_path / "run"
    res = json.loads(ok("learn", "--arch", "timm:mobilenetv3_small_050", "--data", "digits", "--image-size", 32,
                        "--target", 0.5, "--epochs", 1, "--batch-size", 64, "--limit", 256, "--lr", 0.05,
                        "--out", run, "--json").stdout)
    assert res["cost_ratio"] < 1.0
    exp = json.loads(ok("export", run / "model.pt", "--onnx", "--json").stdout)
    assert exp["exact"] and exp["flops_slim"] < exp["flops_dense"]
    assert exp["flops_slim"] == pytest.approx(exp["flops_predicted"], rel=5e-3)
    accs = [json.loads(ok("eval", m, "--data", "digits", "--json").stdout)["accuracy"]
            for m in (run / "model.pt", exp["slim"], exp["onnx"])]
    assert accs[0] == accs[1] == accs[2]
    bench = json.loads(ok("bench", exp["onnx"], "--batch-size", 1, "--rounds", 3, "--json").stdout)
    assert bench["results"][0]["p50_ms"] > 0
