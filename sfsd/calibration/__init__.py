"""Calibration: statistics of each layer's inputs on calibration text."""

from sfsd.calibration.blocks import BlockBatch, capture_block_inputs, run_block
from sfsd.calibration.statistics import InputStatistics, collect_statistics

__all__ = ["BlockBatch", "InputStatistics", "capture_block_inputs", "collect_statistics", "run_block"]
