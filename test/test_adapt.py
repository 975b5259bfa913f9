"""``vpr-adapt``: traversals -> adapted encoder + sequence model + map + held-out report, on real Nordland frames.

The end-to-end run is the issue's pipeline at a small size: the first 400 places of Nordland part 1 (summer
map, winter queries), native 32x64 input, a few short epochs. It must still show the held-out gain: the
adapted encoder beats the default one on test places no training step saw.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from vpr_ros.cli.common import run_cli
from vpr_training.adapt import cli
from vpr_training.adapt.route import AdaptInputError, PlaceSplit, build_route, folder_traversal, write_split_list
from vpr_training.data.readers import DatasetConfig, load_places

PLACES = 400


@pytest.fixture(scope="module")
def small_route(tmp_path_factory: pytest.TempPathFactory, repo: Path) -> Path:
    """The first PLACES frames of both seasons, as two traversal folders (links to the shipped files)."""
    root = tmp_path_factory.mktemp("route")
    for season in ("summer", "winter"):
        (root / season).mkdir()
        for src in sorted((repo / "data" / "nordland_part1" / season).glob("*.png"))[:PLACES]:
            (root / season / src.name).symlink_to(src)
    return root


def test_places_split_along_the_route_and_reach_the_trainer(small_route: Path, tmp_path: Path):
    traversals = [folder_traversal(s, small_route / s, None) for s in ("summer", "winter")]
    route = build_route(traversals, "summer", aligned=True)
    split = PlaceSplit.default(route.num_places, gap=10)
    assert split.describe() == {"test": [0, 132], "train": [143, 323], "val": [334, 399]}
    n = write_split_list(tmp_path / "train.csv", route, split, traversals, "train")
    places = load_places(DatasetConfig(kind="list", list_file=str(tmp_path / "train.csv")))
    assert n == places.num_queries == 181 and places.num_db == 181
    assert Path(places.query_images[0]).name == "images-01440.png" and "winter" in places.query_images[0]
    assert places.db_positions[0].tolist()[:2] == [143.0, 0.0]
    with pytest.raises(AdaptInputError, match="overlap"):
        PlaceSplit.parse("test=0:100,train=90:300,val=310:400", 400)
    with pytest.raises(AdaptInputError, match="only 400 places"):
        PlaceSplit.parse("test=0:100,train=120:300,val=310:500", 400)


def test_traversals_with_poses_are_placed_on_the_map_traversal(repo: Path):
    """Corridor: two traversals with pose files; query frames land on the nearest map frame's place."""
    data = repo / "data" / "corridor"
    traversals = [folder_traversal("ref", data / "ref", data / "ref_poses.csv"),
                  folder_traversal("query", data / "query", data / "query_poses.csv")]
    route = build_route(traversals, "ref", aligned=False)
    assert route.unit == "m" and route.num_places == 111
    assert np.all(np.diff(route.coordinate) >= 0)
    place = route.place_of["query"]
    assert (place >= 0).all()
    assert np.median(np.abs(place - np.arange(len(place)))) <= 2  # the same corridor, driven alike


@pytest.mark.parametrize(("argv", "message"), [
    (["--traversal", "a=DATA/summer"], "two or more traversals"),
    (["--traversal", "a=DATA/summer", "--traversal", "b=DATA/nothing_here"], "is not an image folder"),
    (["--traversal", "a=DATA/summer", "--traversal", "a=DATA/winter", "--aligned"], "names must differ"),
    (["--traversal", "a=DATA/summer", "--traversal", "b=DATA/winter", "--aligned", "--split", "test=0:9"],
     "needs test, train and val"),
    (["--traversal", "a=DATA/summer", "--traversal", "b=DATA/winter"], "have no pose"),
])
def test_bad_input_is_one_line_and_exit_2(small_route: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                          argv: list[str], message: str):
    argv = [a.replace("DATA", str(small_route)) for a in argv] + ["--out", str(tmp_path / "run")]
    assert run_cli(cli.main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1], err
    assert not (tmp_path / "run" / "report.json").exists()


def test_vpr_adapt_end_to_end_shows_the_held_out_gain(small_route: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture):
    out = tmp_path / "run"
    argv = ["--traversal", f"summer={small_route / 'summer'}", "--traversal", f"winter={small_route / 'winter'}",
            "--aligned", "--out", str(out), "--no-progress",
            # The small size: native 32x64 input, a smaller head, a few short epochs.
            "--set", "image_height=32", "--set", "image_width=64", "--set", "num_clusters=16",
            "--set", "train_layers=3", "--set", "epochs=3", "--set", "iterations_per_epoch=15",
            "--set", "patience=2", "--set", "sequence_lengths=[5]", "--set", "seqnet.epochs=8"]
    assert run_cli(cli.main, argv) == 0
    report = json.loads((out / "report.json").read_text())
    test = report["results"]["test"]
    assert report["split"]["test"] == [0, 132] and report["input_size"] == [32, 64]
    adapted, default = test["adapted"]["single frame"]["recall@1"], test["default"]["single frame"]["recall@1"]
    assert adapted > default, f"held-out single-frame recall@1: adapted {adapted:.3f} <= default {default:.3f}"
    # Sequences on top of the adapted encoder (at this size they are not reliably above the default encoder's
    # SeqSLAM: that comparison is the benchmark's, bench/bench_adapt.py, at full size over three seeds).
    assert all(test["adapted"][m]["recall@1"] > adapted + 0.2 for m in ("seqslam 5", "hierarchical 5"))
    for name in ("adapted.onnx", "adapted.yaml", "adapted_head.npz", "adapted_seqnet5.onnx", "adapted_seqnet5.yaml"):
        assert (out / "models" / name).is_file(), name
    assert (out / "report.png").stat().st_size > 10_000
    params = yaml.safe_load((out / "localize.yaml").read_text())["/**"]["ros__parameters"]
    assert Path(params["map_path"]) == (out / "maps" / "adapted").resolve()
    assert report["recommended"] in test["adapted"]
    printed = capsys.readouterr().out
    assert "held-out test places [0, 132]" in printed and "hierarchical 5" in printed

    # Run again: every step is found done and skipped; the report is the same.
    state = (out / "state.json").read_text()
    written = {p: p.stat().st_mtime_ns for p in [out / "train" / "best.pt", *(out / "models").iterdir()]}
    assert run_cli(cli.main, argv) == 0
    again = json.loads((out / "report.json").read_text())
    assert again["results"] == report["results"] and (out / "state.json").read_text() == state
    assert {p: p.stat().st_mtime_ns for p in written} == written  # nothing trained or exported again


def test_bag_traversals_are_read_with_their_poses_and_written_once_as_images(corridor: Path, tmp_path: Path):
    """``--bag NAME=BAG`` traversals: frames and poses from the topics, images written once under <out>/frames."""
    import argparse

    from samples import write_corridor_bag

    argv = []
    for part in ("ref", "query"):
        topics = write_corridor_bag(tmp_path / f"{part}.mcap", corridor, part, "mcap", "rgb8", "odometry", count=40)
        argv += ["--bag", f"{part}={tmp_path / f'{part}.mcap'}"]
    out = tmp_path / "run"
    args = cli.build_parser().parse_args([*argv, "--image-topic", topics["image_topic"], "--pose-topic",
                                          topics["pose_topic"], "--out", str(out), "--no-progress"])
    traversals = cli.read_traversals(args, argparse.ArgumentParser())
    assert [t.name for t in traversals] == ["ref", "query"] and all(len(t) == 40 for t in traversals)
    first = out / "frames" / "ref" / "0000000.png"
    assert traversals[0].images[0] == str(first.resolve())
    from vpr_ros.core.image import load_rgb

    assert np.array_equal(load_rgb(first), traversals[0].source.load_image(0))
    route = build_route(traversals, "ref", aligned=False)
    assert (route.place_of["query"] >= 0).all() and route.coordinate[-1] > 0
    written = first.stat().st_mtime_ns
    cli.read_traversals(args, argparse.ArgumentParser())  # a rerun keeps the frames already written
    assert first.stat().st_mtime_ns == written
