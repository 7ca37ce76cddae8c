"""Deep Compression weight sharing (Han et al. 2016, "Deep Compression", section 3): ``kmeans-quantize``.

Each targeted layer's weights are clustered with 1-D k-means (linear initialisation) into ``2**bits``
shared values; a layer already pruned keeps an exact-zero centroid so its zeros stay zero. The
centroids are then fine-tuned on the task's train split with the codes fixed: during training each
layer's weight is ``centroids[codes]``, so autograd gives every centroid the sum of the gradients of
the weights in its cluster, as in the paper. Finally the layers become ``CodebookLinear`` /
``CodebookConv2d`` (codes packed at ``bits``). The artifact then stores each layer's codes
Huffman-coded, a pruned layer's zeros as Huffman-coded position gaps (``io/huffman.py``: the
paper's last stage); the log gives both the fixed-width and the stored size of the codes.

Example:
    >>> KMeansQuantize(bits_conv=5, bits_linear=4, epochs=1)  # doctest: +ELLIPSIS
    KMeansQuantize(bits_conv=5, bits_linear=4, ..., epochs=1.0, lr=0.0003, ...)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nncompress.base.modules import check_supported, replace_module, weight_layers
from nncompress.base.selection import check_patterns, is_excluded
from nncompress.base.settings import Exclusions, KDSettings, TrainSettings, default
from nncompress.core.step import Step, StepContext, register_step
from nncompress.io.encodings import pow2_int8_exponent
from nncompress.io.huffman import encode_symbols
from nncompress.quantize.codebook import kmeans_codebook
from nncompress.quantize.layers import codebook_module
from nncompress.train.loop import fit, train_config
from nncompress.train.objective import distill_note, step_loss

ZERO_FRACTION = 0.01  # a layer with at least this share of exact zeros counts as pruned
STORAGE = ("float32", "float16", "int8")


def round_for_storage(t: torch.Tensor, storage: str) -> torch.Tensor:
    """``t`` rounded to values that ``storage`` holds exactly: float16 values, or int8 codes times
    the power of two that covers ``max|t|`` (``io/encodings.py`` then stores them that narrow).

    Example:
        >>> round_for_storage(torch.tensor([0.5, -1.0, 0.3]), "int8").tolist()  # grid step 2**-6
        [0.5, -1.0, 0.296875]
    """
    if storage == "float32":
        return t.detach().clone()
    if storage == "float16":
        return t.detach().half().float()
    absmax = float(t.detach().abs().max()) if t.numel() else 0.0
    if absmax == 0.0:
        return t.detach().clone()
    step = 2.0 ** pow2_int8_exponent(absmax)
    return (t.detach() / step).round().clamp(-127, 127) * step


class SharedWeight(nn.Module):
    """Training-time layer whose weight is ``centroids[codes]`` (codes fixed, centroids trained).

    A fixed-zero centroid (``frozen``) stays exactly 0, so pruned weights stay pruned.

    Example:
        >>> layer = nn.Linear(4, 2)
        >>> shared = SharedWeight(layer, torch.tensor([-0.1, 0.0, 0.1]), torch.ones(2, 4, dtype=torch.uint8))
        >>> shared(torch.ones(1, 4)).shape
        torch.Size([1, 2])
    """

    def __init__(
        self, source: nn.Module, centroids: torch.Tensor, codes: torch.Tensor, frozen: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        self.source = source  # geometry and bias; its weight is not used while shared
        self.centroids = nn.Parameter(centroids.detach().float().clone())
        self.register_buffer("codes", codes.detach().long())
        self.register_buffer("frozen", frozen if frozen is not None else torch.zeros_like(centroids, dtype=torch.bool))

    @property
    def weight(self) -> torch.Tensor:
        """The shared weight (a property, as on the layer it replaces, so model code reading ``.weight`` runs);
        its gradient w.r.t. centroid k is the sum over the weights coded k."""
        centroids = self.centroids.masked_fill(self.frozen, 0.0)
        return centroids[self.codes]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        src, w = self.source, self.weight
        if isinstance(src, nn.Linear):
            return F.linear(x, w, src.bias)
        conv = F.conv1d if isinstance(src, nn.Conv1d) else F.conv2d
        return conv(x, w, src.bias, src.stride, src.padding, src.dilation, src.groups)

    def final_centroids(self) -> torch.Tensor:
        return self.centroids.detach().masked_fill(self.frozen, 0.0)


@register_step("kmeans-quantize", family="quantize", produces="codebook")
@dataclass(frozen=True)
class KMeansQuantize(TrainSettings, KDSettings, Exclusions, Step):
    """Share weights with k-means codebooks, fine-tune the centroids, store packed cluster indices.

    Args:
        bits_conv: index width of Conv2d layers (``2**bits_conv`` shared values), in [1, 8].
        bits_linear: index width of Linear layers, in [1, 8].
        epochs: passes of centroid fine-tuning over the train split (0 = none).
        lr: learning rate of the centroid fine-tuning (AdamW, cosine schedule).
        keep_zero: ``"auto"`` keeps an exact-zero centroid for pruned layers (a pruning mask in the
            context or >= 1% exact zeros), ``"always"`` / ``"never"`` for every layer.
        exclude: module names or regexes (full match) left in float.
        max_steps: cap on fine-tuning steps (None: ``epochs`` decides).
        centroid_dtype: storage of the centroids: ``"float32"``, ``"float16"``, or ``"int8"``
            (rounded to int8 codes times a power of two per layer; the artifact stores 1 byte each).
        bias_dtype: ``"float32"``, or ``"float16"`` / ``"int8"`` to round the biases likewise (the
            artifact then stores 2 or 1 bytes each; a tiny model's biases weigh as much as its codes).
        distill, kd_alpha, kd_temperature: fine-tune the centroids on soft labels from the model
            before compression mixed with the task loss (as in ``qat``); without a teacher, the task loss.

    Example:
        >>> KMeansQuantize(bits_conv=8, bits_linear=5, epochs=0).bits_linear
        5
    """

    bits_conv: int = 5
    bits_linear: int = 4
    lr: float = default(3e-4)
    zero_epochs_allowed = True  # epochs = 0: cluster only, no centroid fine-tuning
    keep_zero: str = "auto"
    centroid_dtype: str = "float32"
    bias_dtype: str = "float32"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("bits_conv", "bits_linear"):
            bits = getattr(self, name)
            if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
                raise ValueError(f"{name} must be an integer in [1, 8], got {bits!r}")
        if self.keep_zero not in ("auto", "always", "never"):
            raise ValueError(f"keep_zero must be 'auto', 'always' or 'never', got {self.keep_zero!r}")
        for name in ("centroid_dtype", "bias_dtype"):
            if getattr(self, name) not in STORAGE:
                raise ValueError(f"{name} must be one of {', '.join(STORAGE)}; got {getattr(self, name)!r}")

    def _keeps_zero(self, name: str, weight: torch.Tensor, ctx: StepContext, bits: int) -> bool:
        if bits < 2 or self.keep_zero == "never":
            return False
        if self.keep_zero == "always":
            return True
        mask = ctx.masks.get(f"{name}.weight")
        pruned = mask is not None and not bool(mask.all())
        return pruned or float((weight == 0).float().mean()) >= ZERO_FRACTION

    def share(self, model: nn.Module, ctx: StepContext) -> tuple[nn.Module, dict[str, tuple[SharedWeight, int]]]:
        """Replace each targeted layer by a ``SharedWeight``; returns the model and ``{name: (layer, bits)}``."""
        check_patterns(model, self.exclude, "exclude")
        layers = [(n, m) for n, m in weight_layers(model) if not is_excluded(n, self.exclude)]
        check_supported(layers)
        if not layers:
            raise ValueError("kmeans-quantize: no Linear or Conv2d layer left to quantize after exclusions")
        shared: dict[str, tuple[SharedWeight, int]] = {}
        for name, module in layers:
            bits = self.bits_conv if isinstance(module, nn.Conv2d) else self.bits_linear
            keep_zero = self._keeps_zero(name, module.weight.detach(), ctx, bits)
            centroids, codes = kmeans_codebook(module.weight, bits, keep_zero=keep_zero)
            frozen = (centroids == 0) & keep_zero if keep_zero else None
            layer = SharedWeight(module, centroids.to(module.weight.device), codes.to(module.weight.device), frozen)
            model = replace_module(model, name, layer)
            shared[name] = (layer, bits)
        return model, shared

    def finetune(self, model: nn.Module, shared: dict[str, tuple[SharedWeight, int]], ctx: StepContext) -> Any:
        """Train the centroids only (every other parameter frozen meanwhile); returns the history.

        The model is in training mode meanwhile, so BatchNorm running statistics follow the
        shared weights.
        """
        centroids = [layer.centroids for layer, _ in shared.values()]
        ids = {id(p) for p in centroids}
        frozen = [p for p in model.parameters() if id(p) not in ids and p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        config = train_config(self, ctx.seed)
        try:
            return fit(
                model, ctx.task.train, config, loss_fn=step_loss(self, ctx), params=centroids, description=self.kind
            )
        finally:
            for p in frozen:
                p.requires_grad_(True)

    def apply(self, model: nn.Module, ctx: StepContext) -> nn.Module:
        was_training = model.training
        model, shared = self.share(model, ctx)
        if self.epochs > 0:
            history = self.finetune(model, shared, ctx)
            last = history.losses[-1] if history.losses else float("nan")
            ctx.log.append(
                f"{self.kind}: centroids fine-tuned for {history.steps} steps, "
                f"{distill_note(self, ctx)}, last loss {last:.4f}"
            )
        model.train(was_training)
        dtype = torch.float16 if self.centroid_dtype == "float16" else torch.float32
        fixed_total = stored_total = 0
        for name, (layer, bits) in shared.items():
            codes = layer.codes.to(torch.uint8)
            if layer.source.bias is not None:
                with torch.no_grad():
                    layer.source.bias.copy_(round_for_storage(layer.source.bias, self.bias_dtype))
            centroids = round_for_storage(layer.final_centroids(), self.centroid_dtype)
            new = codebook_module(layer.source, centroids, codes, bits, centroid_dtype=dtype)
            model = replace_module(model, name, new)
            data, header = encode_symbols(codes.reshape(-1).cpu().numpy(), 2**bits)
            fixed, stored = codes.numel() * bits, 8 * data.size
            fixed_total, stored_total = fixed_total + fixed, stored_total + stored
            ctx.log.append(
                f"{name}: codebook {bits}-bit, {fixed} bits fixed-width, {stored} bits Huffman-coded "
                f"({header['layout']}, {stored / codes.numel():.2f} bits/weight)"
            )
        ctx.log.append(
            f"{self.kind}: {len(shared)} layers, codes {fixed_total / 8:.0f} B fixed-width, "
            f"{stored_total / 8:.0f} B Huffman-coded as stored ({fixed_total / max(1, stored_total):.2f}x smaller)"
        )
        return model
