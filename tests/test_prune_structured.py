"""Structured pruning: dependency groups, surgery, channel-prune and head-prune steps."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from conftest import make_task
from prune_archs import ARCHS, SkipMLP
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import nncompress as nc
from nncompress.base.selection import is_excluded
from nncompress.core.step import step_from_dict
from nncompress.measure.flops import count_macs
from nncompress.measure.size import count_params
from nncompress.models import ResNet, VisionTransformer
from nncompress.models.vit import MultiHeadSelfAttention
from nncompress.prune.criteria import member_tensors
from nncompress.prune.graph import trace_channels
from nncompress.prune.structured import (
    ChannelPrune,
    HeadPrune,
    gradients,
    group_scores,
)
from nncompress.prune.surgery import CONVS, channel_counts, cut_conv, cut_embedding, cut_layernorm

MODELS = {
    "resnet": lambda: ResNet(widths=(8, 16), num_classes=4),
    "vit": lambda: VisionTransformer(patch_size=7, dim=16, depth=2, num_heads=4, mlp_hidden=32, num_classes=4),
    **ARCHS,
}
X = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def build(name: str, seed: int = 0) -> nn.Module:
    """A model with random BatchNorm statistics, so BN surgery is really exercised."""
    torch.manual_seed(seed)
    model = MODELS[name]()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
    return model.eval()


def run(step: nc.Step, model: nn.Module, task: nc.Task | None = None) -> tuple[nn.Module, nc.StepContext]:
    ctx = nc.StepContext(task=task or make_task(n_train=64))
    return step.apply(model, ctx), ctx


def out(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(X)


def kill_half(model: nn.Module, exclude: tuple[str, ...] = ()) -> dict[str, int]:
    """Zero every other channel of each group at its producers and norms (evenly per block).

    Returns the output width of each producer touched, so the caller can check it halved.
    """
    widths = {}
    for group in trace_channels(model, X).groups:
        if any(is_excluded(m.name, exclude) for m in group.members if m.kind != "in"):
            continue
        dead = torch.arange(1, group.size, 2)
        for member in group.members:
            for _, t, dim in member_tensors(model, member):
                with torch.no_grad():
                    t.index_fill_(dim, group.positions(member)[dead].flatten(), 0.0)
            if member.kind == "out":
                widths[member.name] = channel_counts(model.get_submodule(member.name))[0]
    return widths


def rows(module: nn.Module) -> torch.Tensor:
    """The weight whose rows are the module's output channels."""
    return module.proj.weight if isinstance(module, MultiHeadSelfAttention) else module.weight


# --- the dependency graph ---------------------------------------------------------------
def names_by_group(model: nn.Module) -> list[set[tuple[str, str, int, int]]]:
    return [{(m.kind, m.name, m.offset, m.inner) for m in g.members} for g in trace_channels(model, X).groups]


def test_resnet_residual_groups_couple_shortcut_and_block_input():
    groups = names_by_group(build("resnet"))
    stream0 = next(g for g in groups if ("out", "stem.0", 0, 1) in g)
    assert {
        ("out", "stages.0.0.conv2", 0, 1),
        ("in", "stages.1.0.shortcut.0", 0, 1),
        ("in", "stages.1.0.conv1", 0, 1),
        ("norm", "stem.1", 0, 1),
    } <= stream0
    stream1 = next(g for g in groups if ("out", "stages.1.0.conv2", 0, 1) in g)
    assert {("out", "stages.1.0.shortcut.0", 0, 1), ("in", "fc", 0, 1)} <= stream1
    assert len(groups) == 4  # two residual streams, two inner convs; fc's output is never a group


def test_concat_offsets_flatten_strides_and_depthwise_coupling():
    dense = names_by_group(build("densenet"))
    assert {("in", "transition.0", 8, 1), ("in", "layer2.0", 8, 1)} <= next(
        g for g in dense if ("out", "layer1.0", 0, 1) in g
    )
    assert ("in", "transition.0", 12, 1) in next(g for g in dense if ("out", "layer2.0", 0, 1) in g)
    grouped = trace_channels(build("grouped"), X).groups
    g4 = next(g for g in grouped if any(m.name == "g4.0" and m.kind == "out" for m in g.members))
    assert g4.blocks == 4 and any(m.name == "fc1" and m.inner == 4 for m in g4.members)
    mobile = names_by_group(build("mobilenet"))
    stem = next(g for g in mobile if ("out", "stem.0", 0, 1) in g)
    assert {("out", "dw1.0", 0, 2), ("in", "pw1.0", 0, 2)} <= stem  # multiplier 2: 2 columns each


def test_vit_residual_stream_is_one_group_and_mlp_neurons_are_others():
    vit = build("vit")
    groups = trace_channels(vit, X).groups
    stream = next(g for g in groups if any(m.name == "patch_embed" for m in g.members))
    params = {(m.name, m.axis) for m in stream.members if m.kind == "param"}
    assert params == {("cls_token", 2), ("pos_embed", 2)}
    assert {"blocks.0.attn", "blocks.1.mlp.fc2", "norm", "blocks.1.norm2"} <= set(stream.names(["out", "norm"]))
    hidden = [g.names() for g in groups if g is not stream]
    assert sorted(hidden) == [["blocks.0.mlp.fc1"], ["blocks.1.mlp.fc1"]]


# --- the channel-prune step on every architecture ---------------------------------------
def excluded(name: str) -> tuple[str, ...]:
    # LayerNorm statistics depend on every channel: the ViT stream is checked elsewhere
    return ("patch_embed",) if name == "vit" else ()


@pytest.mark.parametrize("name", list(MODELS))
def test_removing_dead_channels_keeps_the_function(name):
    model = build(name)
    widths = kill_half(model, excluded(name))
    before, params, macs = out(model), count_params(model), count_macs(model, X)
    pruned, ctx = run(ChannelPrune(sparsity=0.5, exclude=excluded(name)), model)
    torch.testing.assert_close(out(pruned), before, rtol=1e-4, atol=1e-5)
    assert widths
    for layer, width in widths.items():  # exactly the zeroed half went, at every producer
        module = pruned.get_submodule(layer)
        assert channel_counts(module)[0] == width // 2, layer
        assert rows(module).flatten(1).abs().sum(1).min() > 0, layer
    assert count_params(pruned) < params and count_macs(pruned, X) < macs


@pytest.mark.parametrize("name", list(MODELS))
def test_sparsity_zero_is_exact_identity(name):
    model = build(name)
    before, params = out(model), count_params(model)
    pruned, _ = run(ChannelPrune(sparsity=0.0), model)
    torch.testing.assert_close(out(pruned), before, rtol=0, atol=0)
    assert count_params(pruned) == params


def macs_by_module(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """MACs per module name. (measure.macs_by_module misses them: this torch prefixes module
    paths with the model's class name, not "Global".)"""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    prefix = type(model).__name__ + "."
    return {
        k.removeprefix(prefix): int(sum(v.values())) // 2
        for k, v in counter.get_flop_counts().items()
        if k.startswith(prefix)
    }


def layer_shapes(model: nn.Module) -> dict[str, tuple[int, int, int]]:
    """(out, in, groups) of every Conv/Linear."""
    shapes = {}
    for n, m in model.named_modules():
        if isinstance(m, CONVS):
            shapes[n] = (m.out_channels, m.in_channels, m.groups)
        elif isinstance(m, nn.Linear):
            shapes[n] = (m.out_features, m.in_features, 1)
    return shapes


@pytest.mark.parametrize("name", list(MODELS))
def test_macs_of_each_layer_follow_its_channel_counts(name, tmp_path):
    model = build(name)
    shapes, macs = layer_shapes(model), macs_by_module(model, X)
    pruned, _ = run(ChannelPrune(sparsity=0.5), model)
    new_shapes, new_macs = layer_shapes(pruned), macs_by_module(pruned, X)
    for layer, (o, i, g) in shapes.items():  # MACs = out * in / groups * kernel * positions
        o2, i2, g2 = new_shapes[layer]
        assert new_macs[layer] == pytest.approx(macs[layer] * (o2 * i2 / g2) / (o * i / g), rel=1e-9)
    assert sum(new_macs.values()) < 0.5 * sum(macs.values())
    loaded = nc.load(nc.save(pruned, tmp_path / "m.ncz"))
    torch.testing.assert_close(loaded(X), out(pruned), rtol=0, atol=0)
    assert layer_shapes(loaded) == new_shapes


LOAD_WITHOUT_PRUNING = """
import sys, torch, nncompress
model = nncompress.load(sys.argv[1])
torch.save(model(torch.load(sys.argv[2])), sys.argv[3])
loaded = sorted(m for m in sys.modules if m.startswith("nncompress.prune") or m == "torch_pruning")
assert not loaded, loaded
"""


@pytest.mark.parametrize("name", ["resnet", "vit"])
def test_pruned_artifact_runs_in_a_process_without_pruning_code(name, tmp_path):
    pruned, _ = run(ChannelPrune(sparsity=0.5), build(name))
    path = nc.save(pruned, tmp_path / "m.ncz")
    torch.save(X, tmp_path / "x.pt")
    subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_PRUNING, str(path), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
        check=True,
        capture_output=True,
        timeout=120,
    )
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), out(pruned), rtol=0, atol=0)


def test_halving_a_conv_conv_chain_quarters_the_inner_conv():
    model = build("resnet")
    macs = macs_by_module(model, X)
    pruned, ctx = run(ChannelPrune(sparsity=0.5), model)
    new = macs_by_module(pruned, X)
    assert new["stages.0.0.conv1"] == macs["stages.0.0.conv1"] // 4  # 8x8 -> 4x4 channels
    assert new["stem.0"] == macs["stem.0"] // 2  # the image input keeps its channel
    assert new["fc"] == macs["fc"] // 2  # the classes stay
    assert pruned.fc.out_features == 4 and pruned(X).shape == (3, 4)
    assert "stages.0.0.conv1: 8 -> 4 channels" in ctx.log


def test_hand_checked_l1_removes_exactly_the_zeroed_filters():
    model = build("resnet")
    conv, bn = model.stages[0][0].conv1, model.stages[0][0].bn1
    with torch.no_grad():
        conv.weight[[1, 3, 6, 7]] *= 0.01  # smallest L1: these go
        bn.weight[[1, 3]] = 0.0  # a zero BN scale and shift kill a channel whatever its filter
        bn.bias[[1, 3]] = 0.0
    kept = conv.weight[[0, 2, 4, 5]].clone()
    # stages.1 kept whole (opaque) blocks the stage-0 stream: only conv1's group is pruned
    pruned, _ = run(ChannelPrune(sparsity=0.5, exclude=("stages.1",)), model)
    torch.testing.assert_close(pruned.stages[0][0].conv1.weight, kept, rtol=0, atol=0)
    assert pruned.stages[0][0].conv2.in_channels == 4 and pruned.stem[0].out_channels == 8
    assert pruned.stages[1][0].conv1.out_channels == 16


def test_fold_norms_scores_a_channel_through_its_batchnorm():
    model = build("resnet")
    conv, bn = model.stages[0][0].conv1, model.stages[0][0].bn1
    with torch.no_grad():
        conv.weight[[0, 2, 4, 5]] *= 0.01  # smallest raw filters
        bn.weight[[1, 3, 6, 7]] = 0.0  # BN-dead channels with ordinary filters
        bn.bias[[1, 3, 6, 7]] = 0.0
    kept = {}
    for fold in (False, True):
        pruned, _ = run(ChannelPrune(sparsity=0.5, exclude=("stages.1",), fold_norms=fold), copy.deepcopy(model))
        survivors = pruned.stages[0][0].conv1.weight
        kept[fold] = [i for i in range(8) if any(torch.equal(survivors[j], conv.weight[i]) for j in range(4))]
    assert kept == {False: [1, 3, 6, 7], True: [0, 2, 4, 5]}


def test_masks_are_cut_with_their_parameters_and_log_is_readable():
    for name in ("resnet", "grouped", "vit"):
        model = build(name)
        thresholds, masks = {}, {}
        for n, m in model.named_modules():
            if isinstance(m, (*CONVS, nn.Linear)):
                thresholds[n] = m.weight.abs().median()
                masks[f"{n}.weight"] = m.weight.abs() > thresholds[n]
        ctx = nc.StepContext(task=make_task(n_train=64), masks=masks)
        pruned = ChannelPrune(sparsity=0.5).apply(model, ctx)
        for n, t in thresholds.items():
            weight = pruned.get_submodule(n).weight
            assert torch.equal(ctx.masks[f"{n}.weight"], weight.abs() > t), n
        assert any(line.endswith("channels") and "->" in line for line in ctx.log)


def test_round_to_and_min_channels():
    pruned, _ = run(ChannelPrune(sparsity=0.3, round_to=4), build("resnet"))
    assert {m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d)} == {8, 12}
    pruned, _ = run(ChannelPrune(sparsity=0.9, min_channels=3), build("resnet"))
    assert {m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d)} == {3}
    pruned, _ = run(ChannelPrune(sparsity=0.9), build("grouped"))
    assert (pruned.g2[0].groups, pruned.g2[0].out_channels, pruned.g4[0].out_channels) == (2, 4, 4)


def test_global_scope_takes_the_weakest_channels_of_all_groups():
    torch.manual_seed(0)
    model = SkipMLP().eval()
    with torch.no_grad():
        model.fc1.weight[:12] = 0.0  # 12 of 48 channels (16 stream + 32 hidden) are dead
        model.fc1.bias[:12] = 0.0
    before = out(model)
    pruned, ctx = run(ChannelPrune(sparsity=0.25, scope="global"), model)
    assert (pruned.fc1.out_features, pruned.inp.out_features) == (20, 16)
    torch.testing.assert_close(out(pruned), before, rtol=1e-5, atol=1e-6)
    assert ctx.log[-1] == "channel-prune: removed 12 of 48 channels in 2 groups (sparsity 0.2500)"


@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
def test_macs_reduction_target_is_met_with_the_least_sparsity(target):
    dense = count_macs(build("resnet"), X)
    pruned, ctx = run(ChannelPrune(macs_reduction=target), build("resnet"))
    removed = 1 - count_macs(pruned, X) / dense
    assert removed >= target
    sparsity = float(ctx.log[-1].split("sparsity ")[1].rstrip(")"))
    # one channel fewer per group would miss the target: a bit less sparsity does
    less, _ = run(ChannelPrune(sparsity=max(0.0, sparsity - 1 / 8)), build("resnet"))
    assert 1 - count_macs(less, X) / dense < target
    with pytest.raises(ValueError, match=r"macs_reduction must be a fraction in \(0, 1\) or None, got 1.0"):
        ChannelPrune(macs_reduction=1.0)
    with pytest.raises(ValueError, match=r"macs_reduction=0.999 is out of reach"):
        run(ChannelPrune(macs_reduction=0.999, min_channels=4), build("resnet"))


@pytest.mark.parametrize("criterion", ["taylor", "l2", "random"])
def test_other_criteria(criterion):
    task = make_task(lambda: build("resnet"), n_train=128)
    model = build("resnet")
    kill_half(model)
    before = out(model)
    pruned, _ = run(ChannelPrune(sparsity=0.5, criterion=criterion, scope="global"), model, task)
    assert pruned(X).shape == (3, 4) and count_params(pruned) < count_params(build("resnet"))
    if criterion == "l2":  # dead channels have zero weights
        torch.testing.assert_close(out(pruned), before, rtol=1e-4, atol=1e-5)


def test_taylor_scores_dead_channels_zero():
    task = make_task(lambda: build("resnet"), n_train=128)
    model = build("resnet")
    kill_half(model)  # zero rows and zero BN scale: zero weights and zero gradients
    ctx = nc.StepContext(task=task)
    graph = trace_channels(model, X)
    grads = gradients(model, ctx, 2)
    for group in graph.groups:
        scores = group_scores(model, group, "taylor", grads, graph.followers, torch.Generator())
        assert scores[1::2].abs().max() == 0 and scores[0::2].max() > 0


def test_exclude_keeps_outputs_and_bad_settings_raise():
    pruned, _ = run(ChannelPrune(exclude=("stages.0.0.conv1",)), build("resnet"))
    assert pruned.stages[0][0].conv1.out_channels == 8 and pruned.stages[0][0].conv1.in_channels == 4
    pruned, _ = run(ChannelPrune(exclude=("cls_token",)), build("vit"))
    assert pruned.cls_token.shape[-1] == 16 and pruned.blocks[0].mlp.fc1.out_features == 16
    with pytest.raises(ValueError, match=r"exclude entry 'nope' names no module.*layers are: stem"):
        run(ChannelPrune(exclude=("nope",)), build("resnet"))
    bad = [
        ({"sparsity": 1.5}, r"sparsity .*\[0, 1\), got 1.5"),
        ({"criterion": "l3"}, r"one of l1, l2, taylor, random; got 'l3'"),
        ({"scope": "net"}, r"layer, global; got 'net'"),
        ({"round_to": 0}, r"round_to must be an integer >= 1, got 0"),
    ]
    for settings, message in bad:
        with pytest.raises(ValueError, match=message):
            ChannelPrune(**settings)
    with pytest.raises(ValueError, match=r"sparsity .*got -0.1"):
        HeadPrune(sparsity=-0.1)
    assert step_from_dict({"kind": "channel-prune", "exclude": ["fc"]}) == ChannelPrune(exclude=("fc",))


class Untraceable(nn.Module):
    """Python control flow on a tensor value: torch.fx cannot trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.sum() > 0 else -x


class WithUntraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.odd = nn.Conv2d(1, 8, 3), Untraceable()
        self.conv2, self.fc = nn.Conv2d(8, 8, 3), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.odd(self.conv1(x)))
        return self.fc(x.mean((2, 3)))


def test_untraceable_submodules_are_kept_whole_and_named():
    pruned, ctx = run(ChannelPrune(), WithUntraceable())
    assert (pruned.conv1.out_channels, pruned.conv2.out_channels) == (8, 4)  # odd's input stays
    assert "kept whole, torch.fx could not trace: odd" in ctx.log[0]
    pruned, ctx = run(ChannelPrune(exclude=("odd",)), WithUntraceable())
    assert (pruned.conv1.out_channels, pruned.conv2.out_channels) == (8, 4)
    assert not any("kept whole" in line for line in ctx.log)
    with pytest.raises(ValueError, match=r"cannot trace Untraceable .*nor any of its submodules.*exclude"):
        run(ChannelPrune(), Untraceable())


def test_nothing_prunable_returns_the_model_unchanged():
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 4))
    same, ctx = run(ChannelPrune(), model)
    assert same is model and same[1].in_features == 784
    assert ctx.log == ["channel-prune: no prunable channel groups; model unchanged"]
    same, ctx = run(HeadPrune(), build("resnet"))
    assert "no attention with whole heads" in ctx.log[0]


# --- head-prune -------------------------------------------------------------------------
def test_head_prune_removes_the_heads_that_write_nothing(tmp_path):
    model = build("vit")  # 4 heads of 4 dims, width 16
    for block in model.blocks:
        with torch.no_grad():
            block.attn.v.weight[4:12] = 0.0  # heads 1 and 2 have zero values
            block.attn.v.bias[4:12] = 0.0
    before, params, macs = out(model), count_params(model), count_macs(model, X)
    pruned, ctx = run(HeadPrune(sparsity=0.5), model)
    torch.testing.assert_close(out(pruned), before, rtol=1e-4, atol=1e-5)
    attn = pruned.blocks[0].attn
    assert (attn.num_heads, attn.q.out_features, attn.proj.in_features) == (2, 8, 8)
    assert attn.v.weight.abs().sum(1).min() > 0  # the surviving heads are the live ones
    per_layer = 3 * 8 * (16 + 1) + 16 * 8  # q, k, v rows (+ bias) and proj columns of 2 heads
    assert count_params(pruned) == params - 2 * per_layer
    assert count_macs(pruned, X) < macs
    assert "blocks.1.attn: 4 -> 2 heads" in ctx.log
    loaded = nc.load(nc.save(pruned, tmp_path / "v.ncz"))
    torch.testing.assert_close(loaded(X), out(pruned), rtol=0, atol=0)


def test_head_prune_keeps_one_head_and_sparsity_zero_is_identity():
    model = build("vit")
    before = out(model)
    same, _ = run(HeadPrune(sparsity=0.0), model)
    torch.testing.assert_close(out(same), before, rtol=0, atol=0)
    pruned, _ = run(HeadPrune(sparsity=0.99, criterion="taylor"), model, make_task(lambda: build("vit"), n_train=64))
    assert [b.attn.num_heads for b in pruned.blocks] == [1, 1]
    assert pruned(X).shape == (3, 4)


# --- surgery ----------------------------------------------------------------------------
def test_grouped_and_depthwise_conv_surgery_matches_masked_original():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 5)
    for groups, out_keep, in_keep in [(2, [1, 3, 4, 6], [0, 2, 5, 7]), (8, [2, 3, 8, 9], [1, 4])]:
        conv = nn.Conv2d(8, 8 if groups == 2 else 16, 3, groups=groups)
        masked = x.clone()
        masked[:, [i for i in range(8) if i not in in_keep]] = 0.0
        expected = conv(masked)[:, out_keep]
        cut_conv(conv, torch.tensor(out_keep), torch.tensor(in_keep))
        torch.testing.assert_close(conv(x[:, in_keep]), expected, rtol=1e-5, atol=1e-6)
    assert (conv.groups, conv.in_channels, conv.out_channels) == (2, 2, 4)
    with pytest.raises(ValueError, match="unbalanced cut of a grouped convolution"):
        cut_conv(nn.Conv2d(8, 8, 3, groups=2), torch.tensor([0, 1, 2, 4]), None)


def test_layernorm_and_embedding_surgery():
    ln, emb = nn.LayerNorm(6), nn.Embedding(10, 6)
    with torch.no_grad():
        ln.weight.copy_(torch.arange(6.0))
    cut_layernorm(ln, torch.tensor([1, 4]))
    assert ln.normalized_shape == (2,) and ln.weight.tolist() == [1.0, 4.0]
    cut_embedding(emb, torch.tensor([0, 5]))
    assert emb.embedding_dim == 2 and emb(torch.tensor([3])).shape == (1, 2)
