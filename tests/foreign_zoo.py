"""The foreign zoo: models nncompress did not write, built with random weights and small inputs.

Every torchvision classification model, a dozen timm models, Hugging Face decoders, encoders,
T5, ViT and the Whisper encoder from tiny configs, and LSTM / GRU / Conv1d nets. Each entry is a
builder, example inputs and a task-like setup (random data with the right shapes, a loss and a
metric that read what the model returns: a tensor, a tuple, a dict or a ``ModelOutput``).
``benchmarks/coverage.py`` runs every step family over it; ``tests/test_foreign_models.py`` runs
a fast subset.

torchvision 0.28's wheel is a CUDA build whose compiled ops do not load with the CPU torch; the
model definitions need none of them, so the op schemas are defined (no kernels) before import.

Example:
    >>> entry = ZOO["hf-gpt2"]  # doctest: +SKIP
    >>> model, task = entry.build(), entry.task()  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import nncompress as nc
from nncompress.base import compat
from nncompress.tasks.outputs import primary_output

NUM_CLASSES = 10
BATCH = 2
SEQ = 8
VOCAB = 128


def import_torchvision() -> Any:
    """torchvision (and so timm), importable beside the CPU torch: see nncompress/base/compat.py."""
    torchvision = compat.import_torchvision()
    if torchvision is None:
        raise ImportError("torchvision is not installed")
    return torchvision


# --- what models return, read the same way by every loss and metric --------------------
logits_of = primary_output  # a tensor, the first of a tuple, or the logits of a dict / ModelOutput


def classify_loss(out: Any, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the logits (any output type) against class labels."""
    return F.cross_entropy(logits_of(out).float(), targets)


def classify_accuracy(out: Any, targets: torch.Tensor) -> float:
    """Top-1 accuracy of the logits (any output type)."""
    return float((logits_of(out).argmax(-1) == targets).float().mean())


def lm_loss(out: Any, targets: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: logits (B, T, V) against token ids (B, T)."""
    logits = logits_of(out).float()
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def token_accuracy(out: Any, targets: torch.Tensor) -> float:
    """Fraction of tokens whose top-1 prediction is the target."""
    return float((logits_of(out).argmax(-1) == targets).float().mean())


# --- the zoo -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ZooEntry:
    """One foreign architecture: how to build it, what it eats, and how its task scores it.

    ``inputs(n, seed)`` returns a batch of ``n`` random samples as the model takes them (a
    tensor or a dict of keyword arguments); ``targets(inputs, out, seed)`` matching labels.
    """

    name: str
    group: str  # torchvision | timm | hf | rnn
    builder: Callable[[], nn.Module]
    inputs: Callable[[int, int], Any]
    targets: Callable[[Any, int], torch.Tensor]
    loss: Callable[[Any, torch.Tensor], torch.Tensor] = classify_loss
    metric: Callable[[Any, torch.Tensor], float] = classify_accuracy
    tags: frozenset[str] = field(default_factory=frozenset)  # "attention", "rnn", "conv", "big"

    def build(self, seed: int = 0) -> nn.Module:
        """The model with seeded random weights, in eval mode."""
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self.builder().eval()

    def example(self, n: int = BATCH, seed: int = 0) -> Any:
        """``n`` random samples as the model takes them."""
        return self.inputs(n, seed)

    def task(self, batches: int = 2, batch_size: int = BATCH, model: nn.Module | None = None) -> nc.Task:
        """A small task of random data: ``batches`` batches per split, scored as the entry says."""
        splits = []
        for offset in (100, 200, 300):
            data = [self.inputs(batch_size, offset + i) for i in range(batches)]
            splits.append([(x, self.targets(x, offset + i)) for i, x in enumerate(data)])
        train, val, test = splits
        return nc.Task(
            name=f"zoo-{self.name}",
            train=train,
            val=val,
            test=test,
            baseline=(lambda: model) if model is not None else self.build,
            metric=self.metric,
            loss=self.loss,
            example_inputs=self.inputs(batch_size, 0),
        )


def _images(size: int, channels: int = 3, key: str | None = None) -> Callable[[int, int], Any]:
    def make(n: int, seed: int) -> Any:
        x = torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(seed))
        return {key: x} if key else x

    return make


def _labels(classes: int = NUM_CLASSES) -> Callable[[Any, int], torch.Tensor]:
    def make(inputs: Any, seed: int) -> torch.Tensor:
        first = inputs if isinstance(inputs, torch.Tensor) else next(iter(inputs.values()))
        return torch.randint(0, classes, (first.shape[0],), generator=torch.Generator().manual_seed(seed + 7))

    return make


def _tokens(*, mask: bool = True, decoder: bool = False, seq: int = SEQ) -> Callable[[int, int], Any]:
    def make(n: int, seed: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, VOCAB, (n, seq), generator=g)
        out = {"input_ids": ids}
        if mask:
            out["attention_mask"] = torch.ones(n, seq, dtype=torch.long)
        if decoder:
            out["decoder_input_ids"] = torch.randint(0, VOCAB, (n, seq), generator=g)
        return out

    return make


def _next_tokens(key: str = "input_ids") -> Callable[[Any, int], torch.Tensor]:
    def make(inputs: Any, seed: int) -> torch.Tensor:
        ids = inputs[key]
        return torch.cat([ids[:, 1:], ids[:, :1]], dim=1)  # next token, wrapped at the end

    return make


# torchvision: input side per model (most run at 64x64; some need more)
TV_SIZE = {"inception_v3": 96, "maxvit_t": 224, "vit_h_14": 56}
TV_KWARGS: dict[str, dict[str, Any]] = {
    "inception_v3": {"aux_logits": False, "init_weights": True},
    "googlenet": {"aux_logits": False, "init_weights": True},
    **{f"vit_{v}": {"image_size": 64} for v in ("b_16", "b_32", "l_16", "l_32")},
    "vit_h_14": {"image_size": 56},
}


def torchvision_names() -> list[str]:
    """Every torchvision classification model name (the builders in ``torchvision.models``)."""
    tv = import_torchvision()
    return list(tv.models.list_models(module=tv.models))


def _torchvision(name: str) -> ZooEntry:
    def build() -> nn.Module:
        tv = import_torchvision()
        return tv.models.get_model(name, num_classes=NUM_CLASSES, **TV_KWARGS.get(name, {}))

    tags = {"conv"}
    if name.startswith(("vit", "swin", "maxvit")):
        tags.add("attention")
    if name in TV_BIG_NAMES:
        tags.add("big")
    return ZooEntry(f"tv-{name}", "torchvision", build, _images(TV_SIZE.get(name, 64)), _labels(), tags=frozenset(tags))


TIMM = {  # name -> image side
    "resnet18": 64,
    "efficientnet_b0": 64,
    "mobilenetv3_small_100": 64,
    "convnext_atto": 64,
    "vit_tiny_patch16_224": 64,
    "deit_tiny_patch16_224": 64,
    "regnetx_002": 64,
    "ghostnet_100": 64,
    "lcnet_050": 64,
    "mixnet_s": 64,
    "densenet121": 64,
    "mobilevit_xxs": 64,
    "rexnet_100": 64,
    "cspresnet50": 64,
}


def _timm(name: str, side: int) -> ZooEntry:
    def build() -> nn.Module:
        import_torchvision()
        import timm

        kwargs: dict[str, Any] = {"num_classes": NUM_CLASSES}
        if name.startswith(("vit", "deit")):
            kwargs["img_size"] = side
        return timm.create_model(name, pretrained=False, **kwargs)

    tags = {"conv"} | ({"attention"} if name.startswith(("vit", "deit", "mobilevit")) else set())
    return ZooEntry(f"timm-{name}", "timm", build, _images(side), _labels(), tags=frozenset(tags))


# Hugging Face: tiny configs (2 layers, width 64, vocabulary 128)
DECODERS = {
    "gpt2": (
        "GPT2Config",
        "GPT2LMHeadModel",
        {"n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": 64, "bos_token_id": 0, "eos_token_id": 1},
    ),
    "llama": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 64,
        },
    ),
    "qwen2": (
        "Qwen2Config",
        "Qwen2ForCausalLM",
        {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 64,
        },
    ),
    "mistral": (
        "MistralConfig",
        "MistralForCausalLM",
        {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 64,
            "sliding_window": None,
        },
    ),
    "gemma": (
        "GemmaConfig",
        "GemmaForCausalLM",
        {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "max_position_embeddings": 64,
        },
    ),
    "phi": (
        "PhiConfig",
        "PhiForCausalLM",
        {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 64,
        },
    ),
}


def _hf(config_name: str, model_name: str, settings: dict[str, Any]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import transformers

        config = getattr(transformers, config_name)(**settings)
        if hasattr(config, "_attn_implementation"):
            config._attn_implementation = "eager"
        return getattr(transformers, model_name)(config)

    return build


def _decoder(key: str) -> ZooEntry:
    config_name, model_name, settings = DECODERS[key]
    settings = {"vocab_size": VOCAB, **settings}
    return ZooEntry(
        f"hf-{key}",
        "hf",
        _hf(config_name, model_name, settings),
        _tokens(),
        _next_tokens(),
        loss=lm_loss,
        metric=token_accuracy,
        tags=frozenset({"attention", "decoder"}),
    )


def _hf_entries() -> list[ZooEntry]:
    text = {"vocab_size": VOCAB, "max_position_embeddings": 64, "num_labels": NUM_CLASSES}
    entries = [_decoder(k) for k in DECODERS]
    entries += [
        ZooEntry(
            "hf-bert",
            "hf",
            _hf(
                "BertConfig",
                "BertForSequenceClassification",
                {**text, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4},
            ),
            _tokens(),
            _labels(),
            tags=frozenset({"attention"}),
        ),
        ZooEntry(
            "hf-distilbert",
            "hf",
            _hf(
                "DistilBertConfig",
                "DistilBertForSequenceClassification",
                {**text, "dim": 64, "hidden_dim": 128, "n_layers": 2, "n_heads": 4},
            ),
            _tokens(),
            _labels(),
            tags=frozenset({"attention"}),
        ),
        ZooEntry(
            "hf-t5",
            "hf",
            _hf(
                "T5Config",
                "T5ForConditionalGeneration",
                {
                    "vocab_size": VOCAB,
                    "d_model": 64,
                    "d_ff": 128,
                    "d_kv": 16,
                    "num_layers": 2,
                    "num_heads": 4,
                    "decoder_start_token_id": 0,
                },
            ),
            _tokens(decoder=True),
            _next_tokens("decoder_input_ids"),
            loss=lm_loss,
            metric=token_accuracy,
            tags=frozenset({"attention", "seq2seq"}),
        ),
        ZooEntry(
            "hf-vit",
            "hf",
            _hf(
                "ViTConfig",
                "ViTForImageClassification",
                {
                    "image_size": 32,
                    "patch_size": 8,
                    "hidden_size": 64,
                    "intermediate_size": 128,
                    "num_hidden_layers": 2,
                    "num_attention_heads": 4,
                    "num_labels": NUM_CLASSES,
                },
            ),
            _images(32, key="pixel_values"),
            _labels(),
            tags=frozenset({"attention"}),
        ),
        ZooEntry(
            "hf-whisper-encoder",
            "hf",
            _hf(
                "WhisperConfig",
                "WhisperForAudioClassification",
                {
                    "vocab_size": VOCAB,
                    "num_mel_bins": 16,
                    "d_model": 64,
                    "encoder_layers": 2,
                    "decoder_layers": 2,
                    "encoder_attention_heads": 4,
                    "decoder_attention_heads": 4,
                    "encoder_ffn_dim": 128,
                    "decoder_ffn_dim": 128,
                    "max_source_positions": 16,
                    "num_labels": NUM_CLASSES,
                    "pad_token_id": 0,
                    "bos_token_id": 1,
                    "eos_token_id": 2,
                    "decoder_start_token_id": 3,
                },
            ),
            _features(16, 32, key="input_features"),
            _labels(),
            tags=frozenset({"attention", "conv"}),
        ),
    ]
    return entries


def _features(
    channels: int, length: int, key: str | None = None, batch_first: bool = False
) -> Callable[[int, int], Any]:
    def make(n: int, seed: int) -> Any:
        shape = (n, length, channels) if batch_first else (n, channels, length)
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
        return {key: x} if key else x

    return make


# --- recurrent and 1-D convolutional nets ------------------------------------------------
class RecurrentClassifier(nn.Module):
    """A 2-layer LSTM or GRU over (B, T, features), classifying from the last step."""

    def __init__(self, cell: str = "lstm", features: int = 16, hidden: int = 64, classes: int = NUM_CLASSES) -> None:
        super().__init__()
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn(features, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, features)
        out, _ = self.rnn(x)  # (B, T, hidden)
        return self.head(out[:, -1])


class Conv1dNet(nn.Module):
    """Conv1d -> BN -> ReLU blocks over (B, channels, T), global average pooled, then a Linear."""

    def __init__(self, channels: int = 16, width: int = 32, classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(channels, width, 5, padding=2),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.Conv1d(width, 2 * width, 3, padding=1, stride=2),
            nn.BatchNorm1d(2 * width),
            nn.ReLU(),
            nn.Conv1d(2 * width, 2 * width, 3, padding=1),
            nn.BatchNorm1d(2 * width),
            nn.ReLU(),
        )
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, channels, T)
        return self.head(self.features(x).mean(-1))


def _rnn_entries() -> list[ZooEntry]:
    return [
        ZooEntry(
            "rnn-lstm",
            "rnn",
            lambda: RecurrentClassifier("lstm"),
            _features(16, 12, batch_first=True),
            _labels(),
            tags=frozenset({"rnn"}),
        ),
        ZooEntry(
            "rnn-gru",
            "rnn",
            lambda: RecurrentClassifier("gru"),
            _features(16, 12, batch_first=True),
            _labels(),
            tags=frozenset({"rnn"}),
        ),
        ZooEntry("conv1d-net", "rnn", Conv1dNet, _features(16, 32), _labels(), tags=frozenset({"conv"})),
    ]


# torchvision models over 40M parameters (counted once on the meta device): the matrix runs only
# channel pruning on them, to keep the CPU benchmark under a quarter of an hour
TV_BIG_NAMES = frozenset(
    {
        "alexnet",
        "convnext_base",
        "convnext_large",
        "convnext_small",
        "efficientnet_b6",
        "efficientnet_b7",
        "efficientnet_v2_l",
        "efficientnet_v2_m",
        "regnet_x_16gf",
        "regnet_x_32gf",
        "regnet_x_8gf",
        "regnet_y_128gf",
        "regnet_y_16gf",
        "regnet_y_32gf",
        "regnet_y_8gf",
        "resnet101",
        "resnet152",
        "resnext101_32x8d",
        "resnext101_64x4d",
        "swin_b",
        "swin_s",
        "swin_v2_b",
        "swin_v2_s",
        "vgg11",
        "vgg11_bn",
        "vgg13",
        "vgg13_bn",
        "vgg16",
        "vgg16_bn",
        "vgg19",
        "vgg19_bn",
        "vit_b_16",
        "vit_b_32",
        "vit_h_14",
        "vit_l_16",
        "vit_l_32",
        "wide_resnet101_2",
        "wide_resnet50_2",
    }
)


@cache
def zoo() -> dict[str, ZooEntry]:
    """Every entry by name: torchvision, timm, Hugging Face, recurrent (in that order)."""
    entries: list[ZooEntry] = []
    with contextlib.suppress(ImportError):
        entries += [_torchvision(name) for name in torchvision_names()]
    entries += [_timm(n, s) for n, s in TIMM.items()]
    entries += _hf_entries()
    entries += _rnn_entries()
    return {e.name: e for e in entries}


def get(name: str) -> ZooEntry:
    """One entry by name (ValueError naming the known ones otherwise)."""
    entries = zoo()
    if name not in entries:
        raise ValueError(f"unknown zoo entry {name!r}; known: {', '.join(entries)}")
    return entries[name]
