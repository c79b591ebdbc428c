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


def test_channel_shuffle_is_reported_by_name_and_branch_interiors_are_gated():
    g = find_groups(nets.Shuffle().eval(), X)
    # the convs that write the shuffled channels are reported, naming the shuffle
    assert {u["name"] for u in g.unsupported} == {"left.2.0", "right.3.0", "inner.3.0"}
    assert all(u["reason"].startswith("channel shuffle in the model's forward (view (2, 8, 8, 8) -> (2, 2, 4, 8, 8)")
               for u in g.unsupported)
    # what never crosses a shuffle is gated: the stem, each branch's inner channels, the last conv
    assert sites(g, "stem.0") >= {("stem.0", "out"), ("left.0", "dw"), ("left.2.0", "in"), ("right.0.0", "in")}
    inner = next(gr for gr in g.groups if ("inner.0.0", "out") in {(s.module, s.role) for s in gr.sites})
    assert {(s.module, s.role) for s in inner.sites} >= {("inner.1", "dw"), ("inner.3.0", "in")}
    assert len(g.groups) == 4 and "last.0" in {gr.name for gr in g.groups}


def test_module_channel_shuffle_is_reported_by_name():
    g = find_groups(nets.ModuleShuffle().eval(), X)
    assert [u["name"] for u in g.unsupported] == ["a.0"]
    assert g.unsupported[0]["reason"].startswith("channel shuffle in shuffle (channel_shuffle")
    assert [gr.name for gr in g.groups] == ["b.0"]


def test_chunk_parts_keep_equal_counts():
    g = find_groups(nets.Chunk().eval(), X)
    assert g.unsupported == []
    stem = g.group("stem.0")
    assert stem.partition == [[0, 1, 2, 3], [4, 5, 6, 7]]
    by_site = {(s.module, s.role): s for s in stem.sites}
    # the second half feeds b, and both halves go into the concatenation after b's 6 channels
    assert by_site[("b.0", "in")].root_idxs == [4, 5, 6, 7] and by_site[("b.0", "in")].layer_idxs == [0, 1, 2, 3]
    mix = by_site[("mix.0", "in")]
    assert dict(zip(mix.layer_idxs, mix.root_idxs)) == {6 + i: 4 + i for i in range(4)} | {10 + i: i for i in range(4)}
    b = next(s for s in g.group("b.0").sites if s.module == "mix.0")
    assert b.layer_idxs == list(range(6))


def test_split_with_fixed_sizes_is_reported_by_name():
    g = find_groups(nets.FixedSplit().eval(), X)
    assert [u["name"] for u in g.unsupported] == ["stem.0"]
    assert g.unsupported[0]["reason"].startswith("split of 8 channels into [3, 5] in the model's forward")
    assert [gr.name for gr in g.groups] == ["b.0"]


def test_shufflenet_groups_everything_but_the_shuffled_channels():
    g = find_groups(build_model("shufflenet_v2_x0_5", num_classes=10), torch.randn(1, 3, 32, 32))
    names = {gr.name for gr in g.groups}
    assert {"conv1.0", "conv5.0"} <= names and len(names) == 18  # plus each block's inner channels
    assert g.unsupported and all("channel shuffle in stage" in u["reason"] for u in g.unsupported)


def test_untraceable_model_is_reported(monkeypatch):
    """torch-pruning raised ZeroDivisionError on ShuffleNetV2 before chanprune knew shuffles; any
    error of its tracing comes back as an UnsupportedModelError."""
    from torch_pruning.dependency import index_mapping

    def fail(graph):
        raise ZeroDivisionError("integer division or modulo by zero")

    monkeypatch.setattr(index_mapping, "update_index_mapping", fail)
    with pytest.raises(UnsupportedModelError, match="could not trace .*ZeroDivisionError"):
        find_groups(nets.Chain().eval(), X)


def test_find_groups_keeps_training_mode():
    m = nets.Chain().train()
    find_groups(m, X)
    assert m.training
    assert find_heads(m, X) == ["fc"] and m.training
