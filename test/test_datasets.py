"""Dataset converters (``vpr_convert``) on small real-format samples built from the shipped real images."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import patchnetvlad
import pytest
import yaml
from samples import gbrg_mosaic, make_msls_root, make_robotcar_run, robotcar_truth

from vpr_ros.cli import build_map, convert, evaluate
from vpr_ros.cli.common import run_cli
from vpr_ros.core.image import load_rgb
from vpr_ros.io.bag_reader import Bag
from vpr_ros.io.bags import bag_frame_source, index_image_topic
from vpr_ros.io.datasets.nordland import frame_number
from vpr_ros.io.datasets.nordland_partitions import PATCHNETVLAD_TEST
from vpr_ros.io.datasets.robotcar import demosaic
from vpr_ros.io.poses import read_pose_file
from vpr_ros.io.transforms import ned_to_enu, rotation_angle_deg


def cli(main, *argv: str) -> None:
    assert run_cli(main, list(argv)) == 0


# ---- Nordland ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("image_format", ["compressed", "raw"])
def test_nordland_seasons_become_aligned_bags_with_frame_tolerance(tmp_path, repo, image_format):
    data = repo / "data" / "nordland_part1"
    cli(convert.main, "-q", "nordland", str(data), "--out", str(tmp_path), "--frames", "500:1500:20",
        "--tolerance", "40", "--image-format", image_format)
    desc = yaml.safe_load((tmp_path / "dataset.yaml").read_text())
    numbers = list(range(500, 1500, 20))
    assert desc["frame_count"] == len(numbers) == 50
    for season in ("summer", "winter"):
        topic = desc["traversals"][season]["topics"]["images"]
        with bag_frame_source(tmp_path / season, topic, progress=False) as src:
            assert len(src) == 50
            for i in (0, 17, 49):
                expected = load_rgb(data / season / f"images-{numbers[i]:05d}.png")
                np.testing.assert_array_equal(src.load_image(i), expected)
            np.testing.assert_allclose(src.frames.stamps, numbers)  # nominal: frame number x 1 s
        poses = read_pose_file(tmp_path / f"{season}_poses.csv")
        np.testing.assert_array_equal(poses.positions[:, 0], numbers)
        assert np.isnan(poses.orientations).all()
    # +-40 frames = +-2 steps of 20 frames: the ground truth file says the same.
    rows = np.load(tmp_path / "ground_truth.npy", allow_pickle=True)
    for qi, refs in rows:
        assert list(refs) == [j for j in range(50) if abs(j - qi) <= 2]


def test_nordland_bags_map_and_evaluate_with_either_ground_truth(tmp_path, repo, default_model):
    """The commands dataset.yaml suggests: map from the pose file, frame tolerance via poses or via the .npy."""
    cli(convert.main, "-q", "nordland", str(repo / "data" / "nordland_part1"), "--out", str(tmp_path),
        "--frames", "3000:4000:10", "--tolerance", "10", "--storage", "mcap")
    model = f"encoder.model={default_model}"
    cli(build_map.main, "--bag", str(tmp_path / "summer"), "--image-topic", "/camera/image/compressed", "--poses",
        str(tmp_path / "summer_poses.csv"), "--output", str(tmp_path / "map"), "-q", "--set", model)
    reports = []
    for name, gt in (("poses", ["--query-poses", str(tmp_path / "winter_poses.csv"), "--dist-threshold", "10"]),
                     ("npy", ["--ground-truth", str(tmp_path / "ground_truth.npy")])):
        cli(evaluate.main, "--map", str(tmp_path / "map"), "--bag", str(tmp_path / "winter"), "--image-topic",
            "/camera/image/compressed", *gt, "--out", str(tmp_path / name), "-q", "--no-plots",
            "--set", f"localizer.{model}")
        reports.append(json.loads((tmp_path / name / "report.json").read_text()))
    assert reports[0]["counts"]["queries"] == 100
    assert [q["positives"] for q in reports[0]["per_query"]] == [q["positives"] for q in reports[1]["per_query"]]
    assert reports[0]["recall@1"] == reports[1]["recall@1"]


def test_nordland_partitions(tmp_path, repo):
    listing = tmp_path / "list.txt"
    listing.write_text("./nordland/summer/images-00100.png\n./nordland/summer/images-00130.png\nimages-00990.png\n")
    cli(convert.main, "-q", "nordland", str(repo / "data" / "nordland_part1"), "--out", str(tmp_path / "out"),
        "--partition", str(listing), "--storage", "mcap")
    assert yaml.safe_load((tmp_path / "out" / "dataset.yaml").read_text())["frame_count"] == 3
    assert frame_number("images-00010.png") == 10 and frame_number("section1/123.jpg") == 123
    # The shipped Patch-NetVLAD test ranges: 27,592 frames; the 1,800 sample frames intersect them.
    assert sum(b - a + 1 for a, b in PATCHNETVLAD_TEST) == 27592
    cli(convert.main, "-q", "nordland", str(repo / "data" / "nordland_part1"), "--out", str(tmp_path / "pnv"),
        "--partition", "patchnetvlad-test", "--frames", "200:2000")
    desc = yaml.safe_load((tmp_path / "pnv" / "dataset.yaml").read_text())
    expected = [n for n in range(210, 2000, 10) if any(a <= n <= b for a, b in PATCHNETVLAD_TEST)]
    assert desc["frame_count"] == len(expected) and desc["ground_truth"]["tolerance_frames"] == 10


def test_patchnetvlad_ranges_match_the_official_lists():
    folder = Path(patchnetvlad.__file__).parent / "dataset_imagenames"
    for name in ("index", "query"):
        numbers = [int(re.search(r"(\d+)\.png", line).group(1))
                   for line in (folder / f"nordland_imageNames_{name}.txt").read_text().splitlines() if line]
        assert numbers == [n for a, b in PATCHNETVLAD_TEST for n in range(a, b + 1)]


# ---- Oxford RobotCar -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def robotcar_runs(tmp_path_factory, corridor):
    root = tmp_path_factory.mktemp("robotcar")
    ref = make_robotcar_run(root / "2014-12-09-13-21-02", corridor, "ref", 1418131262_000000, count=40, rtk=True)
    query = make_robotcar_run(root / "2015-02-03-08-45-10", corridor, "query", 1422953110_000000, lateral=0.3,
                              yaw_offset_deg=1.0, count=40)
    return {"root": root, "ref": ref, "query": query}


@pytest.mark.parametrize("image_format", ["bayer", "rgb", "jpeg"])
def test_robotcar_images_are_demosaiced_gbrg(tmp_path, robotcar_runs, corridor, image_format):
    run = robotcar_runs["root"] / "2014-12-09-13-21-02"
    cli(convert.main, "-q", "robotcar", str(run), "--out", str(tmp_path / "rc"), "--image-format", image_format,
        "--max-frames", "5")
    desc = yaml.safe_load((tmp_path / "rc_dataset.yaml").read_text())
    topic = desc["traversal"]["topics"]["images"]
    with Bag(tmp_path / "rc") as bag:
        index = index_image_topic(bag, topic, progress=False)
        assert index.stamps_ns.tolist() == [t * 1000 for t in robotcar_runs["ref"][:5]]
        if image_format == "bayer":
            conns = bag.connections(topic, ("sensor_msgs/msg/Image",), "image")
            msg = bag.deserialize(next(bag.messages(conns))[2], "sensor_msgs/msg/Image", topic)
            assert msg.encoding == "bayer_gbrg8" and msg.step == msg.width == 160
    with bag_frame_source(tmp_path / "rc", topic, progress=False) as src:
        original = load_rgb(sorted((corridor / "ref").glob("*.jpg"))[3])
        expected = demosaic(gbrg_mosaic(original))
        if image_format == "jpeg":
            assert np.abs(src.load_image(3).astype(int) - expected).mean() < 3
        else:
            np.testing.assert_array_equal(src.load_image(3), expected)
        # Demosaicing recovers the real image up to interpolation error at the edges of details.
        assert np.abs(src.load_image(3).astype(int) - original).mean() < 12


def test_robotcar_poses_from_rtk_or_ins_in_enu(tmp_path, robotcar_runs):
    run = robotcar_runs["root"] / "2014-12-09-13-21-02"
    stamps = np.array(robotcar_runs["ref"][:10])
    s = (stamps - stamps[0]) / 62_500.0
    for poses, north_offset in (("auto", 0.1), ("ins", 0.0)):  # auto prefers rtk.csv (0.1 m north in the sample)
        out = tmp_path / f"rc_{poses}"
        cli(convert.main, "-q", "robotcar", str(run), "--out", str(out), "--poses", poses, "--max-frames", "10")
        table = read_pose_file(tmp_path / f"rc_{poses}_poses.csv")
        truth = robotcar_truth(s, north_offset, 0.0)
        pos, q = ned_to_enu(truth[:, 0] - 5734000.0, truth[:, 1] - 620000.0, truth[:, 2], truth[:, 3], truth[:, 4],
                            truth[:, 5])
        # The INS samples at 50 Hz bracket the 16 Hz images; interpolation of the smooth test trajectory is
        # within a millimetre and a hundredth of a degree of the truth.
        np.testing.assert_allclose(table.positions, pos, atol=1e-3)
        assert rotation_angle_deg(table.orientations, q).max() < 0.01
        np.testing.assert_allclose(table.stamps, stamps * 1e-6)


def test_robotcar_map_and_evaluation_report_seasons_pose_bins(tmp_path, robotcar_runs, default_model):
    model = ("--set", f"encoder.model={default_model}")
    for name in ("2014-12-09-13-21-02", "2015-02-03-08-45-10"):
        cli(convert.main, "-q", "robotcar", str(robotcar_runs["root"] / name), "--out", str(tmp_path / name))
    cli(build_map.main, "--bag", str(tmp_path / "2014-12-09-13-21-02"), "--image-topic", "/camera/image",
        "--pose-topic", "/pose", "--output", str(tmp_path / "map"), "-q", *model,
        "--set", "image_height=120", "--set", "image_width=160")
    cli(evaluate.main, "--map", str(tmp_path / "map"), "--bag", str(tmp_path / "2015-02-03-08-45-10"),
        "--image-topic", "/camera/image", "--pose-topic", "/pose", "--dist-threshold", "4", "--out",
        str(tmp_path / "eval"), "-q", "--no-plots", "--set", f"localizer.{model[1]}")
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    acc = report["pose_accuracy"]
    assert set(acc) >= {"0.25m_2deg", "0.5m_5deg", "5m_10deg"} and acc["queries"] == 40
    # Check the bins against the per-query answers: the query run is 0.2 m beside the map run (RTK +0.1 m
    # vs INS +0.3 m) and turned 1 deg, with 2 m between frames.
    top1 = np.array([q["top"][0] for q in report["per_query"]])
    offset = np.abs(top1 - np.arange(40))
    assert acc["5m_10deg"] == pytest.approx(np.mean(offset <= 2))
    assert acc["0.25m_2deg"] == pytest.approx(np.mean(offset == 0)) == acc["0.5m_5deg"]
    assert report["recall@5"] >= 0.8


# ---- MSLS -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def msls(tmp_path_factory, corridor):
    root = make_msls_root(tmp_path_factory.mktemp("msls_root"), corridor)
    out = tmp_path_factory.mktemp("msls_bags")
    cli(convert.main, "-q", "msls", str(root), "--out", str(out), "--seq-length", "5")
    return out


def test_msls_layout_ground_truth_and_tasks(msls, corridor):
    summary = yaml.safe_load((msls / "dataset.yaml").read_text())
    assert set(summary["cities"]) == {"corridor", "panotown", "kampala"}
    city = msls / "corridor"
    # 12.5 m between frames, same heading: MSLS's 25 m / 40 deg rule is the corridor's +-2 frames, which is
    # exactly VPR-Bench's ground truth for this dataset.
    vpr_bench = np.load(corridor / "ground_truth_new.npy", allow_pickle=True)
    im2im = np.load(city / "ground_truth_im2im.npy", allow_pickle=True)
    for (q1, r1), (q2, r2) in zip(im2im, vpr_bench, strict=True):
        assert q1 == q2 and sorted(r1) == sorted(r2)
    # seq task, 5 frames: sequences of 30 frames give 26 centres each (111 = 30+30+30+21 -> 26*3+17).
    with open(city / "seq5_queries.csv") as fh:
        rows = list(csv_rows(fh))
    assert len(rows) == 95
    members = [list(map(int, r["query_indices"].split())) for r in rows]
    assert all(m == list(range(m[0], m[0] + 5)) for m in members)
    seq_gt = {int(q): set(r) for q, r in np.load(city / "ground_truth_seq5.npy", allow_pickle=True) if len(r)}
    for m in members:  # positives of any frame of the sequence
        assert seq_gt[m[2]] == {j for j in range(111) if min(abs(j - i) for i in m) <= 2}
    keys = (city / "query_keys.csv").read_text().splitlines()
    assert keys[0] == "index,key,sequence_key,frame_number,stamp" and len(keys) == 112
    poses = read_pose_file(city / "database_poses.csv")
    np.testing.assert_allclose(poses.positions[:, 0], 12.5 * np.arange(111))
    np.testing.assert_allclose(poses.orientations, np.tile([0, 0, 0, 1.0], (111, 1)), atol=1e-12)  # heading east
    pano = yaml.safe_load((msls / "panotown" / "dataset.yaml").read_text())
    assert pano["traversals"]["database"]["frames"] == 7 and pano["traversals"]["database"]["panoramas_left_out"] == 1
    test_city = yaml.safe_load((msls / "kampala" / "dataset.yaml").read_text())
    assert test_city["ground_truth"] is None and "poses" not in test_city["traversals"]["query"]["topics"]


def csv_rows(fh):
    import csv

    return csv.DictReader(fh)


def test_msls_bags_evaluate_like_the_image_folders(msls, corridor, corridor_map, default_model, tmp_path):
    """The converted query bag against the corridor map gives the folder evaluation's answers exactly."""
    model = f"localizer.encoder.model={default_model}"
    cli(evaluate.main, "--map", str(corridor_map), "--queries", str(corridor / "query"), "--ground-truth",
        str(corridor / "ground_truth_new.npy"), "--out", str(tmp_path / "folder"), "-q", "--no-plots", "--set", model)
    cli(evaluate.main, "--map", str(corridor_map), "--bag", str(msls / "corridor" / "query"), "--image-topic",
        "/camera/image/compressed", "--ground-truth", str(msls / "corridor" / "ground_truth_im2im.npy"),
        "--out", str(tmp_path / "bag"), "-q", "--no-plots", "--set", model)
    folder = json.loads((tmp_path / "folder" / "report.json").read_text())
    bag = json.loads((tmp_path / "bag" / "report.json").read_text())
    assert bag["recall@1"] == folder["recall@1"] and bag["recall@5"] == folder["recall@5"]
    assert [q["top"] for q in bag["per_query"]] == [q["top"] for q in folder["per_query"]]
