"""Maps from bags grow by appending recordings, and interrupted builds or appends resume where they stopped."""

from __future__ import annotations

import numpy as np
import pytest
from samples import write_corridor_bag

from vpr_ros.cli import build_map as build_map_cli
from vpr_ros.cli.common import run_cli
from vpr_ros.core.frames import FrameSource
from vpr_ros.core.map_builder import BuildMapConfig, append_to_map, build_map
from vpr_ros.core.refmap import ReferenceMap, read_manifest
from vpr_ros.core.vlad import global_descriptors
from vpr_ros.io.bag_poses import PoseSpec
from vpr_ros.io.bags import FrameSelection, bag_frame_source

SMALL = ("--set", "image_height=120", "--set", "image_width=160", "--set", "chunk_size=8")
COUNT = 48  # frames 0..47 of the corridor reference traversal, 0.5 s apart


class SimulatedCrashError(Exception):
    pass


@pytest.fixture(scope="module")
def ref_bag(tmp_path_factory, corridor):
    path = tmp_path_factory.mktemp("append") / "ref"
    write_corridor_bag(path, corridor, "ref", "sqlite3", count=COUNT)
    return path


def cli(*argv: str) -> int:
    return run_cli(build_map_cli.main, list(argv))


def test_append_second_half_with_the_maps_head(tmp_path, ref_bag, default_model, encoder, capsys):
    model = ("--set", f"encoder.model={default_model}")
    common = ("--bag", str(ref_bag), "--image-topic", "/cam/image/compressed", "--pose-topic", "/pose",
              "--output", str(tmp_path / "map"), "-q", *SMALL, *model)
    assert cli(*common, "--end", "12") == 0  # first 24 frames (0 .. 11.5 s)
    first = ReferenceMap.load(tmp_path / "map")
    assert len(first) == 24
    assert cli(*common, "--start", "12", "--append") == 0
    grown = ReferenceMap.load(tmp_path / "map")
    assert len(grown) == COUNT and grown.frames.ids.tolist() == list(range(COUNT))
    np.testing.assert_array_equal(grown.frames.positions[:, 0], np.arange(COUNT))
    np.testing.assert_array_equal(grown.descriptors[:24], first.descriptors)
    # The appended frames are encoded with the map's own (unchanged) vocabulary and PCA.
    assert grown.head is not None and np.array_equal(grown.head.projection, first.head.projection)
    with bag_frame_source(ref_bag, "/cam/image/compressed", PoseSpec(topic="/pose"),
                          FrameSelection(start=12), progress=False) as second:
        feats = encoder.features([second.load_image(i) for i in range(len(second))], 120, 160)
    np.testing.assert_allclose(grown.descriptors[24:], global_descriptors(feats, grown.head), atol=1e-5)
    assert grown.provenance["appended"][0]["frames"] == 24 and grown.provenance["appended"][0]["first_id"] == 24

    # Appending the same recording again adds nothing and leaves the map as it was.
    before = read_manifest(tmp_path / "map")["files"]
    capsys.readouterr()
    assert cli(*common, "--append") == 0
    assert "nothing appended" in capsys.readouterr().out
    assert read_manifest(tmp_path / "map")["files"] == before


def test_interrupted_bag_build_and_append_resume(tmp_path, ref_bag, encoder):
    """A crash mid-build (or mid-append) leaves the map untouched; running again re-encodes only what is missing."""
    config = BuildMapConfig(image_height=120, image_width=160, chunk_size=8)

    def source(start=None, end=None):
        return bag_frame_source(ref_bag, "/cam/image/compressed", PoseSpec(topic="/pose"),
                                FrameSelection(start=start, end=end), progress=False)

    def failing(src, fail_at: int) -> tuple[FrameSource, list[int]]:
        calls: list[int] = []

        def load(i: int) -> np.ndarray:
            if len(calls) == fail_at:
                raise SimulatedCrashError
            calls.append(i)
            return src.load_image(i)
        return FrameSource(src.frames, load), calls

    with source(end=8) as first, source(end=8) as again:  # 16 frames (0.5 s apart)
        broken, _ = failing(first, fail_at=16 + 1 + 9)  # fit (16) + size probe (1) + 9 of 16 encodes
        with pytest.raises(SimulatedCrashError):
            build_map(broken, tmp_path / "map", config, progress=False, encoder=encoder)
        assert not (tmp_path / "map").exists()
        counted, calls = failing(again, fail_at=-1)
        built = build_map(counted, tmp_path / "map", config, progress=False, encoder=encoder)
        assert calls[1:] == list(range(8, 16)), "resume re-encodes only the unfinished chunk"
    with source(end=8) as whole:
        fresh = build_map(whole, tmp_path / "fresh", config, progress=False, encoder=encoder)
    np.testing.assert_array_equal(built.descriptors, fresh.descriptors)

    before = read_manifest(tmp_path / "map")["files"]
    # From 4 s on: frames 8..15 are already in the map (skipped), 16..47 are new (4 chunks of 8).
    with source(start=4) as rest, source(start=4) as rest_again:
        broken, _ = failing(rest, fail_at=8 + 3)  # first chunk saved, then a crash in the second
        with pytest.raises(SimulatedCrashError):
            append_to_map(broken, tmp_path / "map", config, progress=False, encoder=encoder)
        assert read_manifest(tmp_path / "map")["files"] == before, "a failed append must not touch the map"
        counted, calls = failing(rest_again, fail_at=-1)
        grown, added = append_to_map(counted, tmp_path / "map", config, progress=False, encoder=encoder)
    assert added == COUNT - 16 and len(grown) == COUNT
    assert calls == list(range(16, 40)), "the finished chunk is reused (frame 24 is row 16 of this source)"
    assert not (tmp_path / ".map.append.partial").exists()
