"""Calibration observers: watch activation batches, then choose a per-tensor clipping range.

- minmax: the running [min, max].
- moving-average: an exponential moving average of each batch's min and max (PyTorch's default for QAT).
- percentile: the ``percentile``-th and ``100 - percentile``-th percentiles, from a histogram.
- mse: the clipping range minimising the expected quantization MSE over a histogram.
- entropy: TensorRT's KL-divergence calibration on a 2048-bin histogram of |x| (Migacz 2017,
  "8-bit Inference with TensorRT").

Histogram observers keep a fixed number of bins, so memory stays bounded however many batches are
seen; when a batch falls outside the current range, the range grows and old counts are re-binned.
"""

from __future__ import annotations

import torch

from nncompress.quantize.primitives import QuantSpec, qparams_from_range

DEFAULT_SPEC = QuantSpec(bits=8, symmetric=True)


class Observer:
    """Base class: ``update`` with batches, then ``range`` / ``qparams``.

    Example:
        >>> obs = MinMaxObserver()
        >>> obs.update(torch.tensor([-1.0, 2.0]))
        >>> obs.range()
        (-1.0, 2.0)
    """

    def __init__(self) -> None:
        self.batches = 0

    def update(self, x: torch.Tensor) -> None:
        """Accumulate statistics of one batch (empty batches and non-finite values are ignored)."""
        x = x.detach().float().reshape(-1)
        x = x[torch.isfinite(x)]
        if x.numel():
            self._update(x)
            self.batches += 1

    def _update(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def _check_seen(self) -> None:
        if not self.batches:
            raise ValueError(
                f"{type(self).__name__}: no calibration data was seen; call update() with at least one "
                "non-empty batch before range() or qparams()"
            )

    def range(self, spec: QuantSpec | None = None) -> tuple[float, float]:
        """Chosen clipping range (lo, hi); ``spec`` (default 8-bit symmetric) matters for mse and entropy."""
        self._check_seen()
        return self._range(spec or DEFAULT_SPEC)

    def _range(self, spec: QuantSpec) -> tuple[float, float]:
        raise NotImplementedError

    def qparams(self, spec: QuantSpec = DEFAULT_SPEC) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-tensor (scale, zero_point) for ``spec`` (whose granularity must be "tensor")."""
        if spec.granularity != "tensor":
            raise ValueError(f"observers give per-tensor parameters, got granularity={spec.granularity!r}")
        return qparams_from_range(*self.range(spec), spec)


class MinMaxObserver(Observer):
    """Running minimum and maximum over all batches.

    Example:
        >>> obs = MinMaxObserver()
        >>> obs.update(torch.tensor([0.0, 1.0])); obs.update(torch.tensor([-3.0]))
        >>> obs.range()
        (-3.0, 1.0)
    """

    def __init__(self) -> None:
        super().__init__()
        self.lo, self.hi = float("inf"), float("-inf")

    def _update(self, x: torch.Tensor) -> None:
        self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))

    def _range(self, spec: QuantSpec) -> tuple[float, float]:
        return self.lo, self.hi


class MovingAverageMinMaxObserver(MinMaxObserver):
    """Exponential moving average of batch minima and maxima: ``lo <- (1 - m) lo + m batch_min``.

    The first batch sets the range. Example: ``MovingAverageMinMaxObserver(momentum=0.1)``.
    """

    def __init__(self, momentum: float = 0.1) -> None:
        if not 0 < momentum <= 1:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        super().__init__()
        self.momentum = momentum

    def _update(self, x: torch.Tensor) -> None:
        lo, hi = float(x.min()), float(x.max())
        if not self.batches:
            self.lo, self.hi = lo, hi
            return
        m = self.momentum
        self.lo, self.hi = self.lo + m * (lo - self.lo), self.hi + m * (hi - self.hi)


class _Histogram:
    """Counts of values in ``bins`` equal bins over [lo, hi], growing the range when needed."""

    def __init__(self, bins: int, from_zero: bool = False) -> None:
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 8:
            raise ValueError(f"bins must be an integer >= 8, got {bins!r}")
        self.bins = bins
        self.counts = torch.zeros(bins, dtype=torch.float64)
        self.lo = self.hi = 0.0
        self.from_zero = from_zero  # histograms of |x| start at 0, as TensorRT's

    @property
    def width(self) -> float:
        return (self.hi - self.lo) / self.bins

    def edges(self) -> torch.Tensor:
        return torch.linspace(self.lo, self.hi, self.bins + 1, dtype=torch.float64)

    def centers(self) -> torch.Tensor:
        e = self.edges()
        return (e[1:] + e[:-1]) / 2

    def _bin(self, values: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        width = self.width or 1.0
        idx = ((values.double() - self.lo) / width).floor().long().clamp(0, self.bins - 1)
        return torch.bincount(idx, weights=weights, minlength=self.bins).double()

    def add(self, x: torch.Tensor) -> None:
        lo, hi = float(x.min()), float(x.max())
        if self.from_zero:
            lo = 0.0
        if not self.counts.sum():
            self.lo, self.hi = lo, hi
        elif lo < self.lo or hi > self.hi:  # grow, then re-bin the old counts at their bin centres
            old_centers, old_counts = self.centers(), self.counts
            self.lo, self.hi = min(lo, self.lo), max(hi, self.hi)
            self.counts = self._bin(old_centers, old_counts)
        self.counts += self._bin(x)


class PercentileObserver(Observer):
    """Clips at the ``100 - percentile`` and ``percentile`` percentiles (from a ``bins``-bin histogram).

    The returned bounds are the outer edges of the bins holding those percentiles, so the error is
    at most one bin width outwards. Example: ``PercentileObserver(percentile=99.9)``.
    """

    def __init__(self, percentile: float = 99.99, bins: int = 2048) -> None:
        if not 50 < percentile <= 100:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        super().__init__()
        self.percentile = percentile
        self.hist = _Histogram(bins)

    def _update(self, x: torch.Tensor) -> None:
        self.hist.add(x)

    def _range(self, spec: QuantSpec) -> tuple[float, float]:
        cdf = self.hist.counts.cumsum(0) / self.hist.counts.sum()
        q = self.percentile / 100
        edges = self.hist.edges()
        i_hi = int(torch.searchsorted(cdf, torch.tensor(q, dtype=torch.float64) - 1e-12))
        i_lo = int(torch.searchsorted(cdf, torch.tensor(1 - q, dtype=torch.float64) + 1e-12, right=True))
        return float(edges[min(i_lo, self.hist.bins - 1)]), float(edges[min(i_hi, self.hist.bins - 1) + 1])


def _fake_quant_values(values: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """(candidates, values): values quantized with each candidate range (lo, hi are (candidates, 1))."""
    scale, zp = qparams_from_range(lo, hi, spec)
    scale, zp = scale.double(), zp.double()
    q = torch.clamp(torch.round(values / scale) + zp, spec.qmin, spec.qmax)
    return (q - zp) * scale


class MSEObserver(Observer):
    """Clipping range minimising the quantization MSE, estimated on a ``bins``-bin histogram.

    Candidates shrink the observed [min, max] (symmetric specs: [-a, a] with a = max |x|) by ``grid``
    ratios r in (0, 1]; each bin's values are represented by its centre. The range returned is the
    best candidate intersected with the observed [min, max]. Example: ``MSEObserver().qparams(QuantSpec(bits=4))``.
    """

    def __init__(self, bins: int = 2048, grid: int = 200) -> None:
        if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
            raise ValueError(f"grid must be an integer >= 1, got {grid!r}")
        super().__init__()
        self.grid = grid
        self.hist = _Histogram(bins)

    def _update(self, x: torch.Tensor) -> None:
        self.hist.add(x)

    def _range(self, spec: QuantSpec) -> tuple[float, float]:
        h = self.hist
        ratios = torch.linspace(1.0 / self.grid, 1.0, self.grid, dtype=torch.float64)[:, None]  # (G, 1)
        if spec.symmetric:  # only max(|lo|, |hi|) matters: shrink the symmetric range
            a = max(-h.lo, h.hi)
            lo, hi = -a * ratios, a * ratios
        else:
            lo, hi = h.lo * ratios, h.hi * ratios
        centers = h.centers()[None, :]  # (1, bins)
        err = ((_fake_quant_values(centers, lo.float(), hi.float(), spec) - centers) ** 2 * h.counts).sum(1)
        best = int(torch.argmin(err))  # the first (smallest) range on ties
        return max(float(lo[best]), h.lo), min(float(hi[best]), h.hi)


class EntropyObserver(Observer):
    """TensorRT entropy calibration (Migacz 2017): the |x| threshold whose quantized distribution is
    closest in KL divergence to the clipped reference distribution.

    A ``bins``-bin histogram of |x| over [0, max|x|] is kept. For every candidate i from ``levels``
    to ``bins`` bins: P = first i bins with the clipped tail added to bin i-1; Q = the first i bins
    merged into ``levels`` chunks and spread back over the chunk's non-empty bins; the threshold is
    the upper edge of bin i with the smallest KL(P || Q). ``levels`` is 2^(bits-1) for a symmetric spec
    (128 for int8) and 2^bits otherwise. Range: (-t, t) if negatives were seen, else (0, t).

    Example:
        >>> obs = EntropyObserver()
        >>> obs.update(torch.randn(10_000)); lo, hi = obs.range()
    """

    def __init__(self, bins: int = 2048) -> None:
        super().__init__()
        self.hist = _Histogram(bins, from_zero=True)
        self.min_seen = float("inf")

    def _update(self, x: torch.Tensor) -> None:
        self.min_seen = min(self.min_seen, float(x.min()))
        self.hist.add(x.abs())

    def _range(self, spec: QuantSpec) -> tuple[float, float]:
        t = self.threshold(2 ** (spec.bits - 1) if spec.symmetric else 2**spec.bits)
        return (-t if self.min_seen < 0 else 0.0), t

    def threshold(self, levels: int = 128) -> float:
        """The |x| clipping threshold for ``levels`` quantization levels."""
        self._check_seen()
        counts, width = self.hist.counts, self.hist.width
        if width == 0:
            return 0.0
        best_i, best_kl = counts.numel(), float("inf")
        for i in range(min(levels, counts.numel()), counts.numel() + 1):
            kl = _kl_clipped(counts, i, levels)
            if kl < best_kl:
                best_i, best_kl = i, kl
        return best_i * width


def _kl_clipped(counts: torch.Tensor, i: int, levels: int, eps: float = 1e-4) -> float:
    """KL(P || Q) for clipping the histogram ``counts`` after ``i`` bins and quantizing to ``levels``."""
    sliced = counts[:i]
    p = sliced.clone()
    p[-1] += counts[i:].sum()
    nonzero = p > 0
    # Chunk boundaries spread i bins as evenly as possible over the levels.
    chunk = torch.div(torch.arange(i) * levels, i, rounding_mode="floor")  # (i,) chunk id of each bin
    totals = torch.zeros(levels, dtype=counts.dtype).index_add_(0, chunk, sliced)
    used = torch.zeros(levels, dtype=counts.dtype).index_add_(0, chunk, nonzero.double())
    q = torch.where(nonzero, totals[chunk] / used[chunk].clamp(min=1), torch.zeros_like(p))
    p, q = p[nonzero] / p.sum(), q[nonzero]
    # Smooth Q where the clipped tail lands on bins it left empty (KL would be infinite), as MXNet's
    # calibration does: a small eps there, taken proportionally from the rest.
    empty = q == 0
    q = q / q.sum()
    q = torch.where(empty, eps, q * (1 - eps * int(empty.sum())))
    return float((p * (p / q).log()).sum())


OBSERVERS: dict[str, type[Observer]] = {
    "minmax": MinMaxObserver,
    "moving-average": MovingAverageMinMaxObserver,
    "percentile": PercentileObserver,
    "mse": MSEObserver,
    "entropy": EntropyObserver,
}


def make_observer(name: str, **kwargs: object) -> Observer:
    """A new observer by registry name, with its keyword settings.

    Example:
        >>> make_observer("percentile", percentile=99.9)
        <...PercentileObserver object at ...>
    """
    if name not in OBSERVERS:
        raise ValueError(f"unknown observer {name!r}; expected one of {', '.join(sorted(OBSERVERS))}")
    return OBSERVERS[name](**kwargs)
