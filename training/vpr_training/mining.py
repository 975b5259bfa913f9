"""Sub-caching triplet mining (Warburg et al., MSLS, thesis section 4.4; Arandjelovic et al., NetVLAD).

numpy only, so it is unit-testable on hand-made geometry and descriptors without torch.

Procedure (thesis 4.4.2-4.4.3, the numbers are the defaults of :class:`MiningConfig`):

* Putative positives of a query: database images within ``positive_dist`` (10 m) and, where headings are
  known, ``positive_angle`` (40 deg). Non-negatives: everything within ``negative_dist`` (25 m); negatives are
  drawn only from the rest.
* Each epoch the trainable queries (those with a positive) are split into random subsets of ``subset_size``
  (10,000) queries. With ``balance`` the subsets are drawn with probability proportional to the inverse
  frequency of the query's (night, sideways) class, so a sub-cache holds as many night as day and as many
  sideways as forward images (thesis 4.4.3, last paragraph).
* A sub-cache holds the subset's queries, *all* their positives, ``cached_negatives`` (1,000) random database
  images and the hard negatives kept for those queries from earlier rounds. Its descriptors are computed
  when the subset starts and again every ``refresh_every`` (1,000) iterations, so the cache cost scales with
  the subset, not the dataset.
* Per query (eq. 4.6): the positive is the putative positive with the smallest cached descriptor distance
  (``positive_choice = closest``; the thesis' "hard positive mining" picks, among GPS neighbours that may not
  even overlap, the one that surely shows the place). Negatives: the ``num_negatives`` (5) that violate the
  triplet constraint ``||q-p||^2 + m > ||q-n||^2`` (margin 0.1, eq. 4.4) most, among ``negative_pool``
  (1,000) random non-positives of the cache plus the query's kept hard negatives. Queries whose best
  negative does not violate the constraint give a zero loss and are skipped (``skip_trivial``). The
  violating negatives are kept for the query's next round ("including the hardest negatives from the
  previous epoch stabilizes the convergence").
* ``negative_strategy = half_cached`` is APPSVR's variant (supplement sec. 4): half the negatives are the
  hardest of the random pool, half are drawn at random from the query's cached list of negatives that
  violated the margin in earlier rounds (up to ``hard_negative_memory``, newest first).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from vpr_ros.config import setting
from vpr_training.data.places import CLASS_NAMES, PlaceSet

#: ``encode(image_paths) -> (n, P)`` L2-normalised descriptors with the current model.
Encode = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class MiningConfig:
    """Positives, negatives and the sub-cache (thesis 4.4; defaults are the thesis' numbers)."""

    positive_dist: float = setting(10.0, "putative positives: database images within this distance (m)", min=0.0)
    positive_angle: float = setting(40.0, "... and within this heading difference (deg), where headings exist",
                                    min=0.0, max=180.0)
    negative_dist: float = setting(25.0, "negatives only beyond this distance (m)", min=0.0)
    subset_size: int = setting(10000, "training queries per sub-cache", min=1)
    refresh_every: int = setting(1000, "iterations (batches) between re-computations of the sub-cache", min=1)
    cached_negatives: int = setting(1000, "random database images added to every sub-cache", min=0)
    negative_pool: int = setting(1000, "random non-positives of the sub-cache scored per query", min=1)
    num_negatives: int = setting(5, "negatives per triplet", min=1)
    margin: float = setting(0.1, "triplet margin m on squared distances (eq. 4.4)", min=0.0)
    positive_choice: str = setting("closest", "which putative positive: closest (eq. 4.6) or farthest",
                                   choices=("closest", "farthest"))
    keep_hard_negatives: bool = setting(True, "score a query's violating negatives of the last round again")
    skip_trivial: bool = setting(True, "skip queries whose negatives all satisfy the margin (zero loss)")
    balance: bool = setting(True, "sample queries by inverse frequency of their night/sideways class")
    negative_strategy: str = setting(
        "violation", "violation: the num_negatives most violating of the pool + kept hard negatives (thesis); "
        "half_cached: half the hardest of the pool, half drawn at random from the query's cached hard-negative "
        "list (APPSVR supplement sec. 4)", choices=("violation", "half_cached"))
    hard_negative_memory: int = setting(50, "half_cached: violating negatives remembered per query (newest first)",
                                        min=1)


@dataclass
class Triplet:
    """Rows of one training tuple: query row, database row of the positive, database rows of the negatives.

    ``violation`` is ``||q-p||^2 + m - ||q-n||^2`` per negative on the cached descriptors.
    """

    query: int
    positive: int
    negatives: np.ndarray
    violation: np.ndarray


@dataclass
class SubCache:
    """The queries of one subset, the database rows they may use, and their cached descriptors.

    Shape:
        queries: (Q_s,) query rows; db_rows: (N_s,) sorted database rows;
        query_desc: (Q_s, P); db_desc: (N_s, P).
    """

    queries: np.ndarray
    db_rows: np.ndarray
    query_desc: np.ndarray | None = None
    db_desc: np.ndarray | None = None
    refreshes: int = 0

    @property
    def size(self) -> int:
        """Images whose descriptors the cache holds."""
        return int(len(self.queries) + len(self.db_rows))

    def db_slots(self, rows: np.ndarray) -> np.ndarray:
        """Positions of database ``rows`` (all in the cache) in ``db_rows``."""
        slots = np.searchsorted(self.db_rows, rows)
        if len(rows) and (slots.max(initial=0) >= len(self.db_rows) or (self.db_rows[slots] != rows).any()):
            raise KeyError("database rows outside the sub-cache")
        return slots


@dataclass
class TripletBatch:
    """What one training iteration gets: its number, the sub-cache it came from, its triplets."""

    iteration: int
    subset: int
    triplets: list[Triplet]
    cache_size: int


def inverse_frequency_weights(classes: np.ndarray) -> np.ndarray:
    """Sampling probability per item: 1 / (count of its class), normalised; every present class gets equal mass."""
    counts = np.bincount(classes)
    w = 1.0 / counts[classes]
    return w / w.sum()


@dataclass
class SubCacheMiner:
    """Splits queries into sub-caches, refreshes their descriptors on cadence and mines triplets."""

    places: PlaceSet
    config: MiningConfig
    seed: int = 0
    hard_negatives: dict[int, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        cfg = self.config
        self.positives = self.places.positives(cfg.positive_dist, cfg.positive_angle)
        self.non_negatives = self.places.non_negatives(cfg.negative_dist)
        has_negative = np.array([len(n) < self.places.num_db for n in self.non_negatives], bool)
        has_positive = np.array([len(p) > 0 for p in self.positives], bool)
        self.trainable = np.flatnonzero(has_positive & has_negative)
        if len(self.trainable) == 0:
            raise ValueError(f"{self.places.name}: no query has a positive within {cfg.positive_dist:g} and a "
                             f"negative beyond {cfg.negative_dist:g}; check positions and thresholds")
        self.classes = self.places.query_classes()

    # ---- epoch plan ------------------------------------------------------------------------------
    def epoch_subsets(self, epoch: int) -> list[np.ndarray]:
        """The subsets of query rows for ``epoch`` (deterministic in seed and epoch), each of equal size."""
        rng = np.random.default_rng([self.seed, epoch, 1])
        n = len(self.trainable)
        if self.config.balance and len(np.unique(self.classes[self.trainable])) > 1:
            p = inverse_frequency_weights(self.classes[self.trainable])
            order = rng.choice(self.trainable, size=n, replace=True, p=p)
        else:
            order = rng.permutation(self.trainable)
        parts = -(-n // self.config.subset_size)
        return [np.asarray(s) for s in np.array_split(order, parts)]

    def build_cache(self, queries: np.ndarray, rng: np.random.Generator) -> SubCache:
        """Sub-cache rows for ``queries``: their positives, random database rows, their kept hard negatives."""
        queries = np.asarray(queries, dtype=np.int64)
        parts = [self.positives[q] for q in np.unique(queries)]
        k = min(self.config.cached_negatives, self.places.num_db)
        if k:
            parts.append(rng.choice(self.places.num_db, size=k, replace=False))
        if self.config.keep_hard_negatives:
            parts += [self.hard_negatives[q] for q in np.unique(queries) if q in self.hard_negatives]
        db_rows = np.unique(np.concatenate(parts)).astype(np.int64)
        return SubCache(queries=np.unique(queries), db_rows=db_rows)

    def refresh(self, cache: SubCache, encode: Encode) -> None:
        """(Re)compute the cache's descriptors with the current model."""
        paths = [self.places.query_images[q] for q in cache.queries] + [self.places.db_images[d]
                                                                         for d in cache.db_rows]
        desc = np.asarray(encode(paths), dtype=np.float32)
        if desc.ndim != 2 or len(desc) != len(paths):
            raise ValueError(f"encode returned {desc.shape} for {len(paths)} images; expected (n, P)")
        cache.query_desc, cache.db_desc = desc[: len(cache.queries)], desc[len(cache.queries):]
        cache.refreshes += 1

    # ---- mining ----------------------------------------------------------------------------------
    def mine(self, cache: SubCache, query: int, rng: np.random.Generator, remember: bool = True) -> Triplet | None:
        """The triplet of ``query`` from the cached descriptors, or None when it is trivial (see module doc).

        ``remember = False`` leaves the kept hard negatives untouched (probing, not training).
        """
        if cache.query_desc is None or cache.db_desc is None:
            raise RuntimeError("sub-cache has no descriptors yet: call refresh() first")
        cfg = self.config
        qd = cache.query_desc[np.searchsorted(cache.queries, query)]
        pos = self.positives[query]
        d_pos = ((cache.db_desc[cache.db_slots(pos)] - qd) ** 2).sum(1)
        pick = int(np.argmin(d_pos)) if cfg.positive_choice == "closest" else int(np.argmax(d_pos))
        positive, dp = int(pos[pick]), float(d_pos[pick])

        allowed = np.flatnonzero(~np.isin(cache.db_rows, self.non_negatives[query]))
        if len(allowed) == 0:
            return None
        pool = cache.db_rows[rng.choice(allowed, size=min(cfg.negative_pool, len(allowed)), replace=False)]
        if cfg.negative_strategy == "half_cached":
            return self._mine_half_cached(cache, query, qd, positive, dp, pool, rng, remember)
        if cfg.keep_hard_negatives and query in self.hard_negatives:
            pool = np.union1d(pool, self.hard_negatives[query])
        d_neg = ((cache.db_desc[cache.db_slots(pool)] - qd) ** 2).sum(1)
        violation = dp + cfg.margin - d_neg
        order = np.argsort(-violation, kind="stable")[: cfg.num_negatives]
        negatives, violation = pool[order], violation[order]
        violating = negatives[violation > 0]
        if cfg.keep_hard_negatives and remember:
            if len(violating):
                self.hard_negatives[query] = violating
            else:
                self.hard_negatives.pop(query, None)
        if cfg.skip_trivial and not len(violating):
            return None
        if len(negatives) < cfg.num_negatives:  # tiny caches: repeat so every triplet has the same shape
            negatives = np.resize(negatives, cfg.num_negatives)
            violation = np.resize(violation, cfg.num_negatives)
        return Triplet(query=int(query), positive=positive, negatives=negatives.astype(np.int64),
                       violation=violation.astype(np.float32))

    def _mine_half_cached(self, cache: SubCache, query: int, qd: np.ndarray, positive: int, dp: float,
                          pool: np.ndarray, rng: np.random.Generator, remember: bool) -> Triplet | None:
        """APPSVR's tuple (supplement sec. 4): half the negatives are the hardest of ``pool`` (random
        non-positives), the other half are drawn at random from the query's cached hard-negative list (negatives
        that violated the margin in earlier rounds); too short a list is topped up with the next hardest."""
        cfg = self.config

        def violation_of(rows: np.ndarray) -> np.ndarray:
            return dp + cfg.margin - ((cache.db_desc[cache.db_slots(rows)] - qd) ** 2).sum(1)

        pool_violation = violation_of(pool)
        ranked = pool[np.argsort(-pool_violation, kind="stable")]
        n_cached = cfg.num_negatives // 2
        cached = self.hard_negatives.get(query, np.zeros(0, np.int64))
        cached = cached[np.isin(cached, cache.db_rows)]
        hardest = ranked[: cfg.num_negatives - n_cached]
        cached = np.setdiff1d(cached, hardest)
        drawn = rng.choice(cached, size=min(n_cached, len(cached)), replace=False) if len(cached) else cached
        top_up = ranked[~np.isin(ranked, np.concatenate([hardest, drawn]))][: n_cached - len(drawn)]
        negatives = np.concatenate([hardest, drawn, top_up]).astype(np.int64)
        violation = violation_of(negatives)
        if remember and cfg.keep_hard_negatives:
            new = pool[pool_violation > 0][np.argsort(-pool_violation[pool_violation > 0], kind="stable")]
            old = self.hard_negatives.get(query, np.zeros(0, np.int64))
            merged = np.concatenate([new, old[~np.isin(old, new)]])[: cfg.hard_negative_memory]
            if len(merged):
                self.hard_negatives[query] = merged.astype(np.int64)
        if cfg.skip_trivial and not (violation > 0).any():
            return None
        if len(negatives) < cfg.num_negatives:
            negatives = np.resize(negatives, cfg.num_negatives)
            violation = np.resize(violation, cfg.num_negatives)
        return Triplet(query=int(query), positive=positive, negatives=negatives,
                       violation=violation.astype(np.float32))

    def batches(self, epoch: int, batch_size: int, encode: Encode,
                start_iteration: int = 0) -> Iterator[TripletBatch]:
        """Triplet batches of one epoch; the cache is refreshed at each subset start and every
        ``refresh_every`` iterations within a subset. Iterations are numbered from ``start_iteration``."""
        iteration = start_iteration
        rng = np.random.default_rng([self.seed, epoch, 2])
        for s, subset in enumerate(self.epoch_subsets(epoch)):
            cache = self.build_cache(subset, rng)
            since_refresh = None
            for b in range(0, len(subset), batch_size):
                if since_refresh is None or since_refresh >= self.config.refresh_every:
                    self.refresh(cache, encode)
                    since_refresh = 0
                triplets = [t for q in subset[b:b + batch_size] if (t := self.mine(cache, int(q), rng)) is not None]
                yield TripletBatch(iteration=iteration, subset=s, triplets=triplets, cache_size=cache.size)
                iteration += 1
                since_refresh += 1

    # ---- state (checkpoints) ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, object]:
        return {"hard_negatives": {int(k): v.tolist() for k, v in self.hard_negatives.items()}}

    def load_state_dict(self, state: dict[str, object]) -> None:
        hn = state.get("hard_negatives", {})
        self.hard_negatives = {int(k): np.asarray(v, np.int64) for k, v in hn.items()}  # type: ignore[union-attr]

    def describe(self) -> dict[str, object]:
        counts = np.bincount(self.classes[self.trainable], minlength=len(CLASS_NAMES))
        return {"trainable_queries": len(self.trainable),
                "classes": {n: int(c) for n, c in zip(CLASS_NAMES, counts, strict=True) if c}}
