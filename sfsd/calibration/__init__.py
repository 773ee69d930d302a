"""Calibration: statistics of each layer's inputs (or outputs) on calibration text."""

from sfsd.calibration.blocks import BlockBatch, capture_block_inputs, run_block
from sfsd.calibration.statistics import (
    INPUT,
    OUTPUT,
    InputStatistics,
    OutputStatistics,
    Statistics,
    StatisticsHooks,
    choose_sides,
    collect_statistics,
    statistics_entries,
    statistics_from_tensors,
    statistics_key,
)

__all__ = ["INPUT", "OUTPUT", "BlockBatch", "InputStatistics", "OutputStatistics", "Statistics", "StatisticsHooks",
           "capture_block_inputs", "choose_sides", "collect_statistics", "run_block", "statistics_entries",
           "statistics_from_tensors", "statistics_key"]
