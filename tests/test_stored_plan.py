"""Regression: a fine-tuned run is exported (and evaluated) under the plan it was fine-tuned with.

The weights and batch norms of a run with --finetune-epochs were tuned for the plan frozen at the
run's own --tau and --min-keep; re-freezing at export's default tau, without --min-keep, cut a
different network (issue 10, bug 1).
"""
import json

import pytest
import torch
from click.testing import CliRunner

from chanprune_cli.main import main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    out = tmp_path_factory.mktemp("stored") / "run"
    r = invoke("learn", "--arch", "resnet20", "--data", "digits", "--target", 0.3, "--epochs", 3,
               "--finetune-epochs", 1, "--min-keep", 6, "--tau", 0.7, "--batch-size", 64, "--out", out)
    assert r.exit_code == 0, r.output + repr(r.exception)
    return out


def _kept(plan: dict) -> dict:
    return {g["name"]: g["keep"] for g in plan["groups"]}


def test_export_cuts_the_plan_the_run_was_finetuned_with(finetuned):
    stored = torch.load(finetuned / "model.pt", weights_only=True)["plan"]
    r = invoke("export", finetuned / "model.pt", "--json")
    assert r.exit_code == 0, r.output
    exported = json.loads((finetuned / "plan.json").read_text())
    assert _kept(exported) == _kept(stored)
    assert exported["tau"] == pytest.approx(0.7)


def test_a_different_tau_on_a_finetuned_run_is_an_error(finetuned):
    r = invoke("export", finetuned / "model.pt", "--tau", 0.5, "--out", finetuned / "other")
    assert r.exit_code == 2
    assert "--tau" in r.output and "0.7" in r.output
    assert not (finetuned / "other" / "model.onnx").exists()
    same = invoke("export", finetuned / "model.pt", "--tau", 0.7, "--out", finetuned / "same")
    assert same.exit_code == 0, same.output


def test_eval_and_inspect_use_the_stored_plan(finetuned):
    stored = torch.load(finetuned / "model.pt", weights_only=True)["plan"]
    r = json.loads(invoke("inspect", finetuned / "model.pt", "--json").stdout)
    assert {g["name"]: g["kept"] for g in r["groups"]} == {n: len(k) for n, k in _kept(stored).items()}


def test_validation_during_learning_freezes_at_the_runs_tau(tmp_path):
    """Per-epoch validation accuracy is the model frozen at the run's --tau, not at 0.5."""
    from chanprune.cost import FlopsCost
    from chanprune.data import load_data
    from chanprune.gates import GateSet
    from chanprune.graph import find_groups
    from chanprune.learn import LearnConfig, evaluate, fit
    from chanprune.zoo import build_model

    data = load_data("digits", channels=3, limit=256)
    model = build_model("resnet20", num_classes=10)
    x = torch.zeros(1, 3, 8, 8)
    graph = find_groups(model, x)
    cost = FlopsCost(model, x, graph)
    gates = GateSet(graph).attach_(model)
    with torch.no_grad():  # every gate at p = 0.6: open at tau 0.5, closed at tau 0.7
        for g in gates.gates:
            g.logits[:, 0] = 0.0
            g.logits[:, 1] = torch.log(torch.tensor(0.6 / 0.4))
    config = LearnConfig(epochs=1, batch_size=64, lr=1e-12, gate_lr=1e-12, target=0.5, tau=0.7)
    state = fit(model, data.train, data.val, config, gates=gates, cost=cost)
    probs = gates.probs()
    assert all(((p > 0.5) & (p < 0.7)).all() for p in probs)
    accuracy = {}
    for tau in (0.5, 0.7):
        gates.fix_([(p > tau).float() for p in probs])
        accuracy[tau] = evaluate(model, data.val)["accuracy"]
    gates.fix_(None)
    assert accuracy[0.5] != accuracy[0.7]  # the check can tell the two apart
    assert state.history[-1]["val_accuracy"] == accuracy[0.7]


def test_export_without_onnx_writes_the_rest(finetuned):
    out = finetuned / "no-onnx"
    r = invoke("export", finetuned / "model.pt", "--no-onnx", "--out", out, "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["onnx"] is None and res["onnx_vs_slim"] is None and res["exact"] is True
    assert (out / "slim.pt").is_file() and (out / "plan.json").is_file() and not (out / "model.onnx").exists()
