"""sensor_msgs Image / CompressedImage -> RGB uint8 numpy, without cv_bridge (live topics and bags alike).

The functions take the message duck-typed (only its fields are read), so they run without rclpy too.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from vpr_ros.core.image import (
    DEFAULT_MAX_PIXELS,
    ImageTooLargeError,
    UnknownImageSizeError,
    check_pixel_limit,
    decode_rgb,
)
from vpr_ros.errors import InputError

# ROS encoding -> (channels, numpy dtype, OpenCV conversion to RGB or None)
_ENCODINGS: dict[str, tuple[int, Any, int | None]] = {
    "rgb8": (3, np.uint8, None),
    "bgr8": (3, np.uint8, cv2.COLOR_BGR2RGB),
    "rgba8": (4, np.uint8, cv2.COLOR_RGBA2RGB),
    "bgra8": (4, np.uint8, cv2.COLOR_BGRA2RGB),
    "mono8": (1, np.uint8, cv2.COLOR_GRAY2RGB),
    "8UC1": (1, np.uint8, cv2.COLOR_GRAY2RGB),
    "8UC3": (3, np.uint8, cv2.COLOR_BGR2RGB),
    "mono16": (1, np.uint16, cv2.COLOR_GRAY2RGB),
    "16UC1": (1, np.uint16, cv2.COLOR_GRAY2RGB),
    "rgb16": (3, np.uint16, None),
    "bgr16": (3, np.uint16, cv2.COLOR_BGR2RGB),
    # ROS names the 2x2 pattern from the top-left pixel; OpenCV names it from the second row, hence the swap.
    "bayer_rggb8": (1, np.uint8, cv2.COLOR_BayerBG2RGB),
    "bayer_bggr8": (1, np.uint8, cv2.COLOR_BayerRG2RGB),
    "bayer_gbrg8": (1, np.uint8, cv2.COLOR_BayerGR2RGB),
    "bayer_grbg8": (1, np.uint8, cv2.COLOR_BayerGB2RGB),
    "bayer_rggb16": (1, np.uint16, cv2.COLOR_BayerBG2RGB),
    "bayer_bggr16": (1, np.uint16, cv2.COLOR_BayerRG2RGB),
    "bayer_gbrg16": (1, np.uint16, cv2.COLOR_BayerGR2RGB),
    "bayer_grbg16": (1, np.uint16, cv2.COLOR_BayerGB2RGB),
    # YUV 4:2:2, two pixels in four bytes (USB / V4L2 cameras), BT.601 video range as OpenCV converts it.
    # cv_bridge reads the older names the same way: "yuv422" is UYVY (U0 Y0 V0 Y1), "yuv422_yuy2" is YUY2
    # (Y0 U0 Y1 V0); sensor_msgs later added "uyvy" and "yuyv" as their clearer names.
    "yuv422": (2, np.uint8, cv2.COLOR_YUV2RGB_UYVY),
    "uyvy": (2, np.uint8, cv2.COLOR_YUV2RGB_UYVY),
    "yuv422_yuy2": (2, np.uint8, cv2.COLOR_YUV2RGB_YUY2),
    "yuyv": (2, np.uint8, cv2.COLOR_YUV2RGB_YUY2),
}
SUPPORTED_ENCODINGS = tuple(_ENCODINGS)
#: Encodings whose pixels come in horizontal pairs sharing one chroma sample: the width must be even.
_PIXEL_PAIRS = frozenset({"yuv422", "uyvy", "yuv422_yuy2", "yuyv"})


class ImageDecodeError(InputError):
    """An image message cannot be turned into an RGB image. ``kind`` groups errors for diagnostics."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _pixels(msg: Any, dtype: Any, channels: int, max_pixels: int, what: str) -> np.ndarray:
    """The pixels of an Image message as (H, W[, channels]) ``dtype`` in the message's byte order, after checking
    its size against ``max_pixels`` (before any copy) and its ``step`` and data length against its size."""
    encoding = str(msg.encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise ImageDecodeError("empty", f"zero-size image ({width}x{height}, encoding {encoding})")
    try:
        check_pixel_limit(width, height, max_pixels, what)
    except ImageTooLargeError as exc:
        raise ImageDecodeError("too_large", str(exc)) from exc
    row_bytes = width * channels * np.dtype(dtype).itemsize
    data = np.frombuffer(bytes(msg.data) if not isinstance(msg.data, (bytes, bytearray, memoryview, np.ndarray))
                         else msg.data, dtype=np.uint8)
    if step < row_bytes or data.size < step * (height - 1) + row_bytes:
        raise ImageDecodeError("size", f"{encoding} image {width}x{height} needs step >= {row_bytes} and "
                                       f"{step * (height - 1) + row_bytes} bytes; got step {step}, {data.size} bytes")
    rows = np.lib.stride_tricks.as_strided(data, shape=(height, row_bytes), strides=(step, 1))
    pixels = np.ascontiguousarray(rows).view(np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<"))
    return pixels.reshape(height, width, channels) if channels > 1 else pixels.reshape(height, width)


def image_msg_to_rgb(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """sensor_msgs/Image -> (H, W, 3) uint8 RGB. 16-bit images keep their 8 most significant bits.

    ``step`` (row padding) is honoured for every encoding, ``is_bigendian`` for the 16-bit ones (8-bit data,
    YUV included, is a byte sequence with no byte order). An image of more than ``max_pixels`` pixels is refused
    before it is copied or converted.
    """
    encoding = str(msg.encoding)
    spec = _ENCODINGS.get(encoding)
    if spec is None:
        raise ImageDecodeError("encoding", f"unsupported image encoding {encoding!r}; supported: "
                                           f"{', '.join(SUPPORTED_ENCODINGS)}")
    channels, dtype, conversion = spec
    if encoding in _PIXEL_PAIRS and int(msg.width) % 2:
        raise ImageDecodeError("size", f"{encoding} image {msg.width}x{msg.height}: this encoding packs pixels in "
                                       "pairs, so the width must be even")
    pixels = _pixels(msg, dtype, channels, max_pixels, f"{encoding} image ({channels} channel(s))")
    itemsize = np.dtype(dtype).itemsize
    if itemsize == 2:
        pixels = (pixels.astype(np.uint16) >> 8).astype(np.uint8)
    else:
        pixels = pixels.astype(np.uint8, copy=False)
    if conversion is not None:
        pixels = cv2.cvtColor(pixels, conversion)
    return np.ascontiguousarray(pixels)


def compressed_msg_to_rgb(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """sensor_msgs/CompressedImage (JPEG, PNG, ...) -> (H, W, 3) uint8 RGB.

    The size the data declares in its header is checked against ``max_pixels`` before anything is decoded
    (a small PNG can declare gigabytes of pixels).
    """
    data = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    fmt = str(getattr(msg, "format", "")) or "unknown"
    if data.size == 0:
        raise ImageDecodeError("empty", f"empty CompressedImage (format {fmt!r})")
    what = f"CompressedImage with format {fmt!r} ({data.size} bytes)"
    try:
        image = decode_rgb(data, what, max_pixels)
    except ImageTooLargeError as exc:
        raise ImageDecodeError("too_large", str(exc)) from exc
    except UnknownImageSizeError:
        image = None
    if image is None:
        raise ImageDecodeError("decode", f"{what} could not be decoded (corrupt or unsupported data)")
    return image


#: Depth image encodings (REP 118): 32FC1 in metres, 16UC1 in millimetres; their units per metre.
DEPTH_ENCODINGS = {"32FC1": (np.float32, 1.0), "16UC1": (np.uint16, 1000.0), "mono16": (np.uint16, 1000.0)}


def depth_msg_to_metres(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A depth sensor_msgs/Image (REP 118: ``32FC1`` metres or ``16UC1`` millimetres) -> (H, W) float32 metres,
    NaN where the sensor has no depth (0, NaN or inf).

    Example:
        >>> from types import SimpleNamespace
        >>> msg = SimpleNamespace(encoding="16UC1", height=1, width=2, step=4, is_bigendian=0,
        ...                       data=np.array([1500, 0], "<u2").tobytes())
        >>> depth_msg_to_metres(msg).tolist()
        [[1.5, nan]]
    """
    encoding = str(msg.encoding)
    if encoding not in DEPTH_ENCODINGS:
        raise ImageDecodeError("encoding", f"unsupported depth encoding {encoding!r}; supported: "
                                           f"{', '.join(DEPTH_ENCODINGS)} (REP 118)")
    dtype, per_metre = DEPTH_ENCODINGS[encoding]
    metres = _pixels(msg, dtype, 1, max_pixels, f"{encoding} depth image").astype(np.float32) / np.float32(per_metre)
    metres[~np.isfinite(metres) | (metres <= 0)] = np.nan
    return metres
