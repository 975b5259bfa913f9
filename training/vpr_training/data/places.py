"""A split of a place-recognition dataset: query and database images with positions, headings and tags.

Every reader (MSLS, image folders + pose files, Pitts/Tokyo, Nordland) produces a :class:`PlaceSet`; the
miner and the validation only ever see this, so adding a layout is adding a reader.

Distances are in the dataset's position unit (metres for MSLS / Pitts / Tokyo / pose files). Headings are
degrees (any zero and direction: only differences are used); NaN where unknown, in which case the angle test
is skipped for that pair, as the issue asks ("40 deg where heading exists").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from vpr_ros.eval.ground_truth import positives_within
from vpr_ros.io.poses import yaw_to_quaternion

#: Sampling classes of a query for the balanced sampler: (night, sideways) -> class id.
CLASS_NAMES = ("day-forward", "day-sideways", "night-forward", "night-sideways")


def _as_xyz(positions: np.ndarray, what: str) -> np.ndarray:
    p = np.asarray(positions, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] not in (2, 3):
        raise ValueError(f"{what}: expected positions of shape (N, 2) or (N, 3), got {p.shape}")
    return p if p.shape[1] == 3 else np.concatenate([p, np.zeros((len(p), 1))], axis=1)


def _orientations(headings: np.ndarray | None, n: int) -> np.ndarray | None:
    if headings is None:
        return None
    h = np.asarray(headings, dtype=np.float64)
    if h.shape != (n,):
        raise ValueError(f"headings must have shape ({n},), got {h.shape}")
    return yaw_to_quaternion(np.radians(h))


@dataclass
class PlaceSet:
    """Queries and database of one split.

    Shape:
        db_positions: (N, 2|3); query_positions: (Q, 2|3); headings: (N,) / (Q,) degrees or None;
        query_night / query_sideways: (Q,) bool or None;
        query_labels / db_labels: label-map paths parallel to the images, or None (see data.label_maps).
    """

    name: str
    db_images: list[str]
    db_positions: np.ndarray
    query_images: list[str]
    query_positions: np.ndarray
    db_headings: np.ndarray | None = None
    query_headings: np.ndarray | None = None
    query_night: np.ndarray | None = None
    query_sideways: np.ndarray | None = None
    query_sequences: list[str] | None = None
    db_sequences: list[str] | None = None
    query_labels: list[str] | None = None
    db_labels: list[str] | None = None
    info: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.db_positions = _as_xyz(self.db_positions, f"{self.name}: database positions")
        self.query_positions = _as_xyz(self.query_positions, f"{self.name}: query positions")
        if len(self.db_positions) != len(self.db_images):
            raise ValueError(f"{self.name}: {len(self.db_images)} database images but "
                             f"{len(self.db_positions)} positions")
        if len(self.query_positions) != len(self.query_images):
            raise ValueError(f"{self.name}: {len(self.query_images)} query images but "
                             f"{len(self.query_positions)} positions")
        if not self.db_images or not self.query_images:
            raise ValueError(f"{self.name}: needs at least one query and one database image "
                             f"(got {len(self.query_images)} and {len(self.db_images)})")
        for attr in ("query_night", "query_sideways"):
            value = getattr(self, attr)
            if value is not None and np.asarray(value).shape != (self.num_queries,):
                raise ValueError(f"{self.name}: {attr} must have shape ({self.num_queries},)")

    @property
    def num_queries(self) -> int:
        return len(self.query_images)

    @property
    def num_db(self) -> int:
        return len(self.db_images)

    def positives(self, dist: float, angle_deg: float | None = None) -> list[np.ndarray]:
        """Per query, database rows within ``dist`` (and ``angle_deg`` of heading where both are known)."""
        gt = positives_within(self.query_positions, self.db_positions, dist,
                              _orientations(self.query_headings, self.num_queries),
                              _orientations(self.db_headings, self.num_db),
                              angle_deg if self.query_headings is not None and self.db_headings is not None
                              else None)
        return gt.positives

    def non_negatives(self, dist: float) -> list[np.ndarray]:
        """Per query, database rows closer than ``dist``: never used as negatives (any heading)."""
        return positives_within(self.query_positions, self.db_positions, dist).positives

    def query_classes(self) -> np.ndarray:
        """(Q,) class id in :data:`CLASS_NAMES` from the night / sideways tags (day-forward when untagged)."""
        night = np.zeros(self.num_queries, bool) if self.query_night is None else np.asarray(self.query_night, bool)
        side = (np.zeros(self.num_queries, bool) if self.query_sideways is None
                else np.asarray(self.query_sideways, bool))
        return (2 * night + side).astype(np.int64)

    @property
    def has_labels(self) -> bool:
        return self.query_labels is not None and self.db_labels is not None

    def label_maps_as_images(self) -> PlaceSet:
        """The same places with the label maps in place of the images (input of a label-map branch)."""
        if not self.has_labels:
            raise ValueError(f"{self.name}: no label maps; set the dataset's 'labels' folder")
        return dataclasses.replace(self, name=f"{self.name}:labels", query_images=list(self.query_labels or []),
                                   db_images=list(self.db_labels or []), info={**self.info, "input": "label_maps"})

    def describe(self) -> dict[str, object]:
        """Counts and provenance for model cards and logs."""
        classes = np.bincount(self.query_classes(), minlength=len(CLASS_NAMES))
        return {"name": self.name, "queries": self.num_queries, "database": self.num_db,
                "query_classes": {n: int(c) for n, c in zip(CLASS_NAMES, classes, strict=True) if c},
                **self.info}
