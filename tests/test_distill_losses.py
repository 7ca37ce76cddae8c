"""Feature, attention and relational distillation losses: values by hand, zero at the teacher,
gradients into the student (and adapter) only, and clear errors for bad shapes and arguments."""

from __future__ import annotations

import doctest
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nncompress.distill as distill
from nncompress.distill import losses
from nncompress.distill.losses import (
    attention_map_loss,
    attention_probs,
    attention_transfer,
    hidden_state_loss,
    hint_loss,
    make_adapter,
    mse_logits,
    rkd_angle,
    rkd_distance,
)
from nncompress.models.vit import MultiHeadSelfAttention

NEW = [
    "attention_map_loss",
    "attention_probs",
    "attention_transfer",
    "hidden_state_loss",
    "hint_loss",
    "make_adapter",
    "mse_logits",
    "rkd_angle",
    "rkd_distance",
]


def leaf(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, requires_grad=True)


def num(x: torch.Tensor) -> float:
    return float(x.detach())


def assert_student_only(loss: torch.Tensor, student: torch.Tensor, teacher: torch.Tensor) -> None:
    """Backward reaches the student with a finite, non-zero gradient and never the teacher."""
    loss.backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()
    assert student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_exports_and_doctests():
    assert set(NEW) <= set(distill.__all__)
    assert all(getattr(distill, n) is getattr(losses, n) for n in NEW)
    result = doctest.testmod(losses, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    assert result.attempted >= 12  # every new function carries an example


# --- mse_logits ----------------------------------------------------------------------------------


def test_mse_logits_by_hand_zero_and_gradients():
    s = leaf([[1.0, 2.0, 3.0], [0.0, -1.0, 2.0]])
    t = leaf([[0.0, 2.0, 1.0], [1.0, 1.0, 2.0]])
    loss = mse_logits(s, t)  # differences 1, 0, 2, -1, -2, 0: (1 + 4 + 1 + 4) / 6
    assert num(loss) == pytest.approx(10 / 6, rel=1e-6)
    assert_student_only(loss, s, t)
    assert torch.allclose(s.grad, torch.tensor([[1.0, 0.0, 2.0], [-1.0, -2.0, 0.0]]) * 2 / 6)
    assert num(mse_logits(t.detach(), t.detach())) == 0.0


def test_mse_logits_rejects_shape_mismatch():
    with pytest.raises(ValueError, match=r"same shape, got \(2, 3\) and \(2, 4\)"):
        mse_logits(torch.zeros(2, 3), torch.zeros(2, 4))


# --- make_adapter --------------------------------------------------------------------------------


def test_make_adapter_layers_by_rank_and_width():
    lin = make_adapter((8, 16), (8, 32))
    assert type(lin) is nn.Linear and (lin.in_features, lin.out_features) == (16, 32) and lin.bias is None
    seq = make_adapter(torch.Size([4, 10, 16]), [4, 10, 24])
    assert type(seq) is nn.Linear and (seq.in_features, seq.out_features) == (16, 24) and seq.bias is None
    conv = make_adapter((2, 8, 7, 7), (2, 16, 14, 14))
    assert type(conv) is nn.Conv2d and (conv.in_channels, conv.out_channels) == (8, 16)
    assert conv.kernel_size == (1, 1) and conv.bias is None
    assert type(make_adapter((2, 8, 7, 7), (2, 8, 14, 14))) is nn.Identity  # resize is hint_loss's job
    assert type(make_adapter((4, 10, 16), (4, 10, 16))) is nn.Identity


def test_make_adapter_errors():
    with pytest.raises(ValueError, match=r"same rank, got \(2, 8, 7, 7\) \(rank 4\) and \(2, 8\) \(rank 2\)"):
        make_adapter((2, 8, 7, 7), (2, 8))
    with pytest.raises(ValueError, match=r"got rank 5"):
        make_adapter((1, 2, 3, 4, 5), (1, 2, 3, 4, 5))
    with pytest.raises(ValueError, match=r"got rank 1"):
        make_adapter((3,), (4,))
    with pytest.raises(ValueError, match=r"widths must be >= 1, got student 0 and teacher 4"):
        make_adapter((2, 0), (2, 4))


# --- hint_loss / hidden_state_loss ---------------------------------------------------------------


def test_hint_loss_with_adapter_by_hand_and_gradients():
    adapter = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        adapter.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    s = leaf([[1.0, 2.0], [3.0, 4.0]])  # adapted: [[1, 2, 3], [3, 4, 7]]
    t = leaf([[1.0, 2.0, 4.0], [3.0, 3.0, 7.0]])  # differences 0, 0, -1, 0, 1, 0
    loss = hint_loss(s, t, adapter)
    assert num(loss) == pytest.approx(2 / 6, rel=1e-6)
    assert_student_only(loss, s, t)
    assert adapter.weight.grad is not None and adapter.weight.grad.abs().sum() > 0
    assert num(hint_loss(t.detach(), t.detach())) == 0.0


def test_hint_loss_bilinear_resize_of_the_student_map():
    # Upsampling W 2 -> 4 (align_corners=False) gives [a, 3a/4 + b/4, a/4 + 3b/4, b] = [0, 1, 3, 4].
    s = leaf([[[[0.0, 4.0]]]])
    t = torch.zeros(1, 1, 1, 4, requires_grad=True)
    loss = hint_loss(s, t)
    assert num(loss) == pytest.approx((0 + 1 + 9 + 16) / 4, rel=1e-6)
    assert_student_only(loss, s, t)
    # Downsampling 4x4 -> 2x2 by a factor 2 averages 2x2 blocks of arange(16): 2.5, 4.5, 10.5, 12.5.
    big = torch.arange(16.0).view(1, 1, 4, 4)
    expected = (2.5**2 + 4.5**2 + 10.5**2 + 12.5**2) / 4
    assert num(hint_loss(big, torch.zeros(1, 1, 2, 2))) == pytest.approx(expected, rel=1e-6)
    # With a 1x1 conv adapter (widths 2 -> 1): channel 0 + 5 * channel 1, then the resize above.
    conv = make_adapter((1, 2, 1, 2), (1, 1, 1, 4))
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 5.0]).view(1, 2, 1, 1))
    s2 = torch.tensor([[[[0.0, 4.0]], [[0.0, 0.0]]]], requires_grad=True)
    loss2 = hint_loss(s2, torch.zeros(1, 1, 1, 4), conv)
    assert num(loss2) == pytest.approx(6.5, rel=1e-6)
    loss2.backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


def test_hint_loss_errors():
    with pytest.raises(ValueError, match=r"width 3 != teacher width 5 and no adapter.*make_adapter"):
        hint_loss(torch.zeros(2, 3), torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"same rank, got shapes \(2, 3\) and \(2, 3, 1\)"):
        hint_loss(torch.zeros(2, 3), torch.zeros(2, 3, 1))
    with pytest.raises(ValueError, match=r"got rank 1"):
        hint_loss(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match=r"batch sizes differ: 2 vs 4"):
        hint_loss(torch.zeros(2, 3), torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"sequence lengths differ: 5 vs 6"):
        hint_loss(torch.zeros(2, 5, 3), torch.zeros(2, 6, 3))
    wrong = nn.Linear(3, 4, bias=False)  # teacher width is 5
    with pytest.raises(ValueError, match=r"adapted student feature has shape \(2, 4\).*\(2, 5\)"):
        hint_loss(torch.zeros(2, 3), torch.zeros(2, 5), wrong)


def test_hidden_state_loss_by_hand_and_errors():
    adapter = make_adapter((1, 2, 2), (1, 2, 3))
    with torch.no_grad():
        adapter.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]]))
    s = leaf([[[1.0, 2.0], [0.0, 3.0]]])  # adapted: [[1, 2, -1], [0, 3, -3]]
    t = leaf([[[1.0, 2.0, 1.0], [0.0, 3.0, -3.0]]])  # differences 0, 0, -2, 0, 0, 0
    loss = hidden_state_loss(s, t, adapter)
    assert num(loss) == pytest.approx(4 / 6, rel=1e-6)
    assert_student_only(loss, s, t)
    assert num(hidden_state_loss(t.detach(), t.detach())) == 0.0
    with pytest.raises(ValueError, match=r"student_h must be \(B, T, C\), got shape \(2, 3\)"):
        hidden_state_loss(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"teacher_h must be \(B, T, C\), got shape \(1, 2, 3, 4\)"):
        hidden_state_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3, 4))


# --- attention_transfer --------------------------------------------------------------------------


def test_attention_transfer_by_hand():
    s = leaf([[[[3.0, 4.0]]]])  # (1, 1, 1, 2)
    t = leaf([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # (1, 2, 1, 2): sum_c |A_c|^p = [1, 1] for any p
    # p = 2: Q_s = [9, 16] / sqrt(337), Q_t = [1, 1] / sqrt(2); squared differences averaged over 2 positions
    r = 1 / math.sqrt(2)
    expected2 = ((9 / math.sqrt(337) - r) ** 2 + (16 / math.sqrt(337) - r) ** 2) / 2
    loss = attention_transfer(s, t)
    assert num(loss) == pytest.approx(expected2, rel=1e-5)
    assert_student_only(loss, s, t)
    # p = 1: Q_s = [3, 4] / 5; absolute values, so the sign of the activations does not matter
    expected1 = ((0.6 - r) ** 2 + (0.8 - r) ** 2) / 2
    assert num(attention_transfer(-s.detach(), t.detach(), p=1.0)) == pytest.approx(expected1, rel=1e-5)


def test_attention_transfer_zero_at_teacher_and_channel_count_free():
    t = torch.randn(2, 4, 3, 3)
    assert num(attention_transfer(t, t)) == 0.0
    # 3 copies of the channels, scaled: the normalized attention map is unchanged
    assert num(attention_transfer(2.0 * t.repeat(1, 3, 1, 1), t)) < 1e-12
    assert num(attention_transfer(torch.randn(2, 4, 3, 3), t)) > 1e-3


def test_attention_transfer_pools_the_larger_feature_map_before_the_attention_map():
    # Teacher (1, 1, 2, 4) averaged over 2x2 blocks -> features [2, 0] -> Q = [1, 0]; pooling the
    # attention map instead would give [5, 1] / sqrt(26). Student Q = [3, 4] / 5: (0.4^2 + 0.8^2) / 2.
    s = leaf([[[[3.0, 4.0]]]])
    t = leaf([[[[1.0, 3.0, 1.0, -1.0], [1.0, 3.0, 1.0, -1.0]]]])
    loss = attention_transfer(s, t, p=1.0)
    assert num(loss) == pytest.approx(0.4, rel=1e-5)
    assert_student_only(loss, s, t)
    # The student larger: the student is pooled, same numbers (the loss is symmetric).
    assert num(attention_transfer(t.detach(), s.detach(), p=1.0)) == pytest.approx(0.4, rel=1e-5)
    # ... and the gradient flows back through the pooling into the student's full-size map
    s2, t2 = torch.rand(2, 3, 4, 6, requires_grad=True), torch.rand(2, 5, 2, 3, requires_grad=True)
    assert_student_only(attention_transfer(s2, t2), s2, t2)
    assert (s2.grad != 0).all()
    # H larger on one side, W on the other: both are pooled to (min H, min W) = (1, 1)
    assert num(attention_transfer(torch.rand(2, 3, 2, 1) + 0.1, torch.rand(2, 5, 1, 2) + 0.1)) < 1e-12


def test_attention_transfer_errors():
    x = torch.zeros(2, 3, 4, 4)
    for bad in (0.0, -1.0, True, "2"):
        with pytest.raises(ValueError, match=r"p must be a number > 0, got"):
            attention_transfer(x, x, p=bad)
    with pytest.raises(ValueError, match=r"student_feat must be \(B, C, H, W\), got shape \(2, 3, 4\)"):
        attention_transfer(torch.zeros(2, 3, 4), x)
    with pytest.raises(ValueError, match=r"teacher_feat must be \(B, C, H, W\), got shape \(2, 3\)"):
        attention_transfer(x, torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"batch sizes differ: 2 vs 3"):
        attention_transfer(x, torch.zeros(3, 3, 4, 4))


# --- attention_probs / attention_map_loss --------------------------------------------------------


def test_attention_probs_by_hand():
    # 2 heads of width 4 (scale 1/2). Head 0: query 0 scores [0, 2 ln 3 / 2] -> [1/4, 3/4];
    # query 1 scores [0, 0]. Head 1 is all zeros -> uniform.
    q = torch.zeros(1, 2, 8)
    k = torch.zeros(1, 2, 8)
    q[0, 0, 0] = 2 * math.log(3.0)
    k[0, 1, 0] = 1.0
    p = attention_probs(q, k, num_heads=2)
    assert p.shape == (1, 2, 2, 2)
    expected = torch.tensor([[[[0.25, 0.75], [0.5, 0.5]], [[0.5, 0.5], [0.5, 0.5]]]])
    assert torch.allclose(p, expected, atol=1e-6)
    # Tq != Tk (cross attention) is allowed: (B, heads, Tq, Tk)
    assert attention_probs(torch.zeros(3, 2, 6), torch.zeros(3, 5, 6), num_heads=3).shape == (3, 3, 2, 5)


def test_attention_probs_are_the_weights_our_vit_applies():
    torch.manual_seed(0)
    attn = MultiHeadSelfAttention(dim=12, num_heads=3)
    x = torch.randn(2, 5, 12)
    probs = attention_probs(attn.q(x), attn.k(x), attn.num_heads)
    v = attn.v(x).view(2, 5, 3, 4).transpose(1, 2)
    rebuilt = attn.proj((probs @ v).transpose(1, 2).reshape(2, 5, 12))
    assert torch.allclose(rebuilt, attn(x), atol=1e-5)
    assert torch.allclose(probs.sum(-1), torch.ones(2, 3, 5), atol=1e-6)


def test_attention_probs_errors():
    x = torch.zeros(1, 2, 8)
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match=r"num_heads must be an int >= 1, got"):
            attention_probs(x, x, num_heads=bad)
    with pytest.raises(ValueError, match=r"width 8 is not divisible by num_heads 3"):
        attention_probs(x, x, num_heads=3)
    with pytest.raises(ValueError, match=r"q must be \(B, T, heads \* head_dim\), got shape \(2, 8\)"):
        attention_probs(torch.zeros(2, 8), x, num_heads=2)
    with pytest.raises(ValueError, match=r"share batch size and width, got shapes \(1, 2, 8\) and \(1, 2, 6\)"):
        attention_probs(x, torch.zeros(1, 2, 6), num_heads=2)


def test_attention_map_loss_by_hand_direction_and_gradients():
    # Query 0: teacher (3/4, 1/4), student uniform -> KL(t || s) = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.1308
    # (the other direction, KL(s || t), would be 0.1438). Query 1 equal -> 0. Mean over 2 queries.
    s = leaf([[[[0.5, 0.5], [0.2, 0.8]]]])
    t = leaf([[[[0.75, 0.25], [0.2, 0.8]]]])
    loss = attention_map_loss(s, t)
    assert num(loss) == pytest.approx((0.75 * math.log(1.5) + 0.25 * math.log(0.5)) / 2, rel=1e-5)
    assert_student_only(loss, s, t)
    # A teacher zero is fine (0 log 0 = 0): KL((1, 0) || (1/2, 1/2)) = ln 2
    assert num(attention_map_loss(torch.full((1, 1, 1, 2), 0.5), torch.tensor([[[[1.0, 0.0]]]]))) == (
        pytest.approx(math.log(2.0), rel=1e-6)
    )
    p = torch.softmax(torch.randn(2, 3, 4, 4), dim=-1)
    assert abs(num(attention_map_loss(p, p))) < 1e-6


def test_attention_map_loss_averages_heads_when_counts_differ():
    s = leaf([[[[0.9, 0.1]], [[0.1, 0.9]]]])  # 2 heads, mean (0.5, 0.5)
    t = leaf([[[[0.75, 0.25]], [[0.75, 0.25]], [[0.75, 0.25]]]])  # 3 heads, mean (0.75, 0.25)
    loss = attention_map_loss(s, t)
    assert num(loss) == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), rel=1e-5)
    assert_student_only(loss, s, t)


def test_attention_map_loss_through_attention_probs_reaches_student_q_k_only():
    torch.manual_seed(1)
    sq, sk = torch.randn(2, 4, 8, requires_grad=True), torch.randn(2, 4, 8, requires_grad=True)
    tq, tk = torch.randn(2, 4, 12, requires_grad=True), torch.randn(2, 4, 12, requires_grad=True)
    loss = attention_map_loss(attention_probs(sq, sk, 2), attention_probs(tq, tk, 3))
    assert num(loss) > 0
    loss.backward()
    assert sq.grad.abs().sum() > 0 and sk.grad.abs().sum() > 0
    assert tq.grad is None and tk.grad is None


def test_attention_map_loss_errors():
    x = torch.full((1, 2, 3, 3), 1 / 3)
    with pytest.raises(ValueError, match=r"student_probs must be \(B, heads, Tq, Tk\), got shape \(2, 3, 3\)"):
        attention_map_loss(torch.zeros(2, 3, 3), x)
    with pytest.raises(ValueError, match=r"teacher_probs must be \(B, heads, Tq, Tk\), got shape \(3, 3\)"):
        attention_map_loss(x, torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"batch size and \(Tq, Tk\) must match, got shapes \(1, 2, 3, 3\)"):
        attention_map_loss(x, torch.full((1, 2, 4, 4), 0.25))
    with pytest.raises(ValueError, match=r"batch size and \(Tq, Tk\) must match"):
        attention_map_loss(x, torch.full((2, 2, 3, 3), 1 / 3))


# --- relational KD -------------------------------------------------------------------------------


def test_rkd_distance_by_hand():
    # Teacher 3-4-5 triangle: pair distances (3, 4, 5) / 4. Student on a line at 0, 1, 2: (1, 2, 1) / (4/3).
    # Differences (0, 0.5, -0.5): Huber 0.5 x^2 -> (0 + 0.125 + 0.125) / 3 pairs.
    s = leaf([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    t = leaf([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    loss = rkd_distance(s, t)
    assert num(loss) == pytest.approx(1 / 12, rel=1e-5)
    assert_student_only(loss, s, t)
    # Linear branch of Huber: teacher 0, 0, 0, 10 (mean distance 5), student 0, 1, 2, 3 (mean 5/3).
    # Pairs (01, 02, 03, 12, 13, 23): teacher (0, 0, 2, 0, 2, 2), student (.6, 1.2, 1.8, .6, 1.2, .6);
    # Huber of the differences: .18 + .7 + .02 + .18 + .32 + .9 = 2.3 over 6 pairs.
    s4 = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    t4 = torch.tensor([[0.0], [0.0], [0.0], [10.0]])
    assert num(rkd_distance(s4, t4)) == pytest.approx(2.3 / 6, rel=1e-5)


def test_rkd_distance_invariances_and_coincident_points():
    torch.manual_seed(2)
    t = torch.randn(6, 4)
    rot, _ = torch.linalg.qr(torch.randn(4, 4))
    assert num(rkd_distance(t, t)) == 0.0
    assert num(rkd_distance(3.0 * t @ rot + 1.0, t)) < 1e-10  # scale, rotation, shift
    wider = torch.cat([t, torch.zeros(6, 3)], dim=1)  # student D = 7, teacher D = 4
    assert num(rkd_distance(wider.view(6, 7, 1, 1), t)) < 1e-10  # higher ranks are flattened
    assert num(rkd_distance(torch.randn(6, 4), t)) > 1e-3
    s = torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.0, 2.0]], requires_grad=True)  # rows 0 and 1 coincide
    rkd_distance(s, torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])).backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def numpy_rkd_angle(s: np.ndarray, t: np.ndarray) -> float:
    """The definition, loop by loop: Huber of the cosine at e_j over all distinct (i, j, k)."""

    def cos(e, i, j, k):
        a, b = e[i] - e[j], e[k] - e[j]
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    terms = []
    for i, j, k in itertools.permutations(range(len(s)), 3):
        x = abs(cos(s, i, j, k) - cos(t, i, j, k))
        terms.append(0.5 * x * x if x < 1 else x - 0.5)
    return float(np.mean(terms))


def test_rkd_angle_by_hand():
    # Student on a line: cosines at the vertices 0, 1, 2 are 1, -1, 1. Teacher right triangle at 0:
    # 0, sqrt(2)/2, sqrt(2)/2. Huber: 0.5 + (1 + sqrt(2)/2 - 0.5) + 0.5 (1 - sqrt(2)/2)^2 = 1.75,
    # each angle appears in 2 of the 6 ordered triplets: 1.75 / 3.
    s = leaf([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    t = leaf([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    loss = rkd_angle(s, t)
    assert num(loss) == pytest.approx(1.75 / 3, rel=1e-5)
    # Cosines of 0 and 180 degrees are stationary, so the collinear student gets a zero gradient;
    # move one point off the line to see the gradient (and still none for the teacher).
    s_off = leaf([[0.0, 0.0], [1.0, 0.5], [2.0, 0.0]])
    assert_student_only(rkd_angle(s_off, t), s_off, t)


def test_rkd_angle_matches_the_definition_and_is_similarity_invariant():
    rng = np.random.default_rng(3)
    s, t = rng.normal(size=(5, 3)), rng.normal(size=(5, 4))
    got = num(rkd_angle(torch.tensor(s), torch.tensor(t)))
    assert got == pytest.approx(numpy_rkd_angle(s, t), rel=1e-9)
    tt = torch.tensor(t, dtype=torch.float32)
    rot, _ = torch.linalg.qr(torch.randn(4, 4))
    assert num(rkd_angle(tt, tt)) == 0.0
    assert num(rkd_angle(2.0 * tt @ rot - 3.0, tt)) < 1e-10
    assert num(rkd_angle(torch.tensor(s, dtype=torch.float32), tt)) > 1e-3


def test_rkd_angle_coincident_points_give_finite_gradients():
    s = torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.0, 2.0], [3.0, 0.0]], requires_grad=True)
    t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    loss = rkd_angle(s, t)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert s.grad.abs().max() < 10  # no 1/eps blow-up through the zero-length side


def test_rkd_errors():
    with pytest.raises(ValueError, match=r"rkd_distance: needs a batch of at least 2 embeddings, got 1"):
        rkd_distance(torch.zeros(1, 4), torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"rkd_angle: needs a batch of at least 3 embeddings, got 2"):
        rkd_angle(torch.zeros(2, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"rkd_distance: student and teacher batch sizes differ: 3 vs 4"):
        rkd_distance(torch.zeros(3, 4), torch.zeros(4, 4))
    with pytest.raises(ValueError, match=r"rkd_angle: student and teacher batch sizes differ: 4 vs 3"):
        rkd_angle(torch.zeros(4, 2), torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"student_emb must be \(B, D\).*got shape \(5,\)"):
        rkd_distance(torch.zeros(5), torch.zeros(5, 2))
    with pytest.raises(ValueError, match=r"teacher_emb must be \(B, D\).*got shape \(\)"):
        rkd_angle(torch.zeros(5, 2), torch.tensor(1.0))


def test_losses_differentiate_and_detach_on_random_inputs():
    """All feature losses: a gradient for the student, none for the teacher, F.mse_loss agrees."""
    torch.manual_seed(4)
    cases = [
        (hint_loss, (3, 4, 5, 5), (3, 4, 5, 5)),
        (attention_transfer, (3, 4, 6, 6), (3, 8, 3, 3)),
        (rkd_distance, (5, 7), (5, 3)),
        (rkd_angle, (5, 7), (5, 3)),
        (mse_logits, (4, 10), (4, 10)),
    ]
    for fn, sshape, tshape in cases:
        s = torch.randn(sshape, requires_grad=True)
        t = torch.randn(tshape, requires_grad=True)
        assert_student_only(fn(s, t), s, t)
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    assert torch.allclose(hint_loss(s, t), F.mse_loss(s, t))
