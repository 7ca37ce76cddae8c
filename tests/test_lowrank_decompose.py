"""Low-rank maths: decompositions against their definitions, and rank selection rules."""

from __future__ import annotations

import doctest
import importlib

import pytest
import torch

from nncompress.lowrank.decompose import (
    activation_svd_factors,
    cp,
    relative_error,
    spatial_matrix,
    spatial_svd,
    svd_factors,
    tucker2,
    unfold,
    weighted_singular_values,
)
from nncompress.lowrank.ranks import (
    RankRule,
    Spectrum,
    break_even,
    choose_rank,
    energy_rank,
    error_rank,
    evbmf,
    parse_rank,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- SVD ---------------------------------------------------------------------------------------


def test_svd_full_rank_reproduces_the_matrix():
    w = randn(30, 20)
    f = svd_factors(w, 20)
    torch.testing.assert_close(f.left @ f.right, w, atol=1e-5, rtol=0)
    assert f.error == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("rank", [1, 3, 10])
def test_svd_truncation_error_is_eckart_young(rank):
    w = randn(30, 20, seed=rank)
    s = torch.linalg.svdvals(w.double())
    expected = float(s[rank:].square().sum().sqrt() / s.square().sum().sqrt())
    f = svd_factors(w, rank)
    assert f.left.shape == (30, rank) and f.right.shape == (rank, 20)
    assert f.error == pytest.approx(expected, rel=1e-9)
    assert relative_error(w, f.left @ f.right) == pytest.approx(expected, rel=1e-4)  # the product's real error


def test_svd_factors_are_balanced():
    f = svd_factors(randn(12, 9), 4)  # sqrt(S) on each side: column i of left and row i of right share a norm
    torch.testing.assert_close(f.left.norm(dim=0), f.right.norm(dim=1), rtol=1e-5, atol=0)


@pytest.mark.parametrize("rank", [0, -1, 21, 2.0, True])
def test_svd_rejects_ranks_outside_one_to_full(rank):
    with pytest.raises(ValueError, match=r"rank must be an integer in \[1, 20\]"):
        svd_factors(randn(30, 20), rank)


def test_svd_rejects_a_non_matrix():
    with pytest.raises(ValueError, match="expects a matrix"):
        svd_factors(randn(3, 4, 5), 2)


# --- activation-aware SVD ----------------------------------------------------------------------


def outlier_inputs(n: int = 512, features: int = 32) -> torch.Tensor:
    """Calibration inputs with a few channels 30x larger than the rest (as LLM activations have)."""
    x = randn(n, features, seed=5)
    x[:, :3] *= 30
    return x


@pytest.mark.parametrize("diagonal", [False, True])
def test_activation_svd_full_rank_reproduces_the_matrix(diagonal):
    w, x = randn(24, 32, seed=1), outlier_inputs()
    gram = x.square().sum(0) if diagonal else x.T @ x
    f = activation_svd_factors(w, gram, 24)
    torch.testing.assert_close(f.left @ f.right, w, atol=1e-5, rtol=0)


def test_activation_svd_has_lower_output_error_than_plain_svd():
    w, x = randn(24, 32, seed=1), outlier_inputs()
    aware, plain = activation_svd_factors(w, x.T @ x, 6), svd_factors(w, 6)
    out = x @ w.T

    def output_error(f):
        return relative_error(out, x @ (f.left @ f.right).T)

    assert output_error(aware) < 0.8 * output_error(plain)
    # its reported error is the relative output error on the calibration inputs it minimized
    assert aware.error == pytest.approx(output_error(aware), rel=1e-4)
    # and it matches the best rank-6 approximation of the outputs (Eckart-Young on W X^T)
    s = torch.linalg.svdvals(out.double())
    assert aware.error == pytest.approx(float(s[6:].square().sum().sqrt() / s.square().sum().sqrt()), rel=1e-6)


def test_weighted_singular_values_are_those_of_w_times_the_gram_root():
    w, x = randn(10, 16, seed=2), outlier_inputs(features=16)
    expected = torch.linalg.svdvals((x @ w.T).double())  # W G^(1/2) has the singular values of X W^T
    torch.testing.assert_close(weighted_singular_values(w, x.T @ x), expected, rtol=1e-6, atol=1e-6)


def test_activation_svd_rejects_a_gram_of_the_wrong_size():
    with pytest.raises(ValueError, match=r"gram must be \(in, in\) or \(in,\) with in=32"):
        activation_svd_factors(randn(24, 32), torch.eye(31), 4)


# --- Tucker-2, CP, spatial SVD -------------------------------------------------------------------


def test_tucker2_full_ranks_reproduce_the_kernel():
    k = randn(8, 6, 3, 3)
    f = tucker2(k, (8, 6))
    rebuilt = torch.einsum("abyx,oa,ib->oiyx", f.core, f.out_factor, f.in_factor)
    torch.testing.assert_close(rebuilt, k, atol=1e-5, rtol=0)
    assert f.error < 1e-6


def test_tucker2_recovers_a_kernel_of_low_multilinear_rank_and_reports_its_error():
    core, u_out, u_in = randn(3, 2, 3, 3, seed=1), randn(8, 3, seed=2), randn(6, 2, seed=3)
    k = torch.einsum("abyx,oa,ib->oiyx", core, u_out, u_in)
    exact = tucker2(k, (3, 2))
    assert exact.error < 1e-5
    noisy = k + 0.1 * randn(8, 6, 3, 3, seed=4)
    f = tucker2(noisy, (3, 2))
    assert (f.core.shape, f.out_factor.shape, f.in_factor.shape) == ((3, 2, 3, 3), (8, 3), (6, 2))
    rebuilt = torch.einsum("abyx,oa,ib->oiyx", f.core, f.out_factor, f.in_factor)
    assert f.error == pytest.approx(relative_error(noisy, rebuilt), rel=1e-4)
    assert f.error < relative_error(noisy, k) + 1e-6  # no worse than the true low-rank kernel


@pytest.mark.parametrize("ranks", [(0, 2), (9, 2), (4, 7)])
def test_tucker2_rejects_ranks_outside_the_channels(ranks):
    with pytest.raises(ValueError, match="Tucker .* rank must be an integer in"):
        tucker2(randn(8, 6, 3, 3), ranks)


def test_cp_recovers_a_kernel_of_known_cp_rank():
    a, b, c, d = randn(8, 4, seed=1), randn(6, 4, seed=2), randn(3, 4, seed=3), randn(3, 4, seed=4)
    k = torch.einsum("or,ir,yr,xr->oiyx", a, b, c, d)
    f = cp(k, 4)
    rebuilt = torch.einsum("or,ir,yr,xr->oiyx", f.out_factor, f.in_factor, f.vertical, f.horizontal)
    assert f.error < 1e-3
    assert relative_error(k, rebuilt) == pytest.approx(f.error, abs=1e-5)


def test_cp_at_a_high_rank_approximates_a_generic_kernel_well():
    k = randn(8, 6, 3, 3, seed=7)
    assert cp(k, 40).error < 0.02 < cp(k, 4).error


@pytest.mark.parametrize("rank", [0, -2, 1.5])
def test_cp_rejects_bad_ranks(rank):
    with pytest.raises(ValueError, match="CP rank must be an integer >= 1"):
        cp(randn(8, 6, 3, 3), rank)


def test_spatial_matrix_layout():
    k = randn(5, 4, 3, 2)
    m = spatial_matrix(k)
    assert m.shape == (4 * 3, 5 * 2)
    o, i, y, x = 3, 2, 1, 1
    assert m[i * 3 + y, o * 2 + x] == k[o, i, y, x]


def test_spatial_svd_full_rank_reproduces_and_truncation_is_eckart_young():
    k = randn(8, 6, 3, 5)  # full rank min(6*3, 8*5) = 18
    f = spatial_svd(k, 18)
    rebuilt = torch.einsum("orx,riy->oiyx", f.horizontal, f.vertical)
    torch.testing.assert_close(rebuilt, k, atol=1e-5, rtol=0)
    s = torch.linalg.svdvals(spatial_matrix(k).double())
    f = spatial_svd(k, 5)
    assert (f.vertical.shape, f.horizontal.shape) == ((5, 6, 3), (8, 5, 5))
    assert f.error == pytest.approx(float(s[5:].square().sum().sqrt() / s.square().sum().sqrt()), rel=1e-9)
    with pytest.raises(ValueError, match=r"spatial SVD rank must be an integer in \[1, 18\]"):
        spatial_svd(k, 19)


def test_unfold_puts_the_mode_first():
    k = randn(4, 3, 2, 2)
    assert unfold(k, 1).shape == (3, 16)
    assert unfold(k, 1)[2, 5] == k.movedim(1, 0).reshape(3, -1)[2, 5]


# --- rank rules --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "rule"),
    [
        (8, RankRule("fixed", 8)),
        (0.25, RankRule("ratio", 0.25)),
        (1.0, RankRule("ratio", 1.0)),
        ("energy:0.95", RankRule("energy", 0.95)),
        ("error: 0.1", RankRule("error", 0.1)),
        ("params:0.5", RankRule("params", 0.5)),
        ("vbmf", RankRule("vbmf")),
    ],
)
def test_parse_rank_accepts_each_form(spec, rule):
    assert parse_rank(spec) == rule


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        (0, "must be >= 1"),
        (-3, "must be >= 1"),
        (0.0, r"in \(0, 1\]"),
        (1.5, r"in \(0, 1\]"),
        ("energy:1.5", r"energy must be in \(0, 1\]"),
        ("energy:0", r"energy must be in \(0, 1\]"),
        ("error:1", r"error must be in \[0, 1\)"),
        ("params:0", r"params must be in \(0, 1\]"),
        ("energy:lots", "'lots' is not a number"),
        ("bogus", "is not accepted"),
        ("energy", "is not accepted"),
        (True, "is not accepted"),
        (None, "is not accepted"),
        ([4], "is not accepted"),
    ],
)
def test_parse_rank_rejects_bad_ranks_naming_the_accepted_forms(spec, why):
    with pytest.raises(ValueError, match=why) as info:
        parse_rank(spec)
    assert "a rank is an integer >= 1" in str(info.value) and "'vbmf'" in str(info.value)


def test_parse_rank_rejects_rules_a_method_cannot_follow():
    message = r"rank 'energy:0.9' \(energy\) is not supported here; accepted: fixed, params"
    with pytest.raises(ValueError, match=message):
        parse_rank("energy:0.9", ("fixed", "params"))


def test_energy_rank_is_the_smallest_rank_keeping_the_fraction():
    s = torch.tensor([4.0, 3.0, 2.0, 1.0])  # energies 16, 9, 4, 1 of 30
    assert [energy_rank(s, f) for f in (0.5, 16 / 30, 0.6, 0.9, 29 / 30, 0.99, 1.0)] == [1, 1, 2, 3, 3, 4, 4]
    values = torch.linalg.svdvals(randn(40, 30, seed=3))
    total = values.square().sum()
    for fraction in (0.3, 0.8, 0.95):
        r = energy_rank(values, fraction)
        assert values[:r].square().sum() / total >= fraction > values[: r - 1].square().sum() / total


def test_error_rank_meets_the_budget_with_the_smallest_rank():
    w = randn(40, 30, seed=4)
    values = torch.linalg.svdvals(w)
    for budget in (0.2, 0.5, 0.8):
        r = error_rank(values, budget)
        assert svd_factors(w, r).error <= budget < svd_factors(w, r - 1).error


@pytest.mark.parametrize(("rows", "cols", "rank", "noise"), [(60, 80, 5, 0.1), (80, 60, 7, 0.5), (64, 576, 12, 0.2)])
def test_evbmf_recovers_the_rank_of_low_rank_plus_gaussian_noise(rows, cols, rank, noise):
    y = randn(rows, rank, seed=1) @ randn(rank, cols, seed=2) + noise * randn(rows, cols, seed=3)
    found, sigma2 = evbmf(torch.linalg.svdvals(y.double()), (rows, cols))
    assert found == rank
    assert sigma2 == pytest.approx(noise**2, rel=0.1)  # and estimates the noise variance


def test_evbmf_finds_no_signal_in_pure_noise():
    assert evbmf(torch.linalg.svdvals(randn(60, 80, seed=9)), (60, 80))[0] == 0


def test_choose_rank_per_rule():
    spectra = [Spectrum(torch.tensor([4.0, 3.0, 2.0, 1.0]), (4, 6))]

    def params(rank):
        return rank[0] * 10

    def pick(rule, full=(4,)):
        return choose_rank(rule, full, lambda: spectra, params, original=24)

    assert pick(RankRule("fixed", 3)) == (3,)
    assert pick(RankRule("fixed", 9)) == (4,)  # clipped to the full rank
    assert pick(RankRule("ratio", 0.3)) == (2,)  # rounded up: at least the fraction
    assert pick(RankRule("ratio", 0.3), full=(10, 5)) == (3, 2)
    assert pick(RankRule("energy", 0.9)) == (3,)
    assert pick(RankRule("params", 0.5)) == (1,)  # 10 params <= 12 < 20
    assert pick(RankRule("params", 0.9)) == (2,)  # 20 <= 21.6 < 30


def test_break_even_is_the_first_rank_that_does_not_pay():
    # Linear 100 -> 10: rank r costs 110 r against 1000 weights; r = 9 pays (990), r = 10 does not
    assert break_even(lambda r: r[0] * 110 >= 1000, (10,)) == (10,)
    assert break_even(lambda r: r[0] * 110 >= 10**6, (10,)) is None


@pytest.mark.parametrize("module", ["decompose", "ranks", "steps", "budget"])
def test_docstring_examples_run(module):
    mod = importlib.import_module(f"nncompress.lowrank.{module}")
    result = doctest.testmod(mod, extraglobs={"torch": torch}, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted >= 1
