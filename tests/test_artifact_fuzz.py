"""Seeded fuzzing of artifacts: every damaged file either loads with identical outputs or raises ArtifactError.

About 200 variants of three small artifacts (dense, pruned sparse, Huffman-coded codebook): bit flips
in the file and inside members (re-zipped, so zip's CRC does not catch them), truncations, manifest
edits (wrong root, types, kinds, shapes, dtypes, aliases, Huffman counts) and zip bombs.
"""

from __future__ import annotations

import json
import random
import zipfile

import pytest
import torch
from conftest import init_model
from test_artifact_safety import huffman_model
from torch import nn

import nncompress as nc

SEED = 20261205


def _models() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    mlp = init_model("mlp")
    sparse = init_model("lenet5")
    with torch.no_grad():
        for p in sparse.parameters():
            p[torch.rand_like(p) < 0.8] = 0
    return {
        "mlp": (mlp, torch.randn(2, 1, 28, 28)),
        "sparse": (sparse, torch.randn(2, 1, 28, 28)),
        "huffman": (huffman_model(), torch.randn(2, 300)),
    }


def _members(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _write(out, members: dict[str, bytes], method=zipfile.ZIP_STORED) -> None:
    with zipfile.ZipFile(out, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def _manifest_edits(manifest: dict, rng: random.Random) -> list[object]:
    """Edited manifests (JSON-able roots, not necessarily dicts)."""
    names = list(manifest["tensors"])
    name = rng.choice(names)

    def edit(fn):
        m = json.loads(json.dumps(manifest))
        fn(m)
        return m

    def entry(fn):
        return edit(lambda m: fn(m["tensors"][name]))

    out: list[object] = [1, None, [], "x", {"format": "nncompress-artifact"}, {}]
    out += [edit(lambda m, v=v: m.update(tensors=v)) for v in ([], None, 1, {"a": 1}, {"a": []})]
    out += [edit(lambda m, v=v: m.update(version=v)) for v in ([1], "1", 2, -1, 1.5, None, True)]
    out += [edit(lambda m, v=v: m.update(metadata=v)) for v in ([], 1)]
    bad_hashes = ([], {"tensors.safetensors": 1}, {"tensors.safetensors": "00"})
    out += [edit(lambda m, v=v: m.update(sha256=v)) for v in bad_hashes]
    out += [entry(lambda e, k=k: e.pop(k, None)) for k in ("kind", "shape", "dtype", "encoding", "header")]
    out += [entry(lambda e, v=v: e.update(kind=v)) for v in ("param", "buffer", "packed", "weights", 1, None)]
    out += [entry(lambda e, v=v: e.update(shape=v)) for v in ([], [1], [10**12], [-1], ["3"], None, [2.5], [0])]
    out += [entry(lambda e, v=v: e.update(dtype=v)) for v in ("float64", "int8", "qint8", "Tensor", "nope", 3)]
    out += [entry(lambda e, v=v: e.update(alias_of=v)) for v in (name, rng.choice(names), "nope", 1, None)]
    out += [
        entry(lambda e, v=v: e.update(encoding=v))
        for v in ("dense", "sparse-bitmask", "sparse-indices", "huffman", "quantized-affine", "x", None)
    ]
    out += [
        entry(lambda e, v=v: e.update(header=v))
        for v in (
            {},
            [],
            None,
            {"narrowed": {"data": "int8*2^99999"}},
            {"narrowed": {"nope": "float16"}},
            {"narrowed": []},
        )
    ]
    out += [entry(lambda e, v=v: e.update(requires_grad=v)) for v in ("yes", 1, None, False)]
    for key, values in {
        "count": (10**8, 10**12, -1, 0, 1.5, None),
        "table": (10**6, 0),
        "nonzero": (10**8, -1),
        "gap_symbols": (10**9,),
        "gap_width": (0, 13, 40),
        "value_table": (10**5,),
        "gap_table": (10**5,),
        "background": (-1, 10**3),
        "bits": (0, 9, 1.5),
        "layout": ("plain", "sparse", "x", None),
        "alphabet": (2,),
    }.items():
        coded = [n for n, e in manifest["tensors"].items() if e.get("encoding") == "huffman"]
        for v in values if coded else ():
            out.append(edit(lambda m, k=key, v=v, n=coded[0]: m["tensors"][n]["header"].update({k: v})))
    return out


def _variants(path, rng: random.Random, budget: int) -> list[tuple[str, dict[str, bytes] | bytes]]:
    members = _members(path)
    raw = path.read_bytes()
    manifest = json.loads(members["manifest.json"])
    out: list[tuple[str, dict[str, bytes] | bytes]] = []
    for _ in range(budget // 4):  # bit flips anywhere in the file (zip structure and compressed data)
        data = bytearray(raw)
        pos = rng.randrange(len(data))
        data[pos] ^= 1 << rng.randrange(8)
        out.append((f"file bit {pos}", bytes(data)))
    for _ in range(budget // 4):  # bit flips inside a member, re-zipped with a valid CRC
        name = rng.choice(list(members))
        data = bytearray(members[name])
        pos = rng.randrange(len(data))
        data[pos] ^= 1 << rng.randrange(8)
        out.append((f"{name} bit {pos}", {**members, name: bytes(data)}))
    for _ in range(budget // 10):
        cut = rng.randrange(len(raw))
        out.append((f"truncated at {cut}", raw[:cut]))
    name = rng.choice(list(members))
    out.append((f"{name} truncated", {**members, name: members[name][: len(members[name]) // 2]}))
    out.append(("member missing", {k: v for k, v in members.items() if k != "tensors.safetensors"}))
    out.append(("extra member", {**members, "other.bin": b"x"}))
    out.append(("zip bomb", {**members, "skeleton.pkl": members["skeleton.pkl"] + b"\0" * (80 << 20)}))
    edits = _manifest_edits(manifest, rng)
    rng.shuffle(edits)
    for i, m in enumerate(edits[: max(0, budget - len(out))]):
        manifest_bytes = json.dumps(m).encode()
        out.append((f"manifest edit {i}: {manifest_bytes[:80]!r}", {**members, "manifest.json": manifest_bytes}))
    return out


@pytest.mark.parametrize("name", ["mlp", "sparse", "huffman"])
def test_damaged_artifacts_load_identically_or_raise_artifact_error(name, tmp_path):
    rng = random.Random(f"{SEED}-{name}")
    model, x = _models()[name]
    path = nc.save(model.eval(), tmp_path / "ok.ncz")
    with torch.inference_mode():
        expected = model(x)
    variants = _variants(path, rng, budget=70)
    assert len(variants) >= 65
    loaded_ok = refused = 0
    for label, variant in variants:
        bad = tmp_path / "bad.ncz"
        if isinstance(variant, bytes):
            bad.write_bytes(variant)
        else:
            _write(bad, variant, zipfile.ZIP_DEFLATED if label == "zip bomb" else zipfile.ZIP_STORED)
        try:
            loaded = nc.load(bad)
        except nc.ArtifactError as e:
            assert str(bad) in str(e), (label, str(e))
            assert "\n" not in str(e), (label, str(e))
            refused += 1
            continue
        except Exception as e:  # noqa: BLE001 - the point of the test
            pytest.fail(f"{label}: {type(e).__name__} leaked: {e}")
        with torch.inference_mode():
            assert torch.equal(loaded(x), expected), f"{label}: loaded but gives other outputs"
        loaded_ok += 1
    assert refused > len(variants) // 2


@pytest.mark.parametrize("name", ["sparse", "huffman"])
def test_damaged_members_without_hashes_never_leak_other_errors(name, tmp_path):
    """With the hashes stripped (an older artifact, or an attacker), flipped bits reach the decoders and
    the unpickler: the load either fails with ArtifactError or gives a module (that runs, when only
    tensor data was hit: a flipped skeleton attribute such as a stride can make a different model)."""
    rng = random.Random(f"{SEED}-nohash-{name}")
    model, x = _models()[name]
    path = nc.save(model.eval(), tmp_path / "ok.ncz")
    members = _members(path)
    manifest = json.loads(members["manifest.json"])
    manifest.pop("sha256")
    members["manifest.json"] = json.dumps(manifest).encode()
    for _ in range(25):
        member = rng.choice(["tensors.safetensors", "skeleton.pkl"])
        data = bytearray(members[member])
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        bad = tmp_path / "bad.ncz"
        _write(bad, {**members, member: bytes(data)})
        try:
            loaded = nc.load(bad)
        except nc.ArtifactError as e:
            assert str(bad) in str(e)
            continue
        assert isinstance(loaded, nn.Module)
        if member == "tensors.safetensors":
            with torch.inference_mode():
                assert loaded(x).shape == model(x).shape
