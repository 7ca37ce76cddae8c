"""DEFLATE (zlib) of byte streams, decided by a cheap estimate instead of a trial compression.

Two users in the artifact code:

- **Byte planes** (``deflate_array`` / ``inflate_array``): a numeric array's bytes split into one
  plane per byte of its element (byte ``k`` of every value together, as Blosc's shuffle does), and
  each plane DEFLATE-coded only when its byte histogram says it gains at least ``MIN_GAIN``. A
  float32 weight's exponent byte is highly predictable, its low mantissa bytes nearly random: this
  stores SmolLM2's fp32 embedding in 60% of its bytes in ~2 s, where DEFLATE of the plain bytes at
  level 6 took 67% and ~40 s.
- **Entropy-coded codes** (the ``deflate`` layout of the ``huffman`` encoding): small codes grouped
  into bytes, DEFLATE'd with zlib's run-length strategy, i.e. Huffman-coded per 32K-symbol block by C
  code (a 4-bit layer: one Huffman code per pair of codes, a little smaller than per-code Huffman,
  and decoded ~1000x faster than the pure-numpy Huffman decoder).

The estimate is the Huffman cost of the byte histogram (``np.bincount``, no compression run).
Inflating is bounded: the caller gives the exact size expected, and a stream that inflates to more
or less, or does not end there, raises ValueError.

Example:
    >>> data = np.zeros(10_000, dtype=np.float32)
    >>> blob, planes = deflate_array(data)
    >>> bool((inflate_array(blob, planes, np.dtype(np.float32), data.size) == data).all())
    True
"""

from __future__ import annotations

import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from nncompress.io.huffman import code_lengths

LEVEL = 1  # the run-length strategy has no match search: levels differ little in size, much in time
STRATEGY = zlib.Z_RLE
MEM_LEVEL = 9  # 32K symbols per block: Huffman tables adapt per block
MIN_GAIN = 0.03  # a plane is DEFLATE'd only when its estimate saves at least this fraction
BLOCK_BYTES = 1 << 15
BLOCK_OVERHEAD = 80  # bytes a dynamic-Huffman block header costs at most, roughly
RAW, DEFLATED = "raw", "deflate"
THREAD_NUMEL = 1 << 20  # planes of at least this many bytes are (de)compressed on threads


def huffman_bytes(hist: np.ndarray) -> int:
    """Bytes a Huffman code of the byte histogram ``hist`` takes (payload only), a DEFLATE estimate."""
    hist = np.asarray(hist, dtype=np.int64)
    if np.count_nonzero(hist) <= 1:
        return 0
    return int((code_lengths(hist) * hist).sum() + 7) // 8


def estimate_bytes(data: np.ndarray) -> int:
    """Estimated DEFLATE size of the uint8 array ``data`` (Huffman cost of its histogram plus block headers)."""
    data = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)
    blocks = data.size // BLOCK_BYTES + 1
    return huffman_bytes(byte_histogram(data)) + BLOCK_OVERHEAD * blocks


def byte_histogram(data: np.ndarray) -> np.ndarray:
    """Counts of the 256 byte values in the flat uint8 array ``data``: pairs of bytes counted as
    uint16 and folded (half the elements to widen, ~1.5x numpy's plain ``bincount``)."""
    even = data.size - data.size % 2
    pairs = np.bincount(data[:even].view(np.uint16), minlength=1 << 16).reshape(256, 256)
    hist = pairs.sum(0) + pairs.sum(1)
    if even < data.size:
        hist[data[-1]] += 1
    return hist


def deflate_bytes(data: np.ndarray) -> bytes:
    """Raw DEFLATE (no zlib header) of the uint8 array ``data``."""
    comp = zlib.compressobj(LEVEL, zlib.DEFLATED, -15, MEM_LEVEL, STRATEGY)
    return comp.compress(np.ascontiguousarray(data, dtype=np.uint8).data) + comp.flush()


def inflate_bytes(blob: np.ndarray | bytes, size: int) -> np.ndarray:
    """Inverse of ``deflate_bytes``, to exactly ``size`` bytes (ValueError for anything else)."""
    decomp = zlib.decompressobj(-15)
    try:
        out = decomp.decompress(np.ascontiguousarray(blob, dtype=np.uint8).data, size)
    except zlib.error as e:
        raise ValueError(f"corrupt DEFLATE stream ({e})") from e
    if len(out) != size or not decomp.eof or decomp.unused_data or decomp.unconsumed_tail:
        raise ValueError(f"DEFLATE stream does not inflate to exactly {size} bytes")
    return np.frombuffer(out, dtype=np.uint8)


def byte_planes(values: np.ndarray) -> np.ndarray:
    """``values``' bytes as ``(itemsize, numel)`` planes: row ``k`` holds byte ``k`` of every value."""
    flat = np.ascontiguousarray(values).reshape(-1)
    return np.ascontiguousarray(flat.view(np.uint8).reshape(flat.size, flat.itemsize).T)


def _map(fn: Any, items: list[Any], numel: int) -> list[Any]:
    """``[fn(x) for x in items]``, on threads when the planes are large (zlib and numpy release the
    GIL: a 2-core machine stores a float32 embedding's planes in about half the time)."""
    workers = min(len(items), os.cpu_count() or 1)
    if numel < THREAD_NUMEL or workers < 2:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


def _plane_to_store(plane: np.ndarray, min_gain: float) -> tuple[np.ndarray, str]:
    if plane.size and estimate_bytes(plane) <= (1 - min_gain) * plane.size:
        blob = np.frombuffer(deflate_bytes(plane), dtype=np.uint8)
        if blob.size < plane.size:
            return blob, DEFLATED
    return plane, RAW


def deflate_array(values: np.ndarray, min_gain: float = MIN_GAIN) -> tuple[np.ndarray, list[list[Any]]] | None:
    """``values`` as byte planes, each DEFLATE'd where its estimate saves ``min_gain``; returns the
    concatenated bytes and ``[[method, stored bytes], ...]`` per plane, or None when no plane gains."""
    planes = byte_planes(values)
    stored = _map(lambda plane: _plane_to_store(plane, min_gain), list(planes), planes.shape[1])
    if all(method == RAW for _, method in stored):
        return None
    chosen = [data for data, _ in stored]
    return np.concatenate(chosen), [[method, int(data.size)] for data, method in stored]


def check_planes(layout: Any, itemsize: int, numel: int, stored: int) -> None:
    """ValueError where ``layout`` is not one ``[method, size]`` per byte of the element, each raw plane
    ``numel`` bytes, together ``stored`` bytes."""
    if not isinstance(layout, list) or len(layout) != itemsize:
        raise ValueError(f"byte planes must list {itemsize} [method, size] pairs, got {layout!r}")
    total = 0
    for entry in layout:
        if not (isinstance(entry, list) and len(entry) == 2 and entry[0] in (RAW, DEFLATED)):
            raise ValueError(f"a byte plane must be [{RAW!r} or {DEFLATED!r}, size], got {entry!r}")
        size = entry[1]
        if type(size) is not int or size < 0 or (entry[0] == RAW and size != numel):
            raise ValueError(f"byte plane size {size!r} does not fit {numel} values")
        total += size
    if total != stored:
        raise ValueError(f"byte planes take {total} bytes, {stored} are stored")


def inflate_array(blob: np.ndarray, layout: list[list[Any]], dtype: np.dtype, numel: int) -> np.ndarray:
    """Inverse of ``deflate_array``: ``numel`` values of ``dtype`` (flat), checked (``check_planes``) first."""
    blob = np.asarray(blob, dtype=np.uint8).reshape(-1)
    check_planes(layout, dtype.itemsize, numel, blob.size)
    planes = np.empty((dtype.itemsize, numel), dtype=np.uint8)
    offsets = np.cumsum([0] + [size for _, size in layout])

    def fill(k: int) -> None:
        chunk = blob[offsets[k] : offsets[k + 1]]
        planes[k] = chunk if layout[k][0] == RAW else inflate_bytes(chunk, numel)

    _map(fill, list(range(dtype.itemsize)), numel)
    return np.ascontiguousarray(planes.T).reshape(-1).view(dtype)
