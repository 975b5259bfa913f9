"""Evaluation: ground truth, recall@N, precision-recall, latency statistics, reports and plots.

``run(map, queries, ground_truth, config) -> Report`` evaluates the localization pipeline from code, e.g. in a
notebook (see :mod:`vpr_ros.eval.evaluate`); the ``evaluate`` command only parses its arguments and calls it.
"""

from vpr_ros.eval.evaluate import EvalConfig, Report, run
from vpr_ros.eval.ground_truth import GroundTruth, VprBenchFile, WithinDistance, WithinIndex

__all__ = ["EvalConfig", "GroundTruth", "Report", "VprBenchFile", "WithinDistance", "WithinIndex", "run"]
