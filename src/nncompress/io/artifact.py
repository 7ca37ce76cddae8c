"""The ``.ncz`` artifact: a zip of a JSON manifest, encoded tensors (safetensors) and a skeleton.

- ``manifest.json``: format version, library versions, per-tensor encoding, user metadata
  (the recipe that produced the model, seeds, reports).
- ``tensors.safetensors``: every parameter and persistent buffer, each in the encoding that
  stores it smallest (``io/encodings.py``); tied tensors are stored once. DEFLATE-compressed
  when that saves 2% or more (codes, quantized weights and sparse indices compress; dense
  float32 hardly does).
- ``skeleton.pkl``: the module tree pickled (LZMA) with its tensors on the ``meta`` device (a few
  KB), so any architecture, including ones reshaped by structured pruning, loads back as a plain
  ``nn.Module``. Like ``torch.load``, loading unpickles code: load only artifacts you trust.
  Older artifacts hold ``skeleton.pt`` (``torch.save``'s format) instead; both load.
"""

from __future__ import annotations

import copy
import io
import json
import lzma
import os
import pickle
import zipfile
import zlib
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from nncompress.io import quantized as qio
from nncompress.io import skeleton as compact_skeleton
from nncompress.io.atomic import atomic_path
from nncompress.io.encodings import code_layouts, decode, encode_smallest, narrow_exact_floats

FORMAT = "nncompress-artifact"
SKELETON = "skeleton.pkl"
LEGACY_SKELETON = "skeleton.pt"  # torch.save's zip: written before the plain pickle
VERSION = 1
LZMA_MAX_BYTES = 1 << 16  # small members, where metadata is a large share, also try LZMA (slow on big ones)
SUFFIX = ".ncz"


class ArtifactError(ValueError):
    """A file that is not a readable nncompress artifact."""


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
            memo[id(t)] = (
                nn.Parameter(meta, t.requires_grad) if isinstance(t, nn.Parameter) else meta
            )
    return copy.deepcopy(model, memo)


def _smallest_compression(data: bytes, *, gain: float = 0.98) -> int:
    """The zip method that stores ``data`` smallest: LZMA (tried up to ``LZMA_MAX_BYTES``: it is slow)
    or DEFLATE when it saves at least ``1 - gain`` (low-bit codes, sparse indices, JSON and pickles
    compress), else store (dense float32 hardly compresses, and stored members load fastest)."""
    sizes = {zipfile.ZIP_DEFLATED: len(zlib.compress(data, 6))}
    if len(data) <= LZMA_MAX_BYTES:
        sizes[zipfile.ZIP_LZMA] = len(_lzma_raw(data)) + 9
    method = min(sizes, key=sizes.__getitem__)
    return method if sizes[method] < gain * len(data) else zipfile.ZIP_STORED


def _lzma_raw(data: bytes) -> bytes:
    """``data`` compressed as zipfile's LZMA members hold it, less their 9-byte header (raw LZMA1)."""
    return lzma.compress(data, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA1}])


def save(
    model: nn.Module, path: str | os.PathLike, *, metadata: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` to ``path`` as a compact artifact, atomically; returns the path.

    Example:
        >>> nncompress.save(model, "model.ncz")  # doctest: +SKIP
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"save() takes an nn.Module, got {type(model).__name__}")
    tensors = _persistent_tensors(model)
    tensors.update({n: (t, qio.PACKED, False) for n, t in qio.packed_tensors(model).items()})
    layouts = code_layouts(model)  # packed low-bit codes: also tried Huffman-coded
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
    target = Path(path)
    with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w") as zf:
        # each member under whichever of LZMA, DEFLATE or none stores it smallest: a ViT's skeleton
        # took 1.4 KB as an LZMA plain pickle, against 4.7 KB as torch.save's zip
        text = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        zf.writestr("manifest.json", text, compress_type=_smallest_compression(text, gain=1.0), compresslevel=6)
        data = safetensors.torch.save(stored)
        zf.writestr("tensors.safetensors", data, compress_type=_smallest_compression(data), compresslevel=6)
        zf.writestr(SKELETON, skeleton, compress_type=_smallest_compression(skeleton, gain=1.0), compresslevel=6)
    return target


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The artifact's manifest (versions, encodings, metadata) without loading the model."""
    with _open(path) as zf:
        return _manifest(zf, path)


def _open(path: str | os.PathLike) -> zipfile.ZipFile:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no artifact at {p} (expected a {SUFFIX} file written by save())")
    try:
        return zipfile.ZipFile(p)
    except (zipfile.BadZipFile, OSError) as e:
        raise ArtifactError(f"{p} is not an nncompress artifact ({SUFFIX} zip): {e}") from e


def _manifest(zf: zipfile.ZipFile, path: str | os.PathLike) -> dict[str, Any]:
    try:
        manifest = json.loads(zf.read("manifest.json"))
    except KeyError as e:
        raise ArtifactError(f"{path} has no manifest.json: not an nncompress artifact") from e
    except (json.JSONDecodeError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path} has a corrupt manifest: {e}") from e
    if manifest.get("format") != FORMAT:
        raise ArtifactError(
            f"{path} is not an nncompress artifact (format {manifest.get('format')!r})"
        )
    if manifest.get("version", 0) > VERSION:
        raise ArtifactError(
            f"{path} has artifact version {manifest['version']}; this nncompress reads up to "
            f"{VERSION}: upgrade nncompress"
        )
    return manifest


def _assign(model: nn.Module, name: str, tensor: torch.Tensor, kind: str) -> None:
    mod_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(mod_name) if mod_name else model
    if kind == "param":
        module._parameters[leaf] = tensor  # type: ignore[assignment]
    else:
        module._buffers[leaf] = tensor


def load(path: str | os.PathLike) -> nn.Module:
    """Load an artifact back into a runnable ``nn.Module`` (eval mode, CPU).

    Example:
        >>> model = nncompress.load("model.ncz")  # doctest: +SKIP
    """
    with _open(path) as zf:
        manifest = _manifest(zf, path)
        try:
            stored = safetensors.torch.load(zf.read("tensors.safetensors"))
            names = set(zf.namelist())
            legacy = SKELETON not in names and LEGACY_SKELETON in names  # artifacts of nncompress <= 0.1
            skeleton_bytes = zf.read(LEGACY_SKELETON if legacy else SKELETON)
        except KeyError as e:
            raise ArtifactError(f"{path} is missing a member: {e}") from e
        except (zipfile.BadZipFile, safetensors.SafetensorError, OSError) as e:
            raise ArtifactError(f"{path} is corrupt: {e}") from e
    try:
        # like torch.load(weights_only=False), unpickling runs code: load only artifacts you trust
        model = torch.load(io.BytesIO(skeleton_bytes), weights_only=False) if legacy else pickle.loads(skeleton_bytes)
    except (AttributeError, ModuleNotFoundError) as e:
        raise ArtifactError(
            f"{path} needs code that is not importable here ({e}); import the module that "
            "defines the model (e.g. load its task first) and try again"
        ) from e
    except Exception as e:  # unpickling a damaged stream raises many types
        raise ArtifactError(f"{path} has a corrupt model skeleton: {e}") from e
    built: dict[str, torch.Tensor] = {}
    entries = manifest["tensors"]
    for name, entry in entries.items():
        if "alias_of" in entry:
            continue
        prefix = f"{name}::"
        parts = {k[len(prefix) :]: v for k, v in stored.items() if k.startswith(prefix)}
        try:
            t = decode(entry["encoding"], parts, {**entry["header"], "shape": entry["shape"]})
        except (KeyError, ValueError, RuntimeError) as e:
            raise ArtifactError(f"{path}: tensor {name!r} cannot be decoded: {e}") from e
        if entry["kind"] == "param":
            t = nn.Parameter(t, requires_grad=entry.get("requires_grad", True))
        built[name] = t
    packed: dict[str, torch.Tensor] = {}
    for name, entry in entries.items():
        tensor = built[entry.get("alias_of", name)]
        if entry["kind"] == qio.PACKED:
            packed[name] = tensor
            continue
        try:
            _assign(model, name, tensor, entry["kind"])
        except AttributeError as e:
            raise ArtifactError(f"{path}: tensor {name!r} has no place in the skeleton") from e
    try:
        qio.restore_packed(model, packed)
    except (ValueError, RuntimeError) as e:
        raise ArtifactError(f"{path}: int8 packed weights do not fit the skeleton: {e}") from e
    return model.eval()
