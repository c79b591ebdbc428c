"""Bad input on every command: one clear line, exit code 2, no traceback, nothing overwritten.
And faults: a NaN loss stops with the last good checkpoint kept."""
import json
import os

import pytest
import torch
from click.testing import CliRunner

from chanprune.learn import TrainConfig, TrainingError, fit
from chanprune_cli.main import main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("files")
    r = invoke("train", "--arch", "resnet20", "--data", "digits", "--epochs", 1, "--out", d / "dense")
    assert r.exit_code == 0, r.output
    r = invoke("learn", "--arch", "resnet20", "--data", "digits", "--target", 0.5, "--epochs", 1, "--out", d / "gated")
    assert r.exit_code == 0, r.output
    r = invoke("export", d / "gated" / "model.pt")
    assert r.exit_code == 0, r.output
    invoke("train", "--arch", "resnet32", "--data", "digits", "--epochs", 1, "--out", d / "dense32")
    (d / "random.pt").write_bytes(os.urandom(300))
    (d / "plan.pt").write_text(json.dumps({"format": "chanprune.gated/1"}))
    (d / "empty.pt").write_bytes(b"")
    (d / "half.pt").write_bytes((d / "gated" / "model.pt").read_bytes()[:5000])
    (d / "fake.onnx").write_text("not onnx")
    (d / "baseline.json").write_text("{not json")
    (d / "a_file").write_text("x")
    return d


RUN = ["--data", "digits", "--epochs", "1"]
# (id, args, words the one error line must contain); {d} is the fixture folder
CASES = [
    ("train-unknown-arch", ["train", "--arch", "nope", *RUN, "--out", "{d}/o1"], "unknown arch"),
    ("train-unknown-data", ["train", "--arch", "resnet20", "--data", "nope", "--out", "{d}/o2"], "unknown data set"),
    ("train-epochs-0", ["train", "--arch", "resnet20", "--data", "digits", "--epochs", "0", "--out", "{d}/o3"], "epochs"),
    ("train-epochs-negative", ["train", "--arch", "resnet20", "--data", "digits", "--epochs", "-2", "--out", "{d}/o3"], "epochs"),
    ("train-batch-0", ["train", "--arch", "resnet20", *RUN, "--batch-size", "0", "--out", "{d}/o4"], "batch-size"),
    ("train-lr-0", ["train", "--arch", "resnet20", *RUN, "--lr", "0", "--out", "{d}/o5"], "lr"),
    ("train-missing-imagefolder", ["train", "--arch", "resnet20", "--data", "imagefolder:{d}/none", "--out", "{d}/o6"], "no such folder"),
    ("train-empty-data-dir", ["train", "--arch", "resnet20", "--data", "fashion-mnist:{d}/dense", "--out", "{d}/o7"], "no train-images"),
    ("train-out-is-a-file", ["train", "--arch", "resnet20", *RUN, "--out", "{d}/a_file"], "--out"),
    ("train-resume-nothing", ["train", "--arch", "resnet20", *RUN, "--out", "{d}/o8", "--resume"], "does not exist"),
    ("train-would-overwrite", ["train", "--arch", "resnet20", *RUN, "--out", "{d}/dense"], "--resume"),
    ("train-no-gpu", ["train", "--arch", "resnet20", *RUN, "--device", "cuda", "--out", "{d}/o9"], "cuda"),
    ("train-weights-random", ["train", "--arch", "resnet20", *RUN, "--weights", "{d}/random.pt", "--out", "{d}/o10"], "not a"),
    ("train-bad-factory", ["train", "--arch", "tests.nets:not_a_model", *RUN, "--out", "{d}/o11"], "not a torch.nn.Module"),
    ("learn-target-0", ["learn", "--arch", "resnet20", *RUN, "--target", "0", "--out", "{d}/l1"], "target"),
    ("learn-target-1.5", ["learn", "--arch", "resnet20", *RUN, "--target", "1.5", "--out", "{d}/l2"], "target"),
    ("learn-target-text", ["learn", "--arch", "resnet20", *RUN, "--target", "half", "--out", "{d}/l3"], "target"),
    ("learn-tau-1.5", ["learn", "--arch", "resnet20", *RUN, "--target", "0.5", "--tau", "1.5", "--out", "{d}/l4"], "tau"),
    ("learn-budget-bogus", ["learn", "--arch", "resnet20", *RUN, "--target", "0.5", "--budget", "x", "--out", "{d}/l5"], "budget"),
    ("learn-gate-bogus", ["learn", "--arch", "resnet20", *RUN, "--target", "0.5", "--gate", "x", "--out", "{d}/l6"], "--gate"),
    ("learn-weights-slim", ["learn", "--arch", "resnet20", *RUN, "--target", "0.5", "--weights", "{d}/gated/slim.pt", "--out", "{d}/l6"], "slim model"),
    ("learn-weights-other-arch", ["learn", "--arch", "resnet20", *RUN, "--target", "0.5", "--weights", "{d}/dense32/model.pt", "--out", "{d}/l7"], "resnet32"),
    ("learn-weights-json", ["learn", "--arch", "resnet20", *RUN, "--target", "0.5", "--weights", "{d}/plan.pt", "--out", "{d}/l8"], "not a"),
    ("learn-ignore-missing", ["learn", "--arch", "resnet20", *RUN, "--target", "0.5", "--ignore", "no.layer", "--out", "{d}/l9"], "no module"),
    ("learn-unreachable-target", ["learn", "--arch", "resnet20", *RUN, "--target", "0.05", "--ignore", "layer3.0.conv1",
                                  "--ignore", "layer3.1.conv1", "--ignore", "layer3.2.conv1", "--ignore", "layer3.0.shortcut.0",
                                  "--out", "{d}/l10"], "below what"),
    ("learn-min-keep-negative", ["learn", "--arch", "resnet20", *RUN, "--target", "0.5", "--min-keep", "-1", "--out", "{d}/l11"], "min-keep"),
    ("inspect-missing", ["inspect", "{d}/none.pt"], "no such file"),
    ("inspect-slim", ["inspect", "{d}/gated/slim.pt"], "slim model"),
    ("inspect-dense", ["inspect", "{d}/dense/model.pt"], "dense checkpoint"),
    ("inspect-random", ["inspect", "{d}/random.pt"], "not a"),
    ("inspect-empty", ["inspect", "{d}/empty.pt"], "empty"),
    ("inspect-truncated", ["inspect", "{d}/half.pt"], "truncated"),
    ("inspect-json-named-pt", ["inspect", "{d}/plan.pt"], "not a"),
    ("inspect-tau", ["inspect", "{d}/gated/model.pt", "--tau", "2"], "tau"),
    ("export-dense-checkpoint", ["export", "{d}/dense/model.pt"], "expected a gated checkpoint"),
    ("export-round-to-0", ["export", "{d}/gated/model.pt", "--round-to", "0", "--out", "{d}/e1"], "round-to"),
    ("export-calibrate-without-data", ["export", "{d}/gated/model.pt", "--calibrate-bn", "5", "--out", "{d}/e2"], "--data"),
    ("export-bad-shape", ["export", "{d}/gated/model.pt", "--input-shape", "1,3,a", "--out", "{d}/e3"], "input-shape"),
    ("export-other-channels", ["export", "{d}/gated/model.pt", "--input-shape", "1,1,8,8", "--out", "{d}/e4"], "channels"),
    ("export-opset", ["export", "{d}/gated/model.pt", "--opset", "3", "--out", "{d}/e5"], "opset"),
    ("eval-missing", ["eval", "{d}/none.onnx", "--data", "digits"], "no such file"),
    ("eval-fake-onnx", ["eval", "{d}/fake.onnx", "--data", "digits"], "not a valid ONNX"),
    ("eval-bad-data", ["eval", "{d}/gated/model.onnx", "--data", "nope"], "unknown data set"),
    ("eval-batch-0", ["eval", "{d}/gated/model.onnx", "--data", "digits", "--batch-size", "0"], "batch-size"),
    ("bench-missing", ["bench", "{d}/none.onnx"], "no such file"),
    ("bench-batch-text", ["bench", "{d}/gated/model.onnx", "--batch-size", "a"], "batch-size"),
    ("bench-batch-0", ["bench", "{d}/gated/model.onnx", "--batch-size", "0"], "batch"),
    ("bench-backend", ["bench", "{d}/gated/model.onnx", "--backend", "tpu"], "unknown backend"),
    ("bench-baseline-without-vs", ["bench", "{d}/gated/model.onnx", "--baseline", "{d}/baseline.json"], "--vs"),
    ("bench-baseline-garbage", ["bench", "{d}/gated/model.onnx", "--vs", "{d}/gated/model.onnx", "--rounds", "3",
                                "--baseline", "{d}/baseline.json"], "not a readable JSON"),
    ("bench-threads-0", ["bench", "{d}/gated/model.onnx", "--threads", "0"], "threads"),
    ("bench-torch-on-onnx", ["bench", "{d}/gated/model.onnx", "--backend", "torch-cpu"], "need a .pt"),
    ("report-missing", ["report", "{d}/none"], "not a run folder"),
    ("report-not-a-run", ["report", "{d}/e1"], "not a run folder"),
]


@pytest.mark.parametrize("args,needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(files, args, needle):
    before = {p: p.stat().st_mtime_ns for p in files.rglob("*") if p.is_file()}
    r = invoke(*[a.replace("{d}", str(files)) for a in args])
    assert r.exit_code == 2, f"exit {r.exit_code}: {r.output}{r.exception!r}"
    assert "Traceback" not in r.output
    errors = [line for line in r.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, r.output
    assert needle.lower() in r.output.lower(), r.output
    after = {p: p.stat().st_mtime_ns for p in files.rglob("*") if p.is_file() and p in before}
    assert after == {p: t for p, t in before.items() if p in after}, "a file was overwritten"


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    from chanprune.checkpoint import DenseCheckpoint
    from chanprune.checkpointer import Checkpointer
    from chanprune.data import load_data
    from tests.nets import Chain

    data = load_data("digits", channels=3)
    model = Chain(num_classes=10)
    calls = {"n": 0}

    def poison(module, args, out):
        calls["n"] += 1
        return out * float("nan") if calls["n"] > 30 else out

    model.fc.register_forward_hook(poison)
    with pytest.raises(TrainingError, match="nan"):
        fit(model, data.train, data.val, TrainConfig(epochs=5, batch_size=64),
            checkpointer=Checkpointer(tmp_path, DenseCheckpoint("chain", {}, [1, 3, 8, 8], {})))
    ckpt = torch.load(tmp_path / "model.pt", weights_only=True)
    assert ckpt["state"]["epoch"] == 1  # the epoch before the NaN, intact
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.dtype.is_floating_point)
