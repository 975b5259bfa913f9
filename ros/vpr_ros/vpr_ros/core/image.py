"""Image loading and network-input preparation (numpy + OpenCV, no ROS).

Decoding is guarded against decompression bombs: the width and height an encoded image declares are read from its
header (PNG IHDR, JPEG SOF, other formats through Pillow, which reads only the header) before a single pixel is
decoded, and an image declaring more than a pixel limit is refused. A 389 kB PNG can declare 20000x20000 pixels,
which OpenCV would decode into 1.2 GB.
"""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image as PILImage

from vpr_ros.errors import InputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".webp")
#: Default pixel limit of every decoded image (50 megapixels: 150 MB as RGB, far above any camera frame VPR uses).
DEFAULT_MAX_PIXELS = 50_000_000

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, extended, progressive, lossless; Huffman and arithmetic coded). C4 (DHT),
# C8 (JPG) and CC (DAC) share the range but are not frames.
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
# Markers without a length field: TEM, RST0-7, SOI, EOI.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xDA)})


class ImageTooLargeError(InputError):
    """An encoded image declares more pixels than the limit allows (a decompression bomb, or a setting too low)."""


class UnknownImageSizeError(InputError):
    """An encoded image's header declares no size this can read (corrupt data or a format neither OpenCV's usual
    formats nor Pillow know), so it is not decoded."""


def _png_size(data: bytes | memoryview) -> tuple[int, int] | None:
    # The IHDR chunk must come first: length (4), type "IHDR" (4), width (4), height (4), big endian.
    if len(data) < 24 or bytes(data[12:16]) != b"IHDR":
        return None
    width, height = struct.unpack_from(">II", data, 16)
    return int(width), int(height)


def _jpeg_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """Walk the marker segments from SOI to the first start-of-frame (a few hundred bytes in practice)."""
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if marker in _JPEG_SOF:
            if pos + 9 > end or length < 7:
                return None
            height, width = struct.unpack_from(">HH", data, pos + 5)
            return int(width), int(height)
        if marker == 0xDA or length < 2:  # start of scan before any frame header: not a valid JPEG
            return None
        pos += 2 + length
    return None


def declared_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """(width, height) an encoded image declares in its header, read without decoding it; None if unknown.

    Raises ImageTooLargeError when Pillow itself refuses the header as a decompression bomb (it does so above
    ``2 * PIL.Image.MAX_IMAGE_PIXELS`` before telling the size).

    Example (the header of a shipped corridor JPEG):
        >>> from vpr_ros.core.paths import resolve_path
        >>> declared_size(resolve_path("data/corridor/ref/0000000.jpg").read_bytes())
        (160, 120)
    """
    head = bytes(data[:8])
    if head == _PNG_SIGNATURE:
        return _png_size(data)
    if head[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            with PILImage.open(io.BytesIO(bytes(data))) as image:  # lazy: reads the header only
                width, height = image.size
    except PILImage.DecompressionBombError as exc:
        raise ImageTooLargeError(f"declares too many pixels ({exc})") from exc
    except Exception:
        return None
    return int(width), int(height)


def check_pixel_limit(width: int, height: int, max_pixels: int, what: str) -> None:
    """ImageTooLargeError naming ``what`` unless width * height <= max_pixels."""
    if width * height > max_pixels:
        raise ImageTooLargeError(f"{what} declares {width}x{height} = {width * height / 1e6:.1f} megapixels, above "
                                 f"the limit of {max_pixels / 1e6:g} megapixels ({max_pixels} pixels; "
                                 "--max-pixels or the max_pixels setting raises it); not decoded")


def decode_rgb(data: bytes | memoryview | np.ndarray, what: str, max_pixels: int = DEFAULT_MAX_PIXELS
               ) -> np.ndarray | None:
    """Encoded image bytes -> RGB uint8 (H, W, 3), or None if OpenCV cannot decode them.

    The declared size is checked against ``max_pixels`` first (ImageTooLargeError, naming ``what``); data whose
    header declares no readable size is refused (UnknownImageSizeError) rather than decoded blind.
    """
    buffer = data if isinstance(data, np.ndarray) else np.frombuffer(data, dtype=np.uint8)
    try:
        size = declared_size(memoryview(buffer))
    except ImageTooLargeError as exc:
        raise ImageTooLargeError(f"{what} {exc}, above the limit of {max_pixels} pixels; not decoded") from exc
    if size is None:
        raise UnknownImageSizeError(f"{what}: not a readable image (no width and height in its header: corrupt, or "
                                    f"not JPEG/PNG/BMP/TIFF/PPM/WebP; {buffer.size} bytes)")
    check_pixel_limit(*size, max_pixels, what)
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR) if buffer.size else None
    if image is None or image.size == 0:
        return None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def load_rgb(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as RGB uint8 (H, W, 3); InputError naming the file if it cannot be read or declares
    more than ``max_pixels`` pixels (checked from its header, before decoding)."""
    data = np.fromfile(str(path), dtype=np.uint8)
    if data.size == 0:
        raise InputError(f"{path}: not a readable image (expected JPEG/PNG/...; empty file)")
    image = decode_rgb(data, str(path), max_pixels)
    if image is None:
        raise InputError(f"{path}: not a readable image (expected JPEG/PNG/...; {data.size} bytes)")
    return image


def check_rgb(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Validate an RGB uint8 (H, W, 3) array and return it contiguous."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise ValueError(f"{name}: expected an RGB array of shape (H, W, 3), got shape {shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{name}: empty image of shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"{name}: expected dtype uint8, got {image.dtype}")
    return np.ascontiguousarray(image)


def resize_rgb(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize to (height, width): area filter when shrinking (no aliasing), bilinear when enlarging."""
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    shrinking = height * width < h * w
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interp)


def to_network_input(images: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """Stack RGB uint8 images into float32 (B, 3, height, width) in 0..255 (models normalise in-graph).

    Shape:
        images: B arrays of (H_i, W_i, 3) uint8, any sizes.
        returns: (B, 3, height, width) float32.
    """
    batch = np.empty((len(images), 3, height, width), dtype=np.float32)
    for i, image in enumerate(images):
        batch[i] = resize_rgb(check_rgb(image, f"image {i}"), height, width).transpose(2, 0, 1)
    return batch
