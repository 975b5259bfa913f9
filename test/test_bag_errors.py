"""Bad bags stop build_map / evaluate with one clear line naming the bag, topic or type, and exit code 2.

Corrupt and truncated files are real bags (written with rosbags from corridor images) cut short or overwritten;
each storage layer fails differently (sqlite page checks, MCAP magic and chunk CRCs, ROS 1 index records).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vpr_ros.cli import build_map, evaluate
from vpr_ros.cli.common import run_cli
from vpr_ros.io.bag_writer import BagWriter

STORAGES = ["sqlite3", "mcap", "ros1"]


@pytest.fixture(scope="module")
def bags(tmp_path_factory, corridor) -> dict[str, Path]:
    """One small good bag per storage: CompressedImage on /cam, PoseStamped on /pose."""
    root = tmp_path_factory.mktemp("bags")
    images = sorted((corridor / "ref").glob("*.jpg"))[:10]
    out = {}
    for storage in STORAGES:
        path = root / ("good.bag" if storage == "ros1" else f"good_{storage}")
        with BagWriter(path, storage) as bag:
            for i, p in enumerate(images):
                bag.write_compressed("/cam", 1.0 + i, p.read_bytes())
                bag.write_pose("/pose", 1.0 + i, [i, 0, 0], [0, 0, 0, 1])
        out[storage] = path
    return out


def storage_file(bag: Path) -> Path:
    return bag if bag.is_file() else next(p for p in bag.iterdir() if p.suffix in (".db3", ".mcap"))


def damaged_copy(bag: Path, tmp_path: Path, how: str) -> Path:
    dst = tmp_path / bag.name
    (shutil.copytree if bag.is_dir() else shutil.copy)(bag, dst)
    f = storage_file(dst)
    data = bytearray(f.read_bytes())
    if how == "truncated":
        f.write_bytes(bytes(data[: len(data) * 2 // 3]))
    else:  # corrupt: overwrite the middle third with garbage
        third = len(data) // 3
        data[third:2 * third] = bytes((i * 37 + 11) % 256 for i in range(third))
        f.write_bytes(bytes(data))
    return dst


def run(main, argv, capsys) -> tuple[int, str]:
    code = run_cli(main, argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("how", ["truncated", "corrupt"])
def test_damaged_bag_names_the_bag_and_exits_2(bags, tmp_path, storage, how, capsys):
    bad = damaged_copy(bags[storage], tmp_path, how)
    code, err = run(build_map.main, ["--bag", str(bad), "--image-topic", "/cam", "--pose-topic", "/pose",
                                     "--output", str(tmp_path / "map"), "--quiet"], capsys)
    assert code == 2, err
    assert err.startswith("error: ") and str(bad) in err and err.count("\n") == 1
    assert "corrupt or truncated" in err or "cannot be decoded" in err
    assert not (tmp_path / "map").exists()


@pytest.mark.parametrize("storage", STORAGES)
def test_missing_topic_lists_the_bags_topics(bags, tmp_path, storage, capsys):
    code, err = run(build_map.main, ["--bag", str(bags[storage]), "--image-topic", "/camera/image_raw",
                                     "--output", str(tmp_path / "map"), "-q"], capsys)
    assert code == 2
    assert "no topic '/camera/image_raw' (image topic)" in err
    assert "/cam (sensor_msgs/msg/CompressedImage, 10 msgs)" in err and "/pose (geometry_msgs/msg/PoseStamped" in err


@pytest.mark.parametrize(("args", "message"), [
    (["--image-topic", "/pose"], "topic '/pose' has message type geometry_msgs/msg/PoseStamped, but the image "
                                 "topic must be sensor_msgs/msg/Image or sensor_msgs/msg/CompressedImage"),
    (["--image-topic", "/cam", "--pose-topic", "/cam"], "topic '/cam' has message type "
                                                        "sensor_msgs/msg/CompressedImage, but the pose topic must be"),
    (["--image-topic", "/cam", "--tf", "map", "base_link"], "no /tf or /tf_static topic for the tf chain"),
])
def test_wrong_message_type_is_named(bags, tmp_path, args, message, capsys):
    code, err = run(build_map.main, ["--bag", str(bags["mcap"]), *args, "--output", str(tmp_path / "m"), "-q"], capsys)
    assert code == 2 and message in err


def test_undecodable_image_in_a_valid_bag_is_named(tmp_path, corridor, capsys):
    path = tmp_path / "broken_frame"
    jpeg = (corridor / "ref" / "0000000.jpg").read_bytes()
    with BagWriter(path, "mcap") as bag:
        bag.write_compressed("/cam", 1.0, jpeg)
        bag.write_compressed("/cam", 2.0, jpeg[:200])  # cut off: not decodable
    code, err = run(build_map.main, ["--bag", str(path), "--image-topic", "/cam", "-o", str(tmp_path / "m"), "-q"],
                    capsys)
    assert code == 2
    assert "image on /cam at log time 2.000000 s cannot be decoded" in err


def test_not_a_bag_and_missing_bag(tmp_path, corridor, capsys):
    code, err = run(build_map.main, ["--bag", str(corridor / "ref"), "--image-topic", "/cam", "-o",
                                     str(tmp_path / "m")], capsys)
    assert code == 2 and f"{corridor / 'ref'}: not a bag" in err
    code, err = run(build_map.main, ["--bag", str(tmp_path / "nope.mcap"), "--image-topic", "/cam", "-o",
                                     str(tmp_path / "m")], capsys)
    assert code == 2 and "does not exist" in err
    garbage = tmp_path / "garbage.bag"
    garbage.write_bytes(bytes(range(256)) * 8)
    code, err = run(build_map.main, ["--bag", str(garbage), "--image-topic", "/cam", "-o", str(tmp_path / "m")],
                    capsys)
    assert code == 2 and "cannot open this ROS 1 bag" in err


def test_evaluate_reports_bad_query_bags(bags, tmp_path, corridor_map, capsys):
    bad = damaged_copy(bags["sqlite3"], tmp_path, "truncated")
    code, err = run(evaluate.main, ["--map", str(corridor_map), "--bag", str(bad), "--image-topic", "/cam",
                                    "--pose-topic", "/pose", "--out", str(tmp_path / "e"), "-q"], capsys)
    assert code == 2 and str(bad) in err and "corrupt or truncated" in err
    code, err = run(evaluate.main, ["--map", str(corridor_map), "--bag", str(bags["ros1"]), "--image-topic", "/cam",
                                    "--pose-topic", "/odom", "--out", str(tmp_path / "e"), "-q"], capsys)
    assert code == 2 and "no topic '/odom' (pose topic)" in err


def test_console_entry_exits_2_on_a_truncated_bag(bags, tmp_path, repo):
    """The real command as its own process, as a user runs it."""
    bad = damaged_copy(bags["mcap"], tmp_path, "truncated")
    out = subprocess.run([sys.executable, "-m", "vpr_ros.cli.build_map", "--bag", str(bad), "--image-topic", "/cam",
                          "--output", str(tmp_path / "m")], capture_output=True, text=True, timeout=120, cwd=repo)
    assert out.returncode == 2
    assert f"error: {bad}: cannot open this ROS 2 (MCAP) bag" in out.stderr
