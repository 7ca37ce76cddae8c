"""The sequential layer-by-layer engine: block discovery, input capture, grouping, statistics, order."""

from __future__ import annotations

import copy

import pytest
import torch
from llm_archs import TinyLM, lm_task, tiny_lm
from torch import nn

from nncompress.core.sequential import (
    LayerStats,
    find_blocks,
    plain_linears,
    run_sequential,
    select_linears,
)

BLOCK_LAYERS = ["attn.q", "attn.k", "attn.v", "attn.proj", "fc1", "fc2"]  # execution order in a block


def _selected(model: nn.Module) -> dict[str, nn.Linear]:
    return select_linears(model, layers=(), exclude=(), keep_classifier=True)


def test_find_blocks_picks_the_longest_list_and_accepts_an_override():
    model = tiny_lm(depth=3)
    assert find_blocks(model)[0] == "blocks"
    assert [n for n, _ in find_blocks(model)[1]] == ["blocks.0", "blocks.1", "blocks.2"]
    assert find_blocks(nn.Sequential(nn.Linear(2, 2), nn.ReLU())) == ("", [])  # mixed children: no blocks
    assert find_blocks(model, "") == ("", [])
    with pytest.raises(ValueError, match="blocks='nope' names no module"):
        find_blocks(model, "nope")
    with pytest.raises(ValueError, match="must name a non-empty nn.ModuleList"):
        find_blocks(model, "blocks.0.fc1")


def test_select_linears_keeps_the_lm_head_and_validates_patterns():
    model = tiny_lm()
    names = list(_selected(model))
    assert "head" not in names and len(names) == 12
    assert list(select_linears(model, layers=("blocks.1",), exclude=(r".*fc\d",), keep_classifier=True)) == [
        "blocks.1.attn.q", "blocks.1.attn.k", "blocks.1.attn.v", "blocks.1.attn.proj",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="layers entry 'blocks.9' names no module"):
        select_linears(model, layers=("blocks.9",), exclude=(), keep_classifier=True)


def test_each_linear_is_visited_once_in_execution_order_with_groups_and_producers():
    model = tiny_lm()
    seen: list[tuple[list[str], list[str]]] = []

    def process(run, groups):
        for g in groups:
            assert all(g.stats[n].count == 4 * 16 * 16 for n in g.selected)  # 4 batches of 16 x 16 tokens
            seen.append((g.selected, g.producers[:1]))

    log: list[str] = []
    visited = run_sequential(model, lm_task().train, process, select=_selected(model), needs=("sq_sum",), log=log)
    assert visited == [f"blocks.{b}.{n}" for b in range(2) for n in BLOCK_LAYERS]
    assert seen[:4] == [
        (["blocks.0.attn.q", "blocks.0.attn.k", "blocks.0.attn.v"], ["blocks.0.norm1"]),  # one group: one input
        (["blocks.0.attn.proj"], ["blocks.0.attn.v"]),
        (["blocks.0.fc1"], ["blocks.0.norm2"]),
        (["blocks.0.fc2"], ["blocks.0.fc1"]),  # a candidate only: the GELU makes that fold inexact
    ]
    assert log == ["sequential: 2 blocks of 'blocks', 4 batch(es)"]


def test_next_block_reads_the_compressed_block_outputs():
    """Block 1's statistics come from block 0 as compressed, matching a manual run of that model."""
    model, task = tiny_lm(), lm_task()
    norms: dict[str, torch.Tensor] = {}

    def halve(run, groups):  # a stand-in "compression": every weight halved, once
        for g in groups:
            for name in g.selected:
                norms[name] = g.stats[name].norms()
                g.module(name).weight.data.mul_(0.5)

    run_sequential(model, task.train, halve, select=_selected(model), needs=("sq_sum",))
    original = tiny_lm()
    for m, expect_equal in ((model, True), (original, False)):
        sq = torch.zeros(32)
        for ids, _ in task.train:
            with torch.no_grad():
                x = m.embed(ids) + m.pos[:, : ids.shape[1]]
                x = m.blocks[0](x)  # the halved block for `model`, the float one for `original`
                sq += m.blocks[1].norm1(x).reshape(-1, 32).square().sum(0)
        assert torch.allclose(norms["blocks.1.attn.q"], sq.sqrt(), rtol=1e-4) == expect_equal


def test_models_without_blocks_are_one_block_and_layers_outside_blocks_come_last():
    mlp = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    batches = [(torch.randn(5, 6), None)]
    order: list[str] = []
    visited = run_sequential(mlp, batches, lambda run, gs: order.extend(n for g in gs for n in g.selected),
                             select=["0", "2"], needs=("hessian",))  # fmt: skip
    assert visited == order == ["0", "2"]

    class WithPooler(TinyLM):
        def __init__(self) -> None:
            super().__init__()
            self.pooler = nn.Linear(32, 32)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return super().forward(ids) + self.pooler(self.embed(ids)).sum()

    model = WithPooler().eval()
    log: list[str] = []
    select = select_linears(model, layers=(), exclude=("head",), keep_classifier=False)
    visited = run_sequential(model, lm_task().train, lambda r, g: None, select=select, needs=(), log=log)
    assert visited[-1] == "pooler" and len(visited) == len(set(visited)) == 13
    assert "1 layer(s) outside the blocks" in log[-1]


def test_blocks_that_do_not_chain_are_refused():
    class Parallel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.heads = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return sum(h(x) for h in self.heads)

    with pytest.raises(ValueError, match="do not form a chain"):  # named: an error; found automatically: see below
        run_sequential(Parallel(), [(torch.randn(2, 4), None)], lambda r, g: None, select=["heads.0"], needs=(),
                       blocks="heads")  # fmt: skip
    # as one block it works
    assert run_sequential(Parallel(), [(torch.randn(2, 4), None)], lambda r, g: None, select=["heads.0"], needs=(),
                          blocks="") == ["heads.0"]  # fmt: skip


def test_layer_stats_match_their_definitions():
    x = torch.randn(3, 7, 5)
    stats = LayerStats()
    stats.add(x[:1], ("hessian", "sq_sum", "absmax", "abs_sum", "samples"), sample_rows=4)
    stats.add(x[1:], ("hessian", "sq_sum", "absmax", "abs_sum", "samples"), sample_rows=4)
    rows = x.reshape(-1, 5)
    torch.testing.assert_close(stats.hessian(), 2 * rows.T @ rows / 21)
    torch.testing.assert_close(stats.norms(), rows.norm(dim=0))
    torch.testing.assert_close(stats.absmax, rows.abs().amax(0))
    torch.testing.assert_close(stats.absmean(), rows.abs().mean(0))
    assert stats.samples.shape == (8, 5) and stats.count == 21


def test_training_flags_of_submodules_are_restored():
    model = tiny_lm()
    model.train()
    model.blocks[0].eval()  # a submodule in eval inside a model in train: both must survive
    run_sequential(model, lm_task().train, lambda r, g: None, select=["blocks.0.fc1"], needs=())
    assert model.training and not model.blocks[0].training and not model.blocks[0].fc1.training
    assert model.blocks[1].training


def test_plain_linears_skips_replaced_layers():
    from nncompress.quantize.layers import quantize_weight_module
    from nncompress.quantize.primitives import QuantSpec

    packed = quantize_weight_module(nn.Linear(4, 4), QuantSpec(bits=4, granularity="channel"))
    model = nn.Sequential(nn.Linear(4, 4), packed)
    assert [n for n, _ in plain_linears(model)] == ["0"]


@pytest.mark.parametrize(
    "module",
    ["core.sequential", "quantize.gptq", "quantize.awq", "quantize.hqq", "quantize.smoothquant", "prune.wanda",
     "prune.sparsegpt"],
)  # fmt: skip
def test_docstring_examples_run(module):
    import doctest
    import importlib

    mod = importlib.import_module(f"nncompress.{module}")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0


def test_an_automatic_block_list_that_does_not_chain_falls_back_to_the_whole_model():
    class Parallel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.heads = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return sum(h(x) for h in self.heads)

    log: list[str] = []
    visited = run_sequential(Parallel(), [(torch.randn(2, 4), None)], lambda r, g: None, select=["heads.0", "heads.2"],
                             needs=(), log=log)  # fmt: skip
    assert visited == ["heads.0", "heads.2"] and "the whole model is one block" in log[0]


def test_hugging_face_bert_blocks_masks_and_folds():
    transformers = pytest.importorskip("transformers")
    import nncompress as nc
    from nncompress.core.step import StepContext

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=16,
    )  # fmt: skip
    bert = transformers.BertModel(config).eval()

    class Encoder(nn.Module):  # (ids, mask) -> last hidden state
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.bert(input_ids=ids, attention_mask=mask).last_hidden_state

    model = Encoder().eval()
    ids = torch.randint(0, 50, (8, 12))
    mask = torch.ones(8, 12, dtype=torch.long)
    mask[:3, 9:] = 0  # padded rows: the mask must reach every block, per batch
    batches = [((ids[:4], mask[:4]), None), ((ids[4:], mask[4:]), None)]
    with torch.no_grad():
        ref = model(ids, mask)
    order = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
             "intermediate.dense", "output.dense"]  # fmt: skip
    visited = run_sequential(model, batches, lambda r, g: None, select=_selected(model), needs=())
    assert visited == [f"bert.encoder.layer.{i}.{n}" for i in range(2) for n in order]

    task = nc.Task(name="bert", train=batches, val=batches, test=batches, baseline=lambda: model)
    for step in (nc.GPTQQuantize(bits=8, group_size=16), nc.SmoothQuant()):
        ctx = StepContext(task=task)
        out = step.apply(copy.deepcopy(model), ctx)
        with torch.no_grad():
            assert float((out(ids, mask) - ref).norm() / ref.norm()) < 0.01  # 8-bit: close to float
    # post-norm: attention.output.LayerNorm also feeds the residual, so only value -> output.dense folds
    assert any("layer.0.attention.output.dense -> bert.encoder.layer.0.attention.self.value" in x for x in ctx.log)
    assert isinstance(out.bert.encoder.layer[0].intermediate.dense.inv_scale, torch.Tensor)  # explicit


def _tiny_gemma3(layer_types: list[str]):
    """A random tiny Gemma-3 whose layers alternate sliding-window (local rotary) and global attention."""
    transformers = pytest.importorskip("transformers")
    config = transformers.Gemma3TextConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=len(layer_types), num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, sliding_window=3, layer_types=layer_types, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.Gemma3ForCausalLM(config).eval()


def test_each_block_gets_the_arguments_the_model_passes_it():
    """Sliding-window and global layers take different masks and rotary embeddings: calibration must
    run each block with its own (per batch), so its outputs equal the model's own block outputs."""
    model = _tiny_gemma3(["sliding_attention", "full_attention", "sliding_attention", "full_attention"])
    model.config.use_cache = False  # no KV cache here (the next test has one)
    ids = torch.randint(0, 64, (4, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(4, 10, dtype=torch.long)
    mask[2, :3] = 0  # left padding in the second batch only: masks differ per batch too
    batches = [({"input_ids": ids[:2], "attention_mask": mask[:2]}, None),
               ({"input_ids": ids[2:], "attention_mask": mask[2:]}, None)]  # fmt: skip

    expected: dict[int, list[tuple]] = {i: [] for i in range(4)}  # the model's own calls and outputs, per block
    hooks = [layer.register_forward_hook(lambda m, a, k, out, i=i: expected[i].append((k, out)), with_kwargs=True)
             for i, layer in enumerate(model.model.layers)]  # fmt: skip
    with torch.no_grad():
        for inputs, _ in batches:
            model(**inputs)
    for h in hooks:
        h.remove()
    sliding, full = expected[0][0][0], expected[1][0][0]
    assert not torch.equal(sliding["position_embeddings"][0], full["position_embeddings"][0])  # the setup differs

    seen: dict[str, list] = {}

    def process(run, groups):  # record what each block is run with and what it returns; compress nothing
        seen.setdefault(run.prefix, [run.calls, run.forward()])

    select = _selected(model)
    run_sequential(model, batches, process, select=select, needs=())
    assert sorted(seen) == [f"model.layers.{i}" for i in range(4)]
    for i in range(4):
        calls, outputs = seen[f"model.layers.{i}"]
        for b, ((_, kwargs), out) in enumerate(zip(calls, outputs)):
            want_kwargs, want_out = expected[i][b]
            for key in ("position_embeddings", "attention_mask"):
                got, want = kwargs[key], want_kwargs[key]
                assert (got is None) == (want is None), (i, b, key)
                if want is not None:
                    assert all(torch.equal(g, w) for g, w in zip(_flat(got), _flat(want))), (i, b, key)
            torch.testing.assert_close(_hidden(out), _hidden(want_out))


def _flat(value):
    return list(value) if isinstance(value, (tuple, list)) else [value]


def _hidden(out):
    return out if isinstance(out, torch.Tensor) else out[0]


def test_gptq_on_a_model_with_sliding_and_global_layers_stays_close():
    import nncompress as nc
    from nncompress.core.step import StepContext

    model = _tiny_gemma3(["sliding_attention", "full_attention", "sliding_attention"])
    model.config.use_cache = True  # a KV cache the model creates must not leak into calibration reruns
    ids = torch.randint(0, 64, (8, 12), generator=torch.Generator().manual_seed(2))
    batches = [(ids[:4], ids[:4]), (ids[4:], ids[4:])]
    with torch.no_grad():
        ref = model(ids).logits
    task = nc.Task(name="gemma3", train=batches, val=batches, test=batches, baseline=lambda: model)
    out = nc.GPTQQuantize(bits=8, group_size=16).apply(copy.deepcopy(model), StepContext(task=task))
    with torch.no_grad():
        got = out(ids).logits
    assert float((got - ref).norm() / ref.norm()) < 0.02  # 8-bit: close to float
