"""Semantic label maps: rule-based maps on real images, class mappings, files parallel to the images, loading.

The label maps here are rule-based (colour/position rules of ``vpr_training.data.rule_labels``), never a
segmenter's output; the readers take any label maps from disk the same way.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from vpr_ros.core.image import load_rgb
from vpr_training.data import DatasetConfig, load_places
from vpr_training.data.label_maps import IGNORE, LabelMapLoader, label_paths, mapping_table, read_label_map
from vpr_training.data.rule_labels import RULE_CLASSES, rule_based_label_map
from vpr_training.data.rule_labels import main as rule_labels_main


class TestRuleBasedLabelMaps:
    def test_rules_on_hand_made_pixels(self):
        # 4 rows x 4 columns; HSV rules in the order of the module docstring, first match wins.
        rgb = np.full((4, 4, 3), 128, np.uint8)              # mid grey: 'other' above the bottom band
        rgb[0, 0] = (230, 230, 235)                         # bright, unsaturated, top half -> top_bright
        rgb[3, 0] = (230, 230, 235)                         # same colour in the bottom row -> bottom_band
        rgb[1, 1] = (40, 160, 40)                           # green -> green
        rgb[2, 2] = (10, 10, 10)                            # dark -> dark (before bottom_band, above it anyway)
        rgb[1, 3] = (220, 30, 30)                           # saturated red -> saturated
        rgb[3, 3] = (10, 10, 10)                            # dark in the bottom row: dark wins over bottom_band
        labels = rule_based_label_map(rgb)
        ids = {name: i for i, name in enumerate(RULE_CLASSES)}
        assert labels[0, 0] == ids["top_bright"] and labels[3, 0] == ids["bottom_band"]
        assert labels[1, 1] == ids["green"] and labels[2, 2] == ids["dark"] and labels[1, 3] == ids["saturated"]
        assert labels[3, 3] == ids["dark"] and labels[0, 1] == ids["other"] and labels[3, 1] == ids["bottom_band"]
        with pytest.raises(ValueError, match=r"expected an RGB uint8 image"):
            rule_based_label_map(rgb[..., 0])

    def test_real_nordland_frame_has_sky_on_top_and_ground_below(self, repo: Path):
        labels = rule_based_label_map(load_rgb(repo / "data/nordland_part1/summer/images-05010.png"))
        top, bottom = labels[: labels.shape[0] // 4], labels[-labels.shape[0] // 4:]
        assert (top == RULE_CLASSES.index("top_bright")).mean() > 0.5      # sky over the railway
        assert (labels == RULE_CLASSES.index("top_bright"))[labels.shape[0] // 2:].sum() == 0
        assert np.isin(bottom, [RULE_CLASSES.index("bottom_band"), RULE_CLASSES.index("dark")]).all()

    def test_cli_writes_a_parallel_tree_that_says_what_it_is(self, tmp_path: Path, corridor: Path):
        assert rule_labels_main(["--images", str(corridor / "ref"), "--out", str(tmp_path), "--no-progress"]) == 0
        assert len(list(tmp_path.glob("*.png"))) == 111
        ids = read_label_map(tmp_path / "0000000.png")
        assert ids.shape == (120, 160) and ids.dtype == np.uint8 and ids.max() < len(RULE_CLASSES)
        assert "NOT the output of a segmentation network" in (tmp_path / "README.txt").read_text()
        assert rule_labels_main(["--images", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2


class TestMappingAndLoading:
    def test_ade20k_presets(self):
        table = mapping_table("ade20k_6")
        # ADE20K-150 (0-based): 2 sky, 1 building, 6 road, 4 tree, 12 person, 20 car, 7 bed (other)
        assert [table[i] for i in (2, 1, 6, 4, 12, 20, 7)] == [0, 1, 2, 3, 4, 4, 5]
        assert table[150] == IGNORE and mapping_table("identity")[5] == 5
        with pytest.raises(ValueError, match="neither a preset"):
            mapping_table("cityscapes_19")

    def test_mapping_file(self, tmp_path: Path):
        (tmp_path / "map.yaml").write_text("7: 1\n8: 0\n")
        table = mapping_table(str(tmp_path / "map.yaml"))
        assert table[7] == 1 and table[8] == 0 and table[9] == IGNORE
        (tmp_path / "bad.yaml").write_text("7: sky\n")
        with pytest.raises(ValueError, match="entry 7: 'sky' must be integers"):
            mapping_table(str(tmp_path / "bad.yaml"))

    def test_loader_resizes_nearest_maps_and_one_hot_encodes(self, tmp_path: Path):
        ids = np.array([[0, 1], [4, 200]], np.uint8)          # 200: unmapped in ade20k_6 -> IGNORE
        cv2.imwrite(str(tmp_path / "a.png"), ids)
        loader = LabelMapLoader((4, 6), "ade20k_6", num_classes=6)
        got = loader.load_ids([tmp_path / "a.png"])[0]
        table = mapping_table("ade20k_6")
        assert got.shape == (4, 6)
        assert (got[:2, :3] == table[0]).all() and (got[:2, 3:] == table[1]).all()  # no blending of ids
        assert (got[2:, :3] == table[4]).all() and (got[2:, 3:] == IGNORE).all()
        onehot = loader.load([tmp_path / "a.png"])
        assert onehot.shape == (1, 6, 4, 6) and onehot.dtype == np.float32
        assert (onehot.sum(1)[0] == (got != IGNORE)).all()            # one class per pixel, none for IGNORE
        cv2.imwrite(str(tmp_path / "rgb.png"), np.zeros((2, 2, 3), np.uint8))
        with pytest.raises(ValueError, match=r"rgb\.png: expected a single-channel PNG of class ids"):
            loader.load([tmp_path / "rgb.png"])

    def test_sixteen_bit_label_maps(self, tmp_path: Path):
        cv2.imwrite(str(tmp_path / "a.png"), np.array([[3, 300]], np.uint16))
        assert LabelMapLoader((1, 2), "identity").load_ids([tmp_path / "a.png"]).tolist() == [[[3, IGNORE]]]


class TestReaders:
    def test_label_paths_mirror_the_image_tree(self):
        paths = label_paths(["/d/x/ref/a.jpg", "/d/x/query/b.jpg"], "/labels")
        assert paths == ["/labels/ref/a.png", "/labels/query/b.png"]
        assert label_paths(["/d/x/ref/a.jpg"], "/labels", base="/d") == ["/labels/x/ref/a.png"]
        with pytest.raises(ValueError, match="is not under"):
            label_paths(["/d/x/ref/a.jpg"], "/labels", base="/e")

    def test_folders_reader_takes_label_maps_from_disk(self, corridor: Path, corridor_rule_labels: Path):
        cfg = DatasetConfig(kind="folders", query_dir=str(corridor / "query"),
                            query_poses=str(corridor / "query_poses.csv"), db_dir=str(corridor / "ref"),
                            db_poses=str(corridor / "ref_poses.csv"), count=20, labels=str(corridor_rule_labels))
        places = load_places(cfg)
        assert places.has_labels and len(places.query_labels) == 20 and len(places.db_labels) == 20
        assert places.db_labels[3] == str(corridor_rule_labels / "ref" / "0000003.png")
        assert places.describe()["labels"]["kind"].startswith("rule-based")
        as_labels = places.label_maps_as_images()
        assert as_labels.db_images == places.db_labels and as_labels.num_queries == 20
        np.testing.assert_array_equal(as_labels.db_positions, places.db_positions)

    def test_missing_label_maps_are_named(self, corridor: Path, corridor_rule_labels: Path, tmp_path: Path):
        partial = tmp_path / "labels"
        (partial / "ref").mkdir(parents=True)
        (partial / "ref" / "0000000.png").write_bytes((corridor_rule_labels / "ref" / "0000000.png").read_bytes())
        cfg = DatasetConfig(kind="folders", query_dir=str(corridor / "query"),
                            query_poses=str(corridor / "query_poses.csv"), db_dir=str(corridor / "ref"),
                            db_poses=str(corridor / "ref_poses.csv"), count=5, labels=str(partial))
        with pytest.raises(FileNotFoundError, match=r"9 of 10 label maps are missing, e\.g\. .*query/0000000\.png"):
            load_places(cfg)
