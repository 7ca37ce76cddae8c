"""Quantization: pure tensor maths re-exported here (uniform quantization parameters and
(fake-)quantization, binary, ternary and power-of-two schemes, float casts, bit packing, calibration
observers, k-means weight sharing with Huffman pricing), and steps in their own modules: importing
``nncompress.quantize.int8`` registers ``int8-static`` and ``int8-dynamic``."""

from nncompress.quantize.codebook import huffman_bits, huffman_code_lengths, kmeans_codebook
from nncompress.quantize.observers import (
    OBSERVERS,
    EntropyObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    Observer,
    PercentileObserver,
    make_observer,
)
from nncompress.quantize.primitives import (
    QuantSpec,
    binarize,
    cast_float,
    compute_qparams,
    dequantize,
    dequantize_power_of_two,
    fake_quantize,
    float_roundtrip,
    pack_bits,
    packed_nbytes,
    power_of_two,
    qparams_from_range,
    quantize,
    round_ste,
    signed_dtype,
    ternarize,
    to_bfloat16,
    to_float16,
    to_signed,
    to_unsigned,
    unpack_bits,
    unsigned_dtype,
)

__all__ = [
    "OBSERVERS", "EntropyObserver", "MSEObserver", "MinMaxObserver", "MovingAverageMinMaxObserver", "Observer",
    "PercentileObserver", "QuantSpec", "binarize", "cast_float", "compute_qparams", "dequantize",
    "dequantize_power_of_two", "fake_quantize", "float_roundtrip", "huffman_bits", "huffman_code_lengths",
    "kmeans_codebook", "make_observer", "pack_bits", "packed_nbytes", "power_of_two", "qparams_from_range",
    "quantize", "round_ste", "signed_dtype", "ternarize", "to_bfloat16", "to_float16", "to_signed", "to_unsigned",
    "unpack_bits", "unsigned_dtype",
]
