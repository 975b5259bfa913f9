"""Held-out evaluation of ``vpr-adapt``: every encoder and sequence method on the same test queries.

Queries run in driving order through :meth:`vpr_ros.core.localizer.Localizer.localize_features`, exactly as the
node runs them (online: the first frames of a traversal have short sequences; the sequence starts afresh at
every traversal). For each method: recall@1 / @5, and precision-recall of "accept the top-1 answer when its
score >= t" (AUC and recall at 100% precision), with :mod:`vpr_ros.eval.metrics`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vpr_ros.core.localizer import Localizer, QueryFeatures
from vpr_ros.core.sequence import SequenceConfig
from vpr_ros.eval.metrics import correct_at, precision_recall


@dataclass
class QuerySet:
    """Encoded test (or validation) queries of one or more traversals, in driving order.

    Shape:
        features: one per query; stamps: (Q,) seconds; traversal: (Q,) index of its traversal (the sequence
        restarts when it changes); positives: per query, the map rows that are correct answers.
    """

    features: list[QueryFeatures]
    stamps: np.ndarray
    traversal: np.ndarray
    positives: list[np.ndarray]


def run_method(localizer: Localizer, sequence: SequenceConfig, queries: QuerySet) -> dict[str, Any]:
    """Recall and precision-recall of one sequence method over ``queries``."""
    loc = Localizer(localizer.refmap, localizer.encoder, dataclasses.replace(localizer.config, sequence=sequence))
    ranked, top_scores = [], []
    for i, feats in enumerate(queries.features):
        if i and queries.traversal[i] != queries.traversal[i - 1]:
            loc.reset_sequence()
        hyp = loc.localize_features(feats, float(queries.stamps[i]))
        ranked.append(np.asarray(hyp.indices))
        top_scores.append(float(hyp.scores[0]) if len(hyp.indices) else np.nan)
    has_positive = np.array([len(p) > 0 for p in queries.positives])
    top1 = correct_at(ranked, queries.positives, 1)
    pr = precision_recall(np.asarray(top_scores), top1, has_positive)
    return {"recall@1": float(top1[has_positive].mean()),
            "recall@5": float(correct_at(ranked, queries.positives, 5)[has_positive].mean()),
            "queries": int(has_positive.sum()), **pr.summary(),
            "top1_correct": top1.astype(int).tolist()}


def method_configs(lengths: Sequence[int], base: SequenceConfig,
                   learned: dict[int, str]) -> dict[str, SequenceConfig]:
    """Single frame, the configured sequence method at each length (SeqSLAM when none or a learned one is
    configured), and with a learned sequence model of that length: ``learned`` alone and ``hierarchical`` (its
    shortlist re-scored by SeqSLAM)."""
    methods = {"single frame": SequenceConfig()}
    if base.method == "none" or base.method in ("learned", "hierarchical"):
        base = dataclasses.replace(base, method="seqslam", model="")
    for n in lengths:
        methods[f"{base.method} {n}"] = dataclasses.replace(base, length=n)
        if n in learned:
            methods[f"learned {n}"] = dataclasses.replace(base, method="learned", length=n, model=learned[n])
            methods[f"hierarchical {n}"] = dataclasses.replace(base, method="hierarchical", length=n,
                                                              model=learned[n])
    return methods
