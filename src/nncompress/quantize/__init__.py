"""Quantization steps. Importing ``nncompress.quantize.int8`` registers ``int8-static`` and ``int8-dynamic``."""
