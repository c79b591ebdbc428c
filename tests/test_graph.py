import pytest
import torch

from chanprune.errors import UnsupportedModelError
from chanprune.graph import find_groups, find_heads
from chanprune.zoo import build_model
from tests import nets

X = torch.randn(2, 3, 16, 16)


def sites(graph, name):
    return {(s.module, s.role) for s in graph.group(name).sites}


def test_chain_groups_and_head():
    g = find_groups(nets.Chain().eval(), X)
    assert g.heads == ["fc"]
    assert [grp.name for grp in g.groups] == ["features.0.0", "features.1.0", "features.2.0"]  # network order
    assert sites(g, "features.1.0") == {("features.1.0", "out"), ("features.1.1", "chan"), ("features.2.0", "in")}
    assert ("fc", "in") in sites(g, "features.2.0")
    assert g.unsupported == []


def test_residual_stream_is_one_group():
    g = find_groups(nets.Residual().eval(), X)
    names = {gr.name for gr in g.groups}
    # the stem and both branch outputs write the same stream: one gate, not three
    stream = next(gr for gr in g.groups if ("stem.0", "out") in {(s.module, s.role) for s in gr.sites})
    roles = {(s.module, s.role) for s in stream.sites}
    assert {("b1.1", "out"), ("b2.1", "out"), ("b1.0.0", "in"), ("b2.0.0", "in"), ("fc", "in")} <= roles
    assert len(names) == 3


def test_concat_maps_indices_into_the_consumer():
    g = find_groups(nets.Concat().eval(), X)
    a = next(gr for gr in g.groups if gr.name == "a.0")
    b = next(gr for gr in g.groups if gr.name == "b.0")
    mix_a = next(s for s in a.sites if s.module == "mix.0" and s.role == "in")
    mix_b = next(s for s in b.sites if s.module == "mix.0" and s.role == "in")
    assert mix_a.layer_idxs == list(range(6)) and mix_a.root_idxs == list(range(6))
    assert mix_b.layer_idxs == list(range(6, 10)) and mix_b.root_idxs == list(range(4))


def test_depthwise_is_inside_the_expand_group():
    g = find_groups(nets.Depthwise().eval(), X)
    expand = next(gr for gr in g.groups if ("dw.0", "dw") in {(s.module, s.role) for s in gr.sites})
    assert ("project.0", "in") in {(s.module, s.role) for s in expand.sites}
    assert expand.size == 24


def test_grouped_conv_partitions():
    g = find_groups(nets.Grouped().eval(), X)
    parted = [gr for gr in g.groups if gr.partition]
    assert len(parted) == 2  # the group feeding the grouped conv and the grouped conv's outputs
    for gr in parted:
        assert len(gr.partition) == 4 and all(len(p) == 4 for p in gr.partition)


def test_flatten_maps_one_channel_to_many_linear_inputs():
    g = find_groups(nets.FlattenHead().eval(), X)
    grp = next(gr for gr in g.groups if gr.name == "features.1.0")
    hidden = next(s for s in grp.sites if s.module == "hidden")
    assert len(hidden.layer_idxs) == 6 * 16 and sorted(set(hidden.root_idxs)) == list(range(6))


def test_conv_classifier_is_a_head():
    g = find_groups(nets.ConvHead().eval(), X)
    assert g.heads == ["classifier"]
    assert all(gr.name != "classifier" for gr in g.groups)


def test_layernorm_over_channels_is_reported_not_gated():
    g = find_groups(nets.PermuteLayerNorm().eval(), X)
    assert [u["name"] for u in g.unsupported] == ["stem"]
    assert "LayerNorm" in g.unsupported[0]["reason"]
    assert [gr.name for gr in g.groups] == ["mlp1"]  # the MLP's hidden channels are still gated


def test_layer_scale_parameter_is_a_site():
    g = find_groups(nets.LayerScale().eval(), X)
    assert any(s.module == "gamma" and s.role == "param" and s.channels == 8 for gr in g.groups for s in gr.sites)


def test_ignored_layers_stay_ungated():
    g = find_groups(nets.Chain().eval(), X, ignored=("features.1.0",))
    assert "features.1.0" not in {gr.name for gr in g.groups}
    assert g.ignored == ["features.1.0"]
    with pytest.raises(ValueError, match="no module"):
        find_groups(nets.Chain().eval(), X, ignored=("nope",))


def test_untraceable_model_is_reported():
    with pytest.raises(UnsupportedModelError, match="could not trace"):
        find_groups(build_model("shufflenet_v2_x0_5", num_classes=10), torch.randn(1, 3, 32, 32))


def test_find_groups_keeps_training_mode():
    m = nets.Chain().train()
    find_groups(m, X)
    assert m.training
    assert find_heads(m, X) == ["fc"] and m.training
