"""Acceptance: real images (corridor, Nordland part 1) written into ROS 2 sqlite3, MCAP and ROS 1 bags; maps built and
queries evaluated from the bags through the CLIs give exactly the results of the image-folder path.

Each format also exercises a different image message (CompressedImage with the original JPEG/PNG bytes, rgb8 or
bgr8 Image) and pose message (PoseStamped, Odometry, PoseWithCovarianceStamped), so the decoded pixels and
interpolated poses must all match the folder path's for the results to be identical.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from samples import write_corridor_bag, write_nordland_bag

from vpr_ros.cli import build_map, evaluate
from vpr_ros.cli.common import run_cli
from vpr_ros.core.refmap import ReferenceMap

CORRIDOR_VARIANTS = {"sqlite3": ("compressed", "pose"), "mcap": ("rgb8", "odometry"), "ros1": ("bgr8", "pose_cov")}
NORDLAND_VARIANTS = {"sqlite3": "rgb8", "mcap": "compressed", "ros1": "bgr8"}
NORDLAND_FRAMES = list(range(2010, 3510, 10))  # 150 frames of each season
# The corridor's native 160x120 as network input (the default would enlarge it to 320x240): 4x less compute,
# and the comparison with the folder path holds at any size.
CORRIDOR_SIZE = ("--set", "image_height=120", "--set", "image_width=160")


def cli(main, *argv: str) -> None:
    code = run_cli(main, list(argv))
    assert code == 0, f"{main.__module__} {' '.join(argv)} exited {code}"


def report(path: Path) -> dict:
    return json.loads((path / "report.json").read_text())


def assert_same_results(bag_report: dict, folder_report: dict) -> None:
    for key in ("recall@1", "recall@5", "recall@10", "counts", "ground_truth"):
        assert bag_report[key] == folder_report[key], key
    assert bag_report["precision_recall"] == folder_report["precision_recall"]
    for b, f in zip(bag_report["per_query"], folder_report["per_query"], strict=True):
        assert (b["top"], b["scores"], b["positives"], b["correct@1"]) == \
               (f["top"], f["scores"], f["positives"], f["correct@1"])
        assert b["confidence"] == pytest.approx(f["confidence"], abs=1e-12)


@pytest.fixture(scope="module")
def corridor_folder(tmp_path_factory, corridor, default_model) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("corridor_folder")
    cli(build_map.main, "--images", str(corridor / "ref"), "--poses", str(corridor / "ref_poses.csv"),
        "--output", str(out / "map"), "-q", "--set", f"encoder.model={default_model}", *CORRIDOR_SIZE)
    cli(evaluate.main, "--map", str(out / "map"), "--queries", str(corridor / "query"), "--query-poses",
        str(corridor / "query_poses.csv"), "--dist-threshold", "2", "--out", str(out / "eval"), "-q", "--no-plots",
        "--set", f"localizer.encoder.model={default_model}")
    return {"map": out / "map", "eval": out / "eval"}


@pytest.mark.parametrize("storage", list(CORRIDOR_VARIANTS))
def test_corridor_bags_give_the_folder_results(tmp_path, corridor, default_model, corridor_folder, storage):
    image, pose_kind = CORRIDOR_VARIANTS[storage]
    sfx = ".bag" if storage == "ros1" else ""
    ref_bag, query_bag = tmp_path / f"ref{sfx}", tmp_path / f"query{sfx}"
    topics = write_corridor_bag(ref_bag, corridor, "ref", storage, image, pose_kind)
    write_corridor_bag(query_bag, corridor, "query", storage, image, pose_kind)

    cli(build_map.main, "--bag", str(ref_bag), "--image-topic", topics["image_topic"], "--pose-topic", "/pose",
        "--output", str(tmp_path / "map"), "-q", "--set", f"encoder.model={default_model}", *CORRIDOR_SIZE)
    from_bag, from_folder = ReferenceMap.load(tmp_path / "map"), ReferenceMap.load(corridor_folder["map"])
    np.testing.assert_array_equal(from_bag.descriptors, from_folder.descriptors)
    np.testing.assert_array_equal(from_bag.frames.positions, from_folder.frames.positions)
    np.testing.assert_array_equal(from_bag.head.projection, from_folder.head.projection)
    assert from_bag.provenance["image_topic"] == topics["image_topic"]

    cli(evaluate.main, "--map", str(tmp_path / "map"), "--bag", str(query_bag), "--image-topic",
        topics["image_topic"], "--pose-topic", "/pose", "--dist-threshold", "2", "--out", str(tmp_path / "eval"),
        "-q", "--set", f"localizer.encoder.model={default_model}", *(["--no-plots"] if storage != "sqlite3" else []))
    bag_report = report(tmp_path / "eval")
    assert_same_results(bag_report, report(corridor_folder["eval"]))
    assert bag_report["counts"]["queries"] == 111 and bag_report["recall@5"] >= 0.9
    assert bag_report["queries"]["bag_format"].startswith("ROS 1" if storage == "ros1" else "ROS 2")
    if storage == "sqlite3":  # the plots, once: recall, latency, precision-recall, trajectory
        assert set(bag_report["plots"]) == {"recall.png", "latency.png", "precision_recall.png", "trajectory.png"}
        for png in bag_report["plots"]:
            assert (tmp_path / "eval" / png).read_bytes()[:4] == b"\x89PNG"


@pytest.fixture(scope="module")
def nordland_folder(tmp_path_factory, repo, default_model) -> dict[str, Path]:
    """The 200-frame subset as image folders, mapped and evaluated the folder way (+-1 index tolerance)."""
    out = tmp_path_factory.mktemp("nordland_folder")
    for season in ("summer", "winter"):
        (out / season).mkdir()
        for n in NORDLAND_FRAMES:
            shutil.copy(repo / "data" / "nordland_part1" / season / f"images-{n:05d}.png", out / season)
    cli(build_map.main, "--images", str(out / "summer"), "--output", str(out / "map"), "-q",
        "--set", f"encoder.model={default_model}")
    cli(evaluate.main, "--map", str(out / "map"), "--queries", str(out / "winter"), "--index-tolerance", "1",
        "--out", str(out / "eval"), "-q", "--no-plots", "--set", f"localizer.encoder.model={default_model}")
    return {"map": out / "map", "eval": out / "eval"}


@pytest.mark.parametrize("storage", list(NORDLAND_VARIANTS))
def test_nordland_bags_give_the_folder_results(tmp_path, repo, default_model, nordland_folder, storage):
    image = NORDLAND_VARIANTS[storage]
    sfx = ".bag" if storage == "ros1" else ""
    data = repo / "data" / "nordland_part1"
    topic = write_nordland_bag(tmp_path / f"summer{sfx}", data / "summer", NORDLAND_FRAMES, storage, image)
    write_nordland_bag(tmp_path / f"winter{sfx}", data / "winter", NORDLAND_FRAMES, storage, image)
    cli(build_map.main, "--bag", str(tmp_path / f"summer{sfx}"), "--image-topic", topic, "--output",
        str(tmp_path / "map"), "-q", "--set", f"encoder.model={default_model}")
    np.testing.assert_array_equal(ReferenceMap.load(tmp_path / "map").descriptors,
                                  ReferenceMap.load(nordland_folder["map"]).descriptors)
    cli(evaluate.main, "--map", str(tmp_path / "map"), "--bag", str(tmp_path / f"winter{sfx}"), "--image-topic",
        topic, "--index-tolerance", "1", "--out", str(tmp_path / "eval"), "-q", "--no-plots",
        "--set", f"localizer.encoder.model={default_model}")
    bag_report = report(tmp_path / "eval")
    assert_same_results(bag_report, report(nordland_folder["eval"]))
    assert bag_report["counts"]["queries"] == len(NORDLAND_FRAMES)
