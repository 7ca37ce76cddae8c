"""How packed Linears made from convolutions (``base.conv_as_linear``) become packed conv layers again.

A ``QuantizedLinear`` over a conv's ``(out, in * kernel)`` matrix holds the same codes, scales and
zero points as a ``QuantizedConv2d`` / ``QuantizedConv1d`` of that conv: both group a row's weights
in the same flattened order, so the conv twin is rebuilt from the decoded weight with the Linear's
own quantization parameters and gets the identical grid.
"""

from __future__ import annotations

from torch import nn

from nncompress.base.conv_as_linear import ConvLayer, register_conv_twin
from nncompress.quantize.layers import QuantizedLinear, quantize_weight_module


@register_conv_twin(QuantizedLinear)
def quantized_conv(linear: QuantizedLinear, conv: ConvLayer) -> nn.Module:
    """The ``QuantizedConv2d``/``QuantizedConv1d`` of ``conv`` (which holds the decoded weight) on ``linear``'s grid."""
    stored = linear.zero_point
    fractional = stored is not None and stored.is_floating_point()
    bias = getattr(linear, "bias", None)
    return quantize_weight_module(
        conv,
        linear.spec,
        scale=linear.scale.float(),
        zero_point=linear.zero_points(),
        scale_dtype=linear.scale.dtype,
        zero_dtype=stored.dtype if fractional else None,
        bias_dtype=bias.dtype if bias is not None else linear.weight.dtype,
    )
