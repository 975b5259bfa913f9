"""Semantic label maps for APPSVR and StructVPR: reading them from disk, mapping class ids, and loading batches.

No segmentation network ships with vpr_ros. Users bring label maps computed offline by any segmenter (e.g.
an ADE20K model: 150 class ids), one single-channel PNG of class ids per image, in a folder tree parallel to
the images::

    images:  <base>/summer/images-00010.png     labels:  <labels>/summer/images-00010.png
             <base>/ref/0000000.jpg                       <labels>/ref/0000000.png

``DatasetConfig.labels`` names ``<labels>``; ``<base>`` is ``DatasetConfig.labels_base`` or, by default,
the deepest folder holding all images of the split. A mapping (:data:`LABEL_MAPPINGS` preset or a YAML file
``raw_id: class``) turns raw ids into the few classes the models use: StructVPR's clustered classes (6 by
default) and, for APPSVR, which classes are dynamic / task-irrelevant. Pixels whose id is not mapped become
:data:`IGNORE` (no class; all-zero one-hot).

For tests and demos without a segmenter, :mod:`vpr_training.data.rule_labels` writes *rule-based* label maps
(colour / position rules) in exactly this layout.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: Class id of pixels without a class (unmapped ids); never counted as static or irrelevant.
IGNORE = 255

#: ADE20K-150 ids (0-based, the ``objectInfo150`` order of the scene-parsing benchmark) grouped into six
#: clustered classes. StructVPR clusters ADE20K's 150 classes into 6 (supplement, Table 2) but does not list
#: the grouping; this grouping is ours: sky, built structure, ground, nature, dynamic objects, other.
ADE20K_GROUPS: dict[str, tuple[int, ...]] = {
    "sky": (2,),
    "structure": (0, 1, 5, 8, 14, 25, 32, 38, 42, 43, 48, 53, 59, 61, 79, 84, 86, 87, 93, 95, 136, 140),
    "ground": (3, 6, 11, 13, 29, 46, 52, 54, 91, 94, 121),
    "nature": (4, 9, 16, 17, 21, 26, 34, 60, 66, 68, 72, 113, 128),
    "dynamic": (12, 20, 76, 80, 83, 90, 102, 103, 116, 126, 127),
}
ADE20K_CLASSES = (*ADE20K_GROUPS, "other")


def _ade20k_six() -> np.ndarray:
    table = np.full(256, IGNORE, np.uint8)
    table[:150] = ADE20K_CLASSES.index("other")
    for c, ids in enumerate(ADE20K_GROUPS.values()):
        table[list(ids)] = c
    return table


def _identity() -> np.ndarray:
    return np.arange(256, dtype=np.int64).clip(max=IGNORE).astype(np.uint8)


#: Named mappings raw id -> class id, as 256-entry lookup tables (ids >= 256 are IGNORE).
LABEL_MAPPINGS = {
    "identity": _identity,        # the label maps already hold the model's class ids (e.g. rule-based maps)
    "ade20k_6": _ade20k_six,      # ADE20K-150 -> sky, structure, ground, nature, dynamic, other (ids 0..5)
}


def mapping_table(mapping: str) -> np.ndarray:
    """Lookup table (256,) uint8 for a preset name or a YAML file of ``raw_id: class_id`` lines.

    Raw ids not listed in a file map to :data:`IGNORE`.
    """
    if mapping in LABEL_MAPPINGS:
        return LABEL_MAPPINGS[mapping]()
    path = Path(mapping)
    if not path.is_file():
        raise ValueError(f"label_mapping {mapping!r} is neither a preset ({sorted(LABEL_MAPPINGS)}) nor a file")
    import yaml

    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"label_mapping {path}: expected a mapping 'raw_id: class_id', got {type(data).__name__}")
    table = np.full(256, IGNORE, np.uint8)
    for raw, cls in data.items():
        if not (isinstance(raw, int) and isinstance(cls, int) and 0 <= raw < 256 and 0 <= cls < IGNORE):
            raise ValueError(f"label_mapping {path}: entry {raw!r}: {cls!r} must be integers, raw id 0..255 and "
                             f"class id 0..{IGNORE - 1}")
        table[raw] = cls
    return table


def label_paths(images: Sequence[str], labels: str | Path, base: str | Path | None = None) -> list[str]:
    """Label map path of every image: ``labels / relpath(image, base)`` with the suffix ``.png``.

    ``base`` defaults to the deepest folder holding all ``images``.
    """
    if not images:
        return []
    root = Path(base) if base else Path(os.path.commonpath([str(Path(p).parent) for p in images]))
    out = []
    for p in images:
        try:
            rel = Path(p).relative_to(root)
        except ValueError:
            raise ValueError(f"labels_base: image {p} is not under {root}") from None
        out.append(str(Path(labels) / rel.with_suffix(".png")))
    return out


def check_label_files(paths: Sequence[str], what: str) -> None:
    """Raise FileNotFoundError naming the first missing label map (and how many are missing)."""
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"{what}: {len(missing)} of {len(paths)} label maps are missing, e.g. {missing[0]} "
                                "(expected one single-channel PNG of class ids per image, in a folder tree "
                                "parallel to the images; see vpr_training.data.label_maps)")


def read_label_map(path: str | Path) -> np.ndarray:
    """(H, W) raw class ids of one label map PNG (8 or 16 bit, single channel)."""
    import cv2

    ids = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if ids is None:
        raise FileNotFoundError(f"label map {path} does not exist or is not a readable image")
    if ids.ndim != 2:
        raise ValueError(f"label map {path}: expected a single-channel PNG of class ids, got shape {ids.shape}")
    return ids


class LabelMapLoader:
    """Loads label maps as class ids or one-hot tensors at the network input size.

    Resizing is nearest-neighbour (class ids must not be blended). Same ``load(paths)`` interface as
    :class:`~vpr_training.data.images.ImageLoader`, so the trainer can feed a label-map branch like an image one.

    Args:
        size: (height, width) of the network input.
        mapping: preset name or file (:func:`mapping_table`).
        num_classes: classes of the one-hot encoding (ids >= num_classes get no channel).
        cache_limit: keep up to this many resized maps in memory.
    """

    def __init__(self, size: tuple[int, int], mapping: str = "identity", num_classes: int = 6,
                 cache_limit: int = 0) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.table = mapping_table(mapping)
        self.num_classes = num_classes
        self.cache_limit = cache_limit
        self._cache: dict[str, np.ndarray] = {}

    def _one(self, path: str) -> np.ndarray:
        import cv2

        cached = self._cache.get(path)
        if cached is not None:
            return cached
        raw = read_label_map(path)
        ids = self.table[np.minimum(raw, 255)]
        ids[raw > 255] = IGNORE
        h, w = self.size
        if ids.shape != (h, w):
            ids = cv2.resize(ids, (w, h), interpolation=cv2.INTER_NEAREST)
        if len(self._cache) < self.cache_limit:
            self._cache[path] = ids
        return ids

    def load_ids(self, paths: Sequence[str | Path]) -> np.ndarray:
        """(B, H, W) uint8 mapped class ids (:data:`IGNORE` where unmapped)."""
        return np.stack([self._one(str(p)) for p in paths]) if paths else np.zeros((0, *self.size), np.uint8)

    def load(self, paths: Sequence[str | Path]) -> np.ndarray:
        """(B, num_classes, H, W) float32 one-hot encoding of the mapped classes."""
        ids = self.load_ids(paths)
        return (ids[:, None] == np.arange(self.num_classes, dtype=np.uint8)[None, :, None, None]).astype(np.float32)

    def close(self) -> None:
        """Nothing to release (same interface as ImageLoader)."""
