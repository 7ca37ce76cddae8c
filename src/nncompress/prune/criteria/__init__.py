"""Pruning criteria, one class per file, found by name (``CRITERIA``); see ``base.py``.

To add one: a file here with a ``@register_criterion("name")`` subclass of ``Criterion``, one import
line below, and a test. Every step that takes ``criterion`` (unstructured, N:M, gradual, iterative,
channel and head pruning) accepts it at once (channel and head pruning when ``structured`` is True).
"""

from nncompress.prune.criteria.base import CRITERIA, Criterion, get_criterion, member_tensors, register_criterion

# isort: off
# The built-in criteria register on import, in this order (the order error messages list them in).
from nncompress.prune.criteria import magnitude  # noqa: F401
from nncompress.prune.criteria import lamp  # noqa: F401
from nncompress.prune.criteria import taylor  # noqa: F401
from nncompress.prune.criteria import wanda  # noqa: F401
from nncompress.prune.criteria import random  # noqa: F401
# isort: on

__all__ = ["CRITERIA", "Criterion", "get_criterion", "member_tensors", "register_criterion"]
