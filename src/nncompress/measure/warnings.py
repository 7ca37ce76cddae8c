"""Speed warnings: a compressed model slower than its baseline says so, with the likely reason.

Every report (the CLI table, report.json's ``warnings``, report.html) and every benchmark row
carries these lines, so a smaller model that runs slower is never presented as a plain win. The
comparison is strict (no noise margin): both models are timed interleaved in one process (see
``measure.latency``), and a 0.98x is reported as slower, not rounded to "as fast".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Layer formats whose weights may be decoded to float32 and run on dense kernels, and why that costs time.
DECODED_FORMATS = {
    "codebook": "codebook weights have no lookup-table kernel on x86 and are decoded to float32",
    "binary": "binary weights are decoded to float32 unless a low-bit kernel runs them",
    "int-symmetric": "low-bit weights are decoded to float32 where no low-bit kernel fits the layer",
    "uint-affine": "low-bit weights are decoded to float32 where no low-bit kernel fits the layer",
    "float16": "float16 weights run decoded to float32 (no float16 speed-up on this path)",
}
SMALL_KERNEL_LAYER = 2**20  # weights: a float32 copy of a layer up to this size (4 MiB) stays in L2/L3 cache
SPARSE_NOTE = "zeros are still multiplied: dense kernels run unstructured sparsity at full cost"


def _median(latency: Mapping[str, Any], key: str) -> float | None:
    entry = latency.get(key)
    return entry.get("median_ms") if isinstance(entry, Mapping) else None


def _batch_label(key: str) -> str:
    return key.replace("batch_", "batch ")


def slowdown_reasons(layers: list[Mapping[str, Any]]) -> list[str]:
    """What in the compressed model's per-layer table usually costs time (formats, unstructured zeros)."""
    reasons = []
    formats = {row.get("format") for row in layers if not row.get("kernel")}
    for fmt, why in DECODED_FORMATS.items():
        if fmt in formats and why not in reasons:
            reasons.append(why)
    kernels = sorted({row["kernel"] for row in layers if row.get("kernel")})
    if kernels:
        largest = max(row.get("params") or 0 for row in layers if row.get("kernel"))
        where = (
            f"on layers this small (at most {largest:,} weights), whose float32 weights stay in cache,"
            if largest <= SMALL_KERNEL_LAYER
            else "here"
        )
        reasons.append(
            f"low-bit kernels ({', '.join(kernels)}) convert activations to bfloat16 and unpack codes on every "
            f"call; {where} that costs more than the smaller weight reads save"
        )
    if any((row.get("weight_sparsity") or 0.0) >= 0.3 and row.get("format") == "float32" for row in layers):
        reasons.append(SPARSE_NOTE)
    return reasons


def speed_warnings(baseline: Mapping[str, Any], final: Mapping[str, Any]) -> list[str]:
    """One line per timed batch size at which ``final`` (a report dict) is slower than ``baseline``.

    Each line gives both medians, the speed ratio and the likely reasons (see ``slowdown_reasons``).
    Untimed reports give no warning.
    """
    base_lat, final_lat = baseline.get("latency") or {}, final.get("latency") or {}
    keys = [k for k in final_lat if k.startswith("batch_") and _median(final_lat, k) is not None]
    out = []
    for key in keys:
        before, after = _median(base_lat, key), _median(final_lat, key)
        if before is None or after is None or after <= before:
            continue
        line = (
            f"slower than its baseline at {_batch_label(key)}: {after:.3g} ms against {before:.3g} ms "
            f"({before / after:.2f}x speed)"
        )
        reasons = slowdown_reasons(final.get("layers") or [])
        out.append(line + (f"; {'; '.join(reasons)}" if reasons else ""))
    return out
