"""The learning recipe: fine-tuning on the slim model and writing it back, freezing when ready,
distillation, the schedules and the gate initialisation."""
import json
import math

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from chanprune.cut import SlimTwin
from chanprune.freeze import freeze, project_plan, random_plan
from chanprune.gates import GateSet, GumbelGate
from chanprune.graph import find_groups
from chanprune.importance import group_norm
from chanprune.learn import TrainConfig, _schedule
from chanprune.load import GatedModel
from chanprune.plan import GroupPlan, PrunePlan
from chanprune.objective import Distill, task_loss
from chanprune_cli.main import main
from tests import nets

NETS = [nets.Chain, nets.Residual, nets.Concat, nets.Depthwise, nets.Grouped, nets.SqueezeExcite, nets.Shuffle,
        nets.Chunk]


def run(*args, code=0):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == code, result.output + repr(result.exception)
    return result


@pytest.mark.parametrize("net", NETS, ids=lambda n: n.__name__)
def test_slim_training_written_back_is_what_the_gated_model_computes(net):
    """Train the cut model a few steps (weights and batch-norm statistics change), write it back:
    the gated model frozen under the plan computes what the trained slim model does."""
    torch.manual_seed(0)
    model = net(num_classes=5)
    x = torch.randn(8, 3, 16, 16)
    graph = find_groups(model, x[:1])
    plan = random_plan(graph, keep=0.5, seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    twin = SlimTwin(model, graph, plan, x)
    gates = GateSet(graph).attach_(model).fix_(plan.keep_masks(graph))
    model.eval(), twin.slim.eval()
    with torch.no_grad():  # the twin starts as the gated model's cut
        torch.testing.assert_close(model(x), twin.slim(x), atol=1e-5, rtol=1e-4)
    gates.detach_()
    model.train()
    opt = torch.optim.SGD(twin.slim.parameters(), lr=0.1, momentum=0.9)
    twin.slim.train()
    for _ in range(3):
        loss = twin.slim(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    twin.write_back_()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "nothing was written back"
    gates.attach_(model)
    model.eval(), twin.slim.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), twin.slim(x), atol=1e-5, rtol=1e-4)
    gates.detach_()


def test_distillation_term_is_zero_for_the_teacher_itself_and_mixes_with_ce():
    torch.manual_seed(0)
    teacher = nn.Linear(6, 4)
    x, y = torch.randn(16, 6), torch.randint(0, 4, (16,))
    d = Distill(teacher, temperature=4.0, weight=0.5)
    assert d(teacher(x), x).item() == pytest.approx(0.0, abs=1e-6)
    other = torch.randn(16, 4)
    loss, stats = task_loss(other, y, x, d)
    assert stats["kd"] > 0
    assert loss.item() == pytest.approx(0.5 * stats["ce"].item() + 0.5 * stats["kd"].item(), rel=1e-6)
    plain, _ = task_loss(other, y, x, None)
    assert plain.item() == pytest.approx(stats["ce"].item())


@pytest.mark.parametrize("name", ["cosine", "onecycle", "step"])
def test_schedules_shape(name):
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched, lrs = _schedule(opt, name, 100), []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    if name == "cosine":
        assert lrs[0] == pytest.approx(0.1) and lrs[-1] < 1e-3
    elif name == "onecycle":
        assert lrs[0] == pytest.approx(0.1 / 25) and max(lrs) == pytest.approx(0.1, rel=1e-3)
        assert 20 <= lrs.index(max(lrs)) <= 30 and lrs[-1] < 1e-3
    else:
        assert lrs[59] == pytest.approx(0.1) and lrs[60] == pytest.approx(0.01) and lrs[80] == pytest.approx(0.001)


def test_gate_init_from_group_norm_orders_the_gates_by_importance():
    torch.manual_seed(0)
    model = nets.Chain(num_classes=5)
    with torch.no_grad():
        model.features[0][0].weight[3] *= 0.01  # channel 3 of the first group is nearly dead
    x = torch.randn(1, 3, 16, 16)
    graph = find_groups(model, x)
    scores = group_norm(model, graph, x)
    first = graph.groups.index(graph.group("features.0.0"))
    assert int(scores[first].argmin()) == 3
    gate = GumbelGate(graph.groups[first].size)
    gate.init_from_scores_(scores[first])
    p = gate.probs()
    assert int(p.argmin()) == 3 and p.mean() > 0.9  # graded, still nearly open on average


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "base"
    run("train", "--arch", "resnet20", "--data", "digits", "--epochs", 6, "--batch-size", 64, "--out", out)
    return out / "model.pt"


def test_epochs_are_the_whole_budget_freeze_when_ready_then_slim_finetune(base, tmp_path):
    out = tmp_path / "auto"
    res = json.loads(run("learn", "--arch", "resnet20", "--weights", base, "--data", "digits", "--target", 0.5,
                         "--epochs", 8, "--batch-size", 64, "--out", out, "--json").stdout)
    fr = res["frozen"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps_per_epoch = 21  # 1437 digits x 0.9 for training, batches of 64
    budget = 8 * steps_per_epoch
    assert fr["reason"] in ("ready", "deadline") and fr["steps"] <= budget // 2
    if fr["reason"] == "ready":
        assert abs(fr["cost_ratio_at_tau"] - 0.5) <= 0.02
    assert fr["steps"] + fr["finetune_steps"] == budget == sum(r["steps"] for r in rows)
    # --lam-rate auto by default: lambda may grow 100-fold over the 84 learning steps at 25% over target
    rate = math.log(100) / (0.25 * (budget // 2))
    assert [r["lambda_rate"] for r in rows if "lambda" in r] == [pytest.approx(rate)] * sum("lambda" in r for r in rows)
    ckpt = torch.load(out / "model.pt", weights_only=True)
    assert ckpt["frozen"] == fr and ckpt["learn_config"]["distill"] is True  # on by default with --weights
    exported = json.loads(run("export", out, "--no-onnx", "--json").stdout)
    assert exported["exact"], exported
    gm = GatedModel.load(out / "model.pt")
    assert gm.ckpt.tuned_for_plan


def test_resume_across_the_switch_to_finetuning(base, tmp_path, monkeypatch):
    """Stopped during fine-tuning, right after the switch: --resume fine-tunes the stored plan."""
    from chanprune import runs
    from chanprune.learn import LearnConfig

    out = tmp_path / "r"
    cfg = LearnConfig(epochs=6, batch_size=64, target=0.5)
    seen = []

    def progress(kind, row):
        seen.append(kind)
        if kind == "step" and "frozen" in seen:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runs.learn_run(arch="resnet20", data="digits", out=out, config=cfg, weights=str(base), progress=progress)
    ckpt = torch.load(out / "model.pt", weights_only=True)
    assert ckpt["stage"] == "finetune" and ckpt["saved"] == "frozen" and ckpt["plan"]
    res = runs.learn_run(arch="resnet20", data="digits", out=out, config=cfg, resume=True)  # the teacher is found
    assert res["frozen"]["steps"] == ckpt["frozen"]["steps"]
    final = torch.load(out / "model.pt", weights_only=True)
    assert final["stage"] == "done" and final["plan"] == ckpt["plan"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["steps"] for r in rows) == 6 * 21


LEARN_BAD_INPUT = [
    pytest.param(["--distill"], "--distill needs --weights", id="distill-without-weights"),
    pytest.param(["--gate-init", "magic"], "--gate-init", id="gate-init-unknown"),
    pytest.param(["--gate", "trainable", "--gate-init", "norm"], "cannot start from importance", id="gate-init-kind"),
    pytest.param(["--finetune-schedule", "linear"], "--finetune-schedule", id="schedule-unknown"),
    pytest.param(["--distill-weight", "1.5"], "--distill-weight", id="distill-weight-above-one"),
    pytest.param(["--distill-temperature", "0"], "--distill-temperature", id="distill-temperature-zero"),
    pytest.param(["--gate-temperature-final", "0"], "--gate-temperature-final", id="temperature-final-zero"),
    pytest.param(["--finetune-lr", "-1"], "--finetune-lr", id="finetune-lr-negative"),
    pytest.param(["--finetune-epochs", "-1"], "--finetune-epochs", id="finetune-epochs-negative"),
    pytest.param(["--lam-rate", "0"], "--lam-rate", id="lam-rate-zero"),
    pytest.param(["--lam-rate", "fast"], "--lam-rate", id="lam-rate-word"),
]


@pytest.mark.parametrize("args,says", LEARN_BAD_INPUT)
def test_learn_bad_input_exits_2_with_one_line_and_writes_nothing(args, says, tmp_path):
    out = tmp_path / "x"
    r = CliRunner().invoke(main, ["learn", "--arch", "resnet20", "--data", "digits", "--target", "0.5", "--epochs",
                                  "1", "--out", str(out), *args])
    assert r.exit_code == 2, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and says in r.output, r.output
    assert "Traceback" not in r.output and not (out / "model.pt").exists()


@pytest.mark.parametrize("steps", [60, 254, 1000])
def test_lambda_rate_auto_grows_lambda_a_hundredfold_over_the_learning_steps_25_percent_above(steps):
    """auto: lambda can pull a short run's plan to its target within the learning steps; long runs keep 0.05."""
    from chanprune.learn import LAM_RATE_FLOOR, LearnConfig, lambda_rate, learning_steps
    from chanprune.objective import BudgetObjective

    cfg = LearnConfig(lam_rate=None, target=0.4)
    n = learning_steps(cfg, steps)
    assert n == steps // 2  # the gates learn for max_learn_share of the budget
    obj = BudgetObjective(cost=None, target=0.4, lam=5.0, lam_rate=lambda_rate(cfg, steps))
    for _ in range(n):
        obj.update({"rate": 0.4 * 1.25})
    rise = obj.lam / 5.0
    assert obj.rate == max(LAM_RATE_FLOOR, obj.rate)
    assert rise == pytest.approx(100.0, rel=1e-6) if obj.rate > LAM_RATE_FLOOR else rise > 100.0
    assert lambda_rate(LearnConfig(), steps) == obj.rate  # auto is the default (since 2026-12-03)
    assert lambda_rate(LearnConfig(lam_rate=0.05), steps) == LAM_RATE_FLOOR
    fixed = LearnConfig(lam_rate=None, finetune_epochs=0)  # a plan-only run learns for every step
    assert lambda_rate(fixed, steps) == max(LAM_RATE_FLOOR, lambda_rate(cfg, 2 * steps))


def _residual_flops(seed: int):
    """A residual net's groups, its FLOPs cost and random gate probabilities."""
    from chanprune.cost import make_cost

    torch.manual_seed(seed)
    model = nets.Residual(num_classes=5)
    x = torch.zeros(1, 3, 16, 16)
    graph = find_groups(model, x)
    return graph, make_cost("flops", model, x, graph), [torch.rand(g.size) for g in graph.groups]


def test_projection_moves_the_plan_onto_the_target_by_gate_probability():
    graph, cost, probs = _residual_flops(seed=0)
    plan = freeze(graph, probs, tau=0.2, cost=cost)  # keeps ~80%: far above a 0.5 target
    assert cost.ratio(plan) > 0.6
    down = project_plan(plan, graph, cost, 0.5)
    assert cost.ratio(down) <= 0.5 and down.meta["projected"]["from"] == pytest.approx(cost.ratio(plan))
    dropped = [(p[c].item(), gi) for gi, (gp, gd, p) in enumerate(zip(plan.groups, down.groups, probs))
               for c in set(gp.keep) - set(gd.keep)]
    assert dropped and 0.48 <= cost.ratio(down) <= 0.5  # within the tolerance, from below
    # by gate probability: a kept channel less probable than a dropped one was skipped because
    # dropping it would have passed below target - tolerance
    top = max(d for d, _ in dropped)
    for gi, (gd, p) in enumerate(zip(down.groups, probs)):
        for c in gd.keep:
            if p[c].item() < top and len(gd.keep) > 1:
                less = down.groups[:gi] + [GroupPlan(gd.name, gd.size, [k for k in gd.keep if k != c], gd.probs)] + down.groups[gi + 1:]
                assert cost.ratio(PrunePlan(less, down.arch, down.input_shape, down.tau, {})) < 0.48
    assert all(gd.keep for gd, gp in zip(down.groups, plan.groups) if gp.keep)  # no group emptied
    for p in probs:
        p[0] = 0.99  # every group keeps one channel at tau 0.9: far below the target, none emptied
    low = freeze(graph, probs, tau=0.9, cost=cost)
    up = project_plan(low, graph, cost, 0.5)
    assert cost.ratio(low) < 0.48 and cost.ratio(low) < cost.ratio(up) <= 0.5
    near = freeze(graph, probs, tau=0.5, cost=cost)
    assert project_plan(near, graph, cost, cost.ratio(near) + 0.01) is near  # within tolerance: untouched


def test_inspect_says_when_and_why_the_gates_froze(base, tmp_path):
    out = tmp_path / "i"
    run("learn", "--arch", "resnet20", "--weights", base, "--data", "digits", "--target", 0.5, "--epochs", 2,
        "--batch-size", 64, "--out", out)
    r = json.loads(run("inspect", out, "--json").stdout)
    assert r["frozen"]["reason"] in ("ready", "deadline") and r["frozen"]["finetune_steps"] > 0
    assert "froze" in run("inspect", out).output


def test_projection_with_zero_tolerance_ends_at_the_target_or_just_below():
    graph, cost, probs = _residual_flops(seed=1)
    plan = freeze(graph, probs, tau=0.3, cost=cost)
    target = cost.ratio(plan) - 0.01  # within the usual 0.02: left alone by default
    assert project_plan(plan, graph, cost, target) is plan
    exact = project_plan(plan, graph, cost, target, tolerance=0.0)
    assert cost.ratio(exact) <= target < cost.ratio(plan)


def test_readiness_waits_for_a_window_on_target_and_resets_when_off():
    from chanprune.learn import LearnConfig
    from chanprune.runs import _Readiness

    class FakeGates:
        def __init__(self):
            self.p = [torch.tensor([0.99, 0.01, 0.99, 0.01])]

        def probs(self):
            return self.p

        def threshold_masks(self, tau):
            return [(p > tau).float() for p in self.p]

    class FakeCost:
        ratio = 0.5

        def ratio_of(self, masks):
            return self.ratio

    gates, cost = FakeGates(), FakeCost()
    ready = _Readiness(gates, cost, LearnConfig(target=0.5, ready_window=20), budget=1000)
    assert [ready(s) for s in range(5, 25, 5)] == [None] * 4  # on target since step 5: 15 steps so far
    assert ready(25) == "ready"
    ready = _Readiness(gates, cost, LearnConfig(target=0.5, ready_window=20), budget=1000)
    ready(5), ready(10)
    cost.ratio = 0.53  # off by more than 0.02: the window starts again
    assert ready(15) is None
    cost.ratio = 0.51
    assert [ready(s) for s in (20, 25, 30, 35)] == [None] * 4 and ready(40) == "ready"
    gates.p = [torch.tensor([0.5, 0.5, 0.6, 0.4])]  # not polarized: never ready, until the deadline
    ready = _Readiness(gates, cost, LearnConfig(target=0.5, ready_window=20, max_learn_share=0.1), budget=1000)
    assert all(ready(s) is None for s in range(5, 100, 5)) and ready(100) == "deadline"


def test_learn_warns_about_slow_batch_norms(tmp_path):
    from chanprune import runs
    from chanprune.learn import LearnConfig

    seen = []
    progress = lambda kind, row: seen.append((kind, row))  # noqa: E731
    cfg = LearnConfig(target=0.5, epochs=1, finetune_epochs=0)
    runs.learn_run(arch="tests.nets:slow_bn_chain", data="digits", out=tmp_path / "slow", config=cfg, progress=progress)
    warnings = [row["message"] for kind, row in seen if kind == "warning"]
    assert any("momentum 0.01" in w and "--calibrate-bn" in w for w in warnings), warnings
    seen.clear()
    runs.learn_run(arch="tests.nets:chain", data="digits", out=tmp_path / "plain", config=cfg, progress=progress)
    assert not [row for kind, row in seen if kind == "warning" and "momentum" in row["message"]]


@pytest.mark.parametrize("total", range(0, 10))
def test_onecycle_survives_a_budget_of_a_few_steps(total):
    """OneCycleLR divides by each phase's length: a budget of 3 steps (a small --limit) once raised
    ZeroDivisionError."""
    from chanprune.learn import _schedule

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = _schedule(opt, "onecycle", total)
    lrs = []
    for _ in range(total):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert all(0 <= lr <= 0.1 + 1e-9 for lr in lrs)


def test_the_objective_marks_the_steps_that_cross_the_target():
    from chanprune.objective import BudgetObjective

    obj = BudgetObjective(cost=None, target=0.5)
    seen = []
    for rate in [0.9, 0.6, 0.4, 0.45, 0.5, 0.7, 0.3]:
        obj.update({"rate": rate})
        seen.append((obj.side, obj.crossed))
    # the first step has nothing to cross from; at the target counts as below (the budget is met)
    assert seen == [(1, False), (1, False), (-1, True), (-1, False), (-1, False), (1, True), (-1, True)]


def test_lambda_stays_finite_on_a_short_run_far_above_its_target():
    from chanprune.objective import LAM_MAX, BudgetObjective

    obj = BudgetObjective(cost=None, target=0.05, lam=5.0, lam_rate=4.6)  # auto's rate for 4 learning steps
    for _ in range(4):
        obj.update({"rate": 0.95})
    assert obj.lam == LAM_MAX


def test_a_restart_zeroes_the_gate_logits_momentum_and_nothing_else():
    from chanprune.learn import restart_momentum

    logits, network = nn.Parameter(torch.ones(4)), nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([{"params": [logits], "logits": True}, {"params": [network], "logits": False}], lr=1.0)
    (logits.sum() + 2 * network.sum()).backward()
    opt.step()
    v = opt.state[logits]["exp_avg_sq"].clone()
    restart_momentum(opt)
    assert torch.equal(opt.state[logits]["exp_avg"], torch.zeros(4))
    assert torch.equal(opt.state[logits]["exp_avg_sq"], v) and int(opt.state[logits]["step"]) == 1
    assert torch.equal(opt.state[network]["exp_avg"], torch.full((3,), 0.2))  # (1 - 0.9) * 2


@pytest.mark.parametrize("target, limit", [(0.05, 256), (0.9, 1437)])
def test_gate_restart_changes_a_run_only_where_its_cost_crosses_the_target(base, tmp_path, target, limit):
    """Below any cost the gates reach in 4 steps (0.05) the cost never crosses the target, and the run
    with the restart is the run without, bit for bit; at 0.9 it crosses within the first steps, the
    step is recorded, and the restart there changes where the gates end."""
    runs = {}
    for flag in ("--gate-restart", "--no-gate-restart"):
        out = tmp_path / flag
        run("learn", "--arch", "resnet20", "--weights", base, "--data", "digits", "--target", target, "--epochs", 1,
            "--finetune-epochs", 0, "--batch-size", 64, "--limit", limit, "--no-project", flag, "--out", out)
        row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
        gates = torch.load(out / "model.pt", weights_only=True)["gate_state"]
        runs[flag] = row["first_crossing"], gates
    (crossed, on), (crossed_off, off) = runs["--gate-restart"], runs["--no-gate-restart"]
    same = all(torch.equal(on[k], off[k]) for k in on if isinstance(on[k], torch.Tensor))
    if target == 0.05:
        assert crossed is None and crossed_off is None and same
    else:
        assert crossed == crossed_off and 0 < crossed < 10 and not same


def test_fix_weights_learns_the_gates_alone_and_the_weights_train_only_after_the_cut(base, tmp_path):
    """--fix-weights: after learning, every weight is the baseline's bit for bit (batch-norm running
    statistics still follow the batches) while the gates moved; with the whole budget the slim model
    then fine-tunes from there, and the export reproduces the gated model."""
    stats = ("running_mean", "running_var", "num_batches_tracked")
    start = torch.load(base, weights_only=True)["state_dict"]
    out = tmp_path / "gates-only"
    run("learn", "--arch", "resnet20", "--weights", base, "--data", "digits", "--target", 0.5, "--epochs", 1,
        "--finetune-epochs", 0, "--batch-size", 64, "--no-project", "--fix-weights", "--out", out)
    ckpt = torch.load(out / "model.pt", weights_only=True)
    assert ckpt["learn_config"]["fix_weights"] is True
    weights = {k: v for k, v in ckpt["state_dict"].items() if not k.endswith(stats)}
    assert weights and all(torch.equal(v, start[k]) for k, v in weights.items())
    assert any(not torch.equal(v, start[k]) for k, v in ckpt["state_dict"].items() if k.endswith("running_mean"))
    init = GumbelGate(1).logits.detach()[0]
    moved = [v for k, v in ckpt["gate_state"].items() if k.endswith("logits")]
    assert moved and any(not torch.allclose(v, init.expand_as(v)) for v in moved)

    out = tmp_path / "whole"
    res = json.loads(run("learn", "--arch", "resnet20", "--weights", base, "--data", "digits", "--target", 0.5,
                         "--epochs", 4, "--batch-size", 64, "--fix-weights", "--out", out, "--json").stdout)
    assert res["frozen"]["finetune_steps"] > 0
    tuned = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    assert any(not torch.equal(v, start[k]) for k, v in tuned.items() if k.endswith(".weight"))
    exported = json.loads(run("export", out, "--no-onnx", "--json").stdout)
    assert exported["exact"], exported
