"""The ``.ncz`` artifact: a zip of a JSON manifest, encoded tensors (safetensors) and a skeleton.

- ``manifest.json``: format version, library versions, per-tensor encoding, user metadata
  (the recipe that produced the model, seeds, reports).
- ``tensors.safetensors``: every parameter and persistent buffer, each in the encoding that
  stores it smallest, priced by estimate rather than trial-encoded (``io/encodings.py``); in
  models over 8 MB its larger parts DEFLATE'd as byte planes where that pays (``io/deflate.py``);
  tied tensors are stored once. The member itself is compressed by whichever zip method stores it smallest (up to
  8 MB; larger ones are priced on a sample, and compressed only when that saves 2% or more).
- ``skeleton.pkl``: the module tree pickled (LZMA) with its tensors on the ``meta`` device (a few
  KB), so any architecture, including ones reshaped by structured pruning, loads back as a plain
  ``nn.Module``. Older artifacts hold ``skeleton.pt`` (``torch.save``'s format) instead; both load.

Loading runs no code from the file: the skeleton is read by a restricted unpickler
(``io/trust.py``) that imports only nncompress's and ``torch.nn``'s module classes and the data
types a module tree needs. Models whose classes live elsewhere (Hugging Face ``transformers``,
timm, your package) load when the caller trusts that package: ``load(path, trust=("transformers",))``.
Everything read is checked before use: member sizes against the manifest's shapes, a sha256 per
member, each tensor's parts, shape and dtype, and that every parameter and buffer of the skeleton
gets exactly one stored tensor. Any failure is an ``ArtifactError`` naming the file and the member.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import lzma
import os
import struct
import threading
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from nncompress.io import quantized as qio
from nncompress.io import skeleton as compact_skeleton
from nncompress.io import trust as trust_policy
from nncompress.io.atomic import atomic_path
from nncompress.io.bits import packed_nbytes
from nncompress.io.encodings import (
    ENCODINGS,
    code_layouts,
    decode,
    deflate_parts,
    encode_smallest,
    narrow_exact_floats,
    numel_of,
)
from nncompress.io.errors import ArtifactError

FORMAT = "nncompress-artifact"
SKELETON = "skeleton.pkl"
LEGACY_SKELETON = "skeleton.pt"  # torch.save's zip: written before the plain pickle
VERSION = 1
LZMA_MAX_BYTES = 1 << 16  # small members, where metadata is a large share, also try LZMA (slow on big ones)
SAMPLE_ABOVE = 8 << 20  # larger members are priced for DEFLATE on a sample
# Models whose tensors take more than this store their larger parts as DEFLATE'd byte planes (a
# whole-member trial would take tens of seconds); smaller ones leave it to the member's own
# compression (LZMA or DEFLATE over everything, tried), so their files stay as they were.
PART_DEFLATE_ABOVE = SAMPLE_ABOVE
SAMPLE_SLICES, SAMPLE_BYTES = 64, 16 << 10
SUFFIX = ".ncz"
MANIFEST, TENSORS = "manifest.json", "tensors.safetensors"
KINDS = ("param", "buffer", qio.PACKED)
# decoded tensors may take at most this many times the file's size (sparse and entropy-coded
# layers expand; a few-KB file asking for gigabytes is a bomb), or MIN_DECODED_BYTES when larger
MAX_EXPANSION = 1024
MIN_DECODED_BYTES = 256 << 20
MIN_MEMBER_BYTES = 64 << 20  # manifest and skeleton: at most this or 64x the file's size
READ_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    OSError,
    NotImplementedError,
    RuntimeError,
    struct.error,
    UnicodeDecodeError,
    ValueError,
    KeyError,
    TypeError,
    OverflowError,
)


def _library_version() -> str:
    from nncompress import __version__

    return __version__


def _persistent_tensors(model: nn.Module) -> dict[str, tuple[torch.Tensor, str, bool]]:
    """name -> (tensor, "param"|"buffer", requires_grad) for everything in the state dict."""
    out: dict[str, tuple[torch.Tensor, str, bool]] = {}
    for mod_name, module in model.named_modules(remove_duplicate=False):
        prefix = f"{mod_name}." if mod_name else ""
        for name, p in module._parameters.items():
            if p is not None:
                out[prefix + name] = (p, "param", p.requires_grad)
        for name, b in module._buffers.items():
            if b is not None and name not in module._non_persistent_buffers_set:
                out[prefix + name] = (b, "buffer", False)
    return out


def _skeleton(model: nn.Module) -> nn.Module:
    """A deep copy whose parameters and persistent buffers live on the meta device."""
    memo: dict[int, Any] = qio.skeleton_memo(model)  # int8 packed weights: tiny placeholders
    for t, _, _ in _persistent_tensors(model).values():
        if id(t) not in memo:
            meta = torch.empty(t.shape, dtype=t.dtype, device="meta")
            memo[id(t)] = nn.Parameter(meta, t.requires_grad) if isinstance(t, nn.Parameter) else meta
    return copy.deepcopy(model, memo)


def _smallest_compression(data: bytes, *, gain: float = 0.98) -> int:
    """The zip method that stores ``data`` smallest: LZMA (tried up to ``LZMA_MAX_BYTES``: it is slow),
    DEFLATE, or none.

    Up to ``SAMPLE_ABOVE`` bytes every method is tried and the smallest taken. Larger members are
    priced for DEFLATE on ``SAMPLE_SLICES`` slices spread over ``data``, and compressed only when
    that saves at least ``1 - gain``: their big tensors were already DEFLATE'd part by part where
    that pays (``encodings.deflate_parts``), a whole-member trial took ~30 s on a 135M-parameter
    model, and stored members load fastest.
    """
    if len(data) > SAMPLE_ABOVE:
        step = len(data) // SAMPLE_SLICES
        size = min(SAMPLE_BYTES, step // 2)  # slices never overlap (repeats would look compressible)
        view = memoryview(data)  # from the middle of each stretch: not the leading safetensors header
        sample = b"".join(view[i * step + step // 2 :][:size] for i in range(SAMPLE_SLICES))
        return zipfile.ZIP_DEFLATED if len(zlib.compress(sample, 6)) < gain * len(sample) else zipfile.ZIP_STORED
    sizes = {zipfile.ZIP_STORED: len(data), zipfile.ZIP_DEFLATED: len(zlib.compress(data, 6))}
    if len(data) <= LZMA_MAX_BYTES:
        sizes[zipfile.ZIP_LZMA] = len(_lzma_raw(data)) + 9
    return min(sizes, key=lambda method: (sizes[method], method))  # stored first on a tie


def _lzma_raw(data: bytes) -> bytes:
    """``data`` compressed as zipfile's LZMA members hold it, less their 9-byte header (raw LZMA1)."""
    return lzma.compress(data, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA1}])


def save(model: nn.Module, path: str | os.PathLike, *, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to ``path`` as a compact artifact, atomically; returns the path.

    Example:
        >>> nncompress.save(model, "model.ncz")  # doctest: +SKIP
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"save() takes an nn.Module, got {type(model).__name__}")
    tensors = _persistent_tensors(model)
    tensors.update({n: (t, qio.PACKED, False) for n, t in qio.packed_tensors(model).items()})
    layouts = code_layouts(model)  # packed low-bit codes: also tried Huffman-coded
    large = sum(t.numel() * t.element_size() for t, _, _ in tensors.values()) > PART_DEFLATE_ABOVE
    stored: dict[str, torch.Tensor] = {}
    entries: dict[str, dict[str, Any]] = {}
    first_name_of: dict[tuple[int, int, tuple[int, ...]], str] = {}
    for name, (t, kind, requires_grad) in tensors.items():
        t = t.detach().cpu()
        entry: dict[str, Any] = {"kind": kind, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
        if requires_grad != (kind == "param"):  # written only when not the default: parameters train
            entry["requires_grad"] = requires_grad
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if t.numel() and key in first_name_of:
            entry["alias_of"] = first_name_of[key]
        else:
            if t.numel():
                first_name_of[key] = name
            enc_name, parts, header = (
                qio.encode_quantized(t) if t.is_quantized else encode_smallest(t, layout=layouts.get(name))
            )
            parts, header = narrow_exact_floats(parts, header)
            if large and not ENCODINGS[enc_name].entropy_coded:
                parts, header = deflate_parts(parts, header)
            entry.update(encoding=enc_name, header=header)
            for part, value in parts.items():
                stored[f"{name}::{part}"] = value.contiguous()
        entries[name] = entry
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "nncompress": _library_version(),
        "torch": torch.__version__,
        "tensors": entries,
        "metadata": metadata or {},
    }
    skeleton = compact_skeleton.dumps(_skeleton(model))  # a plain pickle minus modules' empty defaults
    data = safetensors.torch.save(stored)
    manifest["sha256"] = {TENSORS: hashlib.sha256(data).hexdigest(), SKELETON: hashlib.sha256(skeleton).hexdigest()}
    target = Path(path)
    with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w") as zf:
        # each member under whichever of LZMA, DEFLATE or none stores it smallest: a ViT's skeleton
        # took 1.4 KB as an LZMA plain pickle, against 4.7 KB as torch.save's zip
        text = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        zf.writestr(MANIFEST, text, compress_type=_smallest_compression(text), compresslevel=6)
        zf.writestr(TENSORS, data, compress_type=_smallest_compression(data), compresslevel=6)
        zf.writestr(SKELETON, skeleton, compress_type=_smallest_compression(skeleton), compresslevel=6)
    return target


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The artifact's manifest (versions, encodings, metadata) without loading the model."""
    with _open(path) as zf:
        return _manifest(zf, path)[0]


def _open(path: str | os.PathLike) -> zipfile.ZipFile:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no artifact at {p} (expected a {SUFFIX} file written by save())")
    try:
        return zipfile.ZipFile(p)
    except (*READ_ERRORS, ArithmeticError) as e:
        raise ArtifactError(f"{p} is not an nncompress artifact ({SUFFIX} zip): {e}") from e


def _member_limit(path: str | os.PathLike) -> int:
    return max(MIN_MEMBER_BYTES, 64 * os.path.getsize(path))


def _read_member(zf: zipfile.ZipFile, name: str, path: str | os.PathLike, limit: int) -> bytes:
    """Member ``name``'s bytes, refusing one that claims more than ``limit`` bytes before inflating it."""
    try:
        info = zf.getinfo(name)
    except KeyError as e:
        raise ArtifactError(f"{path} has no member {name}: not a complete nncompress artifact") from e
    if info.file_size > limit:
        raise ArtifactError(f"{path}: member {name} claims {info.file_size} bytes, more than the {limit} it may take")
    try:
        data = zf.read(info)
    except READ_ERRORS as e:
        raise ArtifactError(f"{path}: member {name} cannot be read ({type(e).__name__}: {e})") from e
    if len(data) != info.file_size:
        raise ArtifactError(f"{path}: member {name} holds {len(data)} bytes, not the {info.file_size} its entry says")
    return data


def _manifest(zf: zipfile.ZipFile, path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, int]]:
    """The checked manifest and each tensor's element count."""
    data = _read_member(zf, MANIFEST, path, _member_limit(path))
    try:
        manifest = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError) as e:
        raise ArtifactError(f"{path}: member {MANIFEST} is not valid JSON: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ArtifactError(f"{path} is not an nncompress artifact ({MANIFEST} format {found!r})")
    version = manifest.get("version", 0)
    if type(version) is not int or version < 0:
        raise ArtifactError(f"{path}: {MANIFEST} version must be an integer, got {version!r}")
    if version > VERSION:
        raise ArtifactError(
            f"{path} has artifact version {version}; this nncompress reads up to {VERSION}: upgrade nncompress"
        )
    return manifest, _check_entries(manifest, path)


def _check_entries(manifest: dict[str, Any], path: str | os.PathLike) -> dict[str, int]:
    """The manifest's structure: types of every field, kinds, encodings, shapes, dtypes and aliases;
    returns each tensor's element count."""

    def bad(name: str, why: str) -> ArtifactError:
        return ArtifactError(f"{path}: member {MANIFEST}: tensor {name!r} {why}")

    entries = manifest.get("tensors")
    if not isinstance(entries, dict):
        raise ArtifactError(f"{path}: member {MANIFEST} 'tensors' must be a table, got {type(entries).__name__}")
    if not isinstance(manifest.get("metadata", {}), dict):
        raise ArtifactError(f"{path}: member {MANIFEST} 'metadata' must be a table")
    hashes = manifest.get("sha256", {})
    if not isinstance(hashes, dict) or not all(isinstance(v, str) for v in hashes.values()):
        raise ArtifactError(f"{path}: member {MANIFEST} 'sha256' must map member names to hex digests")
    numels: dict[str, int] = {}
    for name, entry in entries.items():
        if not isinstance(entry, dict):
            raise bad(name, f"must be a table, got {type(entry).__name__}")
        if entry.get("kind") not in KINDS:
            raise bad(name, f"has kind {entry.get('kind')!r}; known: {', '.join(KINDS)}")
        try:
            numels[name] = numel_of(entry.get("shape"))
        except ValueError as e:
            raise bad(name, str(e)) from e
        if not isinstance(entry.get("dtype"), str) or not isinstance(getattr(torch, entry["dtype"], None), torch.dtype):
            raise bad(name, f"has unknown dtype {entry.get('dtype')!r}")
        if "requires_grad" in entry and not isinstance(entry["requires_grad"], bool):
            raise bad(name, f"requires_grad must be true or false, got {entry['requires_grad']!r}")
        if "alias_of" in entry:
            target = entries.get(entry["alias_of"]) if isinstance(entry["alias_of"], str) else None
            if not isinstance(target, dict) or "alias_of" in target or "encoding" not in target:
                raise bad(name, f"is an alias of {entry['alias_of']!r}, which is not a stored tensor")
            if target.get("shape") != entry["shape"] or target.get("dtype") != entry["dtype"]:
                raise bad(name, f"is an alias of {entry['alias_of']!r} with another shape or dtype")
        elif entry.get("encoding") not in ENCODINGS:
            raise bad(name, f"has unknown encoding {entry.get('encoding')!r}; known: {', '.join(ENCODINGS)}")
        elif not isinstance(entry.get("header"), dict):
            raise bad(name, "has no header table")
    return numels


def _decoded_bytes(entries: dict[str, Any], numels: dict[str, int]) -> int:
    """Bytes the stored (non-alias) tensors take once decoded."""
    return sum(numels[n] * getattr(torch, e["dtype"]).itemsize for n, e in entries.items() if "alias_of" not in e)


class _HashCheck:
    """A member's sha256 against the manifest's; computed in a thread for large members (hashlib
    releases the GIL), so decoding the tensors overlaps it. ``verify`` raises on a mismatch."""

    THREAD_BYTES = 1 << 20

    def __init__(self, manifest: dict[str, Any], member: str, data: bytes, path: str | os.PathLike) -> None:
        self.expected = manifest.get("sha256", {}).get(member)  # absent in artifacts written before hashes
        self.member, self.path, self.digest = member, path, ""
        self.thread: threading.Thread | None = None
        if self.expected is None:
            return
        if len(data) < self.THREAD_BYTES:
            self._hash(data)
        else:
            self.thread = threading.Thread(target=self._hash, args=(data,), daemon=True)
            self.thread.start()

    def _hash(self, data: bytes) -> None:
        self.digest = hashlib.sha256(data).hexdigest()

    def verify(self) -> None:
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.expected is not None and self.digest != self.expected:
            raise ArtifactError(
                f"{self.path}: member {self.member} is damaged (its sha256 differs from the manifest's)"
            )


def _unpickle_skeleton(data: bytes, legacy: bool, trust: tuple[str, ...], path: str | os.PathLike) -> nn.Module:
    """The module tree, through the restricted unpickler (``io/trust.py``) in both formats."""
    member = LEGACY_SKELETON if legacy else SKELETON
    try:
        if legacy:  # torch.save's zip: torch.load with our restricted Unpickler for the module tree
            module = trust_policy.restricted_pickle_module(trust, f"{path}: member {member}")
            model = torch.load(io.BytesIO(data), weights_only=False, pickle_module=module)
        else:
            model = compact_skeleton.loads(data, trust=trust, source=f"{path}: member {member}")
    except ArtifactError:
        raise
    except RecursionError as e:
        raise ArtifactError(f"{path}: member {member} nests too deeply to be a model skeleton") from e
    except Exception as e:  # unpickling a damaged stream raises many types
        raise ArtifactError(f"{path}: member {member} is a corrupt model skeleton ({type(e).__name__}: {e})") from e
    if not isinstance(model, nn.Module):
        raise ArtifactError(f"{path}: member {member} holds a {type(model).__name__}, not an nn.Module")
    return model


def _decode_entries(
    entries: dict[str, Any], stored: dict[str, torch.Tensor], path: str | os.PathLike
) -> dict[str, torch.Tensor]:
    """Each stored tensor decoded, checked against its entry's shape and dtype; every part used."""
    parts_of: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in stored.items():
        name, sep, part = key.rpartition("::")
        entry = entries.get(name)
        if not sep or entry is None or "alias_of" in entry:
            raise ArtifactError(f"{path}: member {TENSORS} holds {key!r}, which belongs to no stored tensor")
        parts_of.setdefault(name, {})[part] = value
    built: dict[str, torch.Tensor] = {}
    for name, entry in entries.items():
        if "alias_of" in entry:
            continue
        try:
            t = decode(entry["encoding"], parts_of.get(name, {}), {**entry["header"], "shape": entry["shape"]})
        except (KeyError, ValueError, RuntimeError, TypeError, IndexError, OverflowError) as e:
            raise ArtifactError(f"{path}: member {TENSORS}: tensor {name!r} cannot be decoded: {e}") from e
        if str(t.dtype).removeprefix("torch.") != entry["dtype"] or list(t.shape) != entry["shape"]:
            raise ArtifactError(
                f"{path}: member {TENSORS}: tensor {name!r} decodes to {str(t.dtype).removeprefix('torch.')} "
                f"{list(t.shape)}, but the manifest says {entry['dtype']} {entry['shape']}"
            )
        if entry["kind"] == "param":
            if not (t.is_floating_point() or t.is_complex()) and entry.get("requires_grad", True):
                raise ArtifactError(f"{path}: tensor {name!r}: an integer parameter cannot require grad")
            t = nn.Parameter(t, requires_grad=entry.get("requires_grad", True))
        built[name] = t
    return built


def _slots(model: nn.Module) -> tuple[dict[str, tuple[nn.Module, str, torch.Tensor, str]], bool]:
    """name -> (owning module, attribute, placeholder, "param"|"buffer") for every persistent tensor of the
    skeleton, and whether it holds any torch.ao quantized module (one walk)."""
    out: dict[str, tuple[nn.Module, str, torch.Tensor, str]] = {}
    has_ao = False
    for mod_name, module in model.named_modules(remove_duplicate=False):
        has_ao = has_ao or type(module).__module__.startswith("torch.ao.nn.")
        prefix = f"{mod_name}." if mod_name else ""
        for leaf, p in module._parameters.items():
            if p is not None:
                out[prefix + leaf] = (module, leaf, p, "param")
        for leaf, b in module._buffers.items():
            if b is not None and leaf not in module._non_persistent_buffers_set:
                out[prefix + leaf] = (module, leaf, b, "buffer")
    return out, has_ao


def _place(model: nn.Module, entries: dict[str, Any], built: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Put every tensor into its slot; each slot of the skeleton must get one of the same kind, shape, dtype."""
    slots, has_ao = _slots(model)
    packed: dict[str, torch.Tensor] = {}
    for name, entry in entries.items():
        tensor = built[entry.get("alias_of", name)]
        if entry["kind"] == qio.PACKED:
            packed[name] = tensor
            continue
        slot = slots.pop(name, None)
        if slot is None:
            raise ArtifactError(f"{path}: tensor {name!r} of the manifest has no place in the skeleton")
        module, leaf, placeholder, kind = slot
        if kind != entry["kind"] or placeholder.dtype != tensor.dtype or placeholder.shape != tensor.shape:
            raise ArtifactError(
                f"{path}: tensor {name!r} is a {entry['kind']} {entry['dtype']} {entry['shape']} in the manifest "
                f"but a {kind} {str(placeholder.dtype).removeprefix('torch.')} {list(placeholder.shape)} "
                "in the skeleton"
            )
        (module._parameters if kind == "param" else module._buffers)[leaf] = tensor
    missing = [n for n, slot in slots.items() if slot[2].is_meta]
    if missing:
        names = ", ".join(sorted(missing)[:5])
        raise ArtifactError(f"{path}: the manifest stores no tensor for the skeleton's {names}")
    if not has_ao:  # no torch.ao module: nothing to repack
        if packed:
            raise ArtifactError(f"{path}: int8 entries {', '.join(sorted(packed)[:5])} match no quantized module")
        return
    modules = qio.packed_modules(model)
    weights = {f"{n}.weight" if n else "weight" for n in modules}
    if weights - set(packed):
        raise ArtifactError(f"{path}: int8 weights of {', '.join(sorted(weights - set(packed)))} are not stored")
    for name, module in modules.items():
        _check_packed_shape(module, packed[f"{name}.weight" if name else "weight"], name, path)
    try:
        qio.restore_packed(model, packed)
    except (ValueError, RuntimeError, TypeError, AttributeError) as e:
        raise ArtifactError(f"{path}: int8 packed weights do not fit the skeleton: {e}") from e


def _check_packed_shape(module: nn.Module, weight: torch.Tensor, name: str, path: str | os.PathLike) -> None:
    """A torch.ao Linear's or Conv's int8 weight against the sizes the module was built with."""
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        expected: tuple[int, ...] = (module.out_features, module.in_features)
    elif hasattr(module, "in_channels") and hasattr(module, "kernel_size"):
        expected = (module.out_channels, module.in_channels // module.groups, *module.kernel_size)
    else:
        return
    if tuple(weight.shape) != tuple(expected) or weight.dtype != torch.qint8:
        raise ArtifactError(
            f"{path}: int8 weight of {name or 'the model'} is {weight.dtype} {list(weight.shape)}, "
            f"the module needs qint8 {list(expected)}"
        )


def _finish(model: nn.Module, path: str | os.PathLike) -> None:
    """One walk over the loaded model: no parameter or buffer left on meta, packed code buffers as long
    as their layer's codes need, and RNNs' flat weight lists pointed at the loaded tensors."""
    for name, module in model.named_modules():
        for kind, tensors in (("parameter", module._parameters), ("buffer", module._buffers)):
            for leaf, t in tensors.items():
                if t is not None and t.is_meta:
                    where = f"{name}.{leaf}" if name else leaf
                    raise ArtifactError(f"{path}: {kind} {where!r} has no stored value (left on the meta device)")
        if isinstance(module, nn.RNNBase):  # its flat weight list still points at the placeholders
            module._init_flat_weights()
        packed = module._buffers.get("packed") if getattr(type(module), "code_format", "") else None
        if packed is not None and packed.dtype == torch.uint8 and callable(getattr(module, "_weight_numel", None)):
            try:
                count, bits = module._weight_numel(), int(module.bits)
                expected = packed_nbytes(count, bits)
            except (ValueError, TypeError, AttributeError, RuntimeError) as e:
                raise ArtifactError(f"{path}: layer {name!r} has an invalid code layout in the skeleton: {e}") from e
            if packed.numel() != expected:
                raise ArtifactError(
                    f"{path}: {name}.packed holds {packed.numel()} bytes, but the layer's {count} {bits}-bit "
                    f"codes take {expected}"
                )


def load(path: str | os.PathLike, *, trust: str | Iterable[str] | None = None) -> nn.Module:
    """Load an artifact back into a runnable ``nn.Module`` (eval mode, CPU), running no code from the file.

    The skeleton is read by a restricted unpickler: nncompress's and ``torch.nn``'s modules load
    as they are; classes from any other package (``transformers``, ``timm``, your own module) load
    only when ``trust`` names that package (module-name prefixes), or after
    ``nncompress.io.trust_modules(...)``. Trust only packages you would import anyway: a trusted
    class's code runs when it is rebuilt. Every member is size-checked before it is read and
    hash-checked after; any damage or refusal is an ``ArtifactError`` naming the file and the member.

    Example:
        >>> model = nncompress.load("model.ncz")  # doctest: +SKIP
        >>> model = nncompress.load("gpt2.ncz", trust=("transformers",))  # doctest: +SKIP
    """
    trusted = trust_policy.normalize_trust(trust)
    try:
        with _open(path) as zf:
            manifest, numels = _manifest(zf, path)
            entries = manifest["tensors"]
            names = set(zf.namelist())
            legacy = SKELETON not in names and LEGACY_SKELETON in names  # artifacts of nncompress <= 0.1
            skeleton_member = LEGACY_SKELETON if legacy else SKELETON
            unknown = names - {MANIFEST, TENSORS, skeleton_member}
            if unknown:
                raise ArtifactError(f"{path} holds unknown member(s) {', '.join(sorted(unknown))}")
            decoded = _decoded_bytes(entries, numels)
            budget = max(MIN_DECODED_BYTES, MAX_EXPANSION * os.path.getsize(path))
            if decoded > budget:
                raise ArtifactError(
                    f"{path}: the manifest's tensors take {decoded} bytes decoded, more than {MAX_EXPANSION}x the file"
                )
            # parts never take much more than the decoded tensors: values, indices, scales, tables
            limit = sum(9 * numels[n] + 4096 for n, e in entries.items() if "alias_of" not in e) + (1 << 20)
            data = _read_member(zf, TENSORS, path, min(limit, 16 * decoded + (1 << 20)))
            tensors_hash = _HashCheck(manifest, TENSORS, data, path)  # verified before anything is returned
            skeleton_bytes = _read_member(zf, skeleton_member, path, _member_limit(path))
            _HashCheck(manifest, skeleton_member, skeleton_bytes, path).verify()
        try:
            try:
                stored = safetensors.torch.load(data)
            except (safetensors.SafetensorError, *READ_ERRORS) as e:
                raise ArtifactError(f"{path}: member {TENSORS} is not valid safetensors: {e}") from e
            model = _unpickle_skeleton(skeleton_bytes, legacy, trusted, path)
            built = _decode_entries(entries, stored, path)
            try:
                _place(model, entries, built, path)
            except (AttributeError, KeyError, TypeError) as e:
                raise ArtifactError(f"{path}: the tensors do not fit the skeleton ({type(e).__name__}: {e})") from e
            _finish(model, path)
        except ArtifactError:
            tensors_hash.verify()  # a damaged member is the cause worth naming
            raise
        tensors_hash.verify()
        return model.eval()
    except (RecursionError, MemoryError) as e:
        raise ArtifactError(f"{path} cannot be loaded ({type(e).__name__}): the file is corrupt or too large") from e
