"""`--json`: stdout is exactly one JSON object, on every command and every path.

These run the real command in a subprocess: CliRunner swaps `sys.stdout` but cannot see what C++
code (the TorchScript ONNX exporter's "Torch IR graph at exception" dump) writes to file
descriptor 1.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DIGITS = ["--data", "digits", "--epochs", "1", "--batch-size", "64", "--limit", "256"]
# as a user runs it: PYTHONUNBUFFERED would also unbuffer C's stdout and hide what C code leaves in its buffer
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}


def chanprune(*args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "chanprune_cli.main", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300, env=ENV)


def one_object(proc: subprocess.CompletedProcess) -> dict:
    """The whole of stdout parses as one JSON object (json.loads rejects anything before or after it)."""
    try:
        obj = json.loads(proc.stdout)
    except json.JSONDecodeError as e:
        pytest.fail(f"stdout is not one JSON object ({e}); stdout:\n{proc.stdout[:2000]}\nstderr:\n{proc.stderr[-2000:]}")
    assert isinstance(obj, dict), proc.stdout
    return obj


# ----------------------------------------------------------------------------- every command, cheaply
@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """train -> learn -> export on 256 digits, each with --json; the procs and the run folders."""
    d = tmp_path_factory.mktemp("json")
    procs = {"train": chanprune("train", "--arch", "resnet20", *DIGITS, "--out", d / "dense", "--json")}
    procs["learn"] = chanprune("learn", "--arch", "resnet20", "--weights", d / "dense" / "model.pt", *DIGITS,
                               "--target", "0.5", "--out", d / "gated", "--json")
    procs["export"] = chanprune("export", d / "gated" / "model.pt", "--json")
    return {"dir": d, "gated": d / "gated", **procs}


def test_train(runs):
    res = one_object(runs["train"])
    assert runs["train"].returncode == 0, runs["train"].stderr
    assert Path(res["model"]).is_file() and 0 <= res["test_accuracy"] <= 1


def test_learn(runs):
    res = one_object(runs["learn"])
    assert runs["learn"].returncode == 0, runs["learn"].stderr
    assert Path(res["model"]).is_file() and res["kept_channels"] <= res["gated_channels"]


def test_export(runs):
    res = one_object(runs["export"])
    assert runs["export"].returncode == 0, runs["export"].stderr
    assert res["exact"] is True and Path(res["onnx"]).is_file()


def test_export_parity_failure_exits_1_with_its_result(runs):
    proc = chanprune("export", runs["gated"] / "model.pt", "--atol", 0, "--rtol", 0, "--out", runs["dir"] / "strict",
                     "--json")
    assert proc.returncode == 1, proc.stderr
    assert one_object(proc)["exact"] is False


def test_inspect(runs):
    proc = chanprune("inspect", runs["gated"] / "model.pt", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "polarization" in one_object(proc)


def test_eval(runs):
    proc = chanprune("eval", runs["gated"] / "model.onnx", "--data", "digits", "--json")
    assert proc.returncode == 0, proc.stderr
    assert 0 <= one_object(proc)["accuracy"] <= 1


def test_bench(runs):
    proc = chanprune("bench", runs["gated"] / "model.onnx", "--rounds", 3, "--json")
    assert proc.returncode == 0, proc.stderr
    assert one_object(proc)["results"][0]["backend"] == "ort-cpu"


def test_report(runs):
    proc = chanprune("report", runs["gated"], "--json")
    assert proc.returncode == 0, proc.stderr
    assert Path(one_object(proc)["files"]["summary"]).is_file()


def test_check_through_the_onnx_exporter_fallback():
    """alexnet at 64 px: the TorchScript exporter fails on the 6x6 adaptive pool, dumps its graph to fd 1
    from C++, and the dynamo exporter takes over. The dump must not reach stdout."""
    proc = chanprune("check", "--arch", "alexnet", "--input-shape", "1,3,64,64", "--json")
    assert proc.returncode == 0, proc.stderr
    res = one_object(proc)
    assert res["exact"] is True and res["onnx_error"] is None


# ----------------------------------------------------------------------------- errors: still one object
BAD_INPUT = [
    pytest.param(["check", "--arch", "no_such_arch_zz"], "unknown arch", id="check-unknown-arch"),
    pytest.param(["check", "--arch", "resnet20", "--input-shape", "1,3,x"], "input-shape", id="check-bad-shape"),
    pytest.param(["train", "--arch", "resnet20", "--data", "nope", "--out", "{tmp}/t"], "unknown data set",
                 id="train-unknown-data"),
    pytest.param(["train", "--data", "digits", "--out", "{tmp}/t"], "--arch", id="train-missing-arch"),
    pytest.param(["learn", "--arch", "resnet20", "--data", "digits", "--target", "0", "--out", "{tmp}/l"], "target",
                 id="learn-target-0"),
    pytest.param(["inspect", "{tmp}/none.pt"], "no such file", id="inspect-missing"),
    pytest.param(["export", "{tmp}/none.pt"], "no such file", id="export-missing"),
    pytest.param(["eval", "{tmp}/none.onnx", "--data", "digits"], "no such file", id="eval-missing"),
    pytest.param(["bench", "{tmp}/none.onnx", "--batch-size", "a,b"], "comma-separated", id="bench-batch-text"),
    pytest.param(["report", "{tmp}/none"], "not a run folder", id="report-missing"),
]


@pytest.mark.parametrize("args,needle", BAD_INPUT)
def test_bad_input_is_one_error_object(args, needle, tmp_path):
    proc = chanprune(*[a.replace("{tmp}", str(tmp_path)) for a in args], "--json")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = one_object(proc)
    assert set(err) == {"error", "exit_code"} and err["exit_code"] == 2
    assert needle.lower() in err["error"].lower()
    # stderr keeps the one clear line it has without --json
    assert "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("Error:")] == [f"Error: {err['error']}"]


# ----------------------------------------------------------------------------- the mechanism itself
TOY = '''
import ctypes, os, sys, click
from chanprune_cli._util import BadInput, Failed, Interrupted, JsonCommand, emit_json

@click.command(cls=JsonCommand)
@click.option("--then", default="ok")
def toy(then, as_json):
    print("a Python print")
    os.write(1, b"a write to fd 1\\n")
    ctypes.CDLL(None).printf(b"a buffered C printf\\n")
    if then == "bad":
        raise BadInput("bad input here")
    if then == "fail":
        raise Failed("the run failed")
    if then == "crash":
        raise ZeroDivisionError("boom")
    if then == "saved-and-interrupted":
        raise Interrupted("interrupted: saved it")
    if then == "ctrl-c":
        raise KeyboardInterrupt
    emit_json({"ok": True})
    if then == "exit1":
        raise SystemExit(1)

toy()
'''


@pytest.mark.parametrize("then,code,expected", [
    ("ok", 0, {"ok": True}),
    ("exit1", 1, {"ok": True}),
    ("bad", 2, {"error": "bad input here", "exit_code": 2}),
    ("fail", 1, {"error": "the run failed", "exit_code": 1}),
    ("crash", 1, {"error": "ZeroDivisionError: boom", "exit_code": 1}),
    ("saved-and-interrupted", 130, {"error": "interrupted: saved it", "exit_code": 130}),
    ("ctrl-c", 1, {"error": "interrupted", "exit_code": 1}),  # click reports "Aborted!"
])
def test_everything_else_goes_to_stderr(then, code, expected):
    proc = subprocess.run([sys.executable, "-c", TOY, "--then", then, "--json"], capture_output=True, text=True,
                          cwd=REPO, timeout=60, env=ENV)
    assert proc.returncode == code, proc.stderr
    assert one_object(proc) == expected
    for noise in ("a Python print", "a write to fd 1", "a buffered C printf"):
        assert noise in proc.stderr
    assert ("Traceback" in proc.stderr) == (then == "crash")


def test_without_json_stdout_is_untouched():
    proc = subprocess.run([sys.executable, "-c", TOY], capture_output=True, text=True, cwd=REPO, timeout=60, env=ENV)
    assert proc.returncode == 0, proc.stderr
    for noise in ("a Python print", "a write to fd 1", "a buffered C printf"):
        assert noise in proc.stdout
