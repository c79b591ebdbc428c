"""The benchmark machinery: resumable rows, the Torch-Pruning FLOPs match, the README tables, and the
CI latency guard, which must trip when the "slim" model is the unpruned one."""
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


@pytest.fixture
def common(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCH))
    mod = importlib.import_module("_common")
    monkeypatch.setattr(mod, "RESULTS", tmp_path)
    return mod


def test_rows_resume_from_the_file(common, tmp_path):
    rows = common.Rows("grid")
    rows.add({"key": "a/1", "value": 1.5})
    rows.add({"key": "a/2", "value": 2.5})
    again = common.Rows("grid")  # a new process after a kill
    assert "a/1" in again and "a/2" in again and "a/3" not in again
    assert again.get("a/2")["value"] == 2.5 and again.get("a/2")["machine"]
    assert len((tmp_path / "grid.jsonl").read_text().splitlines()) == 2


def test_torch_pruning_is_matched_to_the_flops_asked(common):
    from chanprune.measure.flops import count_flops
    from chanprune.zoo import build_model

    base = build_model("resnet20", num_classes=10).eval()
    x = torch.zeros(1, 3, 32, 32)
    dense = count_flops(base, x).total
    import copy

    for importance in ("magnitude", "group-norm"):
        model, ratio, flops = common.tp_prune_to_flops(lambda: copy.deepcopy(base), x, int(0.5 * dense),
                                                       importance=importance)
        assert flops == count_flops(model, x).total
        assert 0.46 * dense <= flops <= 0.5 * dense, (importance, flops / dense)
        assert 0.2 < ratio < 0.4
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_readme_tables_come_from_the_committed_rows(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    report = importlib.import_module("report")
    text = report.render()
    assert "### Latency efficiency" in text and "### CI latency guard" in text
    readme = (ROOT / "README.md").read_text()
    block = readme.split(report.BEGIN, 1)[1].split(report.END, 1)[0]
    assert block.strip() == text.strip(), "README is stale: run python benchmarks/report.py --readme"


@pytest.mark.parametrize("plan", ["flops", "latency"])
def test_guard_baseline_is_well_formed(plan, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    plan_path, baseline = importlib.import_module("guard").PLANS[plan]
    assert plan_path.is_file()
    base = json.loads(baseline.read_text())
    assert base["plan"] == plan_path.name
    assert set(base["speedups"]) == {"ort-cpu/b1", "ort-cpu/b32"}
    assert all(v > 1.2 for v in base["speedups"].values())
    assert 0.15 <= base["max_regression"] < 0.5
    # The guard can only fail an unpruned model if 1.0x lies below the allowed floor.
    assert all(v * (1 - base["max_regression"]) > 1.05 for v in base["speedups"].values())


def test_guard_trips_when_the_slim_model_is_the_unpruned_one():
    r = subprocess.run([sys.executable, str(BENCH / "guard.py"), "--unpruned", "--batch-size", "32", "--rounds", "3"],
                       check=False, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "REGRESSION ort-cpu/b32" in r.stdout
