"""Fuzz suite: random mutations of real map files, bag files, image messages and CLI arguments (fixed seed).

Invariants, whatever the mutation:
* library readers either work or raise the project's :class:`vpr_ros.errors.InputError` (one line naming the
  input) -- any other exception is a bug;
* CLIs exit 0 or 2, and on 2 print exactly one line on stderr and no traceback;
* a map that loads answers searches; no partial map appears at an output path; nothing outside the output path
  is touched (the inputs keep their bytes);
* the localize node keeps answering after a burst of mutated image messages.

``make test`` runs a bounded number of cases; ``make fuzz`` sets ``VPR_FUZZ_SCALE`` for many more (same seeds,
so a failure is reproducible from its case number).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from samples import write_corridor_bag
from sensor_msgs.msg import CompressedImage, Image

from vpr_ros.cli import build_map, evaluate
from vpr_ros.cli.common import run_cli
from vpr_ros.core.encoders import EncoderConfig, make_encoder
from vpr_ros.core.image import load_rgb
from vpr_ros.core.map_builder import BuildMapConfig
from vpr_ros.core.map_builder import build_map as build_map_library
from vpr_ros.core.refmap import ReferenceMap
from vpr_ros.errors import InputError
from vpr_ros.io.bags import bag_frame_source
from vpr_ros.io.image_messages import compressed_msg_to_rgb, image_msg_to_rgb
from vpr_ros.io.images import folder_source
from vpr_ros.nodes.messages import stamp_to_msg
from vpr_ros.nodes.replay import jpeg_to_compressed_msg, rgb_to_image_msg

SCALE = int(os.environ.get("VPR_FUZZ_SCALE", "1"))
SEED = 20261129
THUMBNAIL = "thumbnail:32x24,patch=8"


def cases(name: str, count: int) -> list[random.Random]:
    """``count * SCALE`` independent generators, seeded from the suite's seed, the test name and the case."""
    return [random.Random(f"{SEED}:{name}:{i}") for i in range(count * SCALE)]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One random damage: flipped bytes, a truncation, an inserted or an overwritten run of random bytes."""
    if not data:
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    kind = rng.choice(("flip", "truncate", "insert", "overwrite"))
    buf = bytearray(data)
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        del buf[rng.randrange(len(buf)):]
    elif kind == "insert":
        at = rng.randrange(len(buf) + 1)
        buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 1024)))
    else:
        at = rng.randrange(len(buf))
        n = min(rng.randint(1, 1024), len(buf) - at)
        buf[at:at + n] = bytes(rng.randrange(256) for _ in range(n))
    return bytes(buf)


def random_value(rng: random.Random) -> object:
    return rng.choice((0, -1, 1, 2**40, 1e308, float("nan"), "x", "", None, [], [1], {"a": 1}, True, "../../etc"))


def mutate_yaml(text: str, rng: random.Random) -> str:
    """A manifest with one value, anywhere in the tree, replaced by a value of another type or range."""
    doc = yaml.safe_load(text)
    parent, key = None, None
    node = doc
    while isinstance(node, dict) and node:
        parent, key = node, rng.choice(sorted(node, key=str))
        node = node[key]
        if not isinstance(node, dict) or rng.random() < 0.4:
            break
    if parent is None:
        return text
    if rng.random() < 0.2:
        del parent[key]
    else:
        parent[key] = random_value(rng)
    return yaml.safe_dump(doc, sort_keys=False)


def digest_tree(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def expect_input_error(action: Callable[[], object], what: str) -> None:
    """``action`` works or raises InputError with a one-line message; anything else fails the test."""
    try:
        action()
    except InputError as exc:
        assert str(exc) and "\n" not in str(exc).strip(), f"{what}: multi-line error {exc!r}"


def run_cli_captured(main: Callable[[list[str] | None], int], argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = run_cli(main, argv)
    return code, err.getvalue()


# ---- maps ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_map(tmp_path_factory: pytest.TempPathFactory, corridor: Path) -> Path:
    images = tmp_path_factory.mktemp("fuzz_images")
    for p in sorted((corridor / "ref").glob("*.jpg"))[:16]:
        shutil.copy(p, images / p.name)
    out = tmp_path_factory.mktemp("fuzz_maps") / "map"
    config = BuildMapConfig(encoder=EncoderConfig(model=THUMBNAIL))
    build_map_library(folder_source(images), out, config, progress=False, encoder=make_encoder(config.encoder))
    return out


def test_mutated_maps_load_or_are_refused(small_map: Path, tmp_path: Path) -> None:
    files = sorted(p.relative_to(small_map) for p in small_map.rglob("*") if p.is_file())
    for i, rng in enumerate(cases("maps", 40)):
        target = tmp_path / f"case{i}"
        shutil.copytree(small_map, target)
        rel = rng.choice(files)
        path = target / rel
        if rel.name == "manifest.yaml" and rng.random() < 0.6:
            path.write_text(mutate_yaml(path.read_text(), rng))
        else:
            path.write_bytes(mutate(path.read_bytes(), rng))

        def load_and_search(target: Path = target) -> None:
            refmap = ReferenceMap.load(target)
            sims, idx = refmap.search(np.asarray(refmap.descriptors[:2], dtype=np.float32), 3)
            assert sims.shape == idx.shape == (2, min(3, len(refmap)))

        expect_input_error(load_and_search, f"case {i}: {rel} mutated")
        shutil.rmtree(target)


# ---- bags ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_bags(tmp_path_factory: pytest.TempPathFactory, corridor: Path) -> dict[str, tuple[Path, str]]:
    root = tmp_path_factory.mktemp("fuzz_bags")
    bags = {}
    for storage, name in (("mcap", "run_mcap"), ("sqlite3", "run_sqlite"), ("ros1", "run.bag")):
        topics = write_corridor_bag(root / name, corridor, "query", storage, count=12)
        bags[storage] = (root / name, topics["image_topic"])
    return bags


def storage_file(bag: Path) -> Path:
    if bag.is_file():
        return bag
    return next(p for p in sorted(bag.iterdir()) if p.suffix in (".mcap", ".db3"))


@pytest.mark.parametrize("storage", ["mcap", "sqlite3", "ros1"])
def test_mutated_bags_read_or_are_refused(small_bags: dict[str, tuple[Path, str]], storage: str,
                                          tmp_path: Path) -> None:
    bag, topic = small_bags[storage]
    for i, rng in enumerate(cases(f"bags-{storage}", 12)):
        target = tmp_path / f"case{i}{bag.suffix}"
        (shutil.copytree if bag.is_dir() else shutil.copy)(bag, target)
        path = storage_file(target)
        path.write_bytes(mutate(path.read_bytes(), rng))

        def read_all(target: Path = target) -> None:
            with bag_frame_source(target, topic, progress=False) as source:
                for k in range(len(source)):
                    image = source.load_image(k)
                    assert image.ndim == 3 and image.shape[2] == 3

        expect_input_error(read_all, f"{storage} case {i}")
        shutil.rmtree(target) if target.is_dir() else target.unlink()


# ---- image messages ------------------------------------------------------------------------------------------

ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "16UC1", "8UC3", "bayer_rggb8", "yuv422",
             "yuv422_yuy2", "32FC1", "nonsense", "")


def test_mutated_image_messages_decode_or_are_refused(corridor: Path) -> None:
    jpeg = (corridor / "query" / "0000042.jpg").read_bytes()
    for i, rng in enumerate(cases("images", 150)):
        if rng.random() < 0.5:
            msg = CompressedImage(format=rng.choice(("jpeg", "png", "", "rgb8; jpeg compressed bgr8")),
                                  data=mutate(jpeg, rng))
            expect_input_error(lambda msg=msg: compressed_msg_to_rgb(msg), f"compressed case {i}")
            continue
        height, width = rng.choice((0, 1, 2, 3, 120, 4097)), rng.choice((0, 1, 2, 3, 160, 4097))
        channels = rng.choice((1, 2, 3, 4))
        step = rng.choice((0, width, width * channels, width * channels + rng.randint(-3, 8), 2**31 - 1))
        size = rng.choice((0, height * max(step, 0), rng.randint(0, 4096)))
        size = min(max(size, 0), 1 << 22)
        msg = Image(height=height, width=width, encoding=rng.choice(ENCODINGS), is_bigendian=rng.randint(0, 1),
                    step=step, data=bytes(size))
        expect_input_error(lambda msg=msg: image_msg_to_rgb(msg), f"raw case {i}")


# ---- command lines -------------------------------------------------------------------------------------------

def cli_words(rng: random.Random, corridor: Path, out: Path, small_map: Path) -> list[str]:
    options = ["--images", str(corridor / "ref"), "--queries", str(corridor / "query"), "--map", str(small_map),
               "--poses", str(corridor / "ref_poses.csv"), "--ground-truth", str(corridor / "ground_truth_new.npy"),
               "--output", str(out / "m"), "--out", str(out / "e"), "--set", "--top-n", "--dist-threshold",
               "--index-tolerance", "--bag", "--image-topic", "--append", "--overwrite", "--quiet", "--no-plots",
               "--config", "--rate", "--live", "--min-distance", "--gnss-origin", "--list-settings"]
    values = ["0", "-5", "1,5,10", "abc", "nan", "1e9", "encoder.model=" + THUMBNAIL, "vlad.num_clusters=abc",
              "localizer.top_k=0", "x=1", "=", "", str(out / "nowhere"), str(corridor / "ref_poses.csv"),
              "/cam/image", "2", "-1"]
    return [rng.choice(options) if rng.random() < 0.6 else rng.choice(values) for _ in range(rng.randint(0, 7))]


@pytest.mark.parametrize("name, main", [("build_map", build_map.main), ("evaluate", evaluate.main)])
def test_random_command_lines_exit_0_or_2_with_one_line(name: str, main: Callable[[list[str] | None], int],
                                                        corridor: Path, small_map: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    inputs = {"corridor": digest_tree(corridor), "map": digest_tree(small_map)}
    for i, rng in enumerate(cases(f"cli-{name}", 25)):
        out = tmp_path / f"case{i}"
        out.mkdir()
        argv = cli_words(rng, corridor, out, small_map)
        if "--help" in argv or "--list-settings" in argv:
            continue
        code, err = run_cli_captured(main, [*argv, "--set", "encoder.model=" + THUMBNAIL] if name == "build_map"
                                     else argv)
        assert code in (0, 2), f"{name} {argv}: exit {code}\n{err}"
        assert "Traceback" not in err, f"{name} {argv}: traceback\n{err}"
        if code == 2:
            lines = [line for line in err.splitlines() if line.strip() and not line.startswith("usage:")
                     and not line.startswith("  ") and not line.startswith("[")]
            assert len(lines) == 1, f"{name} {argv}: expected one error line, got\n{err}"
        for left in out.rglob(".*"):
            assert not left.name.startswith((".m.tmp", ".m.old")), f"{name} {argv}: left {left}"
        shutil.rmtree(out)
    assert {"corridor": digest_tree(corridor), "map": digest_tree(small_map)} == inputs, "an input was modified"


# ---- the node ------------------------------------------------------------------------------------------------

@pytest.mark.ros
@pytest.mark.parametrize("transport", ["raw", "compressed"])
def test_node_keeps_answering_after_mutated_messages(start_localize, corridor_map: Path, corridor: Path,
                                                     transport: str) -> None:
    endpoint = start_localize(corridor_map, f"/fuzz_{transport}", image_transport=transport)
    client = endpoint.client
    jpeg = (corridor / "query" / "0000042.jpg").read_bytes()
    published = 0
    for i, rng in enumerate(cases(f"node-{transport}", 30)):
        if transport == "compressed":
            msg = jpeg_to_compressed_msg(mutate(jpeg, rng), float(i))
        else:
            width, height = rng.choice((0, 3, 160, 4097)), rng.choice((0, 2, 120))
            msg = Image(height=height, width=width, encoding=rng.choice(ENCODINGS), step=width * 3,
                        data=bytes(rng.choice((0, 17, height * width * 3))))
            msg.header.stamp = stamp_to_msg(float(i))
        client.publish(msg)
        published += 1
    good = jpeg_to_compressed_msg(jpeg, 1000.0) if transport == "compressed" else \
        rgb_to_image_msg(load_rgb(corridor / "query" / "0000042.jpg"), 1000.0)
    answer = client.send_and_wait(good, timeout=60)
    assert answer is not None, client.latest_diagnostic()
    assert abs(int(answer.ref_ids[0]) - 42) <= 2
    d = client.wait_for_diagnostic(lambda d: int(d["frames_received"]) >= 1 and d["message"] != "")
    assert d is not None and int(d["frames_received"]) <= published + 1, client.latest_diagnostic()
    assert endpoint.node.localizer is not None
