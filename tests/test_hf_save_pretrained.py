"""A compressed Hugging Face model written back as save_pretrained files loads in transformers alone."""

from __future__ import annotations

import pytest
import torch

import nncompress as nc
from nncompress.io.hf_pretrained import save_pretrained

transformers = pytest.importorskip("transformers", reason="the dev extra installs transformers")


def _llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(config).eval()


@pytest.mark.parametrize(
    "step", [nc.RTNQuantize(bits=4, group_size=32), nc.MagnitudePrune(sparsity=0.5)], ids=lambda s: s.kind
)
def test_compressed_model_reloads_in_transformers(step, tmp_path):
    model = _llama()
    ctx = nc.StepContext(task=None, seed=0)  # data-free steps
    compressed = step.apply(model, ctx)
    ids = torch.randint(0, 128, (1, 12))
    with torch.no_grad():
        expected = compressed(ids).logits
    notes = save_pretrained(compressed, tmp_path / "hf")
    assert (step.kind == "rtn") == bool(notes) and all("decoded" in n for n in notes)
    loaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert all(type(m).__module__.startswith(("transformers", "torch")) for m in loaded.modules())
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, expected, rtol=1e-4, atol=1e-4)


def test_layers_the_architecture_cannot_hold_are_refused(tmp_path):
    model = _llama()
    from nncompress.base.conv_as_linear import ConvAsLinear

    model.model.layers[0].mlp.down_proj = ConvAsLinear(torch.nn.Conv1d(128, 64, 1))
    with pytest.raises(ValueError, match="down_proj.*ConvAsLinear.*cannot be written"):
        save_pretrained(model, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_cuts_the_config_does_not_state_are_refused(tmp_path):
    model = _llama()
    mlp = model.model.layers[0].mlp
    mlp.up_proj = torch.nn.Linear(64, 96, bias=False)
    with pytest.raises(ValueError, match="up_proj.weight is \\(96, 64\\) but the config describes \\(128, 64\\)"):
        save_pretrained(model, tmp_path / "hf")
    with pytest.raises(ValueError, match="PreTrainedModel"):
        save_pretrained(torch.nn.Linear(2, 2), tmp_path / "x")
