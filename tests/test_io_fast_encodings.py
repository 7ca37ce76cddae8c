"""The fast paths of the artifact encodings: numpy bit packing, DEFLATE'd byte planes, the
``deflate`` layout of entropy-coded codes, and the estimates that replace trial encoding."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
from torch import nn

import nncompress as nc
from nncompress.io import bits as codebits
from nncompress.io import deflate, huffman
from nncompress.io.artifact import read_manifest
from nncompress.io.encodings import DEFLATE_PREFERENCE, CodeLayout, decode, deflate_parts, encode_smallest
from nncompress.io.errors import ArtifactError
from nncompress.quantize.primitives import pack_bits, unpack_bits


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("count", [0, 1, 7, 1001])
def test_io_bit_packing_matches_quantize_layout(bits, count):
    codes = torch.randint(0, 2**bits, (count,), generator=torch.Generator().manual_seed(bits * 1000 + count))
    packed = pack_bits(codes, bits)
    assert np.array_equal(codebits.pack_codes(codes.numpy(), bits), packed.numpy())
    assert np.array_equal(codebits.unpack_codes(packed.numpy(), bits, count), unpack_bits(packed, bits, count).numpy())
    assert codebits.packed_nbytes(count, bits) == packed.numel()
    assert codebits.padding_is_zero(packed.numpy(), bits, count)


def test_padding_bits_are_detected():
    assert not codebits.padding_is_zero(np.array([0b1000_0000], dtype=np.uint8), 3, 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.uint8, np.int64])
def test_byte_planes_round_trip_and_only_pay_where_they_gain(dtype):
    rng = np.random.default_rng(0)
    values = (rng.standard_normal(50_000) * 4).astype(dtype)
    packed = deflate.deflate_array(values)
    assert packed is not None  # every one of these has a predictable byte (exponent, high bytes)
    blob, planes = packed
    assert blob.size < values.nbytes
    assert [m for m, _ in planes].count(deflate.RAW) + [m for m, _ in planes].count(deflate.DEFLATED) == values.itemsize
    assert np.array_equal(deflate.inflate_array(blob, planes, values.dtype, values.size), values)
    noise = rng.integers(0, 256, 50_000).astype(np.uint8)
    assert deflate.deflate_array(noise) is None  # nothing to gain: stored as it is


def test_estimate_is_close_to_what_deflate_stores():
    rng = np.random.default_rng(1)
    codes = rng.choice(16, size=400_000, p=np.r_[np.full(8, 0.09), np.full(8, 0.035)]).astype(np.uint8)
    packed = codebits.pack_codes(codes, 4)
    real = len(deflate.deflate_bytes(packed))
    assert abs(deflate.estimate_bytes(packed) - real) < 0.01 * real


def test_inflate_refuses_a_wrong_size_or_a_damaged_stream():
    data = np.arange(10_000, dtype=np.uint8) % 7
    blob = np.frombuffer(deflate.deflate_bytes(data), dtype=np.uint8)
    assert np.array_equal(deflate.inflate_bytes(blob, data.size), data)
    with pytest.raises(ValueError, match="exactly"):
        deflate.inflate_bytes(blob, data.size - 1)  # more than claimed: refused without inflating it all
    with pytest.raises(ValueError, match="exactly"):
        deflate.inflate_bytes(blob, data.size + 1)
    damaged = blob.copy()
    damaged[len(damaged) // 2] ^= 0xFF
    with pytest.raises(ValueError):
        deflate.inflate_bytes(damaged, data.size)


@pytest.mark.parametrize("bits", [2, 3, 4, 6])
def test_dense_codes_take_the_deflate_layout_when_smaller_and_decode_exactly(bits):
    rng = np.random.default_rng(bits)
    probs = np.exp(-0.5 * np.linspace(-2, 2, 2**bits) ** 2)
    codes = rng.choice(2**bits, size=200_003, p=probs / probs.sum()).astype(np.uint8)
    packed = torch.from_numpy(codebits.pack_codes(codes, bits))
    name, parts, header = encode_smallest(packed, layout=CodeLayout(bits, codes.size))
    assert name == "huffman"
    plain = (huffman.layout_costs(codes, 2**bits)["plain"] + 7) // 8
    assert parts["data"].numel() <= plain * (1 + DEFLATE_PREFERENCE)  # at most the margin over per-code Huffman
    assert torch.equal(decode(name, parts, {**header, "shape": [packed.numel()]}), packed)
    if header["layout"] == "deflate":
        assert header["per_byte"] == 8 // bits


def test_sparse_codes_keep_the_huffman_gap_layout():
    rng = np.random.default_rng(0)
    codes = np.where(rng.random(100_000) < 0.9, 0, rng.integers(1, 16, 100_000)).astype(np.uint8)
    packed = torch.from_numpy(codebits.pack_codes(codes, 4))
    name, parts, header = encode_smallest(packed, layout=CodeLayout(4, codes.size))
    assert (name, header["layout"]) == ("huffman", "sparse")
    assert parts["data"].numel() == (huffman.layout_costs(codes, 16)["sparse"] + 7) // 8
    assert torch.equal(decode(name, parts, {**header, "shape": [packed.numel()]}), packed)


def test_sparse_float_tensors_are_priced_without_encoding_every_candidate():
    weight = torch.randn(300, 200)
    weight[torch.rand_like(weight) < 0.8] = 0
    name, parts, _ = encode_smallest(weight)
    kept = int(weight.count_nonzero())
    assert name == "sparse-bitmask"
    assert sum(p.numel() * p.element_size() for p in parts.values()) == (weight.numel() + 7) // 8 + 4 * kept


def test_deflated_parts_round_trip_through_decode():
    weight = torch.randn(256, 64)
    parts, header = deflate_parts({"data": weight}, {})
    assert parts["data"].dtype == torch.uint8 and parts["data"].numel() < weight.numel() * 4
    assert header["deflated"]["data"]["dtype"] == "float32"
    assert torch.equal(decode("dense", parts, {**header, "shape": [256, 64]}), weight)


def test_a_deflated_part_claiming_a_huge_size_is_refused_before_inflating():
    weight = torch.randn(256, 64)
    parts, header = deflate_parts({"data": weight}, {})
    header["deflated"]["data"]["shape"] = [2**30, 64]
    with pytest.raises(ValueError, match="more than its tensor may take"):
        decode("dense", parts, {**header, "shape": [256, 64]})


def _rewrite_manifest(path, edit):
    import json

    with zipfile.ZipFile(path) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    manifest = json.loads(members["manifest.json"])
    edit(manifest)
    manifest.pop("sha256", None)  # as an attacker would: the hashes are checked only when present
    members["manifest.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def test_small_models_leave_compression_to_the_member(tmp_path):
    path = nc.save(nn.Sequential(nn.Linear(128, 128)), tmp_path / "m.ncz")
    assert "deflated" not in read_manifest(path)["tensors"]["0.weight"]["header"]


def test_a_damaged_deflated_plane_list_is_an_artifact_error(tmp_path, monkeypatch):
    from nncompress.io import artifact

    monkeypatch.setattr(artifact, "PART_DEFLATE_ABOVE", 1024)  # as a large model's are
    model = nn.Sequential(nn.Linear(128, 128))
    path = nc.save(model, tmp_path / "m.ncz")
    entry = read_manifest(path)["tensors"]["0.weight"]
    assert "deflated" in entry["header"]  # 64 KB of float32: its exponent bytes compress
    _rewrite_manifest(path, lambda m: m["tensors"]["0.weight"]["header"]["deflated"]["data"]["planes"].reverse())
    with pytest.raises(ArtifactError, match="0.weight"):
        nc.load(path)


def test_large_members_are_not_trial_compressed_whole(tmp_path, monkeypatch):
    from nncompress.io import artifact

    monkeypatch.setattr(artifact, "SAMPLE_ABOVE", 1024)
    monkeypatch.setattr(artifact, "PART_DEFLATE_ABOVE", 1024)
    model = nn.Sequential(nn.Linear(256, 256))
    path = nc.save(model, tmp_path / "m.ncz")
    with zipfile.ZipFile(path) as zf:  # the float planes are DEFLATE'd already: the member gains too little
        assert zf.getinfo("tensors.safetensors").compress_type == zipfile.ZIP_STORED
    loaded = nc.load(path)
    assert torch.equal(loaded[0].weight, model[0].weight)
