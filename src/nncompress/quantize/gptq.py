"""GPTQ (Frantar et al. 2023, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers") and the round-to-nearest baseline (``rtn``), plus the settings every one-shot
weight-only quantizer shares (``WeightOnlyQuantize``: GPTQ, AWQ, HQQ, RTN).

GPTQ quantizes a Linear's weight W (out, in) one input column at a time and spreads each column's
rounding error over the columns not yet quantized, weighted by the inverse Hessian of the layer's
squared output error, H = 2 X^T X / rows (X: the layer's calibration inputs). This minimizes
||X W^T - X Ŵ^T|| far better than rounding each weight alone. Details kept from the paper and its
reference code: dampening (``percdamp`` of mean diag H), dead inputs (diag 0) zeroed, the upper
Cholesky factor of H^-1 in place of repeated inverse updates, lazy batch updates over blocks of
``block_size`` columns, and act-order (columns in decreasing diag H). A group's scale is computed
when the first of its columns comes up in the processing order, from the group's weights as
updated by the error feedback so far (pending lazy updates included). Groups always span
consecutive inputs in the *original* order, also under act-order, so each group's codes share
one scale and the packed ``QuantizedLinear`` stays valid (the reference's act-order without
"static groups" would scatter a group over the permuted columns, which this format cannot
store; its static groups take scales from the unquantized weights instead: on our test layers
the two choices came out equal on average, better at 4 and 3 bits, worse at 2).

Every step here leaves packed ``QuantizedLinear`` layers (quantize/layers.py): the artifact stores
``bits``-bit codes and per-group scales (and zero points), so it really shrinks.

Example:
    >>> w, x = torch.randn(8, 32), torch.randn(256, 32)
    >>> spec = QuantSpec(bits=4, symmetric=False, granularity="group", group_size=16)
    >>> w_hat, scale, zero = gptq_quantize(w, 2 * x.T @ x / 256, spec)
    >>> scale.shape, bool((x @ (w - w_hat).T).norm() < (x @ (w - rtn_weight(w, spec)).T).norm())
    (torch.Size([8, 2, 1]), True)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nncompress.base.checks import check_bits, check_count, check_flag
from nncompress.base.settings import BlockCalibration, LinearSelection
from nncompress.core.sequential import (
    BlockRun,
    LayerGroup,
    calibration_batches,
    check_blocks_setting,
    no_targets,
    replace_linear,
    run_sequential,
    select_linears,
)
from nncompress.core.step import Step, StepContext, register_step
from nncompress.quantize.layers import FP16_MAX, FP16_TINY, quantize_weight_module
from nncompress.quantize.primitives import (
    QPARAM_METHODS,
    QuantSpec,
    compute_qparams,
    dequantize,
    group_count,
    quantize,
    quantize_float_zero,
)
from nncompress.quantize.ptq import REST_BITS, embeddings_by_weight, read_table_from, round_other_params

ZERO_DTYPES = ("int", "fp16")

# --- pure maths ----------------------------------------------------------------------------------------


def fp16_scales(scale: torch.Tensor) -> torch.Tensor:
    """``scale`` rounded to float16 values where it is a normal fp16 number (elsewhere unchanged),
    so that quantizing with it gives exactly the weights the packed layer decodes from fp16 storage."""
    a = scale.abs()
    fits = torch.isfinite(scale) & (a >= FP16_TINY) & (a <= FP16_MAX)
    return torch.where(fits, scale.half().float(), scale.float())


def scale_dtype_for(scale: torch.Tensor) -> torch.dtype:
    """float16 when every scale is an exact normal fp16 value (lossless storage), else float32."""
    return torch.float16 if torch.equal(fp16_scales(scale), scale.float()) else torch.float32


def inverse_hessian_cholesky(hessian: torch.Tensor, percdamp: float = 0.01) -> torch.Tensor:
    """Upper Cholesky factor U of (H + damp I)^-1 (U^T U = H^-1), damp = ``percdamp`` * mean diag H.

    Row i of U holds what GPTQ / SparseGPT need when column i is quantized or pruned: the error
    scale U[i, i] and the update direction U[i, i:] over the remaining columns. When H is too
    ill-conditioned the dampening grows tenfold, up to four times.
    """
    h = hessian.detach().float()
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    damp = percdamp * h.diagonal().mean().clamp(min=1e-8)
    for _ in range(5):
        lower, info = torch.linalg.cholesky_ex(h + damp * eye)
        if int(info) == 0:
            upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
            if int(info) == 0:
                return upper
        damp = damp * 10
    raise ValueError(f"the Hessian of shape {tuple(h.shape)} is not positive definite even with dampening {damp:.3g}")


def prepare_hessian(weight: torch.Tensor, hessian: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 copies of W and H with dead inputs (diag H = 0: never non-zero in the data) handled:
    their weights set to 0 and their diagonal to 1, as in the reference code."""
    w = weight.detach().float().clone()
    h = hessian.detach().float().clone().to(w.device)
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    return w, h


def float_target_weight(
    weight: torch.Tensor, hessian: torch.Tensor, gap: torch.Tensor, *, percdamp: float = 0.01, strength: float = 1.0
) -> torch.Tensor:
    """The weight whose outputs on the compressed model's inputs X best match the float layer's
    outputs on the float model's inputs X_f (GPTAQ's asymmetric calibration, Li et al. 2025):
    argmin_V ||W X_f - V X|| = W + W G H^-1 with G = (X_f - X)^T X and H = X^T X (both as
    ``LayerStats`` scales them; H damped as GPTQ damps it). ``strength`` in [0, 1] moves only that
    far toward it. GPTQ on this weight with the same H minimizes the asymmetric objective, since
    the two objectives differ by a constant.
    """
    w, h = prepare_hessian(weight, hessian)
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    lower = torch.linalg.cholesky(h + percdamp * h.diagonal().mean().clamp(min=1e-8) * eye)
    shift = torch.cholesky_solve((w @ gap.float().to(w.device)).T, lower).T  # W G H^-1 (H symmetric)
    return w + strength * shift


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    spec: QuantSpec,
    *,
    percdamp: float = 0.01,
    block_size: int = 128,
    act_order: bool = False,
    keep: torch.Tensor | None = None,
    float_zero: bool = False,
    clip: str = "minmax",
    static_groups: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ: quantize ``weight`` (out, in) column by column with error feedback through H^-1.

    Args:
        weight: the float weight (out, in).
        hessian: H = 2 X^T X / rows of the layer's inputs (in, in).
        spec: bits, symmetric, and ``"channel"`` or ``"group"`` granularity on axis 0 (a group size
            that does not divide the inputs leaves a ragged last group).
        percdamp: dampening, as a fraction of mean diag H.
        block_size: columns per lazy batch update.
        act_order: quantize columns in decreasing diag H (groups stay contiguous, see module doc).
        keep: optional boolean mask (out, in); False entries are forced to 0 (pruned weights stay
            pruned, and the other weights absorb the change).
        float_zero: fractional zero points, rounded to float16 values (stored so): each group's
            grid spans exactly its [min, max] instead of a range widened to hold 0 on a code.
        clip: ``"minmax"`` (each group's full range) or ``"mse"`` (the clipping of the range with
            the least squared weight error, as GPTQ's reference quantizer's ``mse`` option).
        static_groups: every group's scale from the weights before any error feedback (GPTQModel's
            ``static_groups``); False: from the weights as updated when its first column comes up.

    Returns:
        (Ŵ, scale, zero_point): Ŵ (float32) holds exactly ``(q - zero) * scale`` for integer codes q; scale
        (fp16-exact where possible) and zero point (int32, or fp16-exact float32 with
        ``float_zero``) are shaped as ``compute_qparams`` returns them for ``spec``: (out, 1) per
        channel, (out, groups, 1) per group.
    """
    if spec.granularity not in ("channel", "group") or spec.axis != 0:
        raise ValueError(f"gptq needs per-channel or per-group scales on axis 0, got {spec}")
    if clip not in QPARAM_METHODS:
        raise ValueError(f"clip must be one of {QPARAM_METHODS}, got {clip!r}")
    w, h = prepare_hessian(weight, hessian)
    rows, cols = w.shape
    gs = spec.group_size if spec.granularity == "group" else cols
    n_groups = group_count(cols, gs)
    col_spec = QuantSpec(bits=spec.bits, symmetric=spec.symmetric, granularity="channel")
    scale = torch.ones(rows, n_groups, device=w.device)
    zero = torch.zeros(rows, n_groups, dtype=torch.float32 if float_zero else torch.int32, device=w.device)

    def set_group(g: int, values: torch.Tensor) -> None:  # values: (rows, <= gs)
        s, z = group_qparams(values, col_spec, clip, float_zero)
        scale[:, g], zero[:, g] = s[:, 0], z[:, 0]

    grouped = spec.granularity == "group"
    if not grouped:  # per channel: from the weight as it is
        set_group(0, w)
    elif static_groups:
        for g in range(n_groups):
            set_group(g, w[:, g * gs : (g + 1) * gs])
    perm = torch.argsort(h.diagonal(), descending=True) if act_order else torch.arange(cols, device=w.device)
    w, h = w[:, perm], h[perm][:, perm]
    keep_p = keep.to(w.device)[:, perm] if keep is not None else None
    col_group = perm // gs  # group of each (permuted) column, in the original order
    position = torch.argsort(perm)  # permuted position of each original column
    started = torch.full((n_groups,), static_groups or not grouped, dtype=torch.bool)
    hinv = inverse_hessian_cholesky(h, percdamp)
    q_all = torch.zeros_like(w)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        w1, hinv1 = w[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        err1 = torch.zeros_like(w1)
        for i in range(i2 - i1):
            c = i1 + i
            g = int(col_group[c])
            if not started[g]:  # the group's first column: scales from its weights as updated so far
                started[g] = True
                set_group(g, _current_columns(w, w1, err1, hinv, position[g * gs : (g + 1) * gs], i1, i))
            s, z = scale[:, g : g + 1], zero[:, g : g + 1]
            q = fake_quantize_column(w1[:, i : i + 1], s, z, col_spec)[:, 0]
            if keep_p is not None:
                q = q * keep_p[:, c]
            err = (w1[:, i] - q) / hinv1[i, i]
            w1[:, i:] -= err[:, None] * hinv1[i, i:][None, :]  # feed the error to the later columns
            q_all[:, c], err1[:, i] = q, err
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]  # the lazy update of the columns after this block
    q_all = q_all[:, position]
    shape = (rows, 1) if spec.granularity == "channel" else (rows, n_groups, 1)
    return q_all, scale.reshape(shape), zero.reshape(shape)


def _current_columns(
    w: torch.Tensor, w1: torch.Tensor, err1: torch.Tensor, hinv: torch.Tensor, cols: torch.Tensor, i1: int, i: int
) -> torch.Tensor:
    """Columns ``cols`` (permuted positions, none quantized yet) as updated by every column before
    i1 + i: those in the current block from ``w1``, later ones from ``w`` plus the block's pending
    lazy update."""
    i2 = i1 + w1.shape[1]
    later = w[:, cols] - err1[:, :i] @ hinv[i1 : i1 + i, cols]  # (rows, n); right for cols >= i2
    inside = (cols >= i1) & (cols < i2)
    later[:, inside] = w1[:, cols[inside] - i1]
    return later


def group_qparams(
    values: torch.Tensor, spec: QuantSpec, clip: str = "minmax", float_zero: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, 1) scale and zero point of each row of ``values`` as the packed layer stores them:
    scales fp16-exact where possible, fractional zeros rounded to float16 values."""
    s, z = compute_qparams(values, spec, clip, float_zero=float_zero)
    return fp16_scales(s), (z.half().float() if float_zero else z)


def fake_quantize_column(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """``x`` on the grid of ``scale`` and ``zero`` (integer zeros as :func:`quantize`, float ones as
    :func:`quantize_float_zero`)."""
    if zero.is_floating_point():
        return dequantize(quantize_float_zero(x, scale, zero, spec), scale, zero, spec)
    return dequantize(quantize(x, scale, zero, spec), scale, zero, spec)


def rtn_weight(weight: torch.Tensor, spec: QuantSpec, *, float_zero: bool = False) -> torch.Tensor:
    """Round-to-nearest weights with min-max scales: the baseline every method here is held against
    (``float_zero``: fractional zero points rounded to float16 values, scales fp16-exact)."""
    if float_zero:
        scale, zero = group_qparams(weight, spec, "minmax", float_zero=True)
        return dequantize(quantize_float_zero(weight, scale, zero, spec), scale, zero, spec)
    scale, zero = compute_qparams(weight, spec, "minmax")
    return dequantize(quantize(weight, scale, zero, spec), scale, zero, spec)


# --- shared settings of the one-shot weight-only quantizers ----------------------------------------------


def normalize_group_size(value: object) -> int | None:
    """``group_size`` as an integer >= 1, or None for per-channel (-1 also means per-channel)."""
    if value is None or (value == -1 and not isinstance(value, bool)):
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"group_size must be an integer >= 1, or -1 / None for one scale per output channel; got {value!r}"
        )
    return value


@dataclass(frozen=True)
class WeightOnlyQuantize(LinearSelection, Step):
    """Settings shared by the one-shot weight-only quantizers (not a step itself).

    Args:
        bits: code width in [2, 8].
        group_size: inputs per scale along each output row (128 as in GPTQ/AWQ); -1 or None: one
            scale per output channel. When it does not divide a layer's inputs, the last group of
            each row is ragged (576 inputs in groups of 128: four of 128 and one of 64).
        symmetric: signed codes with zero point 0; False (default): unsigned codes with a zero
            point per group.
        zero_dtype: ``"int"`` (default): integer zero points packed at ``bits``, the range widened
            to hold 0 on a code; ``"fp16"``: fractional zero points stored as float16 (2 bytes per
            group), each group's grid spanning exactly its [min, max], as GGUF's Q4_1 / Q4_K
            minimums do. Needs ``symmetric=False``.
        layers: module names or full-match regexes to quantize (a parent selects its Linears);
            empty: every plain ``nn.Linear``.
        exclude: names or regexes left in float.
        keep_classifier: leave the last Linear (the LM head / classifier) in float; it is small
            next to the blocks and the most sensitive.
        head_bits: None (default): the LM head follows ``keep_classifier``. 2..8: the last Linear
            (the LM head, kept out of the step's own method) is packed by round-to-nearest at
            this width with the step's ``group_size`` and ``zero_dtype``, and an ``nn.Embedding``
            tied to it (sharing its weight, as in SmolLM2, Llama-3.2 and Gemma) becomes a
            ``PackedEmbedding`` that reads the same packed table, stored once. On a small LM the
            tied table is a large share of the bytes (SmolLM2-135M: 28.3M of 134.5M parameters).
        rest_bits: the float parameters left after packing (embeddings, position tables, norms,
            biases, a kept LM head), outside ``exclude``: 32 as they are, 16 rounded to float16
            values, 8 rounded to an 8-bit grid with a power-of-two scale per tensor; the artifact
            stores them in that many bits. On a small LM these decide whether 4-bit gets under
            30% of fp16.

    Example:
        >>> WeightOnlyQuantize(group_size=-1).group_size is None
        True
    """

    bits: int = 4
    group_size: int | None = 128
    symmetric: bool = False
    zero_dtype: str = "int"
    head_bits: int | None = None
    rest_bits: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bits("bits", self.bits)
        check_rest_bits(self.rest_bits)
        object.__setattr__(self, "group_size", normalize_group_size(self.group_size))
        check_flag("symmetric", self.symmetric)
        if self.zero_dtype not in ZERO_DTYPES:
            raise ValueError(f"zero_dtype must be one of {', '.join(ZERO_DTYPES)}; got {self.zero_dtype!r}")
        if self.head_bits is not None:
            check_bits("head_bits", self.head_bits)
            if not self.keep_classifier:
                raise ValueError(
                    "head_bits packs the LM head by round-to-nearest: it needs keep_classifier=True "
                    "(with keep_classifier=False the step's own method quantizes the head at bits)"
                )
        if self.zero_dtype != "int" and self.symmetric:
            raise ValueError(f"zero_dtype={self.zero_dtype!r} stores a zero point per group: symmetric must be False")

    @property
    def float_zero(self) -> bool:
        """True when zero points are stored as float16 (``zero_dtype="fp16"``)."""
        return self.zero_dtype == "fp16"

    def targets(self, model: nn.Module) -> dict[str, nn.Linear]:
        """The plain Linears this step quantizes, by name (ValueError for unknown names)."""
        return select_linears(model, layers=self.layers, exclude=self.exclude, keep_classifier=self.keep_classifier)

    def spec_for(self, name: str, layer: nn.Linear, ctx: StepContext | None = None) -> QuantSpec:
        """The layer's ``QuantSpec``: per group (a ragged last group when ``group_size`` does not
        divide its inputs), or per channel without a group size."""
        group = self.group_size
        granularity = "channel" if group is None else "group"
        return QuantSpec(bits=self.bits, symmetric=self.symmetric, granularity=granularity, group_size=group)

    def ragged_note(self, targets: dict[str, nn.Linear]) -> str | None:
        """One line naming the input widths whose last group is ragged (None when every width divides)."""
        if self.group_size is None:
            return None
        widths = sorted({m.in_features for m in targets.values() if m.in_features % self.group_size})
        if not widths:
            return None
        parts = [f"{n} = {n // self.group_size} x {self.group_size} + {n % self.group_size}" for n in widths]
        return f"{self.kind}: ragged last group on layers with {'; '.join(parts)} inputs"

    def pack_head(self, model: nn.Module, ctx: StepContext) -> None:
        """Pack the LM head at ``head_bits`` (and point an embedding tied to it at the packed table)."""
        if self.head_bits is None:
            return
        found = [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear]
        if not found:
            ctx.log.append(f"{self.kind}: head_bits={self.head_bits}: no float Linear is left to pack as the head")
            return
        name, head = found[-1]
        tied = embeddings_by_weight(model).get(id(head.weight), [])
        spec = QuantSpec(
            bits=self.head_bits,
            symmetric=self.symmetric,
            granularity="channel" if self.group_size is None else "group",
            group_size=self.group_size,
        )
        if self.float_zero:
            scale, zero = group_qparams(head.weight, spec, "minmax", float_zero=True)
            packed = self.pack(model, name, head, head.weight.detach(), scale, zero, spec)
        else:
            packed = replace_linear(model, name, quantize_weight_module(head, spec, method="minmax"), head)
        names = read_table_from(model, tied, packed)
        where = f", tied to {', '.join(names)} (stored once)" if names else ""
        ctx.log.append(f"{self.kind}: LM head {name} packed at {self.head_bits} bits by round-to-nearest{where}")

    def round_rest(self, model: nn.Module, ctx: StepContext) -> None:
        """Pack the head (``head_bits``), then round the float parameters left outside the packed
        layers to ``rest_bits`` (see class doc)."""
        self.pack_head(model, ctx)
        if self.rest_bits < 32:
            rounded = round_other_params(model, self.rest_bits, self.exclude)
            ctx.log.append(f"{len(rounded)} float parameters left rounded to {self.rest_bits} bits")

    def pack(
        self,
        model: nn.Module,
        name: str,
        layer: nn.Linear,
        weight: torch.Tensor,
        scale: torch.Tensor,
        zero_point: torch.Tensor,
        spec: QuantSpec,
        *,
        zero_dtype: torch.dtype | None = None,
    ) -> nn.Module:
        """Replace ``layer`` by a ``QuantizedLinear`` of ``weight`` (already on the grid of ``scale``
        and ``zero_point``); returns the new layer."""
        with torch.no_grad():
            layer.weight.copy_(weight)
        if zero_dtype is None and zero_point.is_floating_point():
            zero_dtype = torch.float16
        new = quantize_weight_module(
            layer, spec, scale=scale, zero_point=zero_point, scale_dtype=scale_dtype_for(scale), zero_dtype=zero_dtype
        )
        return replace_linear(model, name, new, layer)


class PackedEmbedding(nn.Module):
    """An ``nn.Embedding`` whose table is a packed layer's decoded weight (vocabulary, dim): the LM
    head it was tied to. Lookups read rows of that layer's cached decoded weight, so the codes are
    stored once and the tie survives saving.

    Example:
        >>> head = quantize_weight_module(nn.Linear(8, 16, bias=False), QuantSpec(bits=8, granularity="channel"))
        >>> PackedEmbedding(nn.Embedding(16, 8), head)(torch.tensor([[1, 2]])).shape
        torch.Size([1, 2, 8])
    """

    def __init__(self, source: nn.Embedding, table: nn.Module) -> None:
        super().__init__()
        if tuple(table.weight.shape) != (source.num_embeddings, source.embedding_dim):
            raise ValueError(
                f"the packed table has shape {tuple(table.weight.shape)}, the embedding "
                f"{(source.num_embeddings, source.embedding_dim)}"
            )
        self.table = table
        self.num_embeddings, self.embedding_dim = source.num_embeddings, source.embedding_dim
        self.padding_idx = source.padding_idx

    @property
    def weight(self) -> torch.Tensor:
        """The decoded table (read-only, computed on access)."""
        return self.table.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.table.dequantized_weight(), self.padding_idx)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, packed table"


@register_step("rtn", family="quantize")
@dataclass(frozen=True)
class RTNQuantize(WeightOnlyQuantize):
    """Round-to-nearest weight-only quantization (min-max scales per group): the one-shot baseline.

    The same packing as ``weight-quantize`` with ``granularity="group"``, ``method="minmax"``,
    here with the settings of the LLM quantizers it is compared with (group 128, asymmetric,
    Linears only, LM head kept).

    No data needed. Settings: see ``WeightOnlyQuantize``.

    Example:
        >>> RTNQuantize(bits=4, group_size=128)  # doctest: +ELLIPSIS
        RTNQuantize(bits=4, group_size=128, symmetric=False, ...)
    """

    def apply(self, model: nn.Module, ctx: StepContext) -> nn.Module:
        targets = self.targets(model)
        if no_targets(targets, self.kind, ctx):
            return model
        note = self.ragged_note(targets)
        if note:
            ctx.log.append(note)
        for name, layer in targets.items():
            spec = self.spec_for(name, layer, ctx)
            if self.float_zero:
                scale, zero = group_qparams(layer.weight, spec, "minmax", float_zero=True)
                self.pack(model, name, layer, layer.weight.detach(), scale, zero, spec)
            else:
                replace_linear(model, name, quantize_weight_module(layer, spec, method="minmax"), layer)
        self.round_rest(model, ctx)
        ctx.log.append(f"{self.kind}: {len(targets)} Linear layers packed, {self.describe()['settings']}")
        return model


@register_step("gptq", family="quantize")
@dataclass(frozen=True)
class GPTQQuantize(BlockCalibration, WeightOnlyQuantize):
    """GPTQ one-shot weight quantization to packed low-bit Linears (Frantar et al. 2023).

    Each selected Linear is quantized from its inputs' Hessian, collected after the earlier layers
    of its block (and all earlier blocks) were quantized (``core/sequential.py``), and replaced by
    a packed ``QuantizedLinear``. Weights masked out in ``ctx.masks`` (earlier pruning) stay 0.

    Args:
        bits, group_size, symmetric, layers, exclude, keep_classifier: see ``WeightOnlyQuantize``.
        act_order: quantize columns in decreasing Hessian diagonal (helps with outlier inputs;
            groups still span consecutive inputs, so packing is unchanged).
        static_groups: every group's scale from the weights before any error feedback
            (GPTQModel's ``static_groups``, usually paired with act-order); False: from the weights
            as updated when the group's first column comes up.
        clip: ``"minmax"`` (each group's full range) or ``"mse"`` (the shrink of the range with the
            least squared weight error, the reference quantizer's ``mse`` option).
        zero_dtype: see ``WeightOnlyQuantize``.
        percdamp: Hessian dampening as a fraction of its mean diagonal, in (0, 1].
        block_size: columns per lazy batch update (speed only; 128 as in the paper).
        float_target: 0 (default): each layer matches its own float output on the inputs the
            already-quantized layers give it (GPTQ). In (0, 1]: it matches, that far, the float
            model's output on the float model's inputs instead (GPTAQ's asymmetric calibration,
            Li et al. 2025), so later layers also undo the error earlier ones left; the engine
            then runs the float model beside the quantized one (one more pass per block).
        calibration_batches: train batches whose inputs calibrate (>= 1).
        blocks: the block list (None: found automatically; "" the whole model is one block).

    Example:
        >>> GPTQQuantize(bits=3, group_size=64, act_order=True)  # doctest: +ELLIPSIS
        GPTQQuantize(bits=3, group_size=64, symmetric=False, ..., act_order=True, ...)
    """

    act_order: bool = False
    static_groups: bool = False
    clip: str = "minmax"
    percdamp: float = 0.01
    block_size: int = 128
    float_target: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_flag("act_order", self.act_order)
        if isinstance(self.float_target, bool) or not isinstance(self.float_target, (int, float)):
            raise ValueError(f"float_target must be a number in [0, 1]; got {self.float_target!r}")
        if not 0 <= self.float_target <= 1:
            raise ValueError(
                f"float_target must be in [0, 1] (0: GPTQ, 1: full asymmetric calibration); got {self.float_target}"
            )
        check_flag("static_groups", self.static_groups)
        if self.clip not in QPARAM_METHODS:
            raise ValueError(f"clip must be one of {', '.join(QPARAM_METHODS)}; got {self.clip!r}")
        check_percdamp(self.percdamp)
        check_count("block_size", self.block_size)
        check_blocks_setting(self.blocks)

    def apply(self, model: nn.Module, ctx: StepContext) -> nn.Module:
        targets = self.targets(model)
        if no_targets(targets, self.kind, ctx):
            return model

        def process(run: BlockRun, groups: list[LayerGroup]) -> None:
            for group in groups:
                for name in group.selected:
                    layer = group.module(name)
                    spec = self.spec_for(name, layer, ctx)
                    mask = ctx.masks.get(f"{name}.weight")
                    keep = mask if mask is not None and mask.shape == layer.weight.shape else None
                    hessian, gap = group.stats[name].hessian(), group.stats[name].float_gap()
                    weight = layer.weight
                    if self.float_target and gap is not None:
                        weight = float_target_weight(
                            weight, hessian, gap, percdamp=self.percdamp, strength=self.float_target
                        )
                    w, s, z = gptq_quantize(
                        weight,
                        hessian,
                        spec,
                        percdamp=self.percdamp,
                        block_size=self.block_size,
                        act_order=self.act_order,
                        keep=keep,
                        float_zero=self.float_zero,
                        clip=self.clip,
                        static_groups=self.static_groups,
                    )
                    self.pack(run.model, name, layer, w, s, z, spec)

        note = self.ragged_note(targets)
        if note:
            ctx.log.append(note)
        batches = calibration_batches(ctx, self.calibration_batches, self.kind)
        needs = ("hessian", "float_gap") if self.float_target else ("hessian",)
        done = run_sequential(model, batches, process, select=targets, needs=needs, blocks=self.blocks, log=ctx.log)
        self.round_rest(model, ctx)
        order = ", act-order" if self.act_order else ""
        order += f", float target {self.float_target:g}" if self.float_target else ""
        ctx.log.append(
            f"{self.kind}: {len(done)} Linear layers packed ({self.bits}-bit{order}) from {len(batches)} batch(es)"
        )
        return model


def check_percdamp(value: object) -> None:
    """Raise ValueError unless the Hessian dampening is a number in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(
            f"percdamp must be a number in (0, 1] (a fraction of the Hessian's mean diagonal), got {value!r}"
        )


def check_rest_bits(value: object) -> None:
    """Raise ValueError unless ``rest_bits`` is one of ``REST_BITS``."""
    if isinstance(value, bool) or value not in REST_BITS:
        raise ValueError(f"rest_bits must be one of {', '.join(map(str, REST_BITS))}; got {value!r}")
