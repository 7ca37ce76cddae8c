"""Measurement: every report figure comes from here."""

from nncompress.measure.energy import EnergyEstimate, estimate_energy
from nncompress.measure.flops import count_macs
from nncompress.measure.latency import LatencyStats, interleaved_latency, measure_latency
from nncompress.measure.metric import ModelCallError, evaluate, evaluate_loss, evaluate_with_loss
from nncompress.measure.report import MeasureConfig, Report, measure
from nncompress.measure.size import artifact_bytes, count_nonzero, count_params, dense_fp32_bytes, layer_stats
from nncompress.measure.table import comparison_table

__all__ = [
    "EnergyEstimate",
    "LatencyStats",
    "MeasureConfig",
    "ModelCallError",
    "Report",
    "artifact_bytes",
    "comparison_table",
    "count_macs",
    "count_nonzero",
    "count_params",
    "dense_fp32_bytes",
    "estimate_energy",
    "evaluate",
    "evaluate_loss",
    "evaluate_with_loss",
    "layer_stats",
    "measure",
    "interleaved_latency",
    "measure_latency",
]
