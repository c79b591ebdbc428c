"""Run folders: the defaults a first run needs no manual for, and `RUN` standing for `RUN/model.pt`."""
import json

import pytest
from click.testing import CliRunner

from chanprune.errors import ChanpruneError
from chanprune.runs import default_run_dir, prepare_run_dir
from chanprune_cli.main import main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_default_run_dir_never_reuses_a_run(tmp_path):
    assert default_run_dir("learn", "resnet20-t0.5", root=tmp_path) == tmp_path / "learn" / "resnet20-t0.5"
    (tmp_path / "learn" / "resnet20-t0.5").mkdir(parents=True)
    assert default_run_dir("learn", "resnet20-t0.5", root=tmp_path).name == "resnet20-t0.5-2"
    (tmp_path / "learn" / "resnet20-t0.5-2").mkdir()
    (tmp_path / "learn" / "resnet20-t0.5-10").mkdir()
    assert default_run_dir("learn", "resnet20-t0.5", root=tmp_path).name == "resnet20-t0.5-11"
    # --resume takes the newest of them
    assert default_run_dir("learn", "resnet20-t0.5", resume=True, root=tmp_path).name == "resnet20-t0.5-10"
    assert default_run_dir("train", "mod:fn", root=tmp_path).name == "mod_fn"  # a user arch makes a safe name
    with pytest.raises(ChanpruneError, match="no run to continue"):
        default_run_dir("train", "resnet20", resume=True, root=tmp_path)


def test_prepare_run_dir_is_the_librarys_rule(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.pt").write_bytes(b"keep me")
    with pytest.raises(ChanpruneError, match="--resume"):
        prepare_run_dir(tmp_path / "run", resume=False)
    assert (tmp_path / "run" / "model.pt").read_bytes() == b"keep me"
    with pytest.raises(ChanpruneError, match="does not exist"):
        prepare_run_dir(tmp_path / "new", resume=True)


def test_learn_and_train_without_out_write_under_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = ["--data", "digits", "--epochs", 1, "--batch-size", 64, "--limit", 256, "--json"]
    first = invoke("learn", "--arch", "resnet20", "--target", 0.5, *common)
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["run"] == "runs/learn/resnet20-t0.5"
    second = invoke("learn", "--arch", "resnet20", "--target", 0.5, *common)
    assert json.loads(second.stdout)["run"] == "runs/learn/resnet20-t0.5-2"
    assert (tmp_path / "runs" / "learn" / "resnet20-t0.5" / "model.pt").is_file()
    trained = invoke("train", "--arch", "resnet20", *common)
    assert trained.exit_code == 0, trained.output
    assert json.loads(trained.stdout)["run"] == "runs/train/resnet20"
    # RUN stands for RUN/model.pt
    run = tmp_path / "runs" / "learn" / "resnet20-t0.5"
    exported = invoke("export", run, "--json")
    assert exported.exit_code == 0, exported.output
    assert json.loads(exported.stdout)["source"] == str(run / "model.pt")
    assert (run / "model.onnx").is_file()
    assert invoke("inspect", run, "--json").exit_code == 0
    assert json.loads(invoke("eval", run, "--data", "digits", "--json").stdout)["kind"] == "gated"
    for tool in ("onnxslim", "onnxsim"):  # simplified graphs keep parity (checked on the file written)
        simple = invoke("export", run, "--simplify", tool, "--out", run / tool, "--json")
        assert simple.exit_code == 0, simple.output
        res = json.loads(simple.stdout)
        assert res["exact"] and res["simplified"]["tool"] == tool
        assert res["simplified"]["nodes_after"] <= res["simplified"]["nodes_before"]
    # report names each model by its path in the run
    assert invoke("export", run, "--round-to", 4, "--out", run / "round4").exit_code in (0, 1)
    for onnx in (run / "model.onnx", run / "round4" / "model.onnx"):
        assert invoke("eval", onnx, "--data", "digits").exit_code == 0
    summary = json.loads(invoke("report", run, "--json").stdout)["summary"]
    assert "accuracy of model.onnx" in summary and "accuracy of round4/model.onnx" in summary
    empty = tmp_path / "empty"
    empty.mkdir()
    r = invoke("export", empty)
    assert r.exit_code == 2 and "not a run folder" in r.output


@pytest.mark.parametrize("command", ["train", "learn"])
def test_missing_data_lists_the_data_sets_and_how_to_get_fashion_mnist(tmp_path, command):
    args = ["--arch", "resnet20", "--out", tmp_path / "r"] + (["--target", 0.5] if command == "learn" else [])
    r = invoke(command, *args)
    assert r.exit_code == 2
    assert "--data" in r.output and "digits" in r.output and "imagefolder:PATH" in r.output
    assert "apt-get install dataset-fashion-mnist" in r.output
    assert not (tmp_path / "r").exists()


def test_the_shipped_baseline_loads_for_eval_and_as_weights():
    """examples/fmnist_resnet20_baseline.pt keeps a summary of its training, not the optimizer."""
    from pathlib import Path

    from chanprune.checkpoint import DenseCheckpoint
    from chanprune.load import load_dense

    path = Path(__file__).resolve().parents[1] / "examples" / "fmnist_resnet20_baseline.pt"
    ckpt = DenseCheckpoint.load(path)
    assert ckpt.arch == "resnet20" and ckpt.loop is None
    model, _ = load_dense(path)
    assert sum(p.numel() for p in model.parameters()) == 272474


def test_the_same_seed_trains_the_same_weights(tmp_path):
    """--seed covers the random initialisation too: two runs from scratch are bitwise equal (same
    machine, same threads); another seed is not."""
    import torch

    def weights(seed, name):
        torch.seed()  # as a fresh process would: the global generator anywhere (conftest seeds it once)
        r = CliRunner().invoke(main, ["train", "--arch", "resnet20", "--data", "digits", "--epochs", "1", "--limit",
                                      "300", "--batch-size", "64", "--seed", str(seed), "--out", str(tmp_path / name)])
        assert r.exit_code == 0, r.output
        return torch.load(tmp_path / name / "model.pt", weights_only=True)["state_dict"]

    a, b, c = weights(0, "a"), weights(0, "b"), weights(1, "c")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
