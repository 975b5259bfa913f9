"""Evaluation: ground truth, recall@N, latency statistics, reports and plots."""
