"""What a model returns, reduced to the one tensor built-in metrics and losses score.

Models return a tensor, a tuple (the first item is the prediction: ``nn.LSTM``, many research
models), a dict, or a Hugging Face ``ModelOutput`` (an ordered dict whose ``logits`` is the
prediction; ``loss`` comes first when labels were passed). User metrics and losses get the output
as it is; built-in ones take :func:`primary_output` of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

# The key that holds a model's prediction in dict / ModelOutput returns (Hugging Face's name).
PRIMARY_KEY = "logits"


def primary_output(outputs: Any) -> torch.Tensor:
    """The prediction tensor in what a model returned: the tensor itself; a tuple's or list's
    first item; a dict's or ``ModelOutput``'s ``"logits"``, else its first tensor value.

    Example:
        >>> primary_output((torch.ones(2), torch.zeros(3))).tolist()
        [1.0, 1.0]
        >>> primary_output({"loss": torch.tensor(0.5), "logits": torch.zeros(1)}).tolist()
        [0.0]
    """
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, Mapping):
        if outputs.get(PRIMARY_KEY) is not None:
            return primary_output(outputs[PRIMARY_KEY])
        for value in outputs.values():
            if isinstance(value, (torch.Tensor, tuple, list, Mapping)):
                try:
                    return primary_output(value)
                except TypeError:
                    continue
        raise TypeError(f"the model returned a {type(outputs).__name__} with no tensor among {list(outputs)}")
    if isinstance(outputs, (tuple, list)):
        if not outputs:
            raise TypeError(f"the model returned an empty {type(outputs).__name__}")
        return primary_output(outputs[0])
    raise TypeError(
        f"the model returned a {type(outputs).__name__}; accepted: a tensor, a tuple/list (first item), "
        "or a dict / ModelOutput (its 'logits', else its first tensor)"
    )


def batch_examples(targets: Any, inputs: Any = None) -> int:
    """How many examples a batch holds: the targets' (else the inputs') leading size, 1 for scalars."""
    for part in (targets, inputs):
        first = _first_tensor(part)
        if first is not None:
            return int(first.shape[0]) if first.dim() else 1
    return 1


def _first_tensor(value: Any) -> torch.Tensor | None:
    """The first tensor inside a tensor, tuple/list or dict (None when there is none)."""
    if isinstance(value, torch.Tensor):
        return value
    items = value.values() if isinstance(value, Mapping) else value if isinstance(value, (tuple, list)) else ()
    for item in items:
        found = _first_tensor(item)
        if found is not None:
            return found
    return None
