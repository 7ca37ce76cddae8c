"""Deep Compression weight sharing: k-means codebooks and Huffman code lengths."""

from __future__ import annotations

import pytest
import torch

from nncompress.quantize.codebook import huffman_bits, huffman_code_lengths, kmeans_codebook


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("init", ["linear", "density"])
def test_exactly_two_to_the_bits_values_are_rebuilt_exactly(bits, init):
    g = torch.Generator().manual_seed(bits)
    k = 2**bits
    values = (torch.randperm(512, generator=g)[:k] - 256).float() / 64  # distinct multiples of 1/64
    idx = torch.cat([torch.arange(k), torch.randint(0, k, (2000 - k,), generator=g)])
    w = values[idx[torch.randperm(2000, generator=g)]].reshape(40, 50)
    centroids, codes = kmeans_codebook(w, bits, init=init)
    assert centroids.shape == (k,) and codes.shape == w.shape and codes.dtype == torch.uint8
    assert int(codes.max()) < k
    assert torch.equal(centroids[codes.long()], w)
    assert torch.equal(centroids, values.sort().values)


def test_kmeans_is_deterministic_and_beats_a_uniform_grid():
    w = torch.randn(256, 64, generator=torch.Generator().manual_seed(0))
    c1, k1 = kmeans_codebook(w, 4)
    c2, k2 = kmeans_codebook(w, 4)
    assert torch.equal(c1, c2) and torch.equal(k1, k2)
    assert (c1[1:] >= c1[:-1]).all()
    err = (c1[k1.long()] - w).pow(2).mean()
    grid = torch.linspace(float(w.min()), float(w.max()), 16)  # the linear initialisation itself
    grid_err = (grid[(w[..., None] - grid).abs().argmin(-1)] - w).pow(2).mean()
    assert err < 0.5 * grid_err  # Lloyd iterations only lower the error; by far on Gaussian weights
    assert kmeans_codebook(w, 10)[1].dtype == torch.int16


def test_keep_zero_preserves_the_sparsity_pattern():
    w = torch.randn(64, 64, generator=torch.Generator().manual_seed(1))
    w[w.abs() < 0.8] = 0.0  # about 58% pruned
    centroids, codes = kmeans_codebook(w, 3, keep_zero=True)
    rebuilt = centroids[codes.long()]
    assert torch.equal(rebuilt == 0, w == 0)
    assert (centroids == 0).sum() == 1 and centroids.numel() == 8
    assert (rebuilt[w != 0].abs() >= 0.8 - 1e-6).all()  # nonzero weights never share the zero level
    with pytest.raises(ValueError, match="keep_zero needs bits >= 2"):
        kmeans_codebook(w, 1, keep_zero=True)


def test_huffman_matches_a_hand_computed_code():
    codes = torch.tensor([3, 0, 3, 2, 1, 3, 2, 3])  # counts 1, 1, 2, 4
    assert huffman_code_lengths(codes) == {0: 3, 1: 3, 2: 2, 3: 1}
    assert huffman_bits(codes) == 1 * 3 + 1 * 3 + 2 * 2 + 4 * 1 == 14  # vs 16 at 2 bits fixed width
    assert huffman_bits(torch.full((10,), 5)) == 10  # a single symbol still costs a bit per code
    assert huffman_bits(torch.empty(0, dtype=torch.long)) == 0


def test_huffman_never_exceeds_fixed_width_and_is_a_complete_code():
    w = torch.randn(100, 100, generator=torch.Generator().manual_seed(2))
    for bits in (2, 4, 6):
        _, codes = kmeans_codebook(w, bits)
        lengths = huffman_code_lengths(codes)
        assert sum(2.0**-n for n in lengths.values()) == pytest.approx(1.0)  # Kraft equality
        assert huffman_bits(codes) <= bits * codes.numel()
    uniform = torch.arange(16).repeat(10)
    assert huffman_bits(uniform) == 4 * 160  # equal counts: no gain


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bits": 0}, r"bits must be an integer in \[1, 16\], got 0"),
        ({"bits": 33}, r"bits must be an integer in \[1, 16\], got 33"),
        ({"bits": 4, "init": "random"}, r"init must be one of \('linear', 'density'\), got 'random'"),
        ({"bits": 4, "iters": -1}, r"iters must be an integer >= 0, got -1"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        kmeans_codebook(torch.randn(10), **kwargs)
