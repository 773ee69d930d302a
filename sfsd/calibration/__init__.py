"""Calibration: statistics of each layer's inputs on calibration text."""

from sfsd.calibration.statistics import InputStatistics, collect_statistics

__all__ = ["InputStatistics", "collect_statistics"]
