"""Decompression bombs: an image whose header declares a huge size is refused from its header, before decoding.

The bomb is a real, valid PNG (IHDR with a correct CRC, IDAT of zlib-compressed zero rows) declaring 20000x20000
8-bit grey pixels in ~389 kB; OpenCV would decode it into 1.2 GB of BGR. Memory is measured as the peak resident
size of a fresh process (ru_maxrss), so earlier tests in this process cannot hide the growth.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from vpr_ros.cli import build_map
from vpr_ros.cli.common import run_cli
from vpr_ros.core.image import load_rgb
from vpr_ros.errors import InputError
from vpr_ros.io.bag_writer import BagWriter
from vpr_ros.io.image_messages import ImageDecodeError, compressed_msg_to_rgb, image_msg_to_rgb
from vpr_ros.nodes.replay import jpeg_to_compressed_msg

SIDE = 20000


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def bomb_png(side: int = SIDE) -> bytes:
    """A valid greyscale PNG of side x side zero pixels, compressed row by row (never held in memory)."""
    compressor = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte 0 + side zero pixels
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    path.write_bytes(bomb_png())
    assert path.stat().st_size < 500_000
    return path


PROBE = """
import json, resource, sys
from pathlib import Path
from types import SimpleNamespace
from vpr_ros.core.image import load_rgb
from vpr_ros.io.image_messages import compressed_msg_to_rgb
path = Path(sys.argv[1])
data = path.read_bytes()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
errors = []
for decode in (lambda: load_rgb(path), lambda: compressed_msg_to_rgb(SimpleNamespace(format="png", data=data))):
    try:
        decode()
        errors.append(None)
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"growth_mb": (after - before) / 1024, "errors": errors}))
"""


def test_bomb_is_refused_from_its_header_without_allocating(bomb, repo):
    out = subprocess.run([sys.executable, "-c", PROBE, str(bomb)], capture_output=True, text=True, timeout=300,
                         cwd=repo, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["growth_mb"] < 200, result
    file_error, message_error = result["errors"]
    assert file_error is not None and file_error.startswith("ImageTooLargeError: ")
    assert str(bomb) in file_error and "20000x20000 = 400.0 megapixels" in file_error
    assert "limit of 50 megapixels" in file_error
    assert message_error is not None and message_error.startswith("ImageDecodeError: ")
    assert "CompressedImage with format 'png'" in message_error and "20000x20000" in message_error


def test_errors_are_input_errors_with_a_kind(bomb):
    with pytest.raises(InputError, match="not decoded"):
        load_rgb(bomb)
    with pytest.raises(ImageDecodeError) as info:
        compressed_msg_to_rgb(SimpleNamespace(format="png", data=bomb.read_bytes()))
    assert info.value.kind == "too_large"


def test_normal_images_still_decode_and_the_limit_is_a_parameter(corridor):
    jpeg = corridor / "ref" / "0000000.jpg"
    rgb = load_rgb(jpeg)
    assert rgb.shape == (120, 160, 3) and rgb.dtype == np.uint8
    msg = SimpleNamespace(format="jpeg", data=jpeg.read_bytes())
    assert np.array_equal(compressed_msg_to_rgb(msg), rgb)
    assert compressed_msg_to_rgb(msg, max_pixels=160 * 120).shape == (120, 160, 3)
    with pytest.raises(ImageDecodeError, match=r"160x120 = 0\.0 megapixels, above the limit"):
        compressed_msg_to_rgb(msg, max_pixels=160 * 120 - 1)
    with pytest.raises(InputError, match="160x120"):
        load_rgb(jpeg, max_pixels=1000)


def test_raw_image_messages_are_checked_against_the_limit():
    width, height = 64, 48
    msg = SimpleNamespace(encoding="rgb8", width=width, height=height, step=width * 3, is_bigendian=0,
                          data=np.zeros(width * height * 3, np.uint8).tobytes())
    assert image_msg_to_rgb(msg).shape == (height, width, 3)
    with pytest.raises(ImageDecodeError, match=r"rgb8 image \(3 channel\(s\)\) declares 64x48") as info:
        image_msg_to_rgb(msg, max_pixels=width * height - 1)
    assert info.value.kind == "too_large"


def test_bag_frames_and_the_max_pixels_option(tmp_path, corridor, bomb, capsys):
    jpeg = (corridor / "ref" / "0000000.jpg").read_bytes()
    bag = tmp_path / "bomb_bag"
    with BagWriter(bag, "mcap") as writer:
        writer.write_compressed("/cam", 1.0, jpeg)
        writer.write_compressed("/cam", 2.0, bomb.read_bytes(), fmt="png")
    code = run_cli(build_map.main, ["--bag", str(bag), "--image-topic", "/cam", "-o", str(tmp_path / "m"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and str(bag) in err
    assert "image on /cam at log time 2.000000 s cannot be decoded" in err and "20000x20000" in err
    assert not (tmp_path / "m").exists()
    good = tmp_path / "good_bag"
    with BagWriter(good, "sqlite3") as writer:
        writer.write_compressed("/cam", 1.0, jpeg)
    code = run_cli(build_map.main, ["--bag", str(good), "--image-topic", "/cam", "-o", str(tmp_path / "m"), "-q",
                                    "--max-pixels", "10000"])
    err = capsys.readouterr().err
    assert code == 2 and "160x120" in err and "limit of 0.01 megapixels" in err


def test_image_folder_with_a_bomb(tmp_path, corridor, bomb, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "0000000.jpg").write_bytes((corridor / "ref" / "0000000.jpg").read_bytes())
    (folder / "0000001.png").write_bytes(bomb.read_bytes())
    code = run_cli(build_map.main, ["--images", str(folder), "-o", str(tmp_path / "m"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and str(folder / "0000001.png") in err and "20000x20000" in err


@pytest.mark.ros
def test_node_refuses_images_above_its_pixel_limit_and_keeps_answering(start_localize, corridor_map, corridor):
    """The node's ``max_pixels``: a 160x120 frame above a 10000-pixel limit is counted as too large, not decoded."""
    small = start_localize(corridor_map, "/pixels", image_transport="compressed", max_pixels=10_000)
    jpeg = (corridor / "query" / "0000042.jpg").read_bytes()
    small.client.publish(jpeg_to_compressed_msg(jpeg, 1.0))
    d = small.client.wait_for_diagnostic(lambda d: int(d.get("errors_too_large", 0)) >= 1)
    assert d is not None, small.client.latest_diagnostic()
    assert int(d["frames_processed"]) == 0
