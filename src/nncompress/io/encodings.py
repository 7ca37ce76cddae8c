"""Per-tensor storage encodings for artifacts: dense, bitmask-sparse, index-sparse.

Each encoding turns one tensor into named parts (tensors stored in safetensors) plus a small
JSON header, and back. ``encode_smallest`` picks, per tensor, whichever candidate is smallest in
bytes, so a pruned layer's file shrinks with its sparsity and a dense one pays nothing extra.
Later families (packed low-bit, codebooks, factorized) register further encodings here.

Encodings with an ``encode_codes`` function also read a ``CodeLayout``: what a uint8 buffer packs
(``count`` codes of ``bits`` bits, ``quantize.primitives.pack_bits``). ``huffman`` uses it to
entropy-code the codes of packed low-bit and k-means layers (``io/huffman.py``): Deep
Compression's last stage, with a pruned layer's zeros stored as Huffman-coded position gaps.

Float32 parts whose every value is exactly a float16 (or bfloat16) value are stored in that
16-bit type and widened again on load: lossless, and it halves what fp16-rounded parameters
(``weight-quantize(float_format="fp16")``) and scales cost on disk.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nncompress.io import huffman

Parts = dict[str, torch.Tensor]
Header = dict[str, Any]


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
    """

    name: str
    encode: Callable[[torch.Tensor], tuple[Parts, Header] | None]
    decode: Callable[[Parts, Header], torch.Tensor]
    encode_codes: Callable[[torch.Tensor, CodeLayout], tuple[Parts, Header] | None] | None = None
    check: Callable[[Parts, Header], None] | None = None


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


def _decode_indices(parts: Parts, header: Header) -> torch.Tensor:
    numel = int(np.prod(header["shape"]))
    values, idx = parts["values"], parts["indices"].long()
    if idx.numel() != values.numel() or (idx.numel() and (idx.min() < 0 or idx.max() >= numel)):
        raise ValueError("sparse indices out of range or inconsistent with values")
    flat = torch.zeros(numel, dtype=values.dtype)
    flat[idx] = values
    return flat


def _encode_huffman(t: torch.Tensor, layout: CodeLayout) -> tuple[Parts, Header] | None:
    """Codes unpacked, then Huffman-coded (plain or sparse, ``io/huffman.py``); None when ``t`` is
    not exactly ``pack_bits`` of ``layout.count`` codes."""
    from nncompress.quantize.primitives import pack_bits, packed_nbytes, unpack_bits

    if t.dtype != torch.uint8 or t.dim() != 1 or t.numel() != packed_nbytes(layout.count, layout.bits):
        return None
    codes = unpack_bits(t, layout.bits, layout.count)
    if not torch.equal(pack_bits(codes, layout.bits), t):  # e.g. nonzero padding bits
        return None
    data, header = huffman.encode_symbols(codes.numpy(), 2**layout.bits)
    return {"data": torch.from_numpy(data)}, {"bits": layout.bits, **header}


def _decode_huffman(parts: Parts, header: Header) -> torch.Tensor:
    from nncompress.quantize.primitives import pack_bits

    codes = huffman.decode_symbols(parts["data"].numpy(), header)
    return pack_bits(torch.from_numpy(codes), int(header["bits"]))


def _check_huffman(parts: Parts, header: Header) -> None:
    """Counts and tables against the shape of the packed buffer they rebuild, before decoding."""
    from nncompress.quantize.primitives import packed_nbytes

    _expect_parts(parts, {"data"})
    if parts["data"].dtype != torch.uint8 or parts["data"].dim() != 1:
        raise ValueError("Huffman data must be a flat uint8 tensor")
    bits = _expect_int(header, "bits", 1, 8)
    count = _expect_int(header, "count", 0, 2**40)
    if packed_nbytes(count, bits) != numel_of(header["shape"]):
        raise ValueError(f"{count} codes of {bits} bits do not pack into shape {header['shape']}")
    huffman.check_header(header, alphabet=2**bits, data_bits=8 * parts["data"].numel())


def _needs_layout(t: torch.Tensor) -> None:
    return None


DENSE = register_encoding(Encoding("dense", _encode_dense, _decode_dense, check=_check_dense))
BITMASK = register_encoding(
    Encoding("sparse-bitmask", _encode_bitmask, _decode_bitmask, check=lambda p, h: _check_sparse(p, h, "mask"))
)
INDICES = register_encoding(
    Encoding("sparse-indices", _encode_indices, _decode_indices, check=lambda p, h: _check_sparse(p, h, "indices"))
)
HUFFMAN = register_encoding(Encoding("huffman", _needs_layout, _decode_huffman, _encode_huffman, check=_check_huffman))
DEFAULT_CANDIDATES = ("dense", "sparse-bitmask", "sparse-indices", "huffman")


def code_layouts(model: torch.nn.Module) -> dict[str, CodeLayout]:
    """``<module>.packed`` -> its ``CodeLayout`` for every packed low-bit / codebook / binary layer,
    so that ``encode_smallest`` can also try entropy-coding their codes."""
    from nncompress.quantize.layers import PackedWeightLayer

    out: dict[str, CodeLayout] = {}
    for name, module in model.named_modules():
        packed = module._buffers.get("packed") if isinstance(module, PackedWeightLayer) else None
        if packed is not None and packed.dtype == torch.uint8:
            out[f"{name}.packed" if name else "packed"] = CodeLayout(int(module.bits), module._weight_numel())
    return out


def encode_smallest(
    t: torch.Tensor, candidates: tuple[str, ...] = DEFAULT_CANDIDATES, *, layout: CodeLayout | None = None
) -> tuple[str, Parts, Header]:
    """Encode ``t`` with whichever candidate encoding stores it in the fewest bytes.

    ``layout`` says which codes ``t`` packs, when it is a packed code buffer (``code_layouts``).
    """
    best: tuple[str, Parts, Header] | None = None
    for name in candidates:
        enc = ENCODINGS[name]
        if enc.encode_codes is not None:
            out = enc.encode_codes(t, layout) if layout is not None else None
        else:
            out = enc.encode(t)
        if out is None:
            continue
        if best is None or parts_nbytes(out[0]) < parts_nbytes(best[1]):
            best = (name, out[0], out[1])
    assert best is not None, "the dense encoding always applies"
    return best


def pow2_int8_exponent(absmax: float) -> int:
    """The smallest ``e`` with ``absmax <= 127 * 2**e``: the grid of 8-bit codes times a power of two
    that covers values up to ``absmax`` (``weight-quantize(rest_bits=8)`` rounds onto it)."""
    return math.ceil(math.log2(absmax / 127))


def _int8_grid_exponent(part: torch.Tensor) -> int | None:
    """``e`` when every value of ``part`` is an integer in [-127, 127] times ``2**e`` (then the
    int8 codes and ``e`` store it exactly), else None."""
    absmax = float(part.abs().max())
    if not math.isfinite(absmax) or absmax == 0.0:
        return None
    exponent = pow2_int8_exponent(absmax)
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
        for dtype in (torch.float16, torch.bfloat16):
            small = part.to(dtype)
            if torch.equal(small.float(), part):
                out[key], narrowed[key] = small, str(dtype).removeprefix("torch.")
                break
    return out, ({**header, "narrowed": narrowed} if narrowed else header)


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
    narrowed = header.get("narrowed", {})
    if not isinstance(narrowed, dict) or not set(narrowed) <= set(parts):
        raise ValueError(f"header 'narrowed' must map stored parts to storage types, got {narrowed!r}")
    if narrowed:
        parts = {k: _widen(v, narrowed[k]) if k in narrowed else v for k, v in parts.items()}
    encoding = ENCODINGS[name]
    if encoding.check is not None:
        encoding.check(parts, header)
    return encoding.decode(parts, header).reshape(header["shape"])
