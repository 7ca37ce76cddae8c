"""Per-layer views of a report's ``layers`` tables: layers matched before/after, and factorized layers.

A low-rank step replaces a layer ``X`` by an ``nn.Sequential`` of factors, which the final per-layer
table lists as ``X.0``, ``X.1``, ... (see ``lowrank/layers.py``); the baseline still lists ``X``.
Ranks are read back from the factors' weight shapes, so any report holds what the plots need.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def layer_names(baseline: Sequence[dict[str, Any]], final: Sequence[dict[str, Any]]) -> list[str]:
    """Names of both tables, baseline order first, then layers that exist only after compression."""
    names = [row["name"] for row in baseline]
    seen = set(names)
    return names + [row["name"] for row in final if row["name"] not in seen]


@dataclass(frozen=True)
class Factorized:
    """A layer replaced by factors: its ranks (inner widths), the full ranks when finite, and the
    parameters before and after (weights and biases of the factors)."""

    name: str
    factors: tuple[str, ...]
    ranks: tuple[int, ...]
    full_ranks: tuple[int, ...] | None
    params_before: int
    params_after: int

    @property
    def kept(self) -> float:
        """Fraction of the layer's parameters its factors hold."""
        return self.params_after / self.params_before if self.params_before else math.nan

    def label(self) -> str:
        """``rank 75 of 300``, ``ranks 16, 24 of 64, 32`` or ``rank 8`` (CP has no finite full rank)."""
        word = "rank" if len(self.ranks) == 1 else "ranks"
        text = f"{word} {', '.join(map(str, self.ranks))}"
        if self.full_ranks:
            text += f" of {', '.join(map(str, self.full_ranks))}"
        return text


def _ranks(original: Sequence[int], factors: Sequence[Sequence[int]]) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """Inner widths of a factor chain and the original layer's full ranks, per lowrank/layers.py:

    - 2 factors of a matrix (SVD): ``(in -> r), (r -> out)``; full rank ``min(out, in)``.
    - 2 factors of a conv (spatial SVD): ``kh x 1 (C_in -> r)``, ``1 x kw (r -> C_out)``;
      full rank ``min(C_in * kh, C_out * kw)``.
    - 3 factors (Tucker-2): ``1x1 (C_in -> r_in)``, core ``(r_in -> r_out)``, ``1x1 (r_out -> C_out)``;
      full ranks ``(C_in, C_out)``.
    - 4 factors (CP): ``1x1 (C_in -> R)``, two depthwise convs of width R, ``1x1 (R -> C_out)``;
      no finite full rank.
    Other chains: each factor's output width but the last, no full rank.
    """
    widths = tuple(int(f[0]) for f in factors[:-1])
    if len(factors) == 2 and len(original) == 2:
        return widths, (min(original),)
    if len(factors) == 2 and len(original) == 4:
        c_out, c_in, kh, kw = original
        return widths, (min(c_in * kh, c_out * kw),)
    if len(factors) == 3 and len(original) == 4:
        return widths, (int(original[1]), int(original[0]))
    if len(factors) == 4 and len(original) == 4:
        return widths[:1], None
    return widths, None


def factorized_layers(baseline: Sequence[dict[str, Any]], final: Sequence[dict[str, Any]]) -> list[Factorized]:
    """The baseline layers that the final table lists only as numbered factors ``X.0``, ``X.1``..."""
    before = {row["name"]: row for row in baseline}
    after_names = {row["name"] for row in final}
    groups: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for row in final:
        parent, _, index = row["name"].rpartition(".")
        if index.isdigit() and parent in before and parent not in after_names:
            groups.setdefault(parent, []).append((int(index), row))
    out = []
    for name in before:
        if name not in groups or len(groups[name]) < 2:
            continue
        rows = [row for _, row in sorted(groups[name], key=lambda item: item[0])]
        ranks, full = _ranks(before[name]["shape"], [row["shape"] for row in rows])
        out.append(
            Factorized(
                name=name,
                factors=tuple(row["name"] for row in rows),
                ranks=ranks,
                full_ranks=full,
                params_before=int(before[name]["params"]),
                params_after=sum(int(row["params"]) for row in rows),
            )
        )
    return out
