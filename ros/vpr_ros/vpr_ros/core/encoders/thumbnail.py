"""Weights-free ``thumbnail`` encoder: downsampled, patch-normalised grey images, as SeqSLAM uses.

SeqSLAM (Milford & Wyeth, ICRA 2012) compares images as tiny grey thumbnails whose pixels are normalised
within small square patches (zero mean, unit standard deviation per patch), which removes most of the
illumination change between traversals and needs no training. Alone, such a descriptor is weak; along a
sequence (:mod:`vpr_ros.core.sequence`) it is the classic baseline for routes like Nordland, and the only
encoder that still works on cameras of a few dozen pixels.

Select it with ``EncoderConfig.model = "thumbnail:WxH"`` or ``"thumbnail:WxH,patch=P"`` (default P = 8),
e.g. ``thumbnail:64x32,patch=8``. The descriptor is the normalised thumbnail flattened and L2-normalised,
so FAISS inner products are cosine similarities like every other encoder's. Its identity
(:meth:`ThumbnailEncoder.describe`) carries the sha256 of the canonical spec, so a map built with one
thumbnail setting refuses another.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from vpr_ros.core.encoders.base import EncoderConfig
from vpr_ros.core.encoders.model_card import ModelCard
from vpr_ros.core.image import check_rgb
from vpr_ros.errors import InputError

THUMBNAIL_PREFIX = "thumbnail"
#: Bump when the computation changes, so maps built by an older version are refused.
THUMBNAIL_VERSION = 1
_SPEC = re.compile(r"^(?P<w>\d+)x(?P<h>\d+)(?:,patch=(?P<p>\d+))?$")
#: Patches whose grey levels barely vary (sky, black frames) are scaled by at most 1 / this, so their
#: sensor noise is not blown up to the contrast of a textured patch.
_MIN_PATCH_STD = 1.0


@dataclass(frozen=True)
class ThumbnailSpec:
    """Thumbnail size and normalisation patch, parsed from ``thumbnail:WxH[,patch=P]``."""

    width: int
    height: int
    patch: int = 8

    @classmethod
    def parse(cls, model: str) -> ThumbnailSpec:
        """``"thumbnail:64x32,patch=8"`` -> ThumbnailSpec(64, 32, 8); ValueError naming what is wrong."""
        prefix, _, spec = model.partition(":")
        match = _SPEC.match(spec.replace(" ", ""))
        if prefix != THUMBNAIL_PREFIX or match is None:
            raise InputError(f"encoder model {model!r}: expected 'thumbnail:WxH' or 'thumbnail:WxH,patch=P', "
                             "e.g. 'thumbnail:64x32,patch=8'")
        width, height = int(match["w"]), int(match["h"])
        patch = int(match["p"]) if match["p"] else cls.patch
        if min(width, height, patch) < 1:
            raise InputError(f"encoder model {model!r}: width, height and patch must be positive")
        if width % patch or height % patch:
            raise InputError(f"encoder model {model!r}: the patch side {patch} must divide the thumbnail "
                             f"size {width}x{height}")
        return cls(width, height, patch)

    @property
    def name(self) -> str:
        return f"{THUMBNAIL_PREFIX}:{self.width}x{self.height},patch={self.patch}"

    @property
    def dim(self) -> int:
        return self.width * self.height

    def sha256(self) -> str:
        """Digest of everything that determines the descriptor (the stable identity of this encoder)."""
        canonical = {"encoder": THUMBNAIL_PREFIX, "version": THUMBNAIL_VERSION, "width": self.width,
                     "height": self.height, "patch": self.patch, "grey": "opencv RGB2GRAY",
                     "resize": "opencv INTER_AREA (shrink) / INTER_LINEAR (enlarge)",
                     "min_patch_std": _MIN_PATCH_STD}
        return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


def patch_normalise(grey: np.ndarray, patch: int) -> np.ndarray:
    """Normalise each non-overlapping ``patch`` x ``patch`` block to zero mean and unit standard deviation.

    Shape:
        grey: (B, H, W) float32 with H and W multiples of ``patch``; returns the same shape.
    """
    b, h, w = grey.shape
    if h % patch or w % patch:
        raise ValueError(f"patch_normalise: image size {h}x{w} is not a multiple of the patch side {patch}")
    blocks = grey.reshape(b, h // patch, patch, w // patch, patch)
    mean = blocks.mean(axis=(2, 4), keepdims=True)
    std = blocks.std(axis=(2, 4), keepdims=True)
    return ((blocks - mean) / np.maximum(std, _MIN_PATCH_STD)).reshape(b, h, w)


def thumbnail_descriptors(images: list[np.ndarray], spec: ThumbnailSpec) -> np.ndarray:
    """RGB uint8 images -> L2-normalised patch-normalised grey thumbnails.

    Shape:
        images: B arrays (H_i, W_i, 3) uint8 of any size; returns (B, width * height) float32.
    """
    grey = np.empty((len(images), spec.height, spec.width), dtype=np.float32)
    for i, image in enumerate(images):
        small = check_rgb(image, f"image {i}")
        h, w = small.shape[:2]
        interp = cv2.INTER_AREA if spec.height * spec.width < h * w else cv2.INTER_LINEAR
        if (h, w) != (spec.height, spec.width):
            small = cv2.resize(small, (spec.width, spec.height), interpolation=interp)
        grey[i] = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    desc = patch_normalise(grey, spec.patch).reshape(len(images), spec.dim)
    norms = np.linalg.norm(desc, axis=1, keepdims=True)
    # A uniform image (a black frame) has no structure at all: it becomes the zero vector, similar to nothing.
    return np.divide(desc, norms, out=np.zeros_like(desc), where=norms > 0)


class ThumbnailEncoder:
    """The :class:`vpr_ros.core.encoders.Encoder` of ``thumbnail:WxH[,patch=P]`` models (kind ``global``).

    The thumbnail size is part of the encoder's identity, so :meth:`features` always produces it,
    whatever network input size a map records.

    Example:
        >>> enc = ThumbnailEncoder(EncoderConfig(model="thumbnail:32x16,patch=8"))
        >>> enc.features([np.zeros((120, 160, 3), np.uint8)], 16, 32).shape
        (1, 512)
    """

    def __init__(self, config: EncoderConfig | None = None) -> None:
        self.config = config or EncoderConfig(model="thumbnail:64x32,patch=8")
        self.spec = ThumbnailSpec.parse(self.config.model)
        self.sha256 = self.spec.sha256()
        self.providers = ["numpy"]
        self.head = None
        size = [self.spec.height, self.spec.width]
        self.card = ModelCard(
            id=THUMBNAIL_PREFIX, kind="global", onnx_file="", onnx_sha256="", input_name="", output_name="",
            channels=self.spec.dim, stride=1, default_size=(self.spec.height, self.spec.width),
            raw={"id": THUMBNAIL_PREFIX, "kind": "global", "spec": self.spec.name,
                 "input": {"default_size": size, "fixed_size": True, "size_multiple": 1},
                 "output": {"channels": self.spec.dim}})

    @property
    def id(self) -> str:
        return THUMBNAIL_PREFIX

    def describe(self) -> dict[str, Any]:
        """Identity written into maps: a map refuses a different thumbnail size or patch."""
        return {"id": THUMBNAIL_PREFIX, "kind": "global", "spec": self.spec.name, "spec_sha256": self.sha256,
                "channels": self.spec.dim, "stride": 1}

    def features(self, images: list[np.ndarray], height: int, width: int) -> np.ndarray:
        """Global descriptors of RGB uint8 images (``height`` and ``width`` are ignored, see the class doc).

        Shape:
            returns: (B, width * height of the spec) float32, L2-normalised rows.
        """
        del height, width
        return thumbnail_descriptors(images, self.spec)
