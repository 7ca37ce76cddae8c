"""Distillation losses (pure tensor functions): logits, intermediate features, attention, relations.

Plus ``make_adapter``, the small FitNets regressor that ``hint_loss`` needs when widths differ.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# soft labels live in train/ (every fine-tuning step mixes them in); re-exported beside the other losses
from nncompress.train.soft_labels import kd_loss, soft_kl  # noqa: F401

# --- shared checks -------------------------------------------------------------------------------

_FEATURE_LAYOUTS = "(B, C), (B, T, C) or (B, C, H, W)"


def _width(shape: Sequence[int]) -> int:
    """Channel width of a feature shape: dim 1 for (B, C, H, W), the last dim otherwise."""
    return int(shape[1]) if len(shape) == 4 else int(shape[-1])


def _check_feature_pair(fn: str, student: Tensor, teacher: Tensor) -> None:
    """Same rank (2, 3 or 4) and the same batch size; (B, T, C) also needs the same T."""
    if student.dim() != teacher.dim():
        raise ValueError(
            f"{fn}: student and teacher features must have the same rank, got shapes "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}; accepted: {_FEATURE_LAYOUTS}"
        )
    if student.dim() not in (2, 3, 4):
        raise ValueError(
            f"{fn}: features must be {_FEATURE_LAYOUTS}, got rank {student.dim()} (shape {tuple(student.shape)})"
        )
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(f"{fn}: student and teacher batch sizes differ: {student.shape[0]} vs {teacher.shape[0]}")
    if student.dim() == 3 and student.shape[1] != teacher.shape[1]:
        raise ValueError(
            f"{fn}: student and teacher sequence lengths differ: {student.shape[1]} vs {teacher.shape[1]} "
            "(shapes are (B, T, C); T must match)"
        )


def _embeddings(fn: str, student: Tensor, teacher: Tensor, min_batch: int) -> tuple[Tensor, Tensor]:
    """Flatten (B, ...) embeddings to (B, D) after checking the batch sizes (D may differ)."""
    for name, e in (("student_emb", student), ("teacher_emb", teacher)):
        if e.dim() < 2:
            raise ValueError(
                f"{fn}: {name} must be (B, D) (higher ranks are flattened to (B, -1)), got shape {tuple(e.shape)}"
            )
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(f"{fn}: student and teacher batch sizes differ: {student.shape[0]} vs {teacher.shape[0]}")
    if student.shape[0] < min_batch:
        raise ValueError(f"{fn}: needs a batch of at least {min_batch} embeddings, got {student.shape[0]}")
    return student.flatten(1), teacher.detach().flatten(1)


# --- logits --------------------------------------------------------------------------------------


def mse_logits(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean squared error between logits, regressing the teacher's pre-softmax scores (Ba & Caruana 2014).

    "Do Deep Nets Really Need to be Deep?" (NeurIPS 2014). Logits keep the information a softmax at
    any temperature would squash; the mean runs over all elements. The teacher is detached.

    Example:
        >>> mse_logits(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]]))
        tensor(2.5000)
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"mse_logits: student and teacher logits must have the same shape, got {tuple(student.shape)} "
            f"and {tuple(teacher.shape)}"
        )
    return F.mse_loss(student, teacher.detach())


# --- intermediate features (FitNets, TinyBERT hidden states) -------------------------------------


def make_adapter(student_shape: Sequence[int], teacher_shape: Sequence[int]) -> nn.Module:
    """FitNets regressor mapping the student's feature width to the teacher's (Romero et al. 2015).

    "FitNets: Hints for Thin Deep Nets" (ICLR 2015). (B, C) and (B, T, C) features get
    ``nn.Linear(Cs, Ct, bias=False)``, (B, C, H, W) maps a 1x1 ``nn.Conv2d(Cs, Ct, bias=False)``;
    equal widths give ``nn.Identity()``. Only the ranks and widths are read (``hint_loss`` resizes
    spatial sizes). The adapter is trained with the student: move it to the student's device and
    give its parameters to the optimizer.

    Example:
        >>> make_adapter((8, 16), (8, 32))
        Linear(in_features=16, out_features=32, bias=False)
        >>> make_adapter((8, 16, 7, 7), (8, 16, 14, 14))
        Identity()
    """
    s, t = tuple(student_shape), tuple(teacher_shape)
    if len(s) != len(t):
        raise ValueError(
            f"make_adapter: student and teacher shapes must have the same rank, got {s} (rank {len(s)}) and "
            f"{t} (rank {len(t)}); accepted: {_FEATURE_LAYOUTS}"
        )
    if len(s) not in (2, 3, 4):
        raise ValueError(f"make_adapter: shapes must be {_FEATURE_LAYOUTS}, got rank {len(s)} ({s})")
    cs, ct = _width(s), _width(t)
    if cs < 1 or ct < 1:
        raise ValueError(f"make_adapter: channel widths must be >= 1, got student {cs} and teacher {ct}")
    if cs == ct:
        return nn.Identity()
    if len(s) == 4:
        return nn.Conv2d(cs, ct, kernel_size=1, bias=False)
    return nn.Linear(cs, ct, bias=False)


def hint_loss(student_feat: Tensor, teacher_feat: Tensor, adapter: nn.Module | None = None) -> Tensor:
    """FitNets hint: MSE between adapter(student feature) and the detached teacher feature (Romero et al. 2015).

    Guides a thin student's intermediate layer toward the teacher's. Features are (B, C), (B, T, C)
    or (B, C, H, W); a (B, C, H, W) student map whose H, W differ from the teacher's is bilinearly
    resized (``align_corners=False``) to the teacher's H, W after the adapter. Without an adapter the
    widths must already match (see ``make_adapter``). Mean over all elements.

    Example:
        >>> hint_loss(torch.ones(2, 3), torch.zeros(2, 3))
        tensor(1.)
    """
    _check_feature_pair("hint_loss", student_feat, teacher_feat)
    cs, ct = _width(student_feat.shape), _width(teacher_feat.shape)
    if adapter is None and cs != ct:
        raise ValueError(
            f"hint_loss: student width {cs} != teacher width {ct} and no adapter was given; pass "
            f"adapter=make_adapter({tuple(student_feat.shape)}, {tuple(teacher_feat.shape)})"
        )
    s = student_feat if adapter is None else adapter(student_feat)
    if s.dim() == 4 and s.shape[-2:] != teacher_feat.shape[-2:]:
        s = F.interpolate(s, size=tuple(teacher_feat.shape[-2:]), mode="bilinear", align_corners=False)
    if s.shape != teacher_feat.shape:
        raise ValueError(
            f"hint_loss: the adapted student feature has shape {tuple(s.shape)} but the teacher's is "
            f"{tuple(teacher_feat.shape)}; the adapter must map width {cs} to {ct} "
            "(make_adapter builds one)"
        )
    return F.mse_loss(s, teacher_feat.detach())


def hidden_state_loss(student_h: Tensor, teacher_h: Tensor, adapter: nn.Module | None = None) -> Tensor:
    """TinyBERT hidden-state loss: MSE between adapter(student (B, T, C)) and teacher states (Jiao et al. 2020).

    "TinyBERT: Distilling BERT for Natural Language Understanding" (Findings of EMNLP 2020): a
    learned W_h maps the student's hidden width to the teacher's; this is ``hint_loss`` restricted
    to (B, T, C) token states (T must match). Use ``make_adapter`` for W_h when widths differ.

    Example:
        >>> hidden_state_loss(torch.zeros(1, 2, 4), torch.zeros(1, 2, 4))
        tensor(0.)
    """
    for name, h in (("student_h", student_h), ("teacher_h", teacher_h)):
        if h.dim() != 3:
            raise ValueError(f"hidden_state_loss: {name} must be (B, T, C), got shape {tuple(h.shape)}")
    return hint_loss(student_h, teacher_h, adapter)


# --- attention transfer (CNN feature maps) -------------------------------------------------------


def _at_map(feat: Tensor, p: float) -> Tensor:
    """Per sample sum_c |A_c|^p over channels, flattened over H*W and L2-normalized: (B, H*W)."""
    return F.normalize(feat.abs().pow(p).sum(dim=1).flatten(1), dim=1)


def attention_transfer(student_feat: Tensor, teacher_feat: Tensor, p: float = 2.0) -> Tensor:
    """Activation-based attention transfer: match where the nets look, not what (Zagoruyko & Komodakis 2017).

    "Paying More Attention to Attention" (ICLR 2017). Each (B, C, H, W) map becomes
    Q = sum_c |A_c|^p, flattened and L2-normalized per sample; the loss is
    ``(Q_s / ||Q_s|| - Q_t / ||Q_t||).pow(2).mean()`` (mean over batch and positions), the form of
    the authors' reference code. Channel counts may differ. When spatial sizes differ, the larger
    feature map is adaptive-average-pooled to the smaller (per dimension, to (min H, min W)) before
    the attention map is formed, as in the reference code. The teacher is detached.

    Example:
        >>> attention_transfer(torch.ones(2, 3, 4, 4), torch.ones(2, 8, 2, 2))
        tensor(0.)
    """
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not p > 0:
        raise ValueError(f"attention_transfer: p must be a number > 0, got {p!r}")
    for name, f in (("student_feat", student_feat), ("teacher_feat", teacher_feat)):
        if f.dim() != 4:
            raise ValueError(f"attention_transfer: {name} must be (B, C, H, W), got shape {tuple(f.shape)}")
    if student_feat.shape[0] != teacher_feat.shape[0]:
        raise ValueError(
            f"attention_transfer: student and teacher batch sizes differ: "
            f"{student_feat.shape[0]} vs {teacher_feat.shape[0]}"
        )
    teacher_feat = teacher_feat.detach()
    size = (min(student_feat.shape[2], teacher_feat.shape[2]), min(student_feat.shape[3], teacher_feat.shape[3]))
    if tuple(student_feat.shape[2:]) != size:
        student_feat = F.adaptive_avg_pool2d(student_feat, size)
    if tuple(teacher_feat.shape[2:]) != size:
        teacher_feat = F.adaptive_avg_pool2d(teacher_feat, size)
    return (_at_map(student_feat, p) - _at_map(teacher_feat, p)).pow(2).mean()


# --- transformer attention maps (TinyBERT / MiniLM) ----------------------------------------------


def attention_probs(q: Tensor, k: Tensor, num_heads: int) -> Tensor:
    """softmax(q k^T / sqrt(head_dim)) per head, (B, heads, Tq, Tk): the attention a ViT block applies.

    Rebuilds the weights that ``F.scaled_dot_product_attention`` (no mask, default scale) uses in
    ``nncompress.models.vit.MultiHeadSelfAttention`` from the q and k ``nn.Linear`` outputs, of shape
    (B, T, num_heads * head_dim), so they can be distilled (``attention_map_loss``). Nothing is
    detached here; the loss detaches the teacher side.

    Example:
        >>> attention_probs(torch.zeros(1, 2, 4), torch.zeros(1, 2, 4), num_heads=2)[0, 0]
        tensor([[0.5000, 0.5000],
                [0.5000, 0.5000]])
    """
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"attention_probs: num_heads must be an int >= 1, got {num_heads!r}")
    for name, x in (("q", q), ("k", k)):
        if x.dim() != 3:
            raise ValueError(f"attention_probs: {name} must be (B, T, heads * head_dim), got shape {tuple(x.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        raise ValueError(
            f"attention_probs: q and k must share batch size and width, got shapes {tuple(q.shape)} and "
            f"{tuple(k.shape)}"
        )
    b, tq, width = q.shape
    if width % num_heads:
        raise ValueError(f"attention_probs: width {width} is not divisible by num_heads {num_heads}")
    head_dim = width // num_heads
    qh = q.reshape(b, tq, num_heads, head_dim).transpose(1, 2)  # (B, heads, Tq, head_dim)
    kh = k.reshape(b, k.shape[1], num_heads, head_dim).transpose(1, 2)  # (B, heads, Tk, head_dim)
    return torch.softmax(qh @ kh.transpose(-2, -1) / math.sqrt(head_dim), dim=-1)


def attention_map_loss(student_probs: Tensor, teacher_probs: Tensor) -> Tensor:
    """KL(teacher || student) between attention distributions, per query (MiniLM, Wang et al. 2020; TinyBERT).

    "MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of Pre-Trained
    Transformers" (NeurIPS 2020); TinyBERT (Jiao et al. 2020) also distills attention maps (with an
    MSE on scores). Inputs are probabilities (B, heads, Tq, Tk), e.g. from ``attention_probs``; the
    KL runs over the last dim and is averaged over batch, heads and query positions. When the head
    counts differ, each side's maps are first averaged over its heads (one map per side). The
    teacher is detached.

    Example:
        >>> p = torch.full((1, 2, 3, 3), 1 / 3)
        >>> attention_map_loss(p, p)
        tensor(0.)
    """
    for name, x in (("student_probs", student_probs), ("teacher_probs", teacher_probs)):
        if x.dim() != 4:
            raise ValueError(f"attention_map_loss: {name} must be (B, heads, Tq, Tk), got shape {tuple(x.shape)}")
    if student_probs.shape[0] != teacher_probs.shape[0] or student_probs.shape[2:] != teacher_probs.shape[2:]:
        raise ValueError(
            f"attention_map_loss: batch size and (Tq, Tk) must match, got shapes {tuple(student_probs.shape)} "
            f"and {tuple(teacher_probs.shape)}"
        )
    s, t = student_probs, teacher_probs.detach()
    if s.shape[1] != t.shape[1]:
        s, t = s.mean(dim=1, keepdim=True), t.mean(dim=1, keepdim=True)
    tiny = torch.finfo(s.dtype).tiny if s.is_floating_point() else 1e-38
    kl = torch.xlogy(t, t) - t * torch.log(s.clamp_min(tiny))  # 0 log 0 = 0
    return kl.sum(dim=-1).mean()


# --- relational KD -------------------------------------------------------------------------------


def rkd_distance(student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
    """RKD distance-wise loss: match the mean-normalized pairwise distances of a batch (Park et al. 2019).

    "Relational Knowledge Distillation" (CVPR 2019). Embeddings are (B, D) (higher ranks are
    flattened; student and teacher D may differ), B >= 2. For every pair i < j the Euclidean
    distance is divided by the mean distance over all pairs on that side; the loss is the smooth L1
    (Huber, delta = 1) between the two sides, averaged over the B (B - 1) / 2 pairs. The teacher is
    detached; coincident embeddings give a zero (not NaN) gradient.

    Example:
        >>> e = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
        >>> rkd_distance(e, 2 * e + 1)
        tensor(0.)
    """
    s, t = _embeddings("rkd_distance", student_emb, teacher_emb, min_batch=2)

    def normalized(e: Tensor) -> Tensor:
        d = torch.pdist(e.contiguous())  # (B (B - 1) / 2,), pairs i < j
        return d / d.mean().clamp_min(1e-12)

    return F.smooth_l1_loss(normalized(s), normalized(t), beta=1.0)


def _cosines(e: Tensor) -> Tensor:
    """cos[i, j, k] of the angle at vertex j between e_i - e_j and e_k - e_j; 0 where a side has length 0."""
    diff = e.unsqueeze(0) - e.unsqueeze(1)  # diff[j, i] = e_i - e_j, (B, B, D)
    norm = diff.norm(dim=-1, keepdim=True)
    ok = norm > 1e-12
    unit = torch.where(ok, diff / torch.where(ok, norm, torch.ones_like(norm)), torch.zeros_like(diff))
    return (unit @ unit.transpose(1, 2)).transpose(0, 1)  # [j, i, k] -> [i, j, k]


def rkd_angle(student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
    """RKD angle-wise loss: match the cosines of the angles that triplets of a batch form (Park et al. 2019).

    "Relational Knowledge Distillation" (CVPR 2019). Embeddings are (B, D) (higher ranks are
    flattened; student and teacher D may differ), B >= 3. For every triplet of distinct indices
    (i, j, k) the cosine of the angle at e_j is compared by smooth L1 (Huber, delta = 1), averaged
    over the B (B - 1) (B - 2) triplets. A coincident pair gives cosine 0 and no gradient through
    it. Memory is O(B^2 D) (the difference vectors). The teacher is detached.

    Example:
        >>> line = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])  # angles' cosines 1, -1, 1
        >>> right = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # 0, 0.7071, 0.7071
        >>> rkd_angle(line, right)  # Huber terms (0.5 + 1.2071 + 0.0429) / 3
        tensor(0.5833)
    """
    s, t = _embeddings("rkd_angle", student_emb, teacher_emb, min_batch=3)
    b = s.shape[0]
    idx = torch.arange(b, device=s.device)
    i, j, k = idx.view(b, 1, 1), idx.view(1, b, 1), idx.view(1, 1, b)
    distinct = (i != j) & (j != k) & (i != k)
    return F.smooth_l1_loss(_cosines(s)[distinct], _cosines(t)[distinct], beta=1.0)
