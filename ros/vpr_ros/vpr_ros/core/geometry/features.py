"""Local features (OpenCV SIFT or ORB) and their matching: what the online map stores per keyframe.

A keyframe's :class:`Features` are plain numpy arrays (``to_arrays`` / ``from_arrays`` round-trip through
``np.savez`` without pickle): keypoint positions in the full image's pixels, descriptors as uint8 (SIFT's
OpenCV descriptors are integers 0..255 stored as float32, so uint8 loses nothing), and optionally the depth
at each keypoint (metres, NaN where unknown) for metric PnP later.

Bytes per keypoint: SIFT 128 (descriptor) + 8 (x, y float32) = 136; ORB 32 + 8 = 40; + 4 with depths.

Matching (:func:`match_features`) is a vectorised brute-force search: the whole distance matrix at once
(L2 for SIFT, Hamming for ORB through a +-1 dot product), Lowe's ratio test on the two nearest neighbours and a
mutual-nearest-neighbour check.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np

from vpr_ros.config import setting
from vpr_ros.errors import InputError

FEATURE_ARRAY_KEYS = ("keypoints", "descriptors", "depths", "image_size", "kind")


@dataclass(frozen=True)
class FeatureConfig:
    """Local features for geometric verification."""

    detector: str = setting("sift", "local feature detector/descriptor: sift (136 bytes per keypoint, more "
                            "accurate) or orb (40 bytes per keypoint, faster)", choices=("sift", "orb"))
    max_features: int = setting(1000, "keep at most this many keypoints per image (the strongest)", min=8)
    max_image_side: int = setting(640, "images larger than this (longer side, pixels) are shrunk before "
                                  "detection; keypoints are reported in the original image's pixels", min=32)
    # Lowered from OpenCV's 0.04: the default finds ~80 keypoints on the 160x120 corridor frames, 0.02 ~2x more.
    sift_contrast_threshold: float = setting(0.02, "SIFT contrast threshold (OpenCV default 0.04); lower finds "
                                             "more keypoints on dim, low-texture images", min=0.0)
    ratio: float = setting(0.8, "Lowe's ratio test: nearest / second-nearest descriptor distance must be below "
                           "this", min=0.0, max=1.0)
    mutual: bool = setting(True, "keep only mutual nearest neighbours")


@dataclass(frozen=True)
class Features:
    """Keypoints and descriptors of one image.

    Shape:
        keypoints: (N, 2) float32, pixel x, y in the original image
        descriptors: (N, D) uint8, D = 128 (SIFT) or 32 (ORB, packed bits)
        depths: (N,) float32 metres along the optical axis (NaN unknown), or None
        image_size: (height, width) of the original image
    """

    keypoints: np.ndarray
    descriptors: np.ndarray
    kind: str
    image_size: tuple[int, int]
    depths: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.keypoints)
        if self.keypoints.shape != (n, 2) or self.descriptors.ndim != 2 or len(self.descriptors) != n:
            raise InputError(f"features: keypoints (N, 2) and descriptors (N, D) expected, got "
                             f"{self.keypoints.shape} and {self.descriptors.shape}")
        width = {"sift": 128, "orb": 32}.get(self.kind)
        if width is None or self.descriptors.shape[1] != width or self.descriptors.dtype != np.uint8:
            raise InputError(f"features: {self.kind!r} descriptors must be uint8 (N, 128) for sift or (N, 32) "
                             f"for orb, got {self.descriptors.dtype} {self.descriptors.shape}")
        if self.depths is not None and self.depths.shape != (n,):
            raise InputError(f"features: depths must have shape ({n},), got {self.depths.shape}")

    def __len__(self) -> int:
        return len(self.keypoints)

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays a map stores for this image."""
        return int(self.keypoints.nbytes + self.descriptors.nbytes
                   + (self.depths.nbytes if self.depths is not None else 0))

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays for ``np.savez`` (no object arrays: loadable with ``allow_pickle=False``)."""
        out = {"keypoints": self.keypoints, "descriptors": self.descriptors, "kind": np.array(self.kind),
               "image_size": np.array(self.image_size, dtype=np.int64)}
        if self.depths is not None:
            out["depths"] = self.depths
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> Features:
        """Inverse of :meth:`to_arrays` (accepts an ``np.load`` NpzFile)."""
        missing = [k for k in ("keypoints", "descriptors", "kind", "image_size") if k not in arrays]
        if missing:
            raise InputError(f"features: missing array(s) {', '.join(missing)}")
        size = np.asarray(arrays["image_size"]).astype(int).tolist()
        depths = np.asarray(arrays["depths"], dtype=np.float32) if "depths" in arrays else None
        return cls(keypoints=np.asarray(arrays["keypoints"], dtype=np.float32),
                   descriptors=np.asarray(arrays["descriptors"]), kind=str(np.asarray(arrays["kind"])),
                   image_size=(int(size[0]), int(size[1])), depths=depths)

    def with_depth(self, depth: np.ndarray) -> Features:
        """These features with the depth image (H, W) metres (0 / NaN / inf = unknown) sampled at each keypoint
        (nearest pixel); the depth image must have the size of the image the features came from."""
        depth = np.asarray(depth)
        if depth.shape != self.image_size:
            raise InputError(f"depth image: shape {depth.shape} differs from the image's {self.image_size}")
        h, w = self.image_size
        cols = np.clip(np.rint(self.keypoints[:, 0]).astype(int), 0, w - 1)
        rows = np.clip(np.rint(self.keypoints[:, 1]).astype(int), 0, h - 1)
        z = depth[rows, cols].astype(np.float32)
        z[~np.isfinite(z) | (z <= 0)] = np.nan
        return Features(self.keypoints, self.descriptors, self.kind, self.image_size, z)


def _gray(rgb: np.ndarray) -> np.ndarray:
    if rgb.ndim == 2:
        return rgb if rgb.dtype == np.uint8 else np.clip(rgb, 0, 255).astype(np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] not in (3, 4) or rgb.dtype != np.uint8:
        raise InputError(f"image: expected uint8 (H, W, 3) RGB or (H, W) gray, got {rgb.dtype} {rgb.shape}")
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY if rgb.shape[2] == 3 else cv2.COLOR_RGBA2GRAY)


def extract_features(rgb: np.ndarray, config: FeatureConfig | None = None,
                     depth: np.ndarray | None = None) -> Features:
    """Detect and describe keypoints of an RGB (H, W, 3) or gray (H, W) uint8 image.

    Args:
        rgb: the image.
        config: detector settings.
        depth: optional depth image (H, W) in metres aligned with ``rgb``; sampled at the keypoints.
    """
    config = config or FeatureConfig()
    gray = _gray(rgb)
    h, w = gray.shape
    scale = min(1.0, config.max_image_side / max(h, w))
    work = cv2.resize(gray, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA) \
        if scale < 1.0 else gray
    if config.detector == "sift":
        detector = cv2.SIFT_create(nfeatures=config.max_features, contrastThreshold=config.sift_contrast_threshold)
    else:
        # A smaller border and patch than OpenCV's 31 px keeps keypoints on thumbnails (160x120).
        detector = cv2.ORB_create(nfeatures=config.max_features, edgeThreshold=15, patchSize=15)
    keypoints, descriptors = detector.detectAndCompute(work, None)
    width = 128 if config.detector == "sift" else 32
    if descriptors is None or not keypoints:
        pts = np.zeros((0, 2), np.float32)
        desc = np.zeros((0, width), np.uint8)
    else:
        # SIFT can return a few more than nfeatures (ties); keep the strongest.
        order = np.argsort([-k.response for k in keypoints], kind="stable")[: config.max_features]
        pts = np.array([k.pt for k in keypoints], dtype=np.float32)[order]
        # Back to the original image's pixels (pixel-centre convention of cv2.resize).
        pts = (pts + 0.5) / scale - 0.5 if scale < 1.0 else pts
        desc = np.clip(np.rint(descriptors[order]), 0, 255).astype(np.uint8)
    features = Features(pts.astype(np.float32), desc, config.detector, (h, w))
    return features.with_depth(depth) if depth is not None else features


def _distances(a: np.ndarray, b: np.ndarray, kind: str) -> np.ndarray:
    """All pairwise descriptor distances (Na, Nb), float32: L2 (SIFT) or Hamming (ORB)."""
    if kind == "sift":
        fa, fb = a.astype(np.float32), b.astype(np.float32)
        sq = (fa * fa).sum(1)[:, None] + (fb * fb).sum(1)[None, :] - 2.0 * fa @ fb.T
        return np.sqrt(np.maximum(sq, 0.0))
    # Hamming distance of bit vectors from a dot product of +-1 vectors: popcount(a xor b) = (D - a.b) / 2.
    sa = np.unpackbits(a, axis=1).astype(np.float32) * 2.0 - 1.0
    sb = np.unpackbits(b, axis=1).astype(np.float32) * 2.0 - 1.0
    return (sa.shape[1] - sa @ sb.T) * 0.5


def match_features(query: Features, keyframe: Features, config: FeatureConfig | None = None) -> np.ndarray:
    """Correspondences query -> keyframe: index pairs (M, 2) int64, column 0 query, column 1 keyframe."""
    config = config or FeatureConfig()
    if query.kind != keyframe.kind:
        raise InputError(f"features: cannot match {query.kind} against {keyframe.kind} descriptors")
    if len(query) < 2 or len(keyframe) < 2:
        return np.zeros((0, 2), np.int64)
    dist = _distances(query.descriptors, keyframe.descriptors, query.kind)
    two = np.argpartition(dist, 1, axis=1)[:, :2]
    d2 = np.take_along_axis(dist, two, axis=1)
    first = np.argmin(d2, axis=1)
    nearest = two[np.arange(len(two)), first]
    d_best, d_second = d2.min(axis=1), d2.max(axis=1)
    keep = d_best < config.ratio * d_second
    if config.mutual:
        keep &= np.argmin(dist, axis=0)[nearest] == np.arange(len(nearest))
    rows = np.flatnonzero(keep)
    return np.stack([rows, nearest[rows]], axis=1).astype(np.int64)
