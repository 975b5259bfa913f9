"""sensor_msgs Image / CompressedImage decoding without cv_bridge."""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from vpr_ros.core.image import load_rgb
from vpr_ros.io.image_messages import ImageDecodeError, compressed_msg_to_rgb, image_msg_to_rgb


def msg(array: np.ndarray, encoding: str, step_pad: int = 0, bigendian: bool = False) -> SimpleNamespace:
    h, w = array.shape[:2]
    row = array.reshape(h, -1).view(np.uint8).reshape(h, -1)
    padded = np.zeros((h, row.shape[1] + step_pad), np.uint8)
    padded[:, :row.shape[1]] = row
    return SimpleNamespace(encoding=encoding, height=h, width=w, step=padded.shape[1], is_bigendian=bigendian,
                           data=padded.tobytes())


@pytest.fixture(scope="module")
def rgb(corridor) -> np.ndarray:
    return load_rgb(corridor / "query" / "0000010.jpg")


@pytest.mark.parametrize("pad", [0, 7])
def test_rgb_bgr_rgba_bgra(rgb, pad):
    np.testing.assert_array_equal(image_msg_to_rgb(msg(rgb, "rgb8", pad)), rgb)
    np.testing.assert_array_equal(image_msg_to_rgb(msg(rgb[:, :, ::-1].copy(), "bgr8", pad)), rgb)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    np.testing.assert_array_equal(image_msg_to_rgb(msg(rgba, "rgba8", pad)), rgb)
    np.testing.assert_array_equal(image_msg_to_rgb(msg(rgba[:, :, [2, 1, 0, 3]].copy(), "bgra8", pad)), rgb)


def test_mono8_and_mono16_both_endians(rgb):
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    out = image_msg_to_rgb(msg(grey, "mono8"))
    assert out.shape == (*grey.shape, 3) and (out[:, :, 0] == grey).all()
    g16 = grey.astype(np.uint16) * 257
    np.testing.assert_array_equal(image_msg_to_rgb(msg(g16, "mono16"))[:, :, 1], grey)
    np.testing.assert_array_equal(image_msg_to_rgb(msg(g16.astype(">u2"), "mono16", bigendian=True))[:, :, 2], grey)


@pytest.mark.parametrize(("encoding", "pattern"), [("bayer_rggb8", "RGGB"), ("bayer_bggr8", "BGGR"),
                                                   ("bayer_gbrg8", "GBRG"), ("bayer_grbg8", "GRBG")])
def test_bayer_patterns_demosaic_to_the_right_colour(encoding, pattern):
    # A pure red scene mosaicked with the named 2x2 pattern must come back red, whatever the pattern.
    h, w = 8, 8
    mosaic = np.zeros((h, w), np.uint8)
    where = {c: [(i // 2, i % 2) for i, ch in enumerate(pattern) if ch == c] for c in "RGB"}
    for dy, dx in where["R"]:
        mosaic[dy::2, dx::2] = 200
    out = image_msg_to_rgb(msg(mosaic, encoding))
    centre = out[2:-2, 2:-2].reshape(-1, 3).mean(0)
    assert centre[0] > 150 and centre[1] < 30 and centre[2] < 30, f"{encoding}: got mean RGB {centre}"


def test_unsupported_encoding_names_supported_ones(rgb):
    with pytest.raises(ImageDecodeError, match=r"unsupported image encoding '32FC1'.*rgb8") as info:
        image_msg_to_rgb(msg(rgb.astype(np.float32)[:, :, 0].copy(), "32FC1"))
    assert info.value.kind == "encoding"


def test_zero_size_and_short_data():
    with pytest.raises(ImageDecodeError, match="zero-size") as info:
        image_msg_to_rgb(SimpleNamespace(encoding="rgb8", height=0, width=0, step=0, is_bigendian=False, data=b""))
    assert info.value.kind == "empty"
    with pytest.raises(ImageDecodeError, match="needs step") as info:
        image_msg_to_rgb(SimpleNamespace(encoding="rgb8", height=4, width=4, step=12, is_bigendian=False,
                                         data=b"\0" * 20))
    assert info.value.kind == "size"


def test_compressed_jpeg_and_png(rgb):
    for ext in (".jpg", ".png"):
        _, buf = cv2.imencode(ext, rgb[:, :, ::-1])
        out = compressed_msg_to_rgb(SimpleNamespace(format=ext[1:], data=buf.tobytes()))
        assert out.shape == rgb.shape
        assert np.abs(out.astype(int) - rgb).mean() < (3 if ext == ".jpg" else 1e-9)


def test_corrupt_and_empty_compressed(corridor):
    jpeg = (corridor / "query" / "0000010.jpg").read_bytes()
    corrupt = b"\xff\xd8" + bytes(reversed(jpeg[2:200]))
    with pytest.raises(ImageDecodeError, match="could not be decoded") as info:
        compressed_msg_to_rgb(SimpleNamespace(format="jpeg", data=corrupt))
    assert info.value.kind == "decode"
    with pytest.raises(ImageDecodeError, match="empty CompressedImage"):
        compressed_msg_to_rgb(SimpleNamespace(format="jpeg", data=b""))


# ---- YUV 4:2:2 (USB cameras) --------------------------------------------------------------------------------
#: ITU-R BT.601 video range: [Y, U, V] = BT601 @ [R, G, B] + BT601_OFFSET, RGB in 0..255.
BT601 = np.array([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]]) / 255.0
BT601_OFFSET = np.array([16.0, 128.0, 128.0])


def yuv422(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Y (H, W) and U, V (H, W/2) bytes of an RGB image: each horizontal pixel pair shares its mean chroma."""
    yuv = np.clip(np.rint(rgb.astype(np.float64) @ BT601.T + BT601_OFFSET), 0, 255)
    chroma = np.rint((yuv[:, 0::2, 1:] + yuv[:, 1::2, 1:]) / 2)
    return yuv[..., 0].astype(np.uint8), chroma[..., 0].astype(np.uint8), chroma[..., 1].astype(np.uint8)


def rgb_of_yuv422(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The exact inverse of BT.601 with each chroma sample spread over its pixel pair: what a decoder must give."""
    yuv = np.dstack([y, np.repeat(u, 2, axis=1), np.repeat(v, 2, axis=1)]).astype(np.float64) - BT601_OFFSET
    return np.clip(np.rint(yuv @ np.linalg.inv(BT601).T), 0, 255).astype(np.uint8)


def pack(y: np.ndarray, u: np.ndarray, v: np.ndarray, order: str) -> np.ndarray:
    """Interleave the planes as UYVY (U0 Y0 V0 Y1) or YUY2 (Y0 U0 Y1 V0); returns (H, W, 2) bytes."""
    y0, y1 = y[:, 0::2], y[:, 1::2]
    quads = np.stack([u, y0, v, y1] if order == "UYVY" else [y0, u, y1, v], axis=-1)
    return quads.reshape(y.shape[0], y.shape[1], 2)


@pytest.mark.parametrize(("encoding", "order"), [("yuv422", "UYVY"), ("uyvy", "UYVY"), ("yuv422_yuy2", "YUY2"),
                                                 ("yuyv", "YUY2")])
@pytest.mark.parametrize("pad", [0, 6])
def test_yuv422_packings_decode_to_the_bt601_image(rgb, encoding, order, pad):
    planes = yuv422(rgb)
    out = image_msg_to_rgb(msg(pack(*planes, order), encoding, step_pad=pad))
    assert out.shape == rgb.shape and out.dtype == np.uint8
    # OpenCV's fixed-point conversion vs the exact formula: at most 2 levels apart in any channel.
    diff = np.abs(out.astype(int) - rgb_of_yuv422(*planes))
    assert diff.reshape(-1, 3).max(axis=0).tolist() <= [2, 2, 2], diff.reshape(-1, 3).max(axis=0)
    # Against the original image only 4:2:2 chroma subsampling and 8-bit rounding remain.
    assert (np.abs(out.astype(int) - rgb).reshape(-1, 3).mean(axis=0) < 2.0).all()


def test_yuv422_byte_orders_are_not_interchangeable(rgb):
    planes = yuv422(rgb)
    uyvy = image_msg_to_rgb(msg(pack(*planes, "UYVY"), "uyvy"))
    misread = image_msg_to_rgb(msg(pack(*planes, "UYVY"), "yuyv"))
    assert np.abs(misread.astype(int) - uyvy).mean() > 20


def test_yuv422_odd_width_and_wrong_size_refused(rgb):
    with pytest.raises(ImageDecodeError, match=r"uyvy image 5x4: .*width must be even") as info:
        image_msg_to_rgb(SimpleNamespace(encoding="uyvy", height=4, width=5, step=10, is_bigendian=False,
                                         data=b"\0" * 40))
    assert info.value.kind == "size"
    good = msg(pack(*yuv422(rgb), "YUY2"), "yuv422_yuy2")
    h, w = rgb.shape[:2]
    with pytest.raises(ImageDecodeError, match=rf"yuv422_yuy2 image {w}x{h} needs step >= {2 * w} and "
                                               rf"{2 * w * h} bytes; got step {2 * w}, {2 * w * h - 1} bytes") as info:
        image_msg_to_rgb(SimpleNamespace(**{**vars(good), "data": good.data[:-1]}))
    assert info.value.kind == "size"
