import copy

import onnx
import pytest
import torch

from chanprune.check import collapsible_groups, perturb_batchnorm_
from chanprune.errors import ArtifactError
from chanprune.export import export_onnx, max_abs_diff, onnx_session, run_onnx, within_tolerance
from chanprune.freeze import random_plan
from chanprune.graph import find_groups
from chanprune.surgery import apply_plan_
from chanprune.zoo import build_model


@pytest.fixture(scope="module")
def slim_resnet20():
    torch.manual_seed(0)
    model = perturb_batchnorm_(build_model("resnet20", num_classes=10))
    x = torch.randn(1, 3, 32, 32)
    graph = find_groups(model, x)
    plan = random_plan(graph, keep=0.5, zero=tuple(collapsible_groups(model, graph, x)))
    assert plan.zero_width_groups
    return apply_plan_(copy.deepcopy(model), plan, x, graph=graph), x


def test_onnx_matches_torch_with_dynamic_batch(slim_resnet20, tmp_path):
    slim, x = slim_resnet20
    path = export_onnx(slim, x, tmp_path / "m.onnx")
    onnx.checker.check_model(onnx.load(str(path)))
    sess = onnx_session(path)
    for batch in (1, 5):
        xb = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            ref = slim(xb)
        out = run_onnx(sess, xb)
        assert out.shape == tuple(ref.shape)
        assert within_tolerance(max_abs_diff(out, ref), float(ref.abs().max()))


def test_export_is_atomic_and_leaves_no_temp_file(slim_resnet20, tmp_path):
    slim, x = slim_resnet20
    export_onnx(slim, x, tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_non_onnx_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(ArtifactError, match="not a valid ONNX"):
        onnx_session(bad)
    with pytest.raises(ArtifactError, match="no such file"):
        onnx_session(tmp_path / "missing.onnx")


def test_tolerance_rule():
    assert within_tolerance(1e-5, 0.0)
    assert not within_tolerance(2e-5, 0.0)
    assert within_tolerance(1.0e-3, 10.0)  # 1e-5 + 1e-4 * 10 = 1.01e-3
    assert not within_tolerance(1.1e-3, 10.0)
    assert not within_tolerance(float("nan"), 1.0)
    assert max_abs_diff(torch.zeros(2), torch.zeros(3)) == float("inf")
