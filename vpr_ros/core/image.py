"""Image loading and network-input preparation (numpy + OpenCV, no ROS)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from vpr_ros.errors import InputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".webp")


def load_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as RGB uint8 (H, W, 3); raise ValueError naming the file if it cannot be read."""
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise InputError(f"{path}: not a readable image (expected JPEG/PNG/...; {data.size} bytes)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


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
