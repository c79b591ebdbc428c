"""export, eval, bench and report on a run learned on digits."""
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from chanprune_cli.main import main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def ok(*args):
    r = invoke(*args)
    assert r.exit_code == 0, r.output + repr(r.exception)
    return r


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("deploy") / "run"
    ok("learn", "--arch", "resnet20", "--data", "digits", "--target", 0.5, "--epochs", 4, "--batch-size", 64,
       "--out", out)
    return out


@pytest.fixture(scope="module")
def exported(run):
    res = json.loads(ok("export", run / "model.pt", "--onnx", "--json").stdout)
    dense = json.loads(ok("export", run / "model.pt", "--dense", "--json").stdout)
    return res, dense


def test_export_writes_exact_artifacts(run, exported):
    res, dense = exported
    for key in ("onnx", "slim", "plan"):
        assert Path(res[key]).is_file()
    assert (run / "export.json").is_file()
    assert res["exact"] and res["max_abs_diff"] < 1e-4
    assert res["flops_slim"] < res["flops_dense"] and res["params_slim"] < res["params_dense"]
    assert res["flops_slim"] == pytest.approx(res["flops_predicted"], rel=5e-3)
    assert "polarized" in res["polarization"]
    assert dense["flops_slim"] == dense["flops_dense"] and Path(dense["onnx"]).parent.name == "dense"
    import onnx

    onnx.checker.check_model(onnx.load(res["onnx"]))


def test_gated_slim_and_onnx_give_the_same_accuracy(run, exported):
    res, _ = exported
    accs = [json.loads(ok("eval", m, "--data", "digits", "--json").stdout)["accuracy"]
            for m in (run / "model.pt", res["slim"], res["onnx"])]
    assert accs[0] == accs[1] == accs[2]
    assert Path(str(res["onnx"]) + ".eval.json").is_file()


def test_parity_failure_exits_1(run, tmp_path):
    r = invoke("export", run / "model.pt", "--out", tmp_path / "strict", "--atol", 0, "--rtol", 0)
    assert r.exit_code == 1, r.output
    assert "NOT EXACT" in r.output


def test_round_to_and_deploy_resolution(run, tmp_path):
    res = json.loads(ok("export", run / "model.pt", "--round-to", 8, "--input-shape", "1,3,32,32",
                        "--out", tmp_path / "r8", "--json").stdout)
    plan = json.loads(Path(res["plan"]).read_text())
    assert all(len(g["keep"]) % 8 == 0 or len(g["keep"]) == g["size"] for g in plan["groups"])
    assert res["exact"] and res["input_shape"] == [1, 3, 32, 32]
    unrounded = json.loads(ok("export", run / "model.pt", "--input-shape", "1,3,32,32", "--out", tmp_path / "r1",
                              "--json").stdout)
    assert res["flops_slim"] <= unrounded["flops_slim"] * 1.005  # rounding keeps the FLOPs target


def test_bench_speedup_and_the_regression_guard_can_trip(run, exported, tmp_path):
    res, dense = exported
    r = json.loads(ok("bench", res["onnx"], "--vs", dense["onnx"], "--batch-size", "1,8", "--rounds", 3,
                      "--json").stdout)
    assert {row["batch"] for row in r["results"]} == {1, 8}
    assert all(row["speedup"] > 0 and row["p50_ms"] > 0 for row in r["results"])
    assert r["flops"] == res["flops_slim"] and Path(res["onnx"] + ".bench.json").is_file()
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps({"speedups": {"ort-cpu/b1": 3.0}}))
    # the "slim" model is the unpruned one: a speedup near 1x must trip a 3x baseline
    trip = invoke("bench", dense["onnx"], "--vs", dense["onnx"], "--rounds", 3, "--baseline", baseline,
                  "--max-regression", 0.2)
    assert trip.exit_code == 1 and "REGRESSION" in trip.output
    torch_r = json.loads(ok("bench", res["slim"], "--rounds", 3, "--json").stdout)
    backends = [row["backend"] for row in torch_r["results"]]
    assert backends[0] == "torch-cpu"
    if torch.cuda.is_available():  # the GPU twin runs where it really is there
        assert "torch-cuda" in backends and "torch-cuda" not in torch_r["not_available"]
    else:  # and otherwise says why not
        assert "torch-cuda" not in backends and "CUDA" in torch_r["not_available"]["torch-cuda"]


def test_report_writes_images_and_numbers(run, exported):
    res, _ = exported
    ok("eval", run / "model.pt", "--data", "digits")
    r = json.loads(ok("report", run, "--json").stdout)
    for key in ("channels", "polarization", "curves"):
        with Image.open(r["files"][key]) as im:
            assert im.format == "PNG" and im.size[0] > 100
    summary = Path(r["files"]["summary"]).read_text()
    assert f"{res['flops_slim']:,}" in summary and "accuracy of model.pt" in summary


@pytest.mark.parametrize("args,needle", [
    (["export", "/no/such/model.pt"], "no such file"),
    (["eval", "/no/such/model.onnx", "--data", "digits"], "no such file"),
    (["bench", "/no/such/model.onnx"], "no such file"),
    (["report", "/no/such/run"], "not a run folder"),
    (["bench", "x.onnx", "--batch-size", "a,b"], "comma-separated"),
])
def test_bad_input_exit_2(args, needle):
    r = invoke(*args)
    assert r.exit_code == 2, r.output
    assert needle in r.output and "Traceback" not in r.output


def test_eval_of_a_non_onnx_file(tmp_path):
    bad = tmp_path / "m.onnx"
    bad.write_text("not onnx")
    r = invoke("eval", bad, "--data", "digits")
    assert r.exit_code == 2 and "not a valid ONNX" in r.output


def test_export_of_a_slim_file_is_a_clear_error(exported):
    res, _ = exported
    r = invoke("export", res["slim"])
    assert r.exit_code == 2 and "expected a gated checkpoint" in r.output
