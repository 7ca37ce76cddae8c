"""Rank selection: how many components a factorized layer keeps.

A rank setting is one of (``parse_rank``):

- an integer ``n >= 1``: that rank (clipped to each mode's full rank);
- a float in (0, 1]: that fraction of the full rank, rounded up;
- ``"energy:F"``: the smallest rank keeping a fraction F in (0, 1] of the squared singular values;
- ``"error:E"``: the smallest rank whose truncation error ``sqrt(dropped sigma^2 / all sigma^2)``
  is at most E in [0, 1);
- ``"params:P"``: the largest rank whose factorized layer has at most a fraction P in (0, 1] of the
  layer's parameters;
- ``"vbmf"``: the rank estimated by empirical variational Bayesian matrix factorization (EVBMF;
  Nakajima et al. 2013, "Global analytic solution of fully-observed variational Bayesian matrix
  factorization", JMLR 14), as Kim et al. 2016 chose Tucker ranks.

Factorizing pays only below the break-even rank, where the factors have fewer parameters and
MACs than the layer (``break_even``); steps skip and log layers at or above it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

RULES = ("fixed", "ratio", "energy", "error", "params", "vbmf")
SPECTRAL_RULES = ("energy", "error", "vbmf")  # read singular values
RANK_FORMS = (
    "an integer >= 1, a fraction of the full rank in (0, 1], 'energy:F' with F in (0, 1], "
    "'error:E' with E in [0, 1), 'params:P' with P in (0, 1], or 'vbmf'"
)

Rank = tuple[int, ...]  # one rank per factorized mode: (r,) or Tucker's (r_out, r_in)


@dataclass(frozen=True)
class RankRule:
    """A parsed rank setting: ``kind`` in ``RULES`` and its number (unused by ``vbmf``)."""

    kind: str
    value: float = 0.0


class Spectrum(NamedTuple):
    """Singular values (descending) of a matrix of ``shape``: what spectral rules read."""

    values: torch.Tensor
    shape: tuple[int, int]


def _bad(spec: object, why: str = "") -> ValueError:
    return ValueError(f"rank {spec!r} is not accepted{why}; a rank is {RANK_FORMS}")


def parse_rank(spec: object, accepted: tuple[str, ...] = RULES) -> RankRule:
    """The ``RankRule`` of a rank setting; ValueError naming the accepted forms for anything else.

    Example:
        >>> parse_rank("energy:0.95")
        RankRule(kind='energy', value=0.95)
    """
    rule = _parse(spec)
    if rule.kind not in accepted:
        raise ValueError(f"rank {spec!r} ({rule.kind}) is not supported here; accepted: {', '.join(accepted)}")
    return rule


def _parse(spec: object) -> RankRule:
    if isinstance(spec, bool):
        raise _bad(spec)
    if isinstance(spec, int):
        if spec < 1:
            raise _bad(spec, " (a rank must be >= 1)")
        return RankRule("fixed", spec)
    if isinstance(spec, float):
        if not 0 < spec <= 1:
            raise _bad(spec, " (a fraction of the full rank must be in (0, 1])")
        return RankRule("ratio", spec)
    if not isinstance(spec, str):
        raise _bad(spec)
    if spec.strip() == "vbmf":
        return RankRule("vbmf")
    kind, sep, number = spec.partition(":")
    kind = kind.strip()
    if not sep or kind not in ("energy", "error", "params"):
        raise _bad(spec)
    try:
        value = float(number)
    except ValueError:
        raise _bad(spec, f" ({number.strip()!r} is not a number)") from None
    ok = 0 <= value < 1 if kind == "error" else 0 < value <= 1
    if not ok:
        interval = "[0, 1)" if kind == "error" else "(0, 1]"
        raise _bad(spec, f" ({kind} must be in {interval})")
    return RankRule(kind, value)


def describe_rank(rank: Rank) -> str:
    """``12`` for a single rank, ``(12, 8)`` for Tucker's pair."""
    return str(rank[0]) if len(rank) == 1 else str(tuple(rank))


def energy_rank(values: torch.Tensor, fraction: float) -> int:
    """Smallest rank whose leading squared singular values hold at least ``fraction`` of their sum."""
    energy = values.to(torch.float64).square()
    total = float(energy.sum())
    if total <= 0:
        return 1
    kept = energy.cumsum(0) / total
    return min(int((kept < fraction - 1e-12).sum()) + 1, len(values))


def error_rank(values: torch.Tensor, budget: float) -> int:
    """Smallest rank whose truncation error ``sqrt(dropped sigma^2 / all sigma^2)`` is <= ``budget``."""
    return energy_rank(values, 1.0 - budget**2)


# tau_bar / sqrt(alpha): the root of the EVB threshold equation (Nakajima et al. 2013, Theorem 13)
EVBMF_TAU = 2.5129


def _evbmf_objective(sigma2: float, x_scale: np.ndarray, alpha: float, x_bar: float) -> float:
    """The EVB free energy as a function of the noise variance, up to constants.

    With ``x_h = gamma_h^2 / (M sigma2)`` it is ``sum_h (x_h - log x_h) + sum_{x_h > x_bar} psi1(x_h)``,
    ``psi1(x) = log(tau + 1) + alpha log(tau / alpha + 1) - tau``; ``-log x_h`` is written as
    ``log sigma2`` plus a constant, so zero singular values need no logarithm.
    """
    x = x_scale / sigma2
    big = x[x > x_bar]
    shifted = big - (1 + alpha)
    tau = 0.5 * (shifted + np.sqrt(np.maximum(shifted**2 - 4 * alpha, 0.0)))
    psi1 = np.log(tau + 1) + alpha * np.log(tau / alpha + 1) - tau
    return float(x.sum() + len(x) * math.log(sigma2) + psi1.sum())


def evbmf(values: torch.Tensor, shape: tuple[int, int]) -> tuple[int, float]:
    """(rank, noise variance) of a matrix by the analytic EVBMF solution, from its singular values.

    The noise variance minimizes the free energy over the interval that bounds it (Nakajima et al.
    2015, "Condition for perfect dimensionality recovery by VBMF"); components whose singular value
    exceeds ``sqrt(M sigma2 (1 + tau_bar)(1 + alpha / tau_bar))`` are kept (L <= M the sides of
    the matrix, ``alpha = L / M``, ``tau_bar = 2.5129 sqrt(alpha)``).

    Example:
        >>> evbmf(torch.tensor([10.0, 9.0, 0.1, 0.1, 0.1]), (5, 20))[0]
        2
    """
    small, large = sorted(shape)
    s = np.zeros(small)
    given = values.detach().to(torch.float64).cpu().numpy()[:small]
    s[: len(given)] = np.sort(given)[::-1]
    if s[0] <= 0:
        return 0, 0.0
    alpha = small / large
    tau_bar = EVBMF_TAU * math.sqrt(alpha)
    x_bar = (1 + tau_bar) * (1 + alpha / tau_bar)
    h_bar = min(math.ceil(small / (1 + alpha)) - 1, small - 1)  # at most this many components survive
    squares = s**2
    upper = squares.sum() / (small * large)
    lower = min(max(squares[h_bar] / (large * x_bar), squares[h_bar:].mean() / large), upper)
    sigma2 = _minimize_log_interval(lambda v: _evbmf_objective(v, squares / large, alpha, x_bar), lower, upper)
    threshold = math.sqrt(large * sigma2 * x_bar)
    return int((s > threshold).sum()), sigma2


def _minimize_log_interval(f: Callable[[float], float], lower: float, upper: float) -> float:
    """Minimizer of ``f`` on [lower, upper]: a log-spaced grid finds the basin (the free energy can
    have several), then bounded Brent refines it."""
    if lower <= 0:
        lower = upper * 1e-12
    if upper <= lower * (1 + 1e-12):
        return upper
    grid = np.geomspace(lower, upper, 200)
    i = int(np.argmin([f(v) for v in grid]))
    from scipy.optimize import minimize_scalar

    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    best = minimize_scalar(f, bounds=(lo, hi), method="bounded", options={"xatol": lo * 1e-9})
    return float(best.x) if best.fun <= f(grid[i]) else float(grid[i])


def spectral_rank(rule: RankRule, spectrum: Spectrum) -> int:
    """Rank of one matrix under an ``energy``, ``error`` or ``vbmf`` rule (at least 1)."""
    if rule.kind == "energy":
        return energy_rank(spectrum.values, rule.value)
    if rule.kind == "error":
        return error_rank(spectrum.values, rule.value)
    if rule.kind == "vbmf":
        return max(1, evbmf(spectrum.values, spectrum.shape)[0])
    raise ValueError(f"rule {rule.kind!r} does not read singular values")


def path_rank(full: Rank, t: int) -> Rank:
    """The t-th rank along the line from rank 1 to ``full``, every mode at the same fraction of its
    full rank (t runs from 1 to ``max(full)``)."""
    top = max(full)
    return tuple(max(1, min(f, round(t * f / top))) for f in full)


def largest_within(cost: Callable[[Rank], int], limit: float, full: Rank) -> Rank:
    """The largest rank along ``path_rank`` whose ``cost`` is at most ``limit`` (rank 1 if none is)."""
    lo, hi = 1, max(full)  # cost grows along the path: binary search for the last t within limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if cost(path_rank(full, mid)) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return path_rank(full, lo)


def choose_rank(
    rule: RankRule, full: Rank, spectra: Callable[[], list[Spectrum]], params: Callable[[Rank], int], original: int
) -> Rank:
    """The rank ``rule`` gives a layer of full rank ``full`` (one entry per mode).

    ``spectra`` gives each mode's singular values (called for spectral rules only); ``params``
    the factorized layer's parameters at a rank and ``original`` the layer's own.
    """
    if rule.kind == "fixed":
        return tuple(min(int(rule.value), f) for f in full)
    if rule.kind == "ratio":
        return tuple(max(1, math.ceil(rule.value * f - 1e-9)) for f in full)
    if rule.kind == "params":
        return largest_within(params, rule.value * original, full)
    return tuple(min(spectral_rank(rule, s), f) for s, f in zip(spectra(), full))


def break_even(not_cheaper: Callable[[Rank], bool], full: Rank) -> Rank | None:
    """The smallest rank along ``path_rank`` at which factorizing no longer pays (``not_cheaper`` is
    True there), or None when every rank up to ``full`` pays."""
    lo, hi = 1, max(full) + 1
    while lo < hi:
        mid = (lo + hi) // 2
        if not_cheaper(path_rank(full, mid)):
            hi = mid
        else:
            lo = mid + 1
    return path_rank(full, lo) if lo <= max(full) else None
