"""A map on disk survives kills and mistakes: a kill at any step of writing or swapping a map leaves a complete
map at its path (the old or the new, never a partial one), the next run cleans up after it and ends with the same
map as an uninterrupted run, two builds cannot race, and ``--overwrite`` replaces only a vpr_ros map, never the
input.

Kills are real: the writer runs in a subprocess with ``VPR_ROS_FAULT_AT=<step>``, which makes it SIGKILL itself
right after that step (the test hook in :mod:`vpr_ros.core.refmap`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_refmap import small_map

from vpr_ros.cli import build_map as build_map_cli
from vpr_ros.cli.common import run_cli
from vpr_ros.core.files import sha256_file
from vpr_ros.core.frames import FrameSource
from vpr_ros.core.map_builder import BuildMapConfig, build_map
from vpr_ros.core.refmap import ReferenceMap
from vpr_ros.errors import InputError

TEST_DIR = Path(__file__).resolve().parent
SMALL = ("--set", "image_height=120", "--set", "image_width=160", "--set", "chunk_size=8")

# Every step of ReferenceMap.save of a map with a head and an extra array (files in the order written).
SAVE_STEPS = [*(f"save:wrote:{name}" for name in
                ("frames.npz", "descriptors.npy", "global.faiss", "head.npz", "arrays/patches.npy", "manifest.yaml")),
              "save:after-fsync", "swap:after-aside", "swap:after-in-place", "swap:after-old-disowned",
              "swap:after-old-removed"]
# build_map --append: the same steps (its map has no extra arrays), then the removal of its work directory.
APPEND_STEPS = [step for step in SAVE_STEPS if step != "save:wrote:arrays/patches.npy"] + ["append:after-save"]

SAVE_SCRIPT = ("import sys; sys.path.insert(0, sys.argv[1]); from test_refmap import small_map; "
               "small_map(n=int(sys.argv[3]), seed=int(sys.argv[4])).save(sys.argv[2], overwrite=True)")
HOLD_LOCK_SCRIPT = ("import sys; from vpr_ros.core.refmap import map_lock\n"
                    "with map_lock(sys.argv[1]):\n    print('held', flush=True)\n    sys.stdin.read()")


def run_python(args: list[str], repo: Path, fault_at: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "VPR_ROS_FAULT_AT"}
    if fault_at is not None:
        env["VPR_ROS_FAULT_AT"] = fault_at
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=repo, env=env, timeout=300)


def cli(*argv: str) -> int:
    return run_cli(build_map_cli.main, list(argv))


def snapshot(root: Path, skip: Path | None = None) -> dict[str, tuple]:
    """Everything under ``root`` except ``skip`` (and what is in it): name -> content and modification time."""
    entries: dict[str, tuple] = {}
    for p in sorted(root.rglob("*")):
        if skip is not None and (p == skip or skip in p.parents):
            continue
        if p.is_file():
            stat = p.stat()
            entries[str(p.relative_to(root))] = (stat.st_size, stat.st_mtime_ns, sha256_file(p))
        else:
            entries[str(p.relative_to(root))] = ("dir",)
    return entries


def same_map(a: ReferenceMap, b: ReferenceMap) -> bool:
    """Same frames, descriptors, head and extra arrays (file hashes differ: npz members carry a write time)."""
    head_a = a.head.to_arrays() if a.head is not None else {}
    head_b = b.head.to_arrays() if b.head is not None else {}
    return (a.frames.to_csv() == b.frames.to_csv() and np.array_equal(a.descriptors, b.descriptors)
            and head_a.keys() == head_b.keys() and all(np.array_equal(head_a[k], head_b[k]) for k in head_a)
            and a.arrays.keys() == b.arrays.keys() and all(np.array_equal(a.arrays[k], b.arrays[k]) for k in a.arrays)
            and a.input_size == b.input_size and a.encoder == b.encoder)


def map_found_by_next_open(parent: Path, name: str, probe: Path) -> ReferenceMap:
    """Open the map on a copy of its folder as left by the kill, so that the re-run meets the leftovers as they are."""
    shutil.copytree(parent, probe, symlinks=True)
    try:
        return ReferenceMap.load(probe / name, mmap=False)
    finally:
        shutil.rmtree(probe)


@pytest.mark.parametrize("step", SAVE_STEPS)
def test_save_killed_at_each_step_leaves_a_whole_map(tmp_path: Path, repo: Path, step: str):
    out = tmp_path / "maps" / "map"
    small_map(n=20, seed=0).save(out)
    old = ReferenceMap.load(out, mmap=False)
    small_map(n=30, seed=1).save(tmp_path / "uninterrupted")
    new = ReferenceMap.load(tmp_path / "uninterrupted", mmap=False)
    (out.parent / "notes.txt").write_text("a bystander beside the map\n")
    before = snapshot(tmp_path, skip=out)

    killed = run_python(["-c", SAVE_SCRIPT, str(TEST_DIR), str(out), "30", "1"], repo, fault_at=step)
    assert killed.returncode == -signal.SIGKILL, f"never reached {step}: {killed.stderr[-2000:]}"
    found = map_found_by_next_open(out.parent, out.name, tmp_path / "probe")
    assert same_map(found, old) or same_map(found, new), "the next open must find the old or the new map"

    again = run_python(["-c", SAVE_SCRIPT, str(TEST_DIR), str(out), "30", "1"], repo)
    assert again.returncode == 0, again.stderr[-2000:]
    assert same_map(ReferenceMap.load(out, mmap=False), new)
    assert snapshot(tmp_path, skip=out) == before, "leftovers beside the map, or something outside it touched"


@pytest.fixture(scope="module")
def append_case(tmp_path_factory: pytest.TempPathFactory, corridor: Path, default_model: Path, repo: Path):
    """20 corridor frames in two folders; a map of the first 10, and that map grown by the other 10 uninterrupted."""
    root = tmp_path_factory.mktemp("append_faults")
    names = sorted(p.name for p in (corridor / "ref").glob("*.jpg"))[:20]
    for folder, part in (("first", names[:10]), ("second", names[10:])):
        (root / folder).mkdir()
        for name in part:
            shutil.copy2(corridor / "ref" / name, root / folder / name)
    model = ("--set", f"encoder.model={default_model}")
    first = run_python(["-m", "vpr_ros.cli.build_map", "--images", str(root / "first"), "-o", str(root / "old"), "-q",
                        *SMALL, *model], repo)
    assert first.returncode == 0, first.stderr[-2000:]
    shutil.copytree(root / "old", root / "grown")
    grown = run_python(["-m", "vpr_ros.cli.build_map", "--images", str(root / "second"), "-o", str(root / "grown"),
                        "-q", "--append", *SMALL, *model], repo)
    assert grown.returncode == 0, grown.stderr[-2000:]
    return root, model


@pytest.mark.parametrize("step", APPEND_STEPS)
def test_append_killed_at_each_step_resumes_to_the_uninterrupted_map(tmp_path: Path, repo: Path, append_case,
                                                                      capsys, step: str):
    """A kill between moving the old map aside and moving the new one in used to leave no map at the output; the
    re-run then built a map of the new frames only, the original stayed hidden in ``.map.old-*``."""
    root, model = append_case
    old = ReferenceMap.load(root / "old", mmap=False)
    grown = ReferenceMap.load(root / "grown", mmap=False)
    out = tmp_path / "maps" / "map"
    shutil.copytree(root / "old", out)
    before = snapshot(tmp_path, skip=out)
    outside = snapshot(root)
    command = ["-m", "vpr_ros.cli.build_map", "--images", str(root / "second"), "-o", str(out), "-q", "--append",
               *SMALL, *model]

    killed = run_python(command, repo, fault_at=step)
    assert killed.returncode == -signal.SIGKILL, f"never reached {step}: {killed.stderr[-2000:]}"
    found = map_found_by_next_open(out.parent, out.name, tmp_path / "probe")
    assert same_map(found, old) or same_map(found, grown), "the next open must find the old or the new map"

    capsys.readouterr()
    assert cli(*command[2:]) == 0, "re-running the same command"
    assert "20 frames" in capsys.readouterr().out
    assert same_map(ReferenceMap.load(out, mmap=False), grown)
    assert snapshot(tmp_path, skip=out) == before, "leftovers beside the map (.old-*, .tmp-*, work, lock)"
    assert snapshot(root) == outside, "the input folders or other maps were touched"


def test_second_writer_is_refused_while_the_lock_is_held(tmp_path: Path, repo: Path, images: Path,
                                                         default_model: Path, capsys):
    maps = tmp_path / "maps"
    out = maps / "map"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK_SCRIPT, str(out)], cwd=repo, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        # A leftover of a killed swap is not recovered by a reader while someone else holds the lock.
        aside = maps / ".map.old-0123abcd"
        aside.mkdir()
        with pytest.raises(InputError, match="does not exist"):
            ReferenceMap.load(out)
        assert aside.is_dir()
        aside.rmdir()

        argv = ["--images", str(images), "--output", str(out), "-q", *SMALL, "--set", f"encoder.model={default_model}"]
        capsys.readouterr()
        assert cli(*argv) == 2
        message = capsys.readouterr().err.strip().splitlines()
        assert len(message) == 1 and ".map.lock" in message[0] and f"pid {holder.pid}" in message[0], message
        assert not out.exists()
    finally:
        holder.communicate("", timeout=60)
    assert holder.returncode == 0
    assert sorted(p.name for p in maps.iterdir()) == [], "the lock file is removed when released"
    assert cli(*argv) == 0
    assert len(ReferenceMap.load(out)) == 10


def test_leftover_temporary_directories_are_removed_but_nothing_else(tmp_path: Path):
    out = tmp_path / "map"
    small_map(n=20, seed=0).save(out)
    leftovers = [tmp_path / ".map.tmp-0badc0de", tmp_path / ".map.old-deadbeef"]
    lookalikes = [tmp_path / ".map.tmp-notmine", tmp_path / ".map.tmp-0badc0de1", tmp_path / ".other.tmp-0badc0de",
                  tmp_path / "map.tmp-0badc0de", tmp_path / ".map.partial"]
    for d in leftovers + lookalikes:
        d.mkdir()
        (d / "data.bin").write_bytes(b"x")
    (tmp_path / ".map.tmp-12345678").write_bytes(b"a file, not a directory this code makes")
    ReferenceMap.load(out)
    assert not any(d.exists() for d in leftovers)
    assert all((d / "data.bin").is_file() for d in lookalikes)
    assert (tmp_path / ".map.tmp-12345678").is_file()


# ---- --overwrite replaces only a vpr_ros map, never the input ----------------------------------------------------

@pytest.fixture
def images(tmp_path: Path, corridor: Path) -> Path:
    folder = tmp_path / "data" / "images"
    folder.mkdir(parents=True)
    for name in sorted(p.name for p in (corridor / "ref").glob("*.jpg"))[:10]:
        shutil.copy2(corridor / "ref" / name, folder / name)
    return folder


@pytest.mark.parametrize(("output", "message"), [
    ("data/images", "is the input image folder"),
    ("data/images/../images", "is the input image folder"),
    ("data/images/map", "lies inside the input image folder"),
    ("data", "contains the input image folder"),
    ("link", "is the input image folder"),  # a symbolic link to the image folder
    ("other", "is not a vpr_ros map"),
    ("notes.txt", "is a regular file, not a directory"),
])
def test_overwrite_refuses_what_is_not_a_map_or_is_the_input(tmp_path: Path, images: Path, default_model: Path,
                                                            capsys, output: str, message: str):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "thesis.tex").write_text("years of work\n")
    (tmp_path / "other" / "manifest.yaml").write_text("format: someone_elses_format\n")
    (tmp_path / "notes.txt").write_text("notes\n")
    (tmp_path / "link").symlink_to(images)
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert cli("--images", str(images), "--output", str(tmp_path / output), "--overwrite", "-q", *SMALL,
               "--set", f"encoder.model={default_model}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert snapshot(tmp_path) == before


def test_overwrite_refuses_the_input_bag(tmp_path: Path, capsys):
    bag = tmp_path / "run1"
    bag.mkdir()
    (bag / "run1_0.mcap").write_bytes(b"recording")
    for output in (bag, bag / "map", bag / "run1_0.mcap"):
        assert cli("--bag", str(bag), "--image-topic", "/cam", "--output", str(output), "--overwrite") == 2
        assert "input bag" in capsys.readouterr().err
    assert (bag / "run1_0.mcap").read_bytes() == b"recording"


def test_overwrite_replaces_a_map(tmp_path: Path, images: Path, default_model: Path):
    args = ("--images", str(images), "--output", str(tmp_path / "map"), "-q", *SMALL,
            "--set", f"encoder.model={default_model}")
    assert cli(*args) == 0
    assert cli(*args, "--set", "vlad.num_clusters=8", "--overwrite") == 0
    assert ReferenceMap.load(tmp_path / "map").head.num_clusters == 8


def test_library_refuses_to_replace_a_directory_that_is_not_a_map(tmp_path: Path, encoder):
    victim = tmp_path / "photos"
    victim.mkdir()
    (victim / "holiday.jpg").write_bytes(b"jpeg")
    with pytest.raises(InputError, match="is not a vpr_ros map"):
        small_map(n=5).save(victim, overwrite=True)

    def never(i: int) -> np.ndarray:
        raise AssertionError("the build must be refused before any image is encoded")

    frames = small_map(n=5).frames
    with pytest.raises(InputError, match="is not a vpr_ros map"):
        build_map(FrameSource(frames, never), victim, BuildMapConfig(), overwrite=True, progress=False,
                  encoder=encoder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]
    assert (victim / "holiday.jpg").read_bytes() == b"jpeg"
