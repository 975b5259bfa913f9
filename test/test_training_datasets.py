"""Training dataset readers on small real-format samples built from the shipped real images.

* MSLS: the corridor's two traversals rendered into the MSLS layout (two "cities", CSVs as MSLS ships them,
  images as ``images/<key>.jpg``), with night / sideways / panorama tags and compass angles set by rule.
* Image folders + pose files: the corridor as shipped (nominal poses x = frame index).
* Pitts / Tokyo: a NetVLAD ``dbStruct`` .mat (and the .npz equivalent) naming corridor images.
* Nordland: the shipped part-1 seasons.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from vpr_ros.io.datasets.msls import Traversal
from vpr_training.data import DatasetConfig, load_places
from vpr_training.data.places import CLASS_NAMES
from vpr_training.mining import MiningConfig, SubCacheMiner


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["", *header])  # MSLS CSVs start with an unnamed index column
        writer.writerows([[i, *r] for i, r in enumerate(rows)])


def render_msls(root: Path, corridor: Path, city: str, count: int, pano: set[int] = frozenset(),
                reversed_db: set[int] = frozenset()) -> None:
    """One MSLS city from the corridor: queries = query traversal, database = reference traversal.

    Rules (documented, not real MSLS tags): easting = 5 m x frame index; every 4th query is 'night', every
    5th 'Sideways'; database frames in ``reversed_db`` face the other way (ca = 180); ``pano`` are panoramas.
    """
    for side, src in (("query", "query"), ("database", "ref")):
        folder = root / "train_val" / city / side
        (folder / "images").mkdir(parents=True)
        post, raw, seq = [], [], []
        for i in range(count):
            key = f"{city}_{side}_{i:04d}"
            shutil.copy(corridor / src / f"{i:07d}.jpg", folder / "images" / f"{key}.jpg")
            night = side == "query" and i % 4 == 0
            view = "Sideways" if side == "query" and i % 5 == 0 else "Forward"
            post.append([key, 5.0 * i, 100.0, night, view])
            ca = 180.0 if side == "database" and i in reversed_db else 0.0
            raw.append([key, 10.0 + i * 1e-5, 59.0, ca, 1500000000000 + i, side == "database" and i in pano])
            seq.append([key, f"{city}_{side}_seq", i])
        write_csv(folder / "postprocessed.csv", ["key", "easting", "northing", "night", "view_direction"], post)
        write_csv(folder / "raw.csv", ["key", "lon", "lat", "ca", "captured_at", "pano"], raw)
        write_csv(folder / "seq_info.csv", ["key", "sequence_key", "frame_number"], seq)


@pytest.fixture(scope="module")
def msls_root(tmp_path_factory: pytest.TempPathFactory, corridor: Path) -> Path:
    root = tmp_path_factory.mktemp("msls")
    render_msls(root, corridor, "corrA", 40, pano={7}, reversed_db={21})
    render_msls(root, corridor, "corrB", 30)
    return root


class TestMsls:
    def test_layout_tags_and_panoramas(self, msls_root: Path):
        places = load_places(DatasetConfig(kind="msls", root=str(msls_root)))
        assert places.num_queries == 70 and places.num_db == 69  # the panorama is left out
        assert not any("corrA_database_0007" in p for p in places.db_images)
        assert all(Path(p).is_file() for p in places.db_images + places.query_images)
        assert places.query_night.sum() == 10 + 8 and places.query_sideways.sum() == 8 + 6
        assert places.query_sequences[0] == "corrA_query_seq"
        classes = places.describe()["query_classes"]
        assert sum(classes.values()) == 70 and set(classes) <= set(CLASS_NAMES)

    def test_positives_respect_distance_heading_and_city(self, msls_root: Path):
        places = load_places(DatasetConfig(kind="msls", root=str(msls_root)))
        positives = places.positives(10.0, 40.0)
        names = [Path(p).stem for p in places.db_images]
        # query 20 of corrA: database frames 18..22 are within 10 m; 21 faces the other way
        assert [names[j] for j in positives[20]] == [f"corrA_database_{i:04d}" for i in (18, 19, 20, 22)]
        # query 5 of corrA is 7 m from the missing panorama 7: only 3..6 remain, all in corrA
        assert [names[j] for j in positives[5]] == [f"corrA_database_{i:04d}" for i in (3, 4, 5, 6)]
        # corrB's query 0 sits at the same UTM numbers as corrA's, but cities never neighbour each other
        assert all(names[j].startswith("corrB") for j in positives[40])
        assert all(names[j].startswith("corrB") for j in places.non_negatives(25.0)[40])

    def test_one_city_and_balanced_subsets(self, msls_root: Path):
        places = load_places(DatasetConfig(kind="msls", root=str(msls_root), cities=("corrB",)))
        assert places.num_queries == 30 and places.num_db == 30
        miner = SubCacheMiner(places, MiningConfig(subset_size=10))
        drawn = np.concatenate(miner.epoch_subsets(0))
        assert places.query_night[drawn].mean() > places.query_night.mean()  # night drawn more often

    def test_the_converter_reads_the_same_images(self, msls_root: Path):
        """One parser of the layout (vpr_ros.io.datasets.msls) serves vpr_convert and training alike."""
        places = load_places(DatasetConfig(kind="msls", root=str(msls_root), cities=("corrA",)))
        db = Traversal(msls_root / "train_val" / "corrA" / "database")
        assert [Path(p).stem for p in places.db_images] == db.keys and db.panoramas == 1
        np.testing.assert_array_equal(places.db_positions[:, :2], db.utm)  # PlaceSet adds z = 0
        np.testing.assert_array_equal(places.db_headings, db.compass)
        assert db.compass[20] == 180.0 and places.db_sequences == db.sequence  # database 21 faces backwards

    def test_missing_pieces_are_named(self, msls_root: Path, tmp_path: Path):
        with pytest.raises(FileNotFoundError, match="city 'nowhere'"):
            load_places(DatasetConfig(kind="msls", root=str(msls_root), cities=("nowhere",)))
        shutil.copytree(msls_root / "train_val" / "corrB", tmp_path / "train_val" / "corrB")
        (tmp_path / "train_val" / "corrB" / "query" / "raw.csv").unlink()
        with pytest.raises(FileNotFoundError, match=r"raw\.csv is missing"):
            load_places(DatasetConfig(kind="msls", root=str(tmp_path)))


def test_folders_with_pose_files_match_the_vpr_bench_ground_truth(corridor: Path, corridor_ground_truth):
    places = load_places(DatasetConfig(kind="folders", query_dir=str(corridor / "query"),
                                       query_poses=str(corridor / "query_poses.csv"),
                                       db_dir=str(corridor / "ref"), db_poses=str(corridor / "ref_poses.csv")))
    assert places.num_queries == places.num_db == 111 and places.query_headings is None
    positives = places.positives(2.0)  # corridor poses are frame indices: |i - j| <= 2 is the same place
    for mine, truth in zip(positives, corridor_ground_truth, strict=True):
        np.testing.assert_array_equal(mine, np.sort(truth))
    window = load_places(DatasetConfig(kind="folders", query_dir=str(corridor / "query"),
                                       query_poses=str(corridor / "query_poses.csv"), db_dir=str(corridor / "ref"),
                                       db_poses=str(corridor / "ref_poses.csv"), first=10, count=20, stride=2))
    assert window.num_queries == 20 and window.query_positions[0, 0] == 10 and window.query_positions[1, 0] == 12


class TestPittsTokyo:
    def names(self, corridor: Path) -> tuple[list[str], list[str]]:
        return ([f"ref/{i:07d}.jpg" for i in range(30)], [f"query/{i:07d}.jpg" for i in range(0, 30, 3)])

    def test_db_struct_mat(self, corridor: Path, tmp_path: Path):
        from scipy.io import savemat

        db, q = self.names(corridor)
        utm_db = np.stack([np.arange(30) * 4.0 + 580000, np.full(30, 4470000.0)])
        utm_q = utm_db[:, ::3] + np.array([[1.0], [0.5]])
        savemat(tmp_path / "pitts_sample.mat", {"dbStruct": {
            "whichSet": "train", "dbImage": np.array(db, dtype=object)[:, None], "utmDb": utm_db,
            "qImage": np.array(q, dtype=object)[:, None], "utmQ": utm_q, "numDb": 30, "numQ": 10,
            "posDistThr": 25, "posDistSqThr": 625, "nonTrivPosDistSqThr": 100}})
        places = load_places(DatasetConfig(kind="pitts", root=str(corridor),
                                           ground_truth=str(tmp_path / "pitts_sample.mat")))
        assert places.num_db == 30 and places.num_queries == 10
        assert places.db_images[3] == str(corridor / "ref" / "0000003.jpg") and Path(places.query_images[1]).is_file()
        np.testing.assert_allclose(places.query_positions[2, :2], [580000 + 24 + 1, 4470000.5])
        np.testing.assert_array_equal(places.positives(10.0)[2], [4, 5, 6, 7, 8])

    def test_npz_and_errors(self, corridor: Path, tmp_path: Path):
        db, q = self.names(corridor)
        np.savez(tmp_path / "tokyo.npz", db_images=np.array(db), db_utm=np.stack([np.arange(30.0), np.zeros(30)], 1),
                 query_images=np.array(q), query_utm=np.stack([np.arange(0, 30, 3.0), np.zeros(10)], 1),
                 query_night=np.arange(10) % 2 == 0)
        places = load_places(DatasetConfig(kind="pitts", root=str(corridor), ground_truth=str(tmp_path / "tokyo.npz")))
        assert places.query_night.sum() == 5 and places.positives(1.0)[3].tolist() == [8, 9, 10]
        np.savez(tmp_path / "bad.npz", db_images=np.array(db))
        with pytest.raises(ValueError, match=r"bad\.npz: missing arrays"):
            load_places(DatasetConfig(kind="pitts", root=str(corridor), ground_truth=str(tmp_path / "bad.npz")))
        with pytest.raises(ValueError, match="needs the setting 'ground_truth'"):
            load_places(DatasetConfig(kind="pitts", root=str(corridor)))


def test_nordland_seasons(repo: Path):
    places = load_places(DatasetConfig(kind="nordland", root=str(repo / "data" / "nordland_part1"), first=100,
                                       count=50))
    assert places.num_queries == places.num_db == 50
    assert Path(places.query_images[0]).parent.name == "winter" and Path(places.db_images[0]).parent.name == "summer"
    assert Path(places.query_images[0]).name == Path(places.db_images[0]).name == "images-01010.png"
    np.testing.assert_array_equal(places.positives(10.0)[10], [9, 10, 11])  # +-1 shipped step
    assert len(places.non_negatives(25.0)[10]) == 5  # +-2 steps are never negatives
    with pytest.raises(ValueError, match="kind 'imagenet' is not one of"):
        load_places(DatasetConfig(kind="folders").__class__(**{**DatasetConfig().__dict__, "kind": "imagenet"}))
