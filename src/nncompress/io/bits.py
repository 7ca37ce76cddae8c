"""Bit packing of unsigned codes in numpy, the layout ``quantize.primitives.pack_bits`` writes.

The artifact code reads and rebuilds packed code buffers without importing ``quantize`` (no
io -> quantize import): one little-endian bit stream, code ``i`` at stream bits
``[i * bits, (i + 1) * bits)``, least significant bit first, the last byte zero-padded. Widths
that divide 8 use shifts on whole bytes; the others go through ``np.unpackbits``/``np.packbits``.

Example:
    >>> pack_codes(np.array([1, 2, 3], dtype=np.uint8), 2).tolist()
    [57]
    >>> unpack_codes(np.array([57], dtype=np.uint8), 2, 3).tolist()
    [1, 2, 3]
"""

from __future__ import annotations

import numpy as np


def check_bits(bits: object) -> int:
    """``bits`` as an int in [1, 8] (the widths a uint8 code buffer packs), ValueError otherwise."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be an integer in [1, 8], got {bits!r}")
    return bits


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes that ``count`` codes of ``bits`` bits (1 to 16) take packed: ``ceil(count * bits / 8)``."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
        raise ValueError(f"bits must be an integer in [1, 16], got {bits!r}")
    return (count * bits + 7) // 8


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned codes (< 2**bits, any integer dtype) packed into ``packed_nbytes`` uint8 bytes."""
    bits = check_bits(bits)
    flat = np.asarray(codes).reshape(-1)
    if flat.size and (int(flat.min()) < 0 or int(flat.max()) >= 1 << bits):
        raise ValueError(f"codes must lie in [0, {(1 << bits) - 1}] for bits={bits}")
    flat = flat.astype(np.uint8, copy=False)
    if bits == 8:
        return flat.copy()
    if 8 % bits == 0:
        per = 8 // bits
        padded = np.zeros(-(-flat.size // per) * per, dtype=np.uint8)
        padded[: flat.size] = flat
        rows = padded.reshape(-1, per)
        out = rows[:, 0].copy()
        for k in range(1, per):
            out |= rows[:, k] << np.uint8(k * bits)
        return out
    planes = (flat[:, None] >> np.arange(bits, dtype=np.uint8)) & np.uint8(1)  # (count, bits), LSB first
    return np.packbits(planes.reshape(-1), bitorder="little")


def unpack_codes(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of ``pack_codes``: the first ``count`` codes as uint8 (ValueError when too few bytes)."""
    bits = check_bits(bits)
    flat = np.asarray(packed, dtype=np.uint8).reshape(-1)
    need = (count * bits + 7) // 8
    if flat.size < need:
        raise ValueError(f"{count} codes of {bits} bits need {need} bytes, got {flat.size}")
    flat = flat[:need]
    if bits == 8:
        return flat.copy()
    if 8 % bits == 0:
        per, mask = 8 // bits, np.uint8((1 << bits) - 1)
        out = np.empty((flat.size, per), dtype=np.uint8)
        for k in range(per):
            out[:, k] = (flat >> np.uint8(k * bits)) & mask
        return out.reshape(-1)[:count]
    stream = np.unpackbits(flat, bitorder="little")[: count * bits].reshape(count, bits)
    return np.packbits(stream, axis=1, bitorder="little").reshape(count)  # bits < 8: one byte each


def padding_is_zero(packed: np.ndarray, bits: int, count: int) -> bool:
    """Whether the bits after the last code (in the last byte) are zero, as ``pack_codes`` writes them."""
    used = count * check_bits(bits)
    flat = np.asarray(packed, dtype=np.uint8).reshape(-1)
    if used % 8 == 0 or flat.size == 0:
        return True
    return int(flat[used // 8]) >> (used % 8) == 0
