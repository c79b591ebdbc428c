"""The `chanprune` command line: help, version, `check` verdicts and exit codes (0 exact, 1 not
exact or untraceable, 2 bad input with one clear line and no traceback)."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from chanprune_cli.main import main

REPO = Path(__file__).resolve().parents[1]


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def assert_no_crash(result) -> None:
    """An unexpected exception is caught by CliRunner (so no traceback shows in the output): fail on it."""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        tb = "".join(traceback.format_exception(*result.exc_info))
        pytest.fail(f"uncaught {type(result.exception).__name__}; output:\n{result.output}\n{tb}")


# ----------------------------------------------------------------------------- group
def test_help_lists_check():
    result = invoke("--help")
    assert result.exit_code == 0, result.output
    assert "check" in result.output
    assert "Usage:" in result.output


def test_check_help():
    result = invoke("check", "--help")
    assert result.exit_code == 0, result.output
    for opt in ("--arch", "--input-shape", "--keep", "--json"):
        assert opt in result.output


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("chanprune, version ")
    assert result.output.strip() != "chanprune, version"


def test_import_does_not_import_torch():
    out = subprocess.run(
        [sys.executable, "-c", "import sys, chanprune_cli.main; print('torch' in sys.modules)"],
        capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------- verdicts
def test_check_resnet20_json():
    result = invoke("check", "--arch", "resnet20", "--input-shape", "1,3,32,32", "--json")
    assert_no_crash(result)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)  # exactly one JSON object, nothing else on the output
    assert isinstance(report, dict)
    for key in ("exact", "max_abs_diff", "onnx_max_abs_diff", "flops_dense", "flops_slim", "params_dense",
                "params_slim", "groups", "zero_width_groups", "gated_flops_fraction", "unsupported"):
        assert key in report, key
    assert report["exact"] is True
    assert isinstance(report["max_abs_diff"], float)
    assert isinstance(report["onnx_max_abs_diff"], float)
    assert report["groups"] > 0
    assert report["zero_width_groups"] >= 1
    assert report["gated_flops_fraction"] >= 0.9
    assert isinstance(report["unsupported"], list)
    assert report["flops_slim"] < report["flops_dense"]
    assert report["params_slim"] < report["params_dense"]


def test_check_resnet20_human():
    result = invoke("check", "--arch", "resnet20", "--input-shape", "1,3,32,32")
    assert_no_crash(result)
    assert result.exit_code == 0, result.output
    assert "EXACT" in result.output
    assert "NOT EXACT" not in result.output


def test_not_exact_exits_1():
    result = invoke("check", "--arch", "tests.nets:hidden_mix", "--input-shape", "1,3,16,16", "--zero-width", "0",
                    "--json")
    assert_no_crash(result)
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert report["exact"] is False


def test_not_exact_human():
    result = invoke("check", "--arch", "tests.nets:hidden_mix", "--input-shape", "1,3,16,16", "--zero-width", "0")
    assert_no_crash(result)
    assert result.exit_code == 1, result.output
    assert "NOT EXACT" in result.output


def test_user_factory_exact():
    result = invoke("check", "--arch", "tests.nets:chain", "--input-shape", "1,3,16,16", "--json")
    assert_no_crash(result)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["exact"] is True


def test_shufflenet_exact_and_names_the_shuffle():
    result = invoke("check", "--arch", "shufflenet_v2_x0_5", "--input-shape", "1,3,32,32")
    assert_no_crash(result)
    assert result.exit_code == 0, result.output
    assert "EXACT" in result.output
    assert any(line.strip().startswith("ungated") and "channel shuffle in stage2.0" in line
               for line in result.output.splitlines())


@pytest.fixture
def untraceable(monkeypatch):
    """torch-pruning failing to trace, as it did on ShuffleNetV2 (ZeroDivisionError)."""
    from torch_pruning.dependency import index_mapping

    def fail(graph):
        raise ZeroDivisionError("integer division or modulo by zero")

    monkeypatch.setattr(index_mapping, "update_index_mapping", fail)


def test_untraceable_exits_1(untraceable):
    result = invoke("check", "--arch", "tests.nets:chain", "--input-shape", "1,3,16,16")
    assert_no_crash(result)
    assert result.exit_code == 1, result.output
    assert any("NOT SUPPORTED" in line and "ZeroDivisionError" in line for line in result.output.splitlines())
    assert "Traceback" not in result.output


def test_untraceable_json_exits_1(untraceable):
    result = invoke("check", "--arch", "tests.nets:chain", "--input-shape", "1,3,16,16", "--json")
    assert_no_crash(result)
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert report["exact"] is False
    assert report["unsupported"]


# ----------------------------------------------------------------------------- bad input -> 2
@pytest.fixture(scope="module")
def weight_files(tmp_path_factory) -> dict[str, str]:
    from chanprune.zoo import build_model

    d = tmp_path_factory.mktemp("weights")
    (d / "empty.pt").write_bytes(b"")
    (d / "random.pt").write_bytes(random.Random(0).randbytes(4096))
    (d / "x.pt").write_text(json.dumps({"conv1.weight": [1, 2, 3]}))
    torch.save(build_model("resnet20").state_dict(), d / "resnet20.pt")
    return {"empty": str(d / "empty.pt"), "random": str(d / "random.pt"), "json": str(d / "x.pt"),
            "resnet20": str(d / "resnet20.pt")}


FAST = ["--input-shape", "1,3,32,32", "--no-onnx"]

BAD_INPUT = [
    pytest.param(["--arch", "no_such_arch_zz", *FAST], id="unknown-arch"),
    pytest.param(["--arch", "tests.nets:not_a_model", "--input-shape", "1,3,16,16"], id="factory-returns-str"),
    pytest.param(["--arch", "no_such_module_zz:make", *FAST], id="factory-module-missing"),
    pytest.param(["--arch", "tests.nets:no_such_function", *FAST], id="factory-function-missing"),
    pytest.param(["--arch", "resnet20:", *FAST], id="factory-empty-function"),
    pytest.param(["--arch", ":make", *FAST], id="factory-empty-module"),
    pytest.param(["--arch", "resnet20", "--input-shape", "1,3,x"], id="shape-not-int"),
    pytest.param(["--arch", "resnet20", "--input-shape", "1,3"], id="shape-too-short"),
    pytest.param(["--arch", "resnet20", "--input-shape", "0,3,32,32"], id="shape-zero"),
    pytest.param(["--arch", "resnet20", "--input-shape", "-1,3,32,32"], id="shape-negative"),
    pytest.param(["--arch", "resnet20", "--input-shape", "1,3,32,32,32,32"], id="shape-too-long"),
    pytest.param(["--arch", "resnet20", "--input-shape", ""], id="shape-empty"),
    pytest.param(["--arch", "resnet20", *FAST, "--keep", "0"], id="keep-zero"),
    pytest.param(["--arch", "resnet20", *FAST, "--keep", "1.5"], id="keep-above-one"),
    pytest.param(["--arch", "resnet20", *FAST, "--keep", "abc"], id="keep-not-float"),
    pytest.param(["--arch", "resnet20", *FAST, "--atol", "-1"], id="atol-negative"),
    pytest.param(["--arch", "resnet20", *FAST, "--num-classes", "0"], id="num-classes-zero"),
    pytest.param(["--arch", "resnet20", *FAST, "--in-channels", "0"], id="in-channels-zero"),
    pytest.param(["--arch", "resnet20", "--input-shape", "1,1,32,32", "--no-onnx"], id="shape-channels-mismatch"),
    pytest.param(["--arch", "resnet20", *FAST, "--weights", "/nonexistent/file.pt"], id="weights-missing-file"),
    pytest.param(["--arch", "resnet20", *FAST, "--weights", "{empty}"], id="weights-empty-file"),
    pytest.param(["--arch", "resnet20", *FAST, "--weights", "{random}"], id="weights-random-bytes"),
    pytest.param(["--arch", "resnet20", *FAST, "--weights", "{json}"], id="weights-json-file"),
    pytest.param(["--arch", "resnet32", *FAST, "--weights", "{resnet20}"], id="weights-other-arch"),
    pytest.param(["--arch", "resnet18", *FAST, "--weights", "NOT_A_WEIGHT_NAME"], id="weights-bad-name"),
    pytest.param(["--arch", "resnet20", *FAST, "--ignore", "no.such.layer"], id="ignore-unknown-layer"),
    pytest.param(["--arch", "resnet20", *FAST, "--zero-width", "-1"], id="zero-width-negative"),
    pytest.param(["--input-shape", "1,3,32,32"], id="arch-missing"),
]


@pytest.mark.parametrize("args", BAD_INPUT)
def test_bad_input_exits_2(args, weight_files):
    args = [a.format(**weight_files) if a.startswith("{") else a for a in args]
    result = invoke("check", *args)
    assert_no_crash(result)
    assert result.exit_code == 2, f"exit {result.exit_code}:\n{result.output}"
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    # one clear line: the usage lines click adds for option errors, then the error, nothing more
    assert len(result.output.strip().splitlines()) <= 4, result.output


@pytest.mark.parametrize("args", [
    pytest.param(["--arch", "no_such_arch_zz"], id="unknown-arch"),
    pytest.param(["--arch", "resnet20", "--input-shape", "1,3,32,32", "--weights", "/nonexistent/file.pt"],
                 id="weights-missing-file"),
])
def test_bad_input_console_script_no_traceback(args):
    """The real console script (not CliRunner, which swallows tracebacks): exit 2, no traceback on stderr."""
    script = Path(sys.executable).with_name("chanprune")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "chanprune_cli.main"]
    out = subprocess.run([*cmd, "check", *args], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert out.stderr.strip().startswith("Error:"), out.stderr
    assert out.stdout == ""


# ----------------------------------------------------------------------------- shapes and numbers
# Inputs that only fail once the model runs on them, and numbers click's ranges would let through.
RUNTIME_BAD_INPUT = [
    pytest.param(["--arch", "resnet20", "--input-shape", "1,3,32", "--no-onnx"], id="shape-rank-3-for-2d-cnn"),
    pytest.param(["--arch", "resnet20", "--input-shape", "1,3,32,32,32", "--no-onnx"], id="shape-rank-5-for-2d-cnn"),
    pytest.param(["--arch", "inception_v3", "--input-shape", "1,3,32,32", "--no-onnx"], id="shape-too-small-for-arch"),
    pytest.param(["--arch", "resnet20", "--input-shape", "1,3,32,32", "--no-onnx", "--atol", "nan"], id="atol-nan"),
    pytest.param(["--arch", "resnet20", "--input-shape", "1,3,32,32", "--no-onnx", "--rtol", "nan"], id="rtol-nan"),
    pytest.param(["--arch", "resnet20", "--input-shape", "1,3,32,32", "--no-onnx", "--atol", "inf"], id="atol-inf"),
]


@pytest.mark.parametrize("args", RUNTIME_BAD_INPUT)
def test_bad_input_found_at_run_time(args):
    result = invoke("check", *args)
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.exception!r}\n{result.output}"
    assert_no_crash(result)
    assert "Traceback" not in result.output


def test_factory_gets_in_channels():
    result = invoke("check", "--arch", "tests.nets:chain", "--in-channels", "1", "--input-shape", "1,1,16,16",
                    "--no-onnx", "--json")
    assert_no_crash(result)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["exact"] is True


@pytest.mark.parametrize("kind", ["random", "json"])
def test_weights_garbage_file_message(kind, weight_files):
    result = invoke("check", "--arch", "resnet20", *FAST, "--weights", weight_files[kind])
    assert result.exit_code == 2, result.output
    assert "Python objects" not in result.output
    assert "not a" in result.output  # "not a PyTorch file" / "not a readable PyTorch file"


def test_weights_pickled_module_message(tmp_path):
    """A file holding a pickled module (not plain weights) is refused, never unpickled."""
    from chanprune.zoo import build_model

    path = tmp_path / "module.pt"
    torch.save(build_model("resnet20"), path)
    result = invoke("check", "--arch", "resnet20", *FAST, "--weights", str(path))
    assert_no_crash(result)
    assert result.exit_code == 2, result.output
    assert "refused to load" in result.output
