"""Per-tensor storage encodings for artifacts: dense, bitmask-sparse, index-sparse.

Each encoding turns one tensor into named parts (tensors stored in safetensors) plus a small
JSON header, and back. ``encode_smallest`` picks, per tensor, whichever candidate is smallest in
bytes, so a pruned layer's file shrinks with its sparsity and a dense one pays nothing extra.
Later families (packed low-bit, codebooks, factorized) register further encodings here.

Encodings with an ``encode_codes`` function also read a ``CodeLayout``: what a uint8 buffer packs
(``count`` codes of ``bits`` bits, ``io/bits.py``, the layout of ``quantize.primitives.pack_bits``).
``huffman`` uses it to entropy-code the codes of packed low-bit and k-means layers: Deep
Compression's last stage, with a pruned layer's zeros stored as Huffman-coded position gaps
(``io/huffman.py``), or, for dense codes, codes grouped into bytes and Huffman-coded per block by
zlib (layout ``deflate``: a 4-bit layer as pairs, smaller than per-code Huffman and decoded in C).

Float32 parts whose every value is exactly a float16 (or bfloat16) value are stored in that
16-bit type and widened again on load: lossless, and it halves what fp16-rounded parameters
(``weight-quantize(float_format="fp16")``) and scales cost on disk. Parts of ``DEFLATE_MIN_BYTES``
or more are then stored as DEFLATE'd byte planes where that saves (``io/deflate.py``; a float32
weight's exponent bytes compress, its mantissa bytes hardly).

No candidate is encoded to learn its size: each encoding with an ``estimate`` prices itself from
counts (non-zeros, symbol histograms), and only the cheapest is encoded, so saving a 135M-parameter
model takes seconds, not minutes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nncompress.io import bits as codebits
from nncompress.io import deflate, huffman

Parts = dict[str, torch.Tensor]
Header = dict[str, Any]
Estimate = tuple[int, Callable[[], "tuple[Parts, Header] | None"]]
DEFLATE_MIN_BYTES = 4 << 10  # smaller parts are left to the zip member's own compression


@dataclass(frozen=True)
class CodeLayout:
    """What a packed uint8 buffer holds: ``count`` unsigned codes of ``bits`` bits (``pack_bits``)."""

    bits: int
    count: int


@dataclass(frozen=True)
class Encoding:
    """A named pair of functions: ``encode(t) -> (parts, header)`` and ``decode(parts, header)``.

    ``encode`` returns None where the encoding does not apply. ``encode_codes``, when given, is
    used instead for a tensor whose ``CodeLayout`` is known. ``check(parts, header)``, when given,
    raises ValueError where the parts' names, dtypes and sizes do not fit ``header['shape']``: it
    runs before ``decode`` allocates anything, so a damaged file cannot ask for huge buffers.
    ``estimate(t, layout)``, when given, returns ``(bytes, encode)``: what the parts would take and
    a zero-argument function that encodes them (None where the encoding does not apply), so that
    ``encode_smallest`` encodes only the cheapest candidate; encodings without it are trial-encoded.
    """

    name: str
    encode: Callable[[torch.Tensor], tuple[Parts, Header] | None]
    decode: Callable[[Parts, Header], torch.Tensor]
    encode_codes: Callable[[torch.Tensor, CodeLayout], tuple[Parts, Header] | None] | None = None
    check: Callable[[Parts, Header], None] | None = None
    estimate: Callable[[torch.Tensor, CodeLayout | None], Estimate | None] | None = None
    entropy_coded: bool = False  # its parts are already entropy-coded: not DEFLATE'd again


ENCODINGS: dict[str, Encoding] = {}


def register_encoding(encoding: Encoding) -> Encoding:
    """Add an encoding to the registry (its name must be new)."""
    if encoding.name in ENCODINGS:
        raise ValueError(f"encoding {encoding.name!r} is already registered")
    ENCODINGS[encoding.name] = encoding
    return encoding


def parts_nbytes(parts: Parts) -> int:
    """Bytes the parts occupy as stored (element size x count)."""
    return sum(p.numel() * p.element_size() for p in parts.values())


def numel_of(shape: Any) -> int:
    """Elements of ``shape`` (a list of non-negative ints), ValueError for anything else."""
    if not isinstance(shape, (list, tuple)) or not all(type(d) is int and 0 <= d < 2**40 for d in shape):
        raise ValueError(f"shape must be a list of non-negative integers, got {shape!r}")
    return math.prod(shape)


def _expect_parts(parts: Parts, names: set[str]) -> None:
    if set(parts) != names:
        raise ValueError(f"expected parts {sorted(names)}, found {sorted(parts)}")


def _expect_int(header: Header, key: str, lo: int, hi: int) -> int:
    value = header.get(key)
    if type(value) is not int or not lo <= value <= hi:
        raise ValueError(f"header {key!r} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def _check_dense(parts: Parts, header: Header) -> None:
    _expect_parts(parts, {"data"})
    if parts["data"].numel() != numel_of(header["shape"]):
        raise ValueError(f"{parts['data'].numel()} stored values for shape {header['shape']}")


def _check_sparse(parts: Parts, header: Header, index_part: str) -> None:
    _expect_parts(parts, {index_part, "values"})
    numel = numel_of(header["shape"])
    if parts["values"].numel() > numel:
        raise ValueError(f"{parts['values'].numel()} stored values for shape {header['shape']}")
    index = parts[index_part]
    if index_part == "mask" and (index.dtype != torch.uint8 or index.numel() != (numel + 7) // 8):
        raise ValueError(f"a bitmask of {numel} elements takes {(numel + 7) // 8} uint8 bytes")
    if index_part == "indices" and (index.is_floating_point() or index.numel() != parts["values"].numel()):
        raise ValueError("sparse indices must be integers, one per stored value")


def _encode_dense(t: torch.Tensor) -> tuple[Parts, Header]:
    return {"data": t.contiguous()}, {}


def _decode_dense(parts: Parts, header: Header) -> torch.Tensor:
    return parts["data"]


def _index_dtype(numel: int) -> torch.dtype:
    """The smallest signed integer type that can hold a flat index into ``numel`` elements."""
    if numel <= 2**7:
        return torch.int8
    if numel <= 2**15:
        return torch.int16
    if numel <= 2**31:
        return torch.int32
    return torch.int64


def _is_sparse_candidate(t: torch.Tensor) -> bool:
    return t.is_floating_point() and t.numel() >= 64


def _encode_bitmask(t: torch.Tensor) -> tuple[Parts, Header] | None:
    if not _is_sparse_candidate(t):
        return None
    flat = t.contiguous().reshape(-1)
    mask = flat != 0
    packed = np.packbits(mask.numpy(), bitorder="little")
    return {"mask": torch.from_numpy(packed), "values": flat[mask].clone()}, {}


def _decode_bitmask(parts: Parts, header: Header) -> torch.Tensor:
    numel = int(np.prod(header["shape"]))
    mask_np = np.unpackbits(parts["mask"].numpy(), count=numel, bitorder="little")
    mask = torch.from_numpy(mask_np.astype(bool))
    values = parts["values"]
    if int(mask.sum()) != values.numel():
        raise ValueError("bitmask and values disagree in count")
    flat = torch.zeros(numel, dtype=values.dtype)
    flat[mask] = values
    return flat


def _encode_indices(t: torch.Tensor) -> tuple[Parts, Header] | None:
    if not _is_sparse_candidate(t):
        return None
    flat = t.contiguous().reshape(-1)
    idx = torch.nonzero(flat, as_tuple=True)[0]
    return {"indices": idx.to(_index_dtype(flat.numel())), "values": flat[idx].clone()}, {}


def _nonzero(t: torch.Tensor) -> int:
    return int(torch.count_nonzero(t))


def _estimate_bitmask(t: torch.Tensor, layout: CodeLayout | None) -> Estimate | None:
    if not _is_sparse_candidate(t):
        return None
    return (t.numel() + 7) // 8 + _nonzero(t) * t.element_size(), lambda: _encode_bitmask(t)


def _estimate_indices(t: torch.Tensor, layout: CodeLayout | None) -> Estimate | None:
    if not _is_sparse_candidate(t):
        return None
    per = _index_dtype(t.numel()).itemsize + t.element_size()
    return _nonzero(t) * per, lambda: _encode_indices(t)


def _estimate_dense(t: torch.Tensor, layout: CodeLayout | None) -> Estimate:
    return t.numel() * t.element_size(), lambda: _encode_dense(t)


def _decode_indices(parts: Parts, header: Header) -> torch.Tensor:
    numel = int(np.prod(header["shape"]))
    values, idx = parts["values"], parts["indices"].long()
    if idx.numel() != values.numel() or (idx.numel() and (idx.min() < 0 or idx.max() >= numel)):
        raise ValueError("sparse indices out of range or inconsistent with values")
    flat = torch.zeros(numel, dtype=values.dtype)
    flat[idx] = values
    return flat


def _codes_of(t: torch.Tensor, layout: CodeLayout | None) -> np.ndarray | None:
    """The codes ``t`` packs per ``layout`` (uint8), or None when it is not exactly such a buffer
    (another dtype or size, nonzero padding bits, codes wider than 8 bits)."""
    if layout is None or not 1 <= layout.bits <= 8 or t.dtype != torch.uint8 or t.dim() != 1:
        return None
    if t.numel() != codebits.packed_nbytes(layout.count, layout.bits):
        return None
    packed = t.numpy()
    if not codebits.padding_is_zero(packed, layout.bits, layout.count):
        return None
    return codebits.unpack_codes(packed, layout.bits, layout.count)


def _code_bytes(codes: np.ndarray, bits: int, packed: np.ndarray) -> np.ndarray:
    """Codes grouped ``8 // bits`` to a byte (the packed buffer itself when ``bits`` divides 8)."""
    if 8 % bits == 0:
        return packed
    per = 8 // bits
    padded = np.zeros(-(-codes.size // per) * per, dtype=np.uint8)
    padded[: codes.size] = codes
    rows = padded.reshape(-1, per)
    out = rows[:, 0].copy()
    for k in range(1, per):
        out |= rows[:, k] << np.uint8(k * bits)
    return out


def _estimate_huffman(t: torch.Tensor, layout: CodeLayout | None) -> Estimate | None:
    """The cheapest of Huffman ``plain`` / ``sparse`` (exact bits from counts and gaps) and
    ``deflate`` (estimated from the code bytes' histogram, then checked once encoded). Streams of
    ``DEFLATE_PREFERRED_ABOVE`` codes or more take ``deflate`` within ``DEFLATE_PREFERENCE`` of
    Huffman: zlib decodes in C, the Huffman layouts in a numpy loop (seconds on a large model)."""
    codes = _codes_of(t, layout)
    if codes is None:
        return None
    assert layout is not None
    bits, alphabet = layout.bits, 2**layout.bits
    costs = {name: (cost + 7) // 8 for name, cost in huffman.layout_costs(codes, alphabet).items()}
    best = min(costs, key=costs.__getitem__)
    allowed = costs[best] * (1 + (DEFLATE_PREFERENCE if layout.count >= DEFLATE_PREFERRED_ABOVE else 0.0))

    def encode_huffman() -> tuple[Parts, Header]:
        data, head = huffman.encode_symbols(codes, alphabet, layout=best)
        return {"data": torch.from_numpy(data)}, {"bits": bits, **head}

    grouped = _code_bytes(codes, bits, t.numpy())
    estimated = deflate.estimate_bytes(grouped)
    if estimated > allowed:
        return costs[best], encode_huffman

    def encode_deflate() -> tuple[Parts, Header]:
        blob = np.frombuffer(deflate.deflate_bytes(grouped), dtype=np.uint8)
        if blob.size > allowed:  # the estimate was optimistic: Huffman's cost is exact
            return encode_huffman()
        header = {"bits": bits, "count": layout.count, "alphabet": alphabet, "layout": "deflate"}
        return {"data": torch.from_numpy(blob.copy())}, {**header, "per_byte": 8 // bits}

    return min(estimated, costs[best]), encode_deflate


DEFLATE_PREFERENCE, DEFLATE_PREFERRED_ABOVE = 0.005, 1 << 16


def _encode_huffman(t: torch.Tensor, layout: CodeLayout) -> tuple[Parts, Header] | None:
    """Codes entropy-coded in whichever layout ``_estimate_huffman`` prices cheapest; None when
    ``t`` is not exactly the packed buffer of ``layout.count`` codes."""
    plan = _estimate_huffman(t, layout)
    return None if plan is None else plan[1]()


def _decode_huffman(parts: Parts, header: Header) -> torch.Tensor:
    bits, count = int(header["bits"]), int(header["count"])
    data = parts["data"].numpy()
    if header.get("layout") == "deflate":
        per = 8 // bits
        grouped = deflate.inflate_bytes(data, -(-count // per))
        if 8 % bits == 0:
            return torch.from_numpy(grouped.copy())
        shifts = np.arange(per, dtype=np.uint8) * np.uint8(bits)  # one byte holds ``per`` codes
        codes = (grouped[:, None] >> shifts) & np.uint8(2**bits - 1)
        return torch.from_numpy(codebits.pack_codes(codes.reshape(-1)[:count], bits))
    codes = huffman.decode_symbols(data, header)
    return torch.from_numpy(codebits.pack_codes(codes, bits))


def _check_huffman(parts: Parts, header: Header) -> None:
    """Counts and tables against the shape of the packed buffer they rebuild, before decoding."""
    _expect_parts(parts, {"data"})
    if parts["data"].dtype != torch.uint8 or parts["data"].dim() != 1:
        raise ValueError("Huffman data must be a flat uint8 tensor")
    bits = _expect_int(header, "bits", 1, 8)
    count = _expect_int(header, "count", 0, 2**40)
    if codebits.packed_nbytes(count, bits) != numel_of(header["shape"]):
        raise ValueError(f"{count} codes of {bits} bits do not pack into shape {header['shape']}")
    if header.get("layout") == "deflate":
        if header.get("per_byte") != 8 // bits or header.get("alphabet", 2**bits) != 2**bits:
            raise ValueError(f"deflate-coded {bits}-bit codes go {8 // bits} to a byte, header says otherwise")
        return
    huffman.check_header(header, alphabet=2**bits, data_bits=8 * parts["data"].numel())


def _needs_layout(t: torch.Tensor) -> None:
    return None


DENSE = register_encoding(Encoding("dense", _encode_dense, _decode_dense, check=_check_dense, estimate=_estimate_dense))
BITMASK = register_encoding(
    Encoding(
        "sparse-bitmask",
        _encode_bitmask,
        _decode_bitmask,
        check=lambda p, h: _check_sparse(p, h, "mask"),
        estimate=_estimate_bitmask,
    )
)
INDICES = register_encoding(
    Encoding(
        "sparse-indices",
        _encode_indices,
        _decode_indices,
        check=lambda p, h: _check_sparse(p, h, "indices"),
        estimate=_estimate_indices,
    )
)
HUFFMAN = register_encoding(
    Encoding(
        "huffman",
        _needs_layout,
        _decode_huffman,
        _encode_huffman,
        check=_check_huffman,
        estimate=_estimate_huffman,
        entropy_coded=True,
    )
)
DEFAULT_CANDIDATES = ("dense", "sparse-bitmask", "sparse-indices", "huffman")


def code_layouts(model: torch.nn.Module) -> dict[str, CodeLayout]:
    """``<module>.packed`` -> its ``CodeLayout`` for every packed low-bit / codebook / binary layer,
    so that ``encode_smallest`` can also try entropy-coding their codes.

    Packed layers are recognised by what they declare (a ``code_format``, ``bits`` and
    ``_weight_numel()``, see ``quantize.layers.PackedWeightLayer``), so io imports no quantize class.
    """
    out: dict[str, CodeLayout] = {}
    for name, module in model.named_modules():
        if not getattr(type(module), "code_format", "") or not callable(getattr(module, "_weight_numel", None)):
            continue
        packed = module._buffers.get("packed")
        if packed is not None and packed.dtype == torch.uint8:
            out[f"{name}.packed" if name else "packed"] = CodeLayout(int(module.bits), module._weight_numel())
    return out


def _plan(enc: Encoding, t: torch.Tensor, layout: CodeLayout | None) -> Estimate | None:
    """``enc``'s estimate for ``t``; encodings without one are encoded here (their size is exact)."""
    if enc.estimate is not None:
        return enc.estimate(t, layout)
    if enc.encode_codes is not None:
        out = enc.encode_codes(t, layout) if layout is not None else None
    else:
        out = enc.encode(t)
    return None if out is None else (parts_nbytes(out[0]), lambda: out)


def encode_smallest(
    t: torch.Tensor, candidates: tuple[str, ...] = DEFAULT_CANDIDATES, *, layout: CodeLayout | None = None
) -> tuple[str, Parts, Header]:
    """Encode ``t`` with whichever candidate encoding stores it in the fewest bytes.

    Candidates are priced by their ``estimate`` and only the cheapest is encoded; should its parts
    come out larger than ``t`` stored dense (an estimate is not a guarantee), dense is used.
    ``layout`` says which codes ``t`` packs, when it is a packed code buffer (``code_layouts``).
    """
    t = t.detach()
    plans: list[tuple[int, int, str, Callable[[], tuple[Parts, Header] | None]]] = []
    for order, name in enumerate(candidates):
        plan = _plan(ENCODINGS[name], t, layout)
        if plan is not None:
            plans.append((plan[0], order, name, plan[1]))
    dense_bytes = t.numel() * t.element_size()
    for _, _, name, encode in sorted(plans, key=lambda p: p[:2]):
        out = encode()
        if out is not None and (name == DENSE.name or parts_nbytes(out[0]) <= dense_bytes):
            return name, out[0], out[1]
        if name != DENSE.name:
            parts, header = _encode_dense(t)
            return DENSE.name, parts, header
    raise AssertionError("the dense encoding always applies")


def pow2_int8_exponent(absmax: float) -> int:
    """The smallest ``e`` with ``absmax <= 127 * 2**e``: the grid of 8-bit codes times a power of two
    that covers values up to ``absmax`` (``weight-quantize(rest_bits=8)`` rounds onto it)."""
    return math.ceil(math.log2(absmax / 127))


NARROW_SAMPLE = 4096  # values tried first: most float32 tensors fail on these, not after a full pass


def _int8_grid_exponent(part: torch.Tensor) -> int | None:
    """``e`` when every value of ``part`` is an integer in [-127, 127] times ``2**e`` (then the
    int8 codes and ``e`` store it exactly), else None."""
    absmax = float(part.abs().max())
    if not math.isfinite(absmax) or absmax == 0.0:
        return None
    exponent = pow2_int8_exponent(absmax)
    head = part.reshape(-1)[:NARROW_SAMPLE] * 2.0**-exponent  # most tensors fail here, before a full pass
    if not torch.equal(head, head.round()):
        return None
    codes = part * 2.0**-exponent  # exact: a power-of-two scale only shifts exponents
    if exponent < -126 or not torch.equal(codes, codes.round()) or not torch.equal(codes * 2.0**exponent, part):
        return None
    return exponent


def narrow_exact_floats(parts: Parts, header: Header) -> tuple[Parts, Header]:
    """Float32 parts stored narrower where that loses nothing: as int8 codes times a power of two
    (values on such a grid, e.g. ``weight-quantize(rest_bits=8)``), else as float16/bfloat16.
    ``header["narrowed"]`` records which (absent when none is)."""
    narrowed: dict[str, str] = {}
    out = dict(parts)
    for key, part in parts.items():
        if part.dtype != torch.float32 or part.numel() == 0:
            continue
        exponent = _int8_grid_exponent(part)
        if exponent is not None:
            out[key], narrowed[key] = (part * 2.0**-exponent).to(torch.int8), f"int8*2^{exponent}"
            continue
        head = part.reshape(-1)[:NARROW_SAMPLE]
        for dtype in (torch.float16, torch.bfloat16):
            if not torch.equal(head.to(dtype).float(), head):
                continue
            small = part.to(dtype)
            if torch.equal(small.float(), part):
                out[key], narrowed[key] = small, str(dtype).removeprefix("torch.")
                break
    return out, ({**header, "narrowed": narrowed} if narrowed else header)


def _as_bytes_array(part: torch.Tensor) -> np.ndarray:
    """``part``'s values as a flat numpy array of the same item size (bfloat16 and bool viewed as ints)."""
    flat = part.detach().contiguous().reshape(-1)
    if flat.dtype in (torch.bfloat16, torch.bool) or flat.is_complex():
        flat = flat.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[flat.element_size()])
    return flat.numpy()


def deflate_parts(parts: Parts, header: Header, min_bytes: int = DEFLATE_MIN_BYTES) -> tuple[Parts, Header]:
    """Parts of ``min_bytes`` or more stored as DEFLATE'd byte planes where that saves
    (``io/deflate.py``); ``header["deflated"]`` records each one's dtype, shape and planes."""
    deflated: dict[str, dict[str, Any]] = {}
    out = dict(parts)
    for key, part in parts.items():
        if part.is_quantized or part.numel() * part.element_size() < min_bytes:
            continue
        packed = deflate.deflate_array(_as_bytes_array(part))
        if packed is None:
            continue
        blob, planes = packed
        out[key] = torch.from_numpy(blob)
        deflated[key] = {"dtype": str(part.dtype).removeprefix("torch."), "shape": list(part.shape), "planes": planes}
    return out, ({**header, "deflated": deflated} if deflated else header)


def _inflate(part: torch.Tensor, info: Any, limit: int) -> torch.Tensor:
    """Undo ``deflate_parts`` for one part, refusing one that claims more than ``limit`` bytes."""
    if not isinstance(info, dict) or not isinstance(info.get("dtype"), str):
        raise ValueError(f"header 'deflated' entries must give dtype, shape and planes, got {info!r}")
    dtype = getattr(torch, info["dtype"], None)
    if not isinstance(dtype, torch.dtype) or dtype.is_complex or info["dtype"].startswith(("q", "float8")):
        raise ValueError(f"deflated part of unknown dtype {info['dtype']!r}")
    numel = numel_of(info.get("shape"))
    if numel * dtype.itemsize > limit:
        raise ValueError(f"a deflated part claims {numel * dtype.itemsize} bytes, more than its tensor may take")
    if part.dtype != torch.uint8 or part.dim() != 1:
        raise ValueError("deflated parts must be flat uint8 tensors")
    view = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[dtype.itemsize]
    numpy_dtype = torch.empty(0, dtype=view).numpy().dtype
    values = deflate.inflate_array(part.numpy(), info.get("planes"), numpy_dtype, numel)
    return torch.from_numpy(values.copy()).view(dtype).reshape(info["shape"])


_NARROWED_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def _widen(part: torch.Tensor, how: Any) -> torch.Tensor:
    """Undo ``narrow_exact_floats`` for one part."""
    if isinstance(how, str) and how.startswith("int8*2^"):
        exponent = how.removeprefix("int8*2^")
        if part.dtype != torch.int8 or not exponent.lstrip("-").isdigit() or not -300 <= int(exponent) <= 300:
            raise ValueError(f"narrowed storage {how!r} does not fit a {part.dtype} part")
        return part.float() * 2.0 ** int(exponent)
    if isinstance(how, str) and _NARROWED_DTYPES.get(how) == part.dtype:
        return part.float()
    raise ValueError(f"unknown narrowed storage {how!r} for a {part.dtype} part")


def decode(name: str, parts: Parts, header: Header) -> torch.Tensor:
    """Rebuild a tensor of ``header['shape']`` from its parts (checked first where the encoding can)."""
    if name not in ENCODINGS:
        raise ValueError(f"unknown tensor encoding {name!r}; known: {', '.join(ENCODINGS)}")
    deflated = header.get("deflated", {})
    if not isinstance(deflated, dict) or not set(deflated) <= set(parts):
        raise ValueError(f"header 'deflated' must map stored parts to their byte planes, got {deflated!r}")
    if deflated:
        limit = 9 * max(numel_of(header["shape"]), 1) + 4096  # what any encoding's part may take
        parts = {k: _inflate(v, deflated[k], limit) if k in deflated else v for k, v in parts.items()}
    narrowed = header.get("narrowed", {})
    if not isinstance(narrowed, dict) or not set(narrowed) <= set(parts):
        raise ValueError(f"header 'narrowed' must map stored parts to storage types, got {narrowed!r}")
    if narrowed:
        parts = {k: _widen(v, narrowed[k]) if k in narrowed else v for k, v in parts.items()}
    encoding = ENCODINGS[name]
    if encoding.check is not None:
        encoding.check(parts, header)
    return encoding.decode(parts, header).reshape(header["shape"])
