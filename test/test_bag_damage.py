"""A damaged bag that still opens must not be read silently short.

rosbags stops reading an MCAP chunk at the first record whose length field is garbage and drops the rest of the
chunk without an error: before this check, 1 KiB of random bytes written into a 40-frame corridor bag built a map
of 9 frames and exited 0. Now the read is compared with the count the bag declares (metadata.yaml, MCAP summary,
ROS 1 index): an error naming the bag and the first unreadable message, or with --skip-damaged a warning with the
counts. The bags are real (BagWriter, corridor JPEGs); damage is random bytes with a fixed seed.
"""

from __future__ import annotations

import logging
import random
import shutil
import sqlite3
from pathlib import Path

import pytest
from samples import write_corridor_bag

from vpr_ros.cli import build_map
from vpr_ros.cli.common import run_cli
from vpr_ros.core.refmap import ReferenceMap

FRAMES = 40
TOPIC = "/cam/image/compressed"


def storage_file(bag: Path) -> Path:
    return bag if bag.is_file() else next(p for p in bag.iterdir() if p.suffix in (".db3", ".mcap"))


def copy_bag(bag: Path, dst: Path) -> Path:
    (shutil.copytree if bag.is_dir() else shutil.copy)(bag, dst)
    return dst


def overwrite_random(bag: Path, fraction: float, seed: int, size: int = 1024) -> int:
    """Overwrite ``size`` random bytes at ``fraction`` of the storage file's length; returns the offset."""
    f = storage_file(bag)
    data = bytearray(f.read_bytes())
    offset = int(len(data) * fraction)
    data[offset:offset + size] = random.Random(seed).randbytes(size)
    f.write_bytes(bytes(data))
    return offset


@pytest.fixture(scope="module")
def good_bags(tmp_path_factory, corridor) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("good")
    out = {}
    for storage in ("mcap", "sqlite3", "ros1"):
        path = root / ("run.bag" if storage == "ros1" else f"run_{storage}")
        write_corridor_bag(path, corridor, "ref", storage, count=FRAMES)
        out[storage] = path
    return out


def build(bag: Path, out: Path, capsys, *extra: str) -> tuple[int, str]:
    code = run_cli(build_map.main, ["--bag", str(bag), "--image-topic", TOPIC, "--pose-topic", "/pose",
                                    "--output", str(out), "--quiet", *extra])
    return code, capsys.readouterr().err


@pytest.fixture
def damaged_mcap(good_bags, tmp_path) -> Path:
    """The MCAP bag with 1 KiB of random bytes at 20% of its length (seed 1): it opens, and rosbags reads
    9 of its 40 images (and 8 of its 40 poses) without any error."""
    bag = copy_bag(good_bags["mcap"], tmp_path / "damaged_mcap")
    overwrite_random(bag, 0.2, seed=1)
    return bag


def test_damaged_mcap_is_an_error_naming_the_bag_and_the_first_unreadable_offset(damaged_mcap, tmp_path, capsys):
    code, err = build(damaged_mcap, tmp_path / "map", capsys)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"error: {damaged_mcap}")
    assert f"topic {TOPIC} has {FRAMES} messages by its metadata.yaml but only 9 can be read" in err
    # The first lost message: the 10th image, at its byte offset (MCAP message indexes give offsets).
    assert f"first unreadable: message 9 of the topic in file order, log time {100.0 + 9 * 0.5:.6f} s, at byte " \
           "offset " in err
    assert "--skip-damaged" in err
    assert not (tmp_path / "map").exists()


def test_damaged_mcap_with_skip_damaged_warns_with_the_counts(damaged_mcap, tmp_path, capsys, caplog):
    with caplog.at_level(logging.WARNING, logger="vpr_ros"):
        code, err = build(damaged_mcap, tmp_path / "map", capsys, "--skip-damaged")
    assert code == 0, err
    warnings = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert f"{damaged_mcap}: topic {TOPIC} is damaged: {FRAMES} declared, 9 read, 31 skipped" in warnings[0]
    assert any("topic /pose is damaged: 40 declared, 8 read, 32 skipped" in w for w in warnings)
    refmap = ReferenceMap.load(tmp_path / "map")
    assert len(refmap) == 8  # the 9 readable images, less the one whose pose was lost


def test_bare_mcap_file_uses_its_summary_statistics(damaged_mcap, tmp_path, capsys):
    code, err = build(storage_file(damaged_mcap), tmp_path / "map", capsys)
    assert code == 2 and "by its summary statistics but only 9 can be read" in err


def test_sqlite3_bag_missing_rows_is_an_error(good_bags, tmp_path, capsys):
    """sqlite3 either reports a corrupt page or reads every row; what can read short is a database recovered
    from damage (sqlite3 .recover drops the rows of unreadable pages) beside its original metadata.yaml."""
    bag = copy_bag(good_bags["sqlite3"], tmp_path / "recovered")
    with sqlite3.connect(storage_file(bag)) as db:
        topic_id = db.execute("SELECT id FROM topics WHERE name = ?", (TOPIC,)).fetchone()[0]
        rows = [r[0] for r in db.execute("SELECT id FROM messages WHERE topic_id = ? ORDER BY timestamp",
                                         (topic_id,))]
        db.executemany("DELETE FROM messages WHERE id = ?", [(r,) for r in rows[15:25]])
    code, err = build(bag, tmp_path / "map", capsys)
    assert code == 2 and err.count("\n") == 1 and str(bag) in err
    assert f"topic {TOPIC} has {FRAMES} messages by its metadata.yaml but only 30 can be read" in err
    assert "first unreadable: unknown (this storage's index gives no message offsets); the messages read span " \
           f"log times {100.0:.6f} .. {100.0 + 39 * 0.5:.6f} s" in err
    code, err = build(bag, tmp_path / "map", capsys, "--skip-damaged")
    assert code == 0, err
    assert len(ReferenceMap.load(tmp_path / "map")) == 30


@pytest.mark.parametrize(("storage", "fraction"), [("sqlite3", 0.7), ("ros1", 0.6)])
def test_damage_the_storage_layer_detects_stays_one_line(good_bags, tmp_path, storage, fraction, capsys):
    """Random bytes that the storage layer itself trips over (sqlite page checks) or that hit an image: one line
    naming the bag, also with --skip-damaged (rosbags cannot resume after a storage error)."""
    bag = copy_bag(good_bags[storage], tmp_path / good_bags[storage].name)
    overwrite_random(bag, fraction, seed=0)
    for extra in ((), ("--skip-damaged",)):
        code, err = build(bag, tmp_path / "map", capsys, *extra)
        assert code == 2, err
        assert err.count("\n") == 1 and str(bag) in err
        assert "corrupt or truncated" in err or "cannot be decoded" in err  # ROS 1: the bytes hit a JPEG header
        assert not (tmp_path / "map").exists()


@pytest.mark.parametrize("storage", ["mcap", "sqlite3", "ros1"])
def test_truncated_bag_is_one_line_and_no_map(good_bags, tmp_path, storage, capsys):
    bag = copy_bag(good_bags[storage], tmp_path / good_bags[storage].name)
    f = storage_file(bag)
    f.write_bytes(f.read_bytes()[: f.stat().st_size * 2 // 3])
    code, err = build(bag, tmp_path / "map", capsys, "--skip-damaged")
    assert code == 2 and err.count("\n") == 1 and str(bag) in err
    assert not (tmp_path / "map").exists()


def test_undamaged_bags_read_in_full_without_warning(good_bags, tmp_path, capsys, caplog):
    for storage, bag in good_bags.items():
        with caplog.at_level(logging.WARNING, logger="vpr_ros"):
            code, err = build(bag, tmp_path / storage, capsys)
        assert code == 0, err
        assert len(ReferenceMap.load(tmp_path / storage)) == FRAMES
    assert not [r for r in caplog.records if "damaged" in r.getMessage()]
