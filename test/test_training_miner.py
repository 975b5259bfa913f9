"""Sub-cache triplet miner on hand-made geometry and descriptors (numpy only, no torch needed).

Geometry: a straight road, database images every 5 m along x; descriptors are chosen by hand so the
expected positive, negatives, kept hard negatives and skips can be worked out on paper.
"""

from __future__ import annotations

import numpy as np
import pytest

from vpr_training.data.places import PlaceSet
from vpr_training.mining import MiningConfig, SubCacheMiner, inverse_frequency_weights


def road(num_db: int = 40, query_x: tuple[float, ...] = (50.0,), **tags) -> PlaceSet:
    """Database every 5 m on x in [0, 5 * num_db), queries at ``query_x``; image 'paths' are names."""
    db_x = np.arange(num_db) * 5.0
    return PlaceSet(name="road", db_images=[f"db{i}" for i in range(num_db)],
                    db_positions=np.stack([db_x, np.zeros(num_db)], 1),
                    query_images=[f"q{i}" for i in range(len(query_x))],
                    query_positions=np.stack([np.asarray(query_x), np.zeros(len(query_x))], 1), **tags)


def table_encoder(table: dict[str, np.ndarray], calls: list[int] | None = None):
    """``encode`` that looks descriptors up by image name (the 'model' is a hand-written table)."""
    def encode(paths):
        if calls is not None:
            calls.append(len(paths))
        return np.stack([table[p] for p in paths])
    return encode


def unit(angle_deg: float) -> np.ndarray:
    """A 2-D unit descriptor at ``angle_deg``: squared distance between two is 2 - 2 cos(difference)."""
    a = np.radians(angle_deg)
    return np.array([np.cos(a), np.sin(a)], np.float32)


class TestGeometry:
    def test_positives_within_distance_and_heading(self):
        headings = np.zeros(40)
        headings[9] = 90.0  # db at x = 45 m looks sideways: close, but not the same view
        places = road(db_headings=headings, query_headings=np.array([10.0]))
        miner = SubCacheMiner(places, MiningConfig())
        # within 10 m of x = 50: 40, 45, 50, 55, 60 m; 45 m fails the 40 deg test (80 deg apart)
        np.testing.assert_array_equal(miner.positives[0], [8, 10, 11, 12])
        # never a negative: within 25 m (25..75 m, heading irrelevant)
        np.testing.assert_array_equal(miner.non_negatives[0], np.arange(5, 16))

    def test_positive_angle_is_skipped_without_headings(self):
        miner = SubCacheMiner(road(), MiningConfig())
        np.testing.assert_array_equal(miner.positives[0], [8, 9, 10, 11, 12])

    def test_queries_without_positive_or_negative_are_not_trained(self):
        miner = SubCacheMiner(road(query_x=(20.0, 500.0)), MiningConfig())  # db spans 0..195 m
        np.testing.assert_array_equal(miner.trainable, [0])  # q1 has no positive
        # db spans 0..45 m: every image is within 100 m of the query, so there is no negative at all
        with pytest.raises(ValueError, match="no query has a positive"):
            SubCacheMiner(road(num_db=10, query_x=(20.0,)), MiningConfig(negative_dist=100.0))


class TestHardestPicks:
    def setup_method(self):
        self.places = road()
        table = {f"db{i}": unit(90.0) for i in range(40)}      # far from the query (squared distance 2)
        table["q0"] = unit(0.0)
        table.update({"db8": unit(30), "db9": unit(10), "db10": unit(60), "db11": unit(45), "db12": unit(20)})
        # negatives (beyond 25 m) closer to the query than its positive: the "most violating" ones
        table.update({"db0": unit(5), "db1": unit(12), "db2": unit(14), "db30": unit(15), "db31": unit(19),
                      "db32": unit(40)})
        table["db14"] = unit(1)  # 20 m away: a non-negative, however close its descriptor
        self.table = table

    def mine(self, **cfg):
        miner = SubCacheMiner(self.places, MiningConfig(**cfg))
        rng = np.random.default_rng(0)
        cache = miner.build_cache(np.array([0]), rng)
        miner.refresh(cache, table_encoder(self.table))
        return miner, miner.mine(cache, 0, rng)

    def test_closest_positive_and_most_violating_negatives(self):
        miner, t = self.mine()
        assert t.positive == 9  # eq. 4.6: the putative positive nearest in descriptor space (10 deg)
        # ||q-p||^2 = 2 - 2cos(10); violation = that + 0.1 - ||q-n||^2: n at 5, 12, 14, 15, 19 deg violate, 40 not
        np.testing.assert_array_equal(t.negatives, [0, 1, 2, 30, 31])
        assert (t.violation > 0).all() and np.all(np.diff(t.violation) <= 0)
        assert 14 not in t.negatives
        np.testing.assert_array_equal(np.sort(miner.hard_negatives[0]), [0, 1, 2, 30, 31])

    def test_farthest_positive_option(self):
        _, t = self.mine(positive_choice="farthest")
        assert t.positive == 10  # 60 deg

    def test_only_violators_are_kept_and_trivial_tuples_skipped(self):
        _, t = self.mine(margin=0.0)
        # with m = 0 only negatives nearer than the positive (10 deg) violate: 5 deg only
        assert t.negatives[0] == 0 and t.violation[0] > 0 and (t.violation[1:] <= 0).all()
        for name in ("db0", "db1", "db2", "db30", "db31", "db32"):
            self.table[name] = unit(90.0)
        miner, t = self.mine()
        assert t is None and 0 not in miner.hard_negatives
        miner, t = self.mine(skip_trivial=False)
        assert t is not None and len(t.negatives) == 5 and (t.violation <= 0).all()

    def test_kept_hard_negatives_are_scored_again(self):
        miner = SubCacheMiner(self.places, MiningConfig(negative_pool=1, cached_negatives=0))
        miner.hard_negatives[0] = np.array([0, 30])  # from an earlier round
        rng = np.random.default_rng(0)
        cache = miner.build_cache(np.array([0]), rng)
        assert {0, 30} <= set(cache.db_rows.tolist())  # kept negatives travel into the new sub-cache
        miner.refresh(cache, table_encoder(self.table))
        t = miner.mine(cache, 0, rng)
        # pool = 1 random non-positive + the two kept ones: both still violate, so both are picked
        assert {0, 30} <= set(t.negatives.tolist())
        off = SubCacheMiner(self.places, MiningConfig(negative_pool=1, cached_negatives=0, keep_hard_negatives=False))
        off.hard_negatives[0] = np.array([0, 30])
        assert not {0, 30} <= set(off.build_cache(np.array([0]), np.random.default_rng(0)).db_rows.tolist())


class TestSubCache:
    def many(self, n_queries: int, num_db: int = 400) -> PlaceSet:
        return road(num_db=num_db, query_x=tuple(np.linspace(20, 5 * num_db - 25, n_queries)))

    def test_subset_sizes_and_positives_inside(self):
        miner = SubCacheMiner(self.many(25), MiningConfig(subset_size=10, cached_negatives=30))
        subsets = miner.epoch_subsets(0)
        assert [len(s) for s in subsets] == [9, 8, 8]
        assert sorted(np.concatenate(subsets).tolist()) == list(range(25))  # unbalanced: a permutation
        for s in subsets:
            cache = miner.build_cache(s, np.random.default_rng(0))
            for q in s:
                assert np.isin(miner.positives[q], cache.db_rows).all()

    def test_cache_size_follows_the_subset_not_the_dataset(self):
        sizes = {}
        for num_db in (400, 4000):
            miner = SubCacheMiner(self.many(num_db // 4, num_db), MiningConfig(subset_size=20, cached_negatives=50))
            sizes[num_db] = max(miner.build_cache(s, np.random.default_rng(0)).size for s in miner.epoch_subsets(0))
        # 20 queries + their <= 5 positives each + 50 random database images, at either dataset size
        assert sizes[400] <= 20 + 20 * 5 + 50 and sizes[4000] <= 20 + 20 * 5 + 50

    def test_subsets_are_seeded_per_epoch(self):
        miner = SubCacheMiner(self.many(30), MiningConfig(subset_size=10))
        again = SubCacheMiner(self.many(30), MiningConfig(subset_size=10))
        assert all((a == b).all() for a, b in zip(miner.epoch_subsets(3), again.epoch_subsets(3), strict=True))
        assert not all((a == b).all() for a, b in zip(miner.epoch_subsets(3), miner.epoch_subsets(4), strict=True))

    def test_refresh_cadence(self):
        places = self.many(30)
        table = {p: unit(float(i)) for i, p in enumerate(places.db_images + places.query_images)}
        calls: list[int] = []
        encode = table_encoder(table, calls)
        refreshed_at = []

        def spy(paths):
            refreshed_at.append(next_iteration[0])
            return encode(paths)

        miner = SubCacheMiner(places, MiningConfig(subset_size=10, refresh_every=2, cached_negatives=20,
                                                   skip_trivial=False))
        next_iteration = [100]
        iterations = []
        for batch in miner.batches(epoch=0, batch_size=2, encode=spy, start_iteration=100):
            iterations.append(batch.iteration)
            assert all(len(t.negatives) == 5 for t in batch.triplets)
            next_iteration[0] = batch.iteration + 1
        # 3 subsets of 10 queries, 5 batches each, refreshed at the start of a subset and every 2 batches
        assert iterations == list(range(100, 115))
        assert refreshed_at == [100, 102, 104, 105, 107, 109, 110, 112, 114]
        assert len(calls) == 9

    def test_balanced_sampler_equalises_night_day_and_sideways_forward(self):
        n = 2000
        rng = np.random.default_rng(1)
        night = rng.random(n) < 0.1
        sideways = rng.random(n) < 0.2
        places = road(num_db=2000, query_x=tuple(rng.uniform(20, 9970, n)), query_night=night,
                      query_sideways=sideways)
        balanced = np.concatenate(SubCacheMiner(places, MiningConfig(subset_size=500)).epoch_subsets(0))
        assert len(balanced) == len(SubCacheMiner(places, MiningConfig()).trainable)
        assert night[balanced].mean() == pytest.approx(0.5, abs=0.05)
        assert sideways[balanced].mean() == pytest.approx(0.5, abs=0.05)
        plain = np.concatenate(SubCacheMiner(places, MiningConfig(balance=False)).epoch_subsets(0))
        assert night[plain].mean() == pytest.approx(night.mean(), abs=1e-9)

    def test_inverse_frequency_weights(self):
        w = inverse_frequency_weights(np.array([0, 0, 0, 1]))
        np.testing.assert_allclose(w, [1 / 6, 1 / 6, 1 / 6, 1 / 2])

    def test_state_round_trip(self):
        miner = SubCacheMiner(road(), MiningConfig())
        miner.hard_negatives = {0: np.array([1, 2])}
        other = SubCacheMiner(road(), MiningConfig())
        other.load_state_dict(miner.state_dict())
        np.testing.assert_array_equal(other.hard_negatives[0], [1, 2])
