"""Huffman coding of code streams (io/huffman.py) and the artifact's ``huffman`` encoding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import nncompress as nc
from nncompress.io import huffman
from nncompress.io.encodings import CodeLayout, code_layouts, decode, encode_smallest
from nncompress.quantize.codebook import huffman_bits, kmeans_codebook
from nncompress.quantize.layers import codebook_module
from nncompress.quantize.primitives import pack_bits


def _entropy_bits(symbols: np.ndarray) -> float:
    p = np.bincount(symbols) / symbols.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum() * symbols.size)


def test_code_lengths_are_a_complete_prefix_code_within_one_bit_of_entropy():
    rng = np.random.default_rng(0)
    symbols = rng.geometric(0.3, 5000) - 1
    counts = np.bincount(symbols)
    lengths = huffman.code_lengths(counts)
    present = lengths[counts > 0]
    assert math.isclose(sum(2.0**-present), 1.0)  # Kraft equality: a full binary tree
    total = int((lengths * counts).sum())
    entropy = _entropy_bits(symbols)
    assert entropy <= total < entropy + symbols.size  # Huffman is within 1 bit per symbol


def test_code_lengths_are_limited_to_15_bits():
    counts = np.array([2**i for i in range(30)])  # Fibonacci-like skew: unlimited depth 29
    lengths = huffman.code_lengths(counts)
    assert lengths.max() <= huffman.MAX_CODE_BITS
    assert math.isclose(sum(2.0**-lengths), 1.0)


def test_canonical_codes_are_prefix_free():
    lengths = np.array([3, 3, 2, 1, 0])
    codes = huffman.canonical_codes(lengths)
    words = [format(int(c), f"0{int(n)}b") for c, n in zip(codes, lengths) if n]
    assert words == ["110", "111", "10", "0"]


@pytest.mark.parametrize(
    ("symbols", "alphabet"),
    [
        (np.zeros(0, dtype=np.int64), 4),  # empty
        (np.zeros(1000, dtype=np.int64), 32),  # all zeros
        (np.full(7, 5), 8),  # one symbol, not zero
        (np.array([3]), 4),  # one element
        (np.array([0, 1]), 2),
        (np.arange(256), 256),  # every symbol once
    ],
)
def test_edge_cases_round_trip(symbols, alphabet):
    data, header = huffman.encode_symbols(symbols, alphabet)
    np.testing.assert_array_equal(huffman.decode_symbols(data, header), symbols)


def test_constant_streams_cost_at_most_a_byte():
    for value in (0, 5):
        data, _ = huffman.encode_symbols(np.full(10_000, value), 8)
        assert data.size <= 1


@pytest.mark.parametrize("density", [0.0005, 0.02, 0.08, 0.3, 0.9, 1.0])
def test_random_sparse_streams_round_trip_and_beat_fixed_width(density):
    rng = np.random.default_rng(1)
    n = 20_000
    symbols = np.where(rng.random(n) < density, rng.integers(1, 32, n), 0)
    data, header = huffman.encode_symbols(symbols, 32)
    np.testing.assert_array_equal(huffman.decode_symbols(data, header), symbols)
    assert data.size < n * 5 / 8  # fewer bytes than 5-bit fixed-width codes
    if density <= 0.08:
        assert header["layout"] == "sparse"
        # positions: within 10% of the entropy of a Bernoulli mask, plus the values' entropy
        p = max(density, 1 / n)
        mask_bits = n * -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
        nonzero = symbols[symbols != 0]
        bound = 1.1 * mask_bits + (_entropy_bits(nonzero) + nonzero.size if nonzero.size else 0) + 600
        assert data.size * 8 <= bound


def test_gap_symbols_round_trip_with_fillers():
    gaps = np.array([0, 3, 7, 2, 15, 16])
    for width in (1, 2, 3, 4, 5):
        syms = huffman.gap_symbols(gaps, width)
        assert syms.max() < 2**width
        np.testing.assert_array_equal(huffman.gaps_from_symbols(syms, width), gaps)


def test_decoding_a_truncated_stream_raises():
    rng = np.random.default_rng(2)
    symbols = rng.integers(0, 16, 500)
    data, header = huffman.encode_symbols(symbols, 16)
    with pytest.raises(ValueError):
        huffman.decode_symbols(data[: data.size // 2], header)


def test_out_of_range_symbols_are_refused():
    with pytest.raises(ValueError, match=r"symbols must lie in \[0, 4\)"):
        huffman.encode_symbols(np.array([0, 4]), 4)


def test_huffman_bits_prices_what_the_plain_layout_stores():
    g = torch.Generator().manual_seed(0)
    codes = torch.multinomial(torch.tensor([0.1, 0.2, 0.3, 0.4]), 800, replacement=True, generator=g)
    data, header = huffman.encode_symbols(codes.numpy(), 4)
    assert header["layout"] == "plain"  # no dominant symbol: gaps would not pay
    assert data.size == math.ceil((huffman_bits(codes) + 4 * 4) / 8)  # codes + a 4-entry table


@pytest.mark.parametrize("bits", [1, 3, 4, 5, 8])
def test_packed_encoding_round_trips_exactly(bits):
    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 2**bits, (1001,), generator=g)
    codes[torch.rand(1001, generator=g) < 0.9] = 0
    packed = pack_bits(codes, bits)
    name, parts, header = encode_smallest(packed, layout=CodeLayout(bits, 1001))
    assert name == "huffman"
    assert torch.equal(decode(name, parts, {**header, "shape": list(packed.shape)}), packed)


def test_a_wrong_layout_falls_back_to_another_encoding():
    packed = pack_bits(torch.tensor([1, 2, 3, 1]), 2)
    name, _, _ = encode_smallest(packed, layout=CodeLayout(2, 9))  # 9 codes need 3 bytes, not 1
    assert name != "huffman"


def test_pruned_codebook_layer_saves_huffman_coded_and_loads_exactly(tmp_path):
    torch.manual_seed(0)
    layer = nn.Linear(300, 100)
    with torch.no_grad():
        layer.weight[torch.rand_like(layer.weight) < 0.92] = 0
    centroids, codes = kmeans_codebook(layer.weight, 5, keep_zero=True)
    model = nn.Sequential(codebook_module(layer, centroids, codes, 5))
    assert set(code_layouts(model)) == {"0.packed"}
    path = nc.save(model, tmp_path / "m.ncz")
    manifest = nc.io.artifact.read_manifest(path)
    assert manifest["tensors"]["0.packed"]["encoding"] == "huffman"
    assert manifest["tensors"]["0.packed"]["header"]["layout"] == "sparse"
    x = torch.randn(8, 300)
    loaded = nc.load(path)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    # 8% of 30,000 weights at ~5 bits of gap + ~4.5 bits of code, well under fixed width
    fixed = 30_000 * 5 / 8
    assert path.stat().st_size < 0.45 * fixed + 2_000


def test_int8_storage_rounding_is_stored_in_one_byte_and_loads_exactly(tmp_path):
    from nncompress.quantize.kmeans import round_for_storage

    layer = nn.Linear(64, 32)
    with torch.no_grad():
        layer.bias.copy_(round_for_storage(layer.bias, "int8"))
    err = (round_for_storage(layer.weight, "int8") - layer.weight).abs().max()
    assert err <= layer.weight.abs().max() / 127  # half a grid step of at most 2 * absmax / 127
    path = nc.save(nn.Sequential(layer), tmp_path / "m.ncz")
    entry = nc.io.artifact.read_manifest(path)["tensors"]["0.bias"]
    assert entry["header"]["narrowed"]["data"].startswith("int8*2^")
    assert torch.equal(nc.load(path)[0].bias, layer.bias)


def test_skeleton_pickle_is_compact_and_loads(tmp_path):
    import pickle

    from nncompress.io import skeleton
    from nncompress.io.artifact import _skeleton

    model = nc.models.LeNet5()
    plain, compact = pickle.dumps(_skeleton(model), protocol=4), skeleton.dumps(_skeleton(model))
    assert len(compact) < 0.7 * len(plain)
    back = pickle.loads(compact)
    assert type(back) is type(model) and back.conv1.weight.is_meta and back.conv1.weight.requires_grad
    assert back.conv1._forward_hooks == {} and back.training == model.training
    loaded = nc.load(nc.save(model, tmp_path / "m.ncz"))
    x = torch.randn(2, 1, 28, 28)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)
