"""Pruning steps: unstructured (magnitude, Taylor, Wanda, random), N:M, structured channels and
attention heads (the model physically shrinks), gradual/iterative schedules, lottery tickets."""

from nncompress.prune.graph import ChannelGraph, ChannelGroup, trace_channels
from nncompress.prune.lottery import LotteryRound, LotteryTicket, lottery_rounds
from nncompress.prune.magnitude import MagnitudePrune, UnstructuredPrune
from nncompress.prune.nm import NMPrune, nm_mask
from nncompress.prune.schedule import GradualPrune, IterativePrune, cubic_sparsity, round_sparsities
from nncompress.prune.structured import ChannelPrune, HeadPrune

__all__ = [
    "ChannelGraph",
    "ChannelGroup",
    "ChannelPrune",
    "GradualPrune",
    "HeadPrune",
    "IterativePrune",
    "LotteryRound",
    "LotteryTicket",
    "MagnitudePrune",
    "NMPrune",
    "UnstructuredPrune",
    "cubic_sparsity",
    "lottery_rounds",
    "nm_mask",
    "round_sparsities",
    "trace_channels",
]
