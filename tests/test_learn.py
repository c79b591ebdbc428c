"""Learning: the paper's objective, the loop, resume and DDP, on scikit-learn's digits."""
import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from chanprune.cost import make_cost
from chanprune.gates import GumbelGate, attach_gates
from chanprune.graph import find_groups
from chanprune.load import GatedModel
from chanprune.objective import budget_loss
from chanprune.measure import count_flops
from chanprune.surgery import apply_plan_
from chanprune_cli.main import main
from tests import nets

REPO = Path(__file__).resolve().parents[1]


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_property_1_expected_batch_loss_by_monte_carlo():
    """E[L_B] = (t - E[Q])^2 + Var(Q) (Herrmann et al. 2020, Property 1), with Z drawn by the gates."""
    torch.manual_seed(0)
    p = torch.tensor([0.05, 0.3, 0.5, 0.8, 0.97, 0.6])
    gate = GumbelGate(p.numel())
    with torch.no_grad():
        gate.logits.zero_()
        gate.logits[:, 1] = torch.log(p / (1 - p))
    t, batch, draws = 0.4, 8, 20000
    z = gate.sample(batch * draws).detach().view(draws, batch, -1)
    q = z.mean((1, 2))
    monte_carlo = ((t - q) ** 2).mean().item()
    closed = (t - p.mean().item()) ** 2 + (p * (1 - p)).sum().item() / (batch * p.numel() ** 2)
    assert monte_carlo == pytest.approx(closed, rel=0.03)
    polarized = (t - 0.5) ** 2  # the same mean activation with polarized gates has no variance term
    assert closed > polarized


def test_budget_gradient_reaches_the_logits_and_points_down_above_target():
    model = nets.Residual().train()
    x = torch.randn(8, 3, 16, 16)
    graph = find_groups(model, x)
    costs = {name: make_cost(name, model, x, graph) for name in ("flops", "channels")}
    gates = attach_gates(model, graph)
    model(x)
    for budget in ("flops", "channels"):
        for g in gates.gates:
            g.logits.grad = None
        loss, rate = budget_loss(costs[budget], gates.current(), 0.3)
        assert rate.item() > 0.5  # nearly open gates
        loss.backward(retain_graph=True)
        for g in gates.gates:
            d = g.logits.grad[:, 1] - g.logits.grad[:, 0]
            assert (d >= 0).all() and d.sum() > 0  # descending closes the gates


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "base"
    run("train", "--arch", "resnet20", "--data", "digits", "--epochs", 15, "--batch-size", 64, "--out", out)
    return out


@pytest.fixture(scope="module")
def learned(baseline, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "learned"
    res = run("learn", "--arch", "resnet20", "--weights", baseline / "model.pt", "--data", "digits", "--target", 0.5,
              "--epochs", 30, "--finetune-epochs", 3, "--batch-size", 64, "--out", out, "--json")
    return out, json.loads(res.stdout)


def test_learn_meets_target_polarizes_and_keeps_accuracy(baseline, learned):
    """Target within 0.03 measured by fvcore on the slim model at tau 0.5, gates polarized, and
    accuracy close to the baseline, together."""
    out, res = learned
    gm = GatedModel.load(out / "model.pt")
    plan = gm.plan()
    x = torch.zeros(gm.input_shape)
    gm.gates.detach_()
    dense = count_flops(gm.model, x).total
    slim = apply_plan_(copy.deepcopy(gm.model), plan, x, graph=gm.graph)
    ratio = count_flops(slim, x).total / dense
    assert abs(ratio - 0.5) <= 0.03, ratio
    assert res["polarized"] >= 0.9, res
    base_test = json.loads(run("eval", baseline / "model.pt", "--data", "digits", "--json").stdout)["accuracy"]
    assert res["test_accuracy"] >= base_test - 0.03, (res, base_test)
    # the slim model reproduces the frozen gated one
    gm.gates.attach_(gm.model).fix_(plan.keep_masks(gm.graph))
    xb = torch.randn(4, *gm.input_shape[1:])
    with torch.no_grad():
        torch.testing.assert_close(slim(xb), gm.model(xb), atol=1e-5, rtol=1e-4)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 31)) + [1, 2, 3]  # learning, then fine-tuning


def test_inspect_reports_the_run(learned):
    out, res = learned
    r = json.loads(run("inspect", out / "model.pt", "--json").stdout)
    assert r["polarization"]["polarized"] == pytest.approx(res["polarized"])
    assert r["cost"] == res["cost"] == "flops" and r["stored_plan"]
    assert r["cost_ratio"] == pytest.approx(res["cost_ratio"])
    assert sum(g["kept"] for g in r["groups"]) == res["kept_channels"]
    human = run("inspect", out / "model.pt").output
    assert "polarized" in human and "predicted FLOPs" in human


def test_channels_budget_and_finetune(baseline, tmp_path):
    res = json.loads(run("learn", "--arch", "resnet20", "--weights", baseline / "model.pt", "--data", "digits",
                         "--target", 0.6, "--budget", "channels", "--epochs", 3, "--finetune-epochs", 1,
                         "--calibrate-bn", 5, "--batch-size", 64, "--out", tmp_path / "r", "--json").stdout)
    ckpt = torch.load(tmp_path / "r" / "model.pt", weights_only=True)
    assert ckpt["stage"] == "done" and ckpt["plan"]["groups"]
    assert res["kept_channels"] < res["gated_channels"]


def _cli(*args):
    return [sys.executable, "-m", "chanprune_cli.main", *[str(a) for a in args]]


def _wait_for_epochs(metrics: Path, n: int, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read())
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_sigkill_then_resume_continues_from_the_last_epoch(tmp_path):
    out = tmp_path / "run"
    args = ["learn", "--arch", "resnet20", "--data", "digits", "--target", 0.5, "--epochs", 5, "--batch-size", 64,
            "--finetune-epochs", 0, "--out", out]
    proc = subprocess.Popen(_cli(*args), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_epochs(out / "metrics.jsonl", 2, proc)
    proc.kill()
    proc.wait()
    ckpt = torch.load(out / "model.pt", weights_only=True)  # intact after SIGKILL
    done = ckpt["state"]["epoch"]
    assert done >= 1
    res = subprocess.run(_cli(*args, "--resume"), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"resuming (learn) after epoch {done}" in res.stderr
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4, 5]  # the log restarts from the checkpoint: no epoch twice, none missing
    assert torch.load(out / "model.pt", weights_only=True)["stage"] == "done"


def test_sigint_saves_and_exits_cleanly(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--arch", "resnet20", "--data", "digits", "--epochs", 50, "--batch-size", 16, "--out", out]
    proc = subprocess.Popen(_cli(*args), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_epochs(out / "metrics.jsonl", 1, proc)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "--resume" in err
    ckpt = torch.load(out / "model.pt", weights_only=True)
    assert ckpt["saved"] == "interrupted"


def test_resume_needs_a_checkpoint_and_refuses_to_overwrite(tmp_path):
    r = CliRunner().invoke(main, ["learn", "--arch", "resnet20", "--data", "digits", "--target", "0.5",
                                  "--out", str(tmp_path / "x"), "--resume"])
    assert r.exit_code == 2 and "does not exist" in r.output
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "model.pt").write_bytes(b"keep me")
    r = CliRunner().invoke(main, ["learn", "--arch", "resnet20", "--data", "digits", "--target", "0.5",
                                  "--out", str(tmp_path / "y")])
    assert r.exit_code == 2 and "--resume" in r.output
    assert (tmp_path / "y" / "model.pt").read_bytes() == b"keep me"


def test_ddp_two_gloo_processes_agree_on_the_plan(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "chanprune_cli.main", "learn", "--arch", "resnet20", "--data", "digits", "--target", "0.5",
           "--epochs", "2", "--batch-size", "32", "--out", str(out)]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    ckpt = torch.load(out / "model.pt", weights_only=True)
    assert ckpt["result"]["world_size"] == 2 and ckpt["result"]["ranks_agree"] is True


def test_in_channels_default_to_what_the_stem_takes(tmp_path):
    """A user model with a 1-channel stem learns on digits without --in-channels."""
    res = json.loads(run("learn", "--arch", "tests.nets:gray_chain", "--data", "digits", "--target", 0.6, "--epochs", 1,
                         "--batch-size", 64, "--out", tmp_path / "gray", "--json").stdout)
    ckpt = torch.load(tmp_path / "gray" / "model.pt", weights_only=True)
    assert ckpt["build_kwargs"]["in_channels"] == 1 and ckpt["input_shape"][1] == 1
    assert res["kept_channels"] <= res["gated_channels"]


@pytest.mark.parametrize("bound", [None, 6.0])
def test_the_budget_moves_saturated_gates_only_when_bounded(bound):
    """Gates driven far past polarization (gap 30, as Adam's unit steps leave them) and a budget below
    what they keep: unbounded, the gradient has vanished and the cost stays put; bounded (what `fit`
    does after every step) the budget closes gates until the cost is near the target."""
    torch.manual_seed(0)
    model = nets.Residual().train()
    x = torch.randn(8, 3, 16, 16)
    graph = find_groups(model, x)
    cost = make_cost("channels", model, x, graph)
    gates = attach_gates(model, graph)
    with torch.no_grad():
        for g in gates.gates:
            g.logits.copy_(torch.tensor([0.0, 30.0]).expand_as(g.logits))
    opt = torch.optim.Adam(gates.parameters(), lr=1.0)
    for _ in range(60):
        gates.bound_(bound)
        model(x)
        loss, rate = budget_loss(cost, gates.current(), 0.4)
        opt.zero_grad()
        (100.0 * loss).backward()
        opt.step()
    gates.bound_(bound)
    at_tau = float(torch.as_tensor(cost.ratio_of(gates.threshold_masks(0.5))).mean())
    if bound is None:
        assert at_tau == 1.0
    else:
        assert abs(at_tau - 0.4) < 0.15
