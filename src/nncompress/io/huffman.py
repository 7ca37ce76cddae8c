"""Canonical Huffman coding of integer symbol streams, and Deep Compression's sparse code layout.

Pure numpy, vectorised: encoding gathers each symbol's code bits from a table; decoding looks up
the code starting at *every* bit position at once (a 2**15-entry table over a sliding window)
and then only follows the chain of code starts in a tight loop, so a LeNet-sized layer decodes in
milliseconds.

``encode_symbols`` stores a stream of small integers (e.g. k-means cluster codes) in the fewer
bits of two layouts:

- ``plain``: every symbol Huffman-coded;
- ``sparse`` (Han et al. 2016, "Deep Compression", sections 2 and 4): the most frequent symbol
  (a pruned layer's zero) is the background; the other symbols are Huffman-coded, and their
  positions are relative index gaps of a fixed width ``w`` -- a gap of ``2**w - 1`` or more is
  split with filler symbols -- Huffman-coded as well. ``w`` is chosen per stream (1 to 12) to
  minimise the total, where the paper fixes it (4 bits for fc, 8 for conv); ``w = 1`` degenerates
  to a bitmask.

Code tables are stored as 4-bit code lengths (codes are limited to 15 bits), so a table costs
half a byte per symbol of the alphabet, trimmed after the last symbol present.

Example:
    >>> data, header = encode_symbols(np.array([0, 0, 0, 3, 0, 0, 1, 0]), alphabet=4)
    >>> decode_symbols(data, header).tolist()
    [0, 0, 0, 3, 0, 0, 1, 0]
"""

from __future__ import annotations

import heapq
from typing import Any

import numpy as np

MAX_CODE_BITS = 15  # code lengths fit a 4-bit table entry; the decoding table has 2**15 entries
MAX_GAP_WIDTH = 12
TABLE_ENTRY_BITS = 4


def code_lengths(counts: np.ndarray, max_bits: int = MAX_CODE_BITS) -> np.ndarray:
    """Huffman code length of each symbol from its count (0 for symbols that never occur).

    Ties are broken by symbol order, so the result is deterministic. A single present symbol gets
    length 1. Lengths above ``max_bits`` are avoided by flattening the counts (halving them, keeping
    every present symbol at >= 1) and rebuilding, as zlib-style coders do.

    Example:
        >>> code_lengths(np.array([1, 1, 2, 4])).tolist()
        [3, 3, 2, 1]
    """
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError(f"counts must be a 1-D array of non-negative integers, got {counts!r}")
    lengths = np.zeros(counts.size, dtype=np.int64)
    present = np.flatnonzero(counts)
    if present.size == 0:
        return lengths
    if present.size == 1:
        lengths[present] = 1
        return lengths
    if present.size > 2**max_bits:
        raise ValueError(f"{present.size} distinct symbols cannot get codes of at most {max_bits} bits")
    weights = counts[present]
    while True:
        depth = _huffman_depths(weights.tolist())
        if max(depth) <= max_bits:
            lengths[present] = depth
            return lengths
        weights = np.maximum(weights // 2, 1)


def _huffman_depths(weights: list[int]) -> list[int]:
    """Leaf depths of the Huffman tree over ``weights`` (at least two)."""
    heap = [(w, i) for i, w in enumerate(weights)]
    heapq.heapify(heap)
    parent = [0] * len(weights)
    while len(heap) > 1:
        (w1, n1), (w2, n2) = heapq.heappop(heap), heapq.heappop(heap)
        parent[n1] = parent[n2] = len(parent)
        parent.append(0)
        heapq.heappush(heap, (w1 + w2, len(parent) - 1))
    depth = [0] * len(parent)
    for node in range(len(parent) - 2, -1, -1):  # parents have larger ids than their children
        depth[node] = depth[parent[node]] + 1
    return depth[: len(weights)]


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code values: symbols sorted by (length, symbol) get consecutive codes.

    Example:
        >>> canonical_codes(np.array([3, 3, 2, 1])).tolist()
        [6, 7, 2, 0]
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(lengths.size, dtype=np.int64)
    code, prev = 0, 0
    for sym in sorted(np.flatnonzero(lengths).tolist(), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[sym]) - prev
        codes[sym], prev = code, int(lengths[sym])
        code += 1
    return codes


def encode_bits(symbols: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The code bits of ``symbols`` (MSB first), one uint8 0/1 per bit.

    With a single symbol in the table nothing is written: the decoder knows it from the table.
    Vectorised: each code (at most 15 bits) is shifted to its bit offset inside a 3-byte window
    starting at its first byte, and the windows' bytes are summed per byte with ``np.bincount``
    (codes never overlap, so the sum is their OR); no per-bit rows are built.
    """
    symbols = np.asarray(symbols, dtype=np.int64).reshape(-1)
    if symbols.size == 0 or np.count_nonzero(lengths) <= 1:
        return np.zeros(0, dtype=np.uint8)
    lengths = np.asarray(lengths, dtype=np.int64)
    if (lengths[symbols] == 0).any():
        raise ValueError("a symbol to encode has no code (its count was 0)")
    codes = canonical_codes(lengths)
    size = lengths[symbols]
    ends = np.cumsum(size)
    total = int(ends[-1])
    start = ends - size
    offset = start & 7
    window = codes[symbols] << (24 - offset - size)  # the code inside 24 bits from its first byte
    first = start >> 3
    nbytes = (total + 7) // 8 + 2
    out = np.zeros(nbytes, dtype=np.int64)
    for k, shift in enumerate((16, 8, 0)):
        out += np.bincount(first + k, weights=(window >> shift) & 255, minlength=nbytes).astype(np.int64)
    return np.unpackbits(out.astype(np.uint8))[:total]


def decode_bits(bits: np.ndarray, lengths: np.ndarray, count: int, start: int = 0) -> tuple[np.ndarray, int]:
    """Decode ``count`` symbols from the 0/1 array ``bits`` from position ``start``.

    Returns the symbols (int64) and the position after the last one.
    """
    present = np.flatnonzero(lengths)
    if count == 0:
        return np.zeros(0, dtype=np.int64), start
    if present.size == 0:
        raise ValueError(f"cannot decode {count} symbols with an empty code table")
    if present.size == 1:
        return np.full(count, present[0], dtype=np.int64), start
    if count > bits.size - start:  # every code takes at least one bit: refuse before allocating
        raise ValueError(f"the bit stream holds {bits.size - start} bits, too few for {count} symbols")
    width = int(lengths.max())
    codes = canonical_codes(lengths)
    sym_of = np.full(2**width, -1, dtype=np.int64)
    len_of = np.zeros(2**width, dtype=np.int64)
    for sym in present.tolist():  # every window that begins with the code of ``sym``
        lo = int(codes[sym]) << (width - int(lengths[sym]))
        hi = lo + (1 << (width - int(lengths[sym])))
        sym_of[lo:hi], len_of[lo:hi] = sym, lengths[sym]
    tail = bits[start:].astype(np.int64)
    padded = np.concatenate([tail, np.zeros(width, dtype=np.int64)])
    window = np.zeros(tail.size, dtype=np.int64)  # the next ``width`` bits read at each position
    for j in range(width):
        window = (window << 1) | padded[j : j + tail.size]
    size = tail.size
    step = len_of[window]
    if not step[0]:
        raise ValueError("corrupt Huffman stream: a code that is in no table")
    # the next code's start from every position (``size``: past the end, absorbing), then from every
    # position the start CHAIN_STRIDE codes on, by doubling; only every CHAIN_STRIDE-th start of
    # the chain is followed one by one, the starts in between are gathered for all strides at once
    jump = np.append(np.minimum(np.arange(size) + np.maximum(step, 1), size), size)
    far = jump
    for _ in range(CHAIN_DOUBLINGS):
        far = far[far]
    coarse = np.empty(-(-count // CHAIN_STRIDE), dtype=np.int64)
    pos = 0
    for i in range(coarse.size):
        coarse[i] = pos
        pos = far[pos]
    starts = np.empty((coarse.size, CHAIN_STRIDE), dtype=np.int64)
    starts[:, 0] = coarse
    for k in range(1, CHAIN_STRIDE):
        starts[:, k] = jump[starts[:, k - 1]]
    starts = starts.reshape(-1)[:count]
    if starts[-1] >= size:
        ended = int(np.argmax(starts >= size))
        raise ValueError(f"the bit stream ends after {ended} of {count} symbols")
    out = sym_of[window[starts]]
    end = int(starts[-1] + step[starts[-1]])
    if (out < 0).any() or (step[starts] == 0).any() or end > size:
        raise ValueError("corrupt Huffman stream: a code that is in no table")
    return out, start + end


CHAIN_DOUBLINGS = 4
CHAIN_STRIDE = 2**CHAIN_DOUBLINGS  # codes skipped per step of the decoding loop


def table_bits(lengths: np.ndarray) -> np.ndarray:
    """The code table as 4-bit code lengths (MSB first), trimmed after the last present symbol."""
    used = int(np.flatnonzero(lengths).max()) + 1 if np.count_nonzero(lengths) else 0
    values = np.asarray(lengths[:used], dtype=np.int64)
    return (((values[:, None] >> np.arange(TABLE_ENTRY_BITS - 1, -1, -1)) & 1).astype(np.uint8)).reshape(-1)


def read_table(bits: np.ndarray, entries: int, start: int) -> tuple[np.ndarray, int]:
    """Inverse of ``table_bits``: ``entries`` lengths from ``start``; returns them and the next position."""
    end = start + entries * TABLE_ENTRY_BITS
    if end > bits.size:
        raise ValueError("the bit stream ends inside a code table")
    chunk = bits[start:end].astype(np.int64).reshape(entries, TABLE_ENTRY_BITS)
    return (chunk << np.arange(TABLE_ENTRY_BITS - 1, -1, -1)).sum(1), end


def _table_cost(counts: np.ndarray, lengths: np.ndarray) -> int:
    present = np.flatnonzero(counts)
    table = (int(present.max()) + 1) * TABLE_ENTRY_BITS if present.size else 0
    payload = 0 if present.size <= 1 else int((lengths * counts).sum())
    return table + payload


def gap_symbols(gaps: np.ndarray, width: int) -> np.ndarray:
    """Gaps as symbols < 2**width: ``g`` becomes ``g // M`` fillers (``M = 2**width - 1``) then ``g % M``.

    Example:
        >>> gap_symbols(np.array([0, 5, 2]), width=2).tolist()  # M = 3: 5 -> filler, 2
        [0, 3, 2, 2]
    """
    top = 2**width - 1
    fills = gaps // top
    total = int(fills.sum()) + gaps.size
    out = np.full(total, top, dtype=np.int64)
    ends = np.cumsum(fills + 1) - 1  # where each gap's remainder goes, after its fillers
    out[ends] = gaps % top
    return out


def gaps_from_symbols(symbols: np.ndarray, width: int) -> np.ndarray:
    """Inverse of ``gap_symbols``."""
    top = 2**width - 1
    ends = np.flatnonzero(symbols != top)
    fills = np.diff(np.concatenate([[-1], ends])) - 1
    return fills * top + symbols[ends]


def _best_gap_width(gaps: np.ndarray) -> tuple[int, int]:
    """(width, bits incl. table) of the cheapest gap width."""
    best = (1, -1)
    for width in range(1, MAX_GAP_WIDTH + 1):
        top = 2**width - 1
        counts = np.bincount(gaps % top, minlength=top + 1)
        counts[top] += int((gaps // top).sum())
        cost = _table_cost(counts, code_lengths(counts))
        if best[1] < 0 or cost < best[1]:
            best = (width, cost)
        if int(gaps.max(initial=0)) < top:
            break  # no fillers left: wider widths code the same symbols
    return best


SPARSE_MIN_BACKGROUND = 0.5  # below this share of the most frequent symbol, sparse is not tried


def layout_costs(symbols: np.ndarray, alphabet: int) -> dict[str, int]:
    """Bits (tables included) that each applicable layout, ``plain`` and ``sparse``, takes for
    ``symbols``: exact, computed from counts and gaps without encoding anything. ``sparse`` is
    left out when the most frequent symbol is under ``SPARSE_MIN_BACKGROUND`` of the stream (its
    gaps would cost more than the background's codes save)."""
    symbols = _checked(symbols, alphabet)
    counts = np.bincount(symbols, minlength=alphabet)
    costs = {"plain": _table_cost(counts, code_lengths(counts))}
    if symbols.size and counts.max() >= SPARSE_MIN_BACKGROUND * symbols.size:
        costs["sparse"] = _sparse_parts(symbols, counts)[-1]
    return costs


def _checked(symbols: np.ndarray, alphabet: int) -> np.ndarray:
    symbols = np.asarray(symbols).reshape(-1).astype(np.int64)
    if symbols.size and (symbols.min() < 0 or symbols.max() >= alphabet):
        raise ValueError(f"symbols must lie in [0, {alphabet}), got [{symbols.min()}, {symbols.max()}]")
    return symbols


def _sparse_parts(symbols: np.ndarray, counts: np.ndarray) -> tuple[int, np.ndarray, np.ndarray, int, int]:
    """(background, gaps, non-background values, gap width, total bits) of the sparse layout."""
    background = int(counts.argmax())
    positions = np.flatnonzero(symbols != background)
    gaps = np.diff(np.concatenate([[-1], positions])) - 1
    values = symbols[positions]
    value_counts = np.bincount(values, minlength=counts.size)
    width, gap_cost = _best_gap_width(gaps)
    return background, gaps, values, width, _table_cost(value_counts, code_lengths(value_counts)) + gap_cost


def encode_symbols(symbols: np.ndarray, alphabet: int, layout: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Huffman-code a stream of integers in ``[0, alphabet)``, plain or sparse: ``layout``, or
    whichever ``layout_costs`` finds smaller.

    Returns the packed bytes (uint8) and a small JSON-able header that ``decode_symbols`` needs.
    """
    symbols = _checked(symbols, alphabet)
    header: dict[str, Any] = {"count": int(symbols.size), "alphabet": int(alphabet)}
    if symbols.size == 0:
        return np.zeros(0, dtype=np.uint8), {**header, "layout": "plain"}
    if layout is None:
        costs = layout_costs(symbols, alphabet)
        layout = min(costs, key=lambda k: (costs[k], k != "plain"))  # plain on a tie
    if layout not in ("plain", "sparse"):
        raise ValueError(f"unknown Huffman layout {layout!r}; known: plain, sparse")
    counts = np.bincount(symbols, minlength=alphabet)
    if layout == "plain":
        lengths = code_lengths(counts)
        bits = [table_bits(lengths), encode_bits(symbols, lengths)]
        header.update(layout="plain", table=int(np.flatnonzero(lengths).max()) + 1)
    else:
        background, gaps, values, width, _ = _sparse_parts(symbols, counts)
        gsyms = gap_symbols(gaps, width)
        vlen = code_lengths(np.bincount(values, minlength=alphabet))
        glen = code_lengths(np.bincount(gsyms, minlength=2**width))
        bits = [table_bits(vlen), encode_bits(values, vlen), table_bits(glen), encode_bits(gsyms, glen)]
        header.update(
            layout="sparse",
            background=background,
            gap_width=width,
            nonzero=int(values.size),
            gap_symbols=int(gsyms.size),
            value_table=_used(vlen),
            gap_table=_used(glen),
        )
    return np.packbits(np.concatenate(bits)), header


def _used(lengths: np.ndarray) -> int:
    return int(np.flatnonzero(lengths).max()) + 1 if np.count_nonzero(lengths) else 0


def check_header(header: dict[str, Any], alphabet: int, data_bits: int) -> None:
    """ValueError where ``header``'s counts and table sizes cannot belong to a stream of ``data_bits``
    bits over ``alphabet`` symbols; run before ``decode_symbols`` so nothing huge is allocated."""

    def integer(key: str, hi: int, lo: int = 0) -> int:
        value = header.get(key)
        if type(value) is not int or not lo <= value <= hi:
            raise ValueError(f"Huffman header {key!r} must be an integer in [{lo}, {hi}], got {value!r}")
        return value

    count = integer("count", 2**40)
    if header.get("alphabet", alphabet) != alphabet:
        raise ValueError(f"Huffman header 'alphabet' must be {alphabet}, got {header.get('alphabet')!r}")
    layout = header.get("layout")
    if count == 0:
        return
    if layout == "plain":
        integer("table", alphabet, 1)
        return
    if layout != "sparse":
        raise ValueError(f"unknown Huffman layout {layout!r}; known: plain, sparse")
    integer("background", alphabet - 1)
    nonzero = integer("nonzero", count)
    width = integer("gap_width", MAX_GAP_WIDTH, 1)
    integer("gap_symbols", nonzero + count)  # a gap's fillers each stand for 2**width - 1 positions
    integer("value_table", alphabet)
    integer("gap_table", 2**width)
    if data_bits < 0:
        raise ValueError("negative data size")


def decode_symbols(data: np.ndarray, header: dict[str, Any]) -> np.ndarray:
    """Inverse of ``encode_symbols``: the int64 symbol stream."""
    count, layout = int(header["count"]), header.get("layout")
    bits = np.unpackbits(np.asarray(data, dtype=np.uint8))
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    if layout == "plain":
        lengths, pos = read_table(bits, int(header["table"]), 0)
        return decode_bits(bits, lengths, count, pos)[0]
    if layout != "sparse":
        raise ValueError(f"unknown Huffman layout {layout!r}; known: plain, sparse")
    vlen, pos = read_table(bits, int(header["value_table"]), 0)
    values, pos = decode_bits(bits, vlen, int(header["nonzero"]), pos)
    glen, pos = read_table(bits, int(header["gap_table"]), pos)
    gsyms, _ = decode_bits(bits, glen, int(header["gap_symbols"]), pos)
    positions = np.cumsum(gaps_from_symbols(gsyms, int(header["gap_width"])) + 1) - 1
    if positions.size != values.size or (positions.size and positions[-1] >= count):
        raise ValueError("corrupt sparse Huffman stream: positions and values disagree")
    out = np.full(count, int(header["background"]), dtype=np.int64)
    out[positions] = values
    return out
