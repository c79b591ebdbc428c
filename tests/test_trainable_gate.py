"""The trainable gate (Kim et al., AAAI 2020): binary forward, shaped gradient, checkpoints, a learn run."""
import copy

import pytest
import torch

from chanprune.cut import cut
from chanprune.freeze import freeze, polarization
from chanprune.gates import SHAPES, TrainableGate, make_gate, trainable_gate
from chanprune.learn import LearnConfig
from chanprune.load import GatedModel
from chanprune.measure import count_flops
from chanprune.runs import learn_run

M = 1e5


def _paper_value(w: torch.Tensor, shape: str) -> torch.Tensor:
    """step(w) + s_M(w) K(w), the trainable gate function as the paper writes it (not binary)."""
    return (w > 0).to(w.dtype) + (M * w - torch.floor(M * w)) / M * SHAPES[shape](w)


def test_forward_value_is_exactly_binary_and_is_what_freezing_keeps():
    gate = TrainableGate(6, M=M)
    with torch.no_grad():
        gate.weight.copy_(torch.tensor([-2.0, -1e-6, 0.0, 1e-6, 0.3, 5.0]))
    z = gate.sample(3)
    expected = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    assert z.shape == (3, 6) and z.requires_grad
    assert torch.equal(z, expected.expand(3, -1))  # bit for bit, not within 1/M
    assert not torch.equal(_paper_value(gate.weight.detach(), "sigmoid"), expected)  # the paper's value is not
    assert torch.equal(gate.probs(), expected)
    assert torch.equal(gate.mask("threshold", tau=0.5), expected.unsqueeze(0))
    assert torch.equal(gate.mask("stochastic", batch=2), expected.expand(2, -1))  # deterministic
    assert polarization([gate.probs()]).polarized == 1.0


@pytest.mark.parametrize("shape", ["sigmoid", "constant"])
def test_gradient_is_the_derivative_of_the_trainable_gate_function(shape):
    # points in the middle of a sawtooth tooth, so a central difference stays inside it
    w0 = torch.tensor([-3.0, -0.7, -0.01, 0.25, 1.3, 4.0], dtype=torch.float64)
    w = ((torch.floor(w0 * M) + 0.5) / M).requires_grad_()
    trainable_gate(w, M=M, shape=shape).sum().backward()
    h = 1e-3 / M
    with torch.no_grad():
        numeric = (_paper_value(w + h, shape) - _paper_value(w - h, shape)) / (2 * h)
        k = SHAPES[shape](w)
    torch.testing.assert_close(w.grad, numeric, rtol=1e-6, atol=1e-9)
    # ... which is the shaping function K itself, up to s_M(w) K'(w) <= max|K'| / M
    assert (w.grad - k).abs().max() <= 0.1 / M
    assert (w.grad > 0).all()  # the step alone has no gradient: the shape is what trains w


def test_sample_gradient_reaches_the_weights():
    gate = TrainableGate(5, M=M, shape="constant")
    c = torch.arange(1.0, 6.0)
    (gate.sample(4) * c).sum().backward()
    torch.testing.assert_close(gate.weight.grad, 4 * c)  # K = 1: d/dw of s_M is exactly 1


def test_gates_start_open_at_spread_margins_and_settings_are_checked():
    gate = TrainableGate(200, init=2.0)
    w = gate.weight.detach()
    assert (w > 0).all() and (w <= 2.0).all() and w.std() > 0.4  # U(0, 2]: std 0.58
    assert gate.probs().sum() == 200
    with pytest.raises(ValueError, match="sigmoid, constant"):
        TrainableGate(3, shape="tanh")
    with pytest.raises(ValueError, match="open"):
        TrainableGate(3, init=0.0)
    with pytest.raises(ValueError, match="M"):
        TrainableGate(3, M=0)


def test_checkpoint_round_trip_rebuilds_the_gate():
    gate = make_gate("trainable", 7, M=1e3, shape="constant", init=0.5)
    assert isinstance(gate, TrainableGate) and gate.kind == "trainable" and gate.num_channels == 7
    with torch.no_grad():
        gate.weight[::2] = -0.25  # some closed
    config, state = gate.config(), copy.deepcopy(gate.state_dict())
    assert config == {"M": 1e3, "shape": "constant", "init": 0.5}
    rebuilt = make_gate("trainable", 7, **config)
    rebuilt.load_state_dict(state)
    assert rebuilt.config() == config
    assert torch.equal(rebuilt.weight, gate.weight) and torch.equal(rebuilt.sample(2), gate.sample(2))


def test_learn_with_trainable_gates_meets_the_target_and_cuts_exactly(tmp_path):
    """A short run from scratch on digits: the cost ratio comes down to the target, the plan
    frozen at tau is the very mask the gates applied in training, and the slim model reproduces it."""
    # pure learning, no projection: the masks it trained with are the plan it froze
    config = LearnConfig(gate="trainable", target=0.5, epochs=2, batch_size=64, finetune_epochs=0, project=False)
    res = learn_run(arch="resnet20", data="digits", out=tmp_path / "run", config=config, limit=640)
    assert abs(res["cost_ratio"] - 0.5) <= 0.1, res
    assert res["polarized"] == 1.0 and res["kept_channels"] < res["gated_channels"]

    gm = GatedModel.load(tmp_path / "run" / "model.pt")
    assert gm.ckpt.gate["kind"] == "trainable" and all(isinstance(g, TrainableGate) for g in gm.gates.gates)
    plan = gm.plan()
    # what the gates forward in training is the frozen plan, bit for bit
    masks = plan.keep_masks(gm.graph)
    assert all(torch.equal(g.sample(1).detach().flatten(), m.float()) for g, m in zip(gm.gates.gates, masks))
    other_tau = freeze(gm.graph, gm.gates.probs(), tau=0.9).keep_masks(gm.graph)
    assert all(torch.equal(a, b) for a, b in zip(masks, other_tau))  # any tau below 1 keeps the open gates

    x = torch.randn(8, *gm.input_shape[1:])
    result = cut(gm.model, gm.graph, plan, x, gates=gm.gates)
    assert result.exact, result.max_abs_diff
    dense = count_flops(gm.model, x[:1]).total
    assert count_flops(result.slim, x[:1]).total / dense == pytest.approx(res["cost_ratio"], abs=0.02)
