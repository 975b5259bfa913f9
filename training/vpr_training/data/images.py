"""Image loading for training: exactly the node's preprocessing (``vpr_ros.core.image``), optionally cached.

Images are decoded with OpenCV as RGB and resized with ``to_network_input`` (area filter when shrinking,
bilinear when enlarging) to float32 (B, 3, H, W) in 0..255, as the localize node does, so a trained model
sees at training time what it will see on the robot. Decoding runs in a thread pool (OpenCV releases the
GIL); small datasets can keep their resized images in memory (``cache_limit``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from vpr_ros.core.image import load_rgb, resize_rgb


class ImageLoader:
    """Loads batches of image files as network input.

    Args:
        size: (height, width) of the network input.
        workers: decoding threads (0 = in the calling thread).
        cache_limit: keep up to this many resized images in memory (0 = no cache).
    """

    def __init__(self, size: tuple[int, int], workers: int = 0, cache_limit: int = 0) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.cache_limit = cache_limit
        self._cache: dict[str, np.ndarray] = {}
        self._pool = ThreadPoolExecutor(workers) if workers > 0 else None

    def _one(self, path: str) -> np.ndarray:
        cached = self._cache.get(path)
        if cached is not None:
            return cached
        try:
            image = resize_rgb(load_rgb(path), *self.size)
        except FileNotFoundError:
            raise FileNotFoundError(f"training image {path} does not exist") from None
        if len(self._cache) < self.cache_limit:
            self._cache[path] = image
        return image

    def load(self, paths: list[str] | list[Path]) -> np.ndarray:
        """(B, 3, H, W) float32 RGB in 0..255."""
        keys = [str(p) for p in paths]
        images = list(self._pool.map(self._one, keys)) if self._pool else [self._one(k) for k in keys]
        batch = np.empty((len(images), 3, *self.size), dtype=np.float32)
        for i, image in enumerate(images):
            batch[i] = image.transpose(2, 0, 1)
        return batch

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
