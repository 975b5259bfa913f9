"""The Patch-NetVLAD patch store of a reference map: which patches, how they are encoded, where they live.

A map built with ``patches.preset`` other than ``none`` keeps, per frame and per patch size, the patch
descriptors of :mod:`vpr_ros.core.patchnetvlad.descriptors` in ``arrays/patches_s<size>_t<stride>.npy``
(memory-mapped on load, checksummed like every map file) and describes them in the manifest section ``patches``: preset,
sizes, strides, fusion weights, dimension, encoding, feature grid, pixel stride and bytes per frame.
Patch centres are not stored per frame: every frame of a map has the same network input, so they follow
from the grid (:meth:`PatchGrid.centres`).

Encodings (per frame, (n_p, P) descriptors with L2-normalised rows):

* ``float32`` -- 4 bytes per value, what the official implementation keeps (1.8 MB per 640x480 frame for
  936 patches of 512 dimensions);
* ``float16`` -- 2 bytes, relative rounding 2^-11;
* ``int8`` -- 1 byte: ``round(x * 127 / max|x|)`` with one scale per frame (also stored, ``*_scale``),
  kept as uint8 = int8 + 128 for the integer matrix kernels; absolute error <= max|x| / 254 per value.
  One scale per image leaves every nearest-neighbour decision of that image's similarities unchanged
  (:mod:`vpr_ros.core.patchnetvlad.matching`), so matching needs no dequantisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from vpr_ros.config import config_from_dict, setting
from vpr_ros.core.patchnetvlad.descriptors import STRATEGIES, PatchGrid, make_grids, patch_descriptors
from vpr_ros.core.patchnetvlad.presets import ENCODINGS, PRESETS, scale_sizes
from vpr_ros.core.vlad import VladHead
from vpr_ros.errors import ConfigError, InputError, MapError

PATCH_STORE_VERSION = 1
SECTION = "patches"


@dataclass(frozen=True)
class PatchStoreConfig:
    """Patch-NetVLAD patches stored in the map for re-ranking (a named configuration, optionally adjusted)."""

    preset: str = setting("none", "named Patch-NetVLAD configuration of the stored patches: performance, "
                          "balanced, speed or storage (see README); none = no patch store, global retrieval "
                          "only (default: on the corridor data re-ranking lowers R@1, see README)",
                          choices=("none", *PRESETS))
    sizes: tuple[int, ...] = setting((), "patch sizes in feature cells (empty = the preset's, scaled to the "
                                     "feature grid)", min=1)
    strides: tuple[int, ...] = setting((), "patch strides in feature cells, one per size (empty = 1 each)",
                                       min=1)
    weights: tuple[float, ...] = setting((), "fusion weight per size, summing to 1 (eq. 5; empty = the "
                                         "preset's, or equal weights for custom sizes)", min=0.0)
    dim: int = setting(0, "patch descriptor dimension: leading rows of the PCA / WPCA projection (0 = the "
                       "preset's; capped by the projection's size)", min=0)
    encoding: str = setting("auto", "store encoding: auto = the preset's; float32, float16 or int8 (1 byte "
                            "per value, one scale per frame)", choices=("auto", *ENCODINGS))
    scale_to_grid: bool = setting(True, "scale the preset's sizes (given for the paper's 30-row feature map "
                                  "at 640x480) to this map's feature grid, keeping the covered image fraction")
    strategy: str = setting("auto", "patch projection: direct, shared (project locations once for all "
                            "sizes) or auto by a cost estimate; same result", choices=STRATEGIES)

    def __post_init__(self) -> None:
        if self.strides and len(self.strides) != len(self.sizes):
            raise ValueError("patches.strides needs one value per patches.sizes entry")
        n_sizes = len(self.sizes) if self.sizes else len(PRESETS[self.preset].sizes) if self.preset in PRESETS else 0
        if self.weights and len(self.weights) != n_sizes:
            raise ValueError(f"patches.weights needs one value per patch size ({n_sizes})")
        if self.weights and abs(sum(self.weights) - 1.0) > 1e-6:
            raise ValueError(f"patches.weights must sum to 1 (a convex combination, eq. 5), got {self.weights}")


@dataclass(frozen=True)
class PatchSpec:
    """A resolved patch configuration: the grids, fusion weights, dimension and encoding of a store."""

    preset: str
    grids: tuple[PatchGrid, ...]
    weights: tuple[float, ...]
    dim: int
    encoding: str

    @property
    def feature_hw(self) -> tuple[int, int]:
        return self.grids[0].feature_hw

    @staticmethod
    def array_name(grid: PatchGrid) -> str:
        return f"patches_s{grid.size}_t{grid.stride}"

    def bytes_per_frame(self) -> int:
        per_value = {"float32": 4, "float16": 2, "int8": 1}[self.encoding]
        scales = 4 * len(self.grids) if self.encoding == "int8" else 0
        return sum(g.count for g in self.grids) * self.dim * per_value + scales

    def same_patches(self, other: PatchSpec) -> bool:
        """Same sizes, strides, grid and dimension (encodings may differ: they all match the same way)."""
        return ([(g.size, g.stride, g.feature_hw) for g in self.grids]
                == [(g.size, g.stride, g.feature_hw) for g in other.grids] and self.dim == other.dim)

    def describe(self) -> str:
        sizes = ",".join(str(g.size) for g in self.grids)
        strides = ",".join(str(g.stride) for g in self.grids)
        return (f"preset {self.preset}: sizes {sizes}, strides {strides}, {self.dim}-d, {self.encoding}, "
                f"on a {self.feature_hw[0]}x{self.feature_hw[1]} feature grid")

    def section(self) -> dict[str, Any]:
        """The manifest section describing this store."""
        return {"format_version": PATCH_STORE_VERSION, "preset": self.preset,
                "sizes": [g.size for g in self.grids], "strides": [g.stride for g in self.grids],
                "weights": [float(w) for w in self.weights], "dim": self.dim, "encoding": self.encoding,
                "feature_hw": list(self.feature_hw), "pixel_stride": self.grids[0].pixel_stride,
                "patches_per_frame": [g.count for g in self.grids], "bytes_per_frame": self.bytes_per_frame(),
                "arrays": [self.array_name(g) for g in self.grids]}

    @classmethod
    def from_section(cls, section: dict[str, Any], where: str = "manifest") -> PatchSpec:
        try:
            version = int(section.get("format_version", 0))
            if version != PATCH_STORE_VERSION:
                raise InputError(f"patch store version {version}, this vpr_ros reads {PATCH_STORE_VERSION}")
            grids = make_grids(section["sizes"], section["strides"], tuple(section["feature_hw"]),
                               int(section["pixel_stride"]))
            encoding = str(section["encoding"])
            if encoding not in ENCODINGS:
                raise InputError(f"encoding {encoding!r} is not one of {list(ENCODINGS)}")
            return cls(str(section["preset"]), tuple(grids), tuple(float(w) for w in section["weights"]),
                       int(section["dim"]), encoding)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{where}: malformed '{SECTION}' section ({exc})") from None


@dataclass(frozen=True)
class PatchSection:
    """The manifest section ``patches`` as :meth:`PatchSpec.section` writes it: every key required."""

    format_version: int = setting(PATCH_STORE_VERSION, "patch store version", choices=(PATCH_STORE_VERSION,))
    preset: str = setting("speed", "named configuration", choices=tuple(PRESETS))
    sizes: tuple[int, ...] = setting((), "patch sizes in feature cells", min=1, max=1024)
    strides: tuple[int, ...] = setting((), "patch strides in feature cells", min=1, max=1024)
    weights: tuple[float, ...] = setting((), "fusion weight per size", min=0.0, max=1.0)
    dim: int = setting(1, "patch descriptor dimension", min=1, max=1 << 16)
    encoding: str = setting("float32", "store encoding", choices=ENCODINGS)
    feature_hw: tuple[int, ...] = setting((), "feature grid (rows, cols)", min=1, max=8192)
    pixel_stride: int = setting(16, "network input pixels per feature cell", min=1, max=1024)
    patches_per_frame: tuple[int, ...] = setting((), "patches per frame and size", min=1)
    bytes_per_frame: int = setting(1, "stored bytes per frame", min=1)
    arrays: tuple[str, ...] = setting((), "map arrays holding the patches, one per size")


def check_section(section: Any, input_hw: tuple[int, int], where: str) -> PatchSpec:
    """The spec of a map's ``patches`` section after checking every key's type and range and its agreement with
    the map's network input ``input_hw``; MapError naming ``where`` (the manifest) and the key."""
    at = f"{where}: sections.{SECTION}"
    if not isinstance(section, dict):
        raise MapError(f"{at}: expected a mapping, got {section!r}")
    missing = [f for f in PatchSection.__dataclass_fields__ if f not in section]
    if missing:
        raise MapError(f"{at}: missing key '{missing[0]}'")
    try:
        record = config_from_dict(PatchSection, section, where=f"sections.{SECTION}")
    except ConfigError as exc:
        raise MapError(f"{where}: {exc}") from None
    sizes = len(record.sizes)
    if not sizes or any(len(v) != sizes for v in (record.strides, record.weights, record.patches_per_frame,
                                                 record.arrays)):
        raise MapError(f"{at}: sizes, strides, weights, patches_per_frame and arrays need one entry per patch size")
    if abs(sum(record.weights) - 1.0) > 1e-6:
        raise MapError(f"{at}.weights: must sum to 1, got {list(record.weights)}")
    grid = feature_grid(input_hw, record.pixel_stride)
    if record.feature_hw != grid:
        raise MapError(f"{at}.feature_hw: {list(record.feature_hw)} but input_size {list(input_hw)} at pixel_stride "
                       f"{record.pixel_stride} gives {list(grid)}")
    try:
        spec = PatchSpec.from_section(section, where=at)
    except InputError as exc:
        raise MapError(str(exc)) from None
    expected = spec.section()
    for key in ("patches_per_frame", "bytes_per_frame", "arrays"):
        if section[key] != expected[key]:
            raise MapError(f"{at}.{key}: {section[key]} but the sizes, strides and encoding give {expected[key]}")
    return spec


def feature_grid(input_hw: tuple[int, int], pixel_stride: int) -> tuple[int, int]:
    """Feature-map (rows, cols) of an encoder with output stride ``pixel_stride`` at ``input_hw``."""
    return (math.ceil(input_hw[0] / pixel_stride), math.ceil(input_hw[1] / pixel_stride))


def resolve_spec(config: PatchStoreConfig, feature_hw: tuple[int, int], pixel_stride: int,
                 head: VladHead) -> PatchSpec | None:
    """The store ``config`` asks for on this feature grid with this head (None for preset ``none``)."""
    if config.preset == "none":
        return None
    if head.projection is None:
        raise ValueError("patch descriptors need a projection (PCA / WPCA) in the head; set vlad.pca_dim > 0 "
                         "or patches.preset=none")
    preset = PRESETS[config.preset]
    if config.sizes:
        sizes = tuple(config.sizes)
        strides = tuple(config.strides) or (1,) * len(sizes)
        weights = tuple(config.weights) or (1.0 / len(sizes),) * len(sizes)
    else:
        sizes = scale_sizes(preset.sizes, feature_hw) if config.scale_to_grid else preset.sizes
        strides = preset.strides
        weights = tuple(config.weights) or preset.weights
    dim = min(config.dim or preset.dim, head.projection.shape[0])
    encoding = preset.encoding if config.encoding == "auto" else config.encoding
    return PatchSpec(config.preset, tuple(make_grids(sizes, strides, feature_hw, pixel_stride)), weights, dim,
                     encoding)


# ---- encoding -----------------------------------------------------------------------------------------
def encode(descriptors: np.ndarray, encoding: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(B, n, P) float32 descriptors -> stored codes and, for int8, the (B,) per-frame scales.

    int8 codes are uint8 = round(x / scale) + 128 with scale = max|x| / 127 over the frame.
    """
    if encoding == "float32":
        return descriptors.astype(np.float32, copy=False), None
    if encoding == "float16":
        return descriptors.astype(np.float16), None
    if encoding == "int8":
        peak = np.abs(descriptors).reshape(descriptors.shape[0], -1).max(axis=1)
        scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
        q = np.clip(np.rint(descriptors / scale[:, None, None]), -127, 127)
        return (q + 128).astype(np.uint8), scale
    raise ValueError(f"patch encoding {encoding!r} is not one of {list(ENCODINGS)}")


def decode(codes: np.ndarray, encoding: str, scale: np.ndarray | None = None) -> np.ndarray:
    """Stored codes -> float32 descriptors (inverse of :func:`encode` up to its rounding)."""
    if encoding == "int8":
        if scale is None:
            raise ValueError("int8 patch codes need their per-frame scales to decode")
        return (codes.astype(np.float32) - 128.0) * np.asarray(scale, np.float32).reshape(-1, 1, 1)
    return np.asarray(codes, dtype=np.float32)


def patch_extractor(spec: PatchSpec, strategy: str = "auto"):  # noqa: ANN201 - a map_builder.FrameExtractor
    """Per-batch extractor for ``build_map``: encoder features -> encoded patch arrays of the store."""

    def extract(features: np.ndarray, head: VladHead | None) -> dict[str, np.ndarray]:
        if head is None:
            raise ValueError("patch descriptors need a VLAD head")
        if tuple(features.shape[2:]) != spec.feature_hw:
            raise ValueError(f"encoder gave a {tuple(features.shape[2:])} feature map, the patch store expects "
                             f"{spec.feature_hw}")
        arrays: dict[str, np.ndarray] = {}
        for grid, desc in zip(spec.grids, patch_descriptors(features, head, spec.grids, spec.dim, strategy),
                              strict=True):
            codes, scale = encode(desc, spec.encoding)
            arrays[spec.array_name(grid)] = codes
            if scale is not None:
                arrays[spec.array_name(grid) + "_scale"] = scale
        return arrays

    return extract


def check_store(spec: PatchSpec, arrays: dict[str, np.ndarray], frames: int, where: str) -> None:
    """Raise ValueError naming the array when the map's arrays do not hold what its manifest says."""
    dtype = {"float32": np.float32, "float16": np.float16, "int8": np.uint8}[spec.encoding]
    for grid in spec.grids:
        name = spec.array_name(grid)
        expected = (frames, grid.count, spec.dim)
        if name not in arrays:
            raise InputError(f"{where}: patch store array {name} is missing")
        if tuple(arrays[name].shape) != expected or arrays[name].dtype != dtype:
            raise InputError(f"{where}: {name} is {arrays[name].dtype}{tuple(arrays[name].shape)}, the manifest "
                             f"says {np.dtype(dtype).name}{expected}")
