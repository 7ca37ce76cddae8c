"""Pruning steps."""

from nncompress.prune.magnitude import MagnitudePrune

__all__ = ["MagnitudePrune"]
