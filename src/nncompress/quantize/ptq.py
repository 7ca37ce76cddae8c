"""Weight-only post-training quantization with real packed weights (``weight-quantize``), and float16
weight storage (``fp16``).

``weight-quantize`` replaces each targeted ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` by a
``QuantizedLinear`` / ``QuantizedConv1d`` / ``QuantizedConv2d`` (``quantize/layers.py``) holding
``bits``-bit codes packed into uint8 buffers
plus per-tensor, per-channel or per-group scales, so the artifact is about ``bits / 32`` of the
float one. Activations stay float; no calibration data is needed. ``method="mse"`` searches, per
channel or group, the clipping range with the smallest weight reconstruction error.

Example:
    >>> step = WeightQuantize(bits=4, granularity="group", group_size=32, layer_bits={"fc1": 8})
    >>> step.layer_bits
    (('fc1', 8),)
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nncompress.base.checks import FLOAT_BITS, NothingToDo, check_bits
from nncompress.base.data import calibration_inputs
from nncompress.base.modules import (
    LayerKinds,
    check_supported,
    replace_module,
    skipped_layers,
    skipped_note,
    values_per_channel,
    weight_layers,
)
from nncompress.base.selection import check_patterns, is_excluded, matches, normalize_patterns
from nncompress.base.settings import CalibrationSettings, Exclusions, LayerSelection
from nncompress.core.step import Step, StepContext, register_step
from nncompress.io.encodings import pow2_int8_exponent
from nncompress.quantize.bias_correction import empirical_bias_correction
from nncompress.quantize.layers import half_module, quantize_weight_module
from nncompress.quantize.primitives import GRANULARITIES, QPARAM_METHODS, QuantSpec

FLOAT_FORMATS = ("fp32", "fp16")
PACKABLE: LayerKinds = (nn.Linear, nn.Conv1d, nn.Conv2d)  # the float layers packed layers replace
CONVS = (nn.Conv1d, nn.Conv2d)


def normalize_layer_bits(pairs: object) -> tuple[tuple[str, int], ...]:
    """``layer_bits`` as ``((pattern, bits), ...)``; accepts a dict (TOML table) or pairs."""
    items = list(pairs.items()) if isinstance(pairs, Mapping) else list(pairs)  # type: ignore[call-overload]
    out = []
    for item in items:
        if isinstance(item, str) or len(item) != 2 or not isinstance(item[0], str):
            raise ValueError(f"layer_bits entries must be (module name or regex, bits) pairs, got {item!r}")
        pattern, bits = item
        normalize_patterns(pattern, "layer_bits")
        out.append((pattern, check_bits(f"layer_bits[{pattern!r}]", bits, allow_float=True)))
    return tuple(out)


def select_layers(
    model: nn.Module,
    *,
    keep_first_conv: bool,
    keep_classifier: bool,
    exclude: tuple[str, ...],
    layer_bits: tuple[tuple[str, int], ...],
    default_bits: int,
) -> dict[str, int]:
    """``{layer name: bits}`` of the Linear/Conv1d/Conv2d layers to quantize.

    ``exclude`` always wins; a ``layer_bits`` pattern (first match) sets a layer's bits and also
    selects a first conv / classifier that ``keep_*`` would leave float; bits 32 leaves it float.
    """
    check_patterns(model, exclude, "exclude")
    layers = [(n, m) for n, m in weight_layers(model, PACKABLE) if not is_excluded(n, exclude)]
    check_supported(layers)
    names = [n for n, _ in layers]
    for pattern, _ in layer_bits:
        if not any(matches(n, pattern) for n in names):
            raise ValueError(
                f"layer_bits pattern {pattern!r} matches no Linear/Conv1d/Conv2d layer left after exclusions; "
                f"layers: {', '.join(names)}"
            )
    kept: set[str] = set()
    convs = [n for n, m in weight_layers(model, PACKABLE) if isinstance(m, CONVS)]
    linears = [n for n, m in weight_layers(model, PACKABLE) if isinstance(m, nn.Linear)]
    if keep_first_conv and convs:
        kept.add(convs[0])
    if keep_classifier and linears:
        kept.add(linears[-1])
    chosen: dict[str, int] = {}
    for name in names:
        override = next((b for p, b in layer_bits if matches(name, p)), None)
        bits = override if override is not None else (None if name in kept else default_bits)
        if bits is not None and bits != FLOAT_BITS:
            chosen[name] = bits
    return chosen


REST_BITS = (32, 16, 8)


def round_to_pow2_int8(t: torch.Tensor) -> torch.Tensor:
    """``t`` on the grid ``k * 2**e`` (integer ``k`` in [-127, 127], the smallest ``e`` that fits
    ``max |t|``): 8-bit codes with a power-of-two scale, which the artifact stores in one byte."""
    absmax = float(t.abs().max())
    if absmax == 0.0:
        return t.clone()
    scale = 2.0 ** pow2_int8_exponent(absmax)
    return (t / scale).round().clamp(-127, 127) * scale


def round_other_params(model: nn.Module, bits: int, exclude: tuple[str, ...] = ()) -> list[str]:
    """Round the float32 parameters outside ``exclude`` (biases, norms, embeddings, position
    tables) to float16 values (``bits`` 16) or to an 8-bit power-of-two grid per tensor (``bits``
    8), in place. They keep dtype float32, so computation is unchanged, and the artifact stores
    them in ``bits`` bits (lossless for such values). Returns the names rounded."""
    rounded = []
    with torch.no_grad():
        for name, param in model.named_parameters():
            owner = name.rpartition(".")[0]
            if param.dtype != torch.float32 or (owner and is_excluded(owner, exclude)):
                continue
            new = param.half().float() if bits == 16 else round_to_pow2_int8(param)
            if torch.isfinite(new).all():
                param.copy_(new)
                rounded.append(name)
    return rounded


@dataclass(frozen=True, kw_only=True)
class PackingSettings(LayerSelection):
    """The settings block of the steps that pack weights to integer codes (``weight-quantize``,
    ``mixed-precision``): scale granularity, group size, symmetry, range method, the layers kept
    float and how the parameters left (biases, norms) are stored (see ``WeightQuantize``)."""

    granularity: str = "channel"
    group_size: int | None = None
    symmetric: bool = True
    method: str = "mse"
    rest_bits: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rest_bits is not None and self.rest_bits not in REST_BITS:
            accepted = ", ".join(map(str, REST_BITS))
            raise ValueError(f"rest_bits must be one of {accepted} or None; got {self.rest_bits!r}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {', '.join(GRANULARITIES)}; got {self.granularity!r}")
        if self.group_size is not None:
            if self.granularity != "group":
                raise ValueError(
                    f"group_size={self.group_size} is only used with granularity='group', "
                    f"got granularity={self.granularity!r}"
                )
            if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size < 1:
                raise ValueError(f"group_size must be an integer >= 1 or None, got {self.group_size!r}")
        if self.method not in QPARAM_METHODS:
            raise ValueError(f"method must be one of {', '.join(QPARAM_METHODS)}; got {self.method!r}")


@register_step("weight-quantize", family="quantize")
@dataclass(frozen=True)
class WeightQuantize(PackingSettings, CalibrationSettings, Step):
    """Weight-only post-training quantization to packed ``bits``-bit integer codes.

    Args:
        bits: code width in [2, 8].
        granularity: one scale per ``"tensor"``, per output ``"channel"``, or per ``"group"`` of
            ``group_size`` consecutive input values of each output channel.
        group_size: values per group (``granularity="group"`` only; None there means 64). Must
            divide every targeted layer's inputs per output channel.
        symmetric: signed codes with zero point 0; False: unsigned codes with packed zero points.
        method: ``"mse"`` (clipping range of least squared error) or ``"minmax"`` (full range).
        keep_first_conv: leave the first Conv1d/Conv2d in float (it is small and sensitive).
        keep_classifier: leave the last Linear in float.
        exclude: module names or regexes (full match) left in float, with their children.
        layer_bits: ``(name or regex, bits)`` pairs (or a dict) overriding ``bits`` per layer,
            first match wins; 32 keeps a layer in float, and an override selects a layer that
            ``keep_first_conv`` / ``keep_classifier`` would keep.
        float_format: ``"fp32"``, or ``"fp16"`` to also store the biases of packed layers and the
            Linear/Conv1d/Conv2d layers left float (kept, ``layer_bits`` 32) as float16. Excluded layers
            stay float32.
        rest_bits: the float32 parameters left (biases, norms, embeddings, position tables),
            outside ``exclude``: 32 as they are, 16 rounded to float16 values, 8 rounded to an
            8-bit grid with a power-of-two scale per tensor; the artifact stores them in that many
            bits. None: 16 with ``float_format="fp16"``, else 32. On small models these
            parameters and the per-layer overhead decide whether 4-bit gets under 15% of fp32.
        bias_correction: after packing, subtract from each packed layer's bias the shift of its
            mean output against the float model, measured layer by layer in order on
            ``calibration_batches`` train batches (empirical bias correction, Nagel et al. 2019;
            a bias is added where the layer had none).
        calibration_batches: train batches for bias correction (>= 1).

    Example:
        >>> WeightQuantize(bits=4, granularity="group", group_size=64)  # doctest: +ELLIPSIS
        WeightQuantize(bits=4, ..., granularity='group', group_size=64, symmetric=True, method='mse', ...)
    """

    bits: int = 4
    layer_bits: tuple[tuple[str, int], ...] = ()
    float_format: str = "fp32"
    bias_correction: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bits("bits", self.bits)
        if not isinstance(self.bias_correction, bool):
            raise ValueError(f"bias_correction={self.bias_correction!r} must be True or False")
        if self.float_format not in FLOAT_FORMATS:
            raise ValueError(f"float_format must be one of {', '.join(FLOAT_FORMATS)}; got {self.float_format!r}")
        object.__setattr__(self, "layer_bits", normalize_layer_bits(self.layer_bits))

    def _calibration(self, ctx: StepContext) -> list[Any]:
        """The inputs of ``calibration_batches`` train batches (for bias correction)."""
        batches = calibration_inputs(ctx.task.train, self.calibration_batches, ctx.task.name)
        return [b[0] if len(b) == 1 else b for b in batches]

    def spec(self, bits: int) -> QuantSpec:
        """The ``QuantSpec`` of a layer quantized to ``bits``."""
        group = (self.group_size or 64) if self.granularity == "group" else None
        return QuantSpec(bits=bits, symmetric=self.symmetric, granularity=self.granularity, group_size=group)

    def plan(self, model: nn.Module) -> dict[str, int]:
        """``{layer name: bits}`` this step would quantize; raises ValueError for bad settings."""
        chosen = select_layers(
            model,
            keep_first_conv=self.keep_first_conv,
            keep_classifier=self.keep_classifier,
            exclude=self.exclude,
            layer_bits=self.layer_bits,
            default_bits=self.bits,
        )
        if not chosen:
            other = skipped_note(self.kind, skipped_layers(model, PACKABLE)) or "no weight layer of other kinds either"
            raise NothingToDo(
                f"weight-quantize: no Linear, Conv1d or Conv2d layer left to quantize after exclusions "
                f"and keep_first_conv/keep_classifier ({other})"
            )
        if self.granularity == "group":
            size = self.spec(self.bits).group_size
            for name in chosen:
                n = values_per_channel(model.get_submodule(name))
                if n % size:
                    raise ValueError(
                        f"group_size={size} does not divide the {n} input values per output channel of layer {name!r}; "
                        f"choose a divisor of {n}, exclude the layer, or use granularity='channel'"
                    )
        return chosen

    def apply(self, model: nn.Module, ctx: StepContext) -> nn.Module:
        chosen = self.plan(model)  # validate everything before touching the model
        note = skipped_note(
            self.kind, [(n, t) for n, t in skipped_layers(model, PACKABLE) if not is_excluded(n, self.exclude)]
        )
        if note:
            ctx.log.append(note)
        half = self.float_format == "fp16"
        bias_dtype = torch.float16 if half else torch.float32
        float_model = copy.deepcopy(model) if self.bias_correction else None
        for name, bits in chosen.items():
            new = quantize_weight_module(
                model.get_submodule(name), self.spec(bits), method=self.method, bias_dtype=bias_dtype
            )
            model = replace_module(model, name, new)
            info = new.describe()
            group = f" group {info['group_size']}" if info["group_size"] else ""
            ctx.log.append(f"{name}: {info['format']} {info['bits']}-bit per-{info['granularity']}{group}")
        if float_model is not None:
            applied = empirical_bias_correction(float_model, model, list(chosen), self._calibration(ctx))
            ctx.log.append(f"bias correction: {len(applied)} layers, largest shift removed {max(applied.values()):.3g}")
        if half:
            left = [n for n, _ in weight_layers(model, PACKABLE) if not is_excluded(n, self.exclude)]
            for name in left:
                model = replace_module(model, name, half_module(model.get_submodule(name)))
                ctx.log.append(f"{name}: float16")

        rest = self.rest_bits or (16 if half else 32)
        if rest < 32:
            rounded = round_other_params(model, rest, self.exclude)
            kind = "float16 values" if rest == 16 else "8-bit power-of-two grids"
            ctx.log.append(f"{len(rounded)} other float parameters rounded to {kind} ({', '.join(rounded[:3])}, ...)")
        ctx.log.append(f"{self.kind}: {len(chosen)} layers packed ({self.method} ranges)")
        return model


def embeddings_by_weight(model: nn.Module) -> dict[int, list[tuple[str, nn.Embedding]]]:
    """The model's plain embeddings (no ``max_norm``: their table is only read) by ``id`` of their
    weight, so a layer sharing that weight (a tied LM head) finds them."""
    found: dict[int, list[tuple[str, nn.Embedding]]] = {}
    for name, module in model.named_modules():
        if type(module) is nn.Embedding and module.max_norm is None:
            found.setdefault(id(module.weight), []).append((name, module))
    return found


def read_table_from(model: nn.Module, embeddings: list[tuple[str, nn.Embedding]], table: nn.Module) -> list[str]:
    """Replace ``embeddings`` (tied to the layer ``table`` replaced) by ``PackedEmbedding``s reading
    ``table``'s stored weight, so the tie survives and the table is stored once; their names."""
    from nncompress.quantize.gptq import PackedEmbedding  # lazy: gptq imports this module

    for name, embedding in embeddings:
        replace_module(model, name, PackedEmbedding(embedding, table))
    return [name for name, _ in embeddings]


@register_step("fp16", family="quantize", produces="float16")
@dataclass(frozen=True)
class Float16Weights(Exclusions, Step):
    """Store Linear/Conv1d/Conv2d weights and biases as float16; compute stays float32.

    The artifact shrinks to about half; inputs and outputs stay float32 (weights are upcast once
    and cached). Other parameters (norms, embeddings) stay float32, except an embedding tied to a
    converted layer (an LM head), which reads that layer's float16 table, stored once.

    Args:
        exclude: module names or regexes (full match) left in float32.

    Example:
        >>> Float16Weights(exclude=("head",))
        Float16Weights(exclude=('head',))
    """

    def apply(self, model: nn.Module, ctx: StepContext) -> nn.Module:
        check_patterns(model, self.exclude, "exclude")
        layers = [(n, m) for n, m in weight_layers(model, PACKABLE) if not is_excluded(n, self.exclude)]
        check_supported(layers)
        skipped = [(n, t) for n, t in skipped_layers(model, PACKABLE) if not is_excluded(n, self.exclude)]
        if not layers:
            other = skipped_note(self.kind, skipped) or "no weight layer of other kinds either"
            raise NothingToDo(f"fp16: no Linear, Conv1d or Conv2d layer left to convert after exclusions ({other})")
        if skipped:
            ctx.log.append(skipped_note(self.kind, skipped))
        tied: list[str] = []
        embeddings = embeddings_by_weight(model)
        for name, module in layers:
            half = half_module(module)
            model = replace_module(model, name, half)
            tied += read_table_from(model, embeddings.get(id(module.weight), []), half)
        ctx.log.append(f"{self.kind}: {len(layers)} layers store float16 weights")
        if tied:
            ctx.log.append(
                f"{self.kind}: {len(tied)} embedding(s) tied to a converted layer read its float16 table "
                f"(stored once): {', '.join(tied)}"
            )
        return model
