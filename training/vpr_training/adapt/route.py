"""Traversals of one route for ``vpr-adapt``: where each frame is along the route, and the split of places.

A *traversal* is one recording of the route (an image folder with or without poses, or frames read from a
bag). One traversal is the map's: its frames, in driving order, are the route's *places*. Every other
traversal's frames are put on those places:

* frame-aligned traversals (``aligned``; e.g. the Nordland seasons): frame ``i`` of every traversal is place
  ``i``; distances are counted in places;
* traversals with poses: a frame is at the place of the nearest map frame (within ``max_place_distance``,
  else it is on no place and unused); distances are metres.

Places are split *along the route* (never frame by frame): a held-out test stretch, a training stretch and a
validation stretch, with gaps between them at least as long as the longest query sequence, so no query
sequence of one stretch reaches into another and the look-alike neighbours of training places stay out of
the test (see :class:`PlaceSplit`).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vpr_ros.core.frames import FrameSource
from vpr_ros.errors import InputError


class AdaptInputError(InputError):
    """Traversals or a split that ``vpr-adapt`` cannot use; the message names the input and what was expected."""


@dataclass
class Traversal:
    """One recording of the route: its frames and image files (driving order)."""

    name: str
    source: FrameSource
    images: list[str]

    def __len__(self) -> int:
        return len(self.source)


@dataclass
class Route:
    """The places of the map traversal and where every traversal's frames lie on them.

    Shape:
        coordinate: (P,) route coordinate of each place (places for aligned traversals, else metres driven);
        place_of[name]: (N,) place index of each frame of that traversal, -1 = on no place;
        positions[name]: (N, 2) the frame's position for mining (aligned: (place, 0); else x, y).
    """

    map_name: str
    aligned: bool
    coordinate: np.ndarray
    place_of: dict[str, np.ndarray]
    positions: dict[str, np.ndarray]
    unit: str

    @property
    def num_places(self) -> int:
        return len(self.coordinate)


def build_route(traversals: list[Traversal], map_name: str, aligned: bool,
                max_place_distance: float = 10.0) -> Route:
    """Place every traversal's frames on the map traversal's places (module docstring)."""
    names = [t.name for t in traversals]
    if len(traversals) < 2:
        raise AdaptInputError(f"vpr-adapt needs two or more traversals of the same route, got {len(traversals)}")
    if len(set(names)) != len(names):
        raise AdaptInputError(f"traversal names must differ, got {names}")
    if map_name not in names:
        raise AdaptInputError(f"--map-traversal {map_name!r} is not one of the traversals {names}")
    ref = traversals[names.index(map_name)]
    place_of: dict[str, np.ndarray] = {}
    positions: dict[str, np.ndarray] = {}
    if aligned:
        sizes = {t.name: len(t) for t in traversals}
        if len(set(sizes.values())) != 1:
            raise AdaptInputError(f"--aligned traversals must have the same number of frames (frame i = place i), "
                                  f"got {sizes}")
        n = len(ref)
        for t in traversals:
            place_of[t.name] = np.arange(n)
            positions[t.name] = np.stack([np.arange(n, dtype=np.float64), np.zeros(n)], axis=1)
        return Route(map_name, True, np.arange(n, dtype=np.float64), place_of, positions, "places")
    ref_xy = ref.source.frames.positions[:, :2]
    for t in traversals:
        xy = t.source.frames.positions[:, :2]
        if np.isnan(xy).any():
            raise AdaptInputError(f"traversal {t.name}: {int(np.isnan(xy).any(1).sum())} of {len(t)} frames have no "
                                  "pose; give a pose file / topic for every traversal, or --aligned for "
                                  "frame-aligned traversals")
        positions[t.name] = xy.astype(np.float64)
    coordinate = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(ref_xy, axis=0), axis=1))])
    import faiss

    index = faiss.IndexFlatL2(2)
    index.add(np.ascontiguousarray(ref_xy, dtype=np.float32))
    for t in traversals:
        if t.name == map_name:
            place_of[t.name] = np.arange(len(t))
            continue
        dist2, nearest = index.search(np.ascontiguousarray(positions[t.name], dtype=np.float32), 1)
        place = nearest[:, 0].astype(np.int64)
        place[np.sqrt(dist2[:, 0]) > max_place_distance] = -1
        place_of[t.name] = place
    return Route(map_name, False, coordinate, place_of, positions, "m")


_RANGE = re.compile(r"^(test|train|val)=(\d+):(\d+)$")


@dataclass(frozen=True)
class PlaceSplit:
    """Place ranges ``[start, stop)`` along the route for the held-out test, training and validation."""

    test: tuple[int, int]
    train: tuple[int, int]
    val: tuple[int, int]

    def __post_init__(self) -> None:
        ranges = sorted([self.test, self.train, self.val])
        for (a, b) in ranges:
            if not 0 <= a < b:
                raise AdaptInputError(f"split: place range {a}:{b} is empty or negative")
        for (_, b), (c, _) in itertools.pairwise(ranges):
            if c < b:
                raise AdaptInputError(f"split: place ranges overlap ({self.describe()}); test, train and val must be "
                                      "disjoint stretches of the route")

    @classmethod
    def default(cls, num_places: int, gap: int) -> PlaceSplit:
        """Test = the first third of the route, validation = the last sixth, training between, ``gap`` apart."""
        test_stop = num_places // 3
        val_start = num_places - num_places // 6
        train = (test_stop + gap, val_start - gap)
        if train[1] - train[0] < 4 * gap:
            raise AdaptInputError(f"the route has {num_places} places: too few for a test / train / validation split "
                                  f"with gaps of {gap} places (give --split, or shorter --sequence-lengths)")
        return cls((0, test_stop), train, (val_start, num_places))

    @classmethod
    def parse(cls, text: str, num_places: int) -> PlaceSplit:
        """``test=0:600,train=620:1480,val=1500:1800`` (place indices, stop exclusive)."""
        found: dict[str, tuple[int, int]] = {}
        for part in text.split(","):
            match = _RANGE.match(part.strip())
            if not match:
                raise AdaptInputError(f"--split: expected test=A:B,train=C:D,val=E:F (place indices), got {part!r}")
            found[match[1]] = (int(match[2]), int(match[3]))
        if set(found) != {"test", "train", "val"}:
            raise AdaptInputError(f"--split needs test, train and val ranges, got {sorted(found)}")
        split = cls(found["test"], found["train"], found["val"])
        if max(b for _, b in found.values()) > num_places:
            raise AdaptInputError(f"--split {text}: the route has only {num_places} places")
        return split

    def describe(self) -> dict[str, list[int]]:
        """Inclusive place ranges, for reports."""
        return {k: [v[0], v[1] - 1] for k, v in (("test", self.test), ("train", self.train), ("val", self.val))}

    def rows(self, place_of: np.ndarray, which: str) -> np.ndarray:
        """Frames (rows, driving order) of a traversal whose place lies in the ``which`` range."""
        start, stop = getattr(self, which)
        return np.flatnonzero((place_of >= start) & (place_of < stop))


def write_split_list(path: Path, route: Route, split: PlaceSplit, traversals: list[Traversal], which: str) -> int:
    """The trainer's ``list`` file for one range: map frames as database, other traversals' frames as queries.

    Returns the number of query rows. Written atomically.
    """
    from vpr_ros.core.files import atomic_write_text

    lines = ["role,image,x,y,heading"]
    queries = 0
    for t in traversals:
        role = "db" if t.name == route.map_name else "query"
        rows = split.rows(route.place_of[t.name], which)
        xy = route.positions[t.name][rows]
        for r, (x, y) in zip(rows, xy, strict=True):
            image = t.images[int(r)]
            if "," in image or "\n" in image:
                raise AdaptInputError(f"image path {image!r} has a comma or newline; rename it")
            lines.append(f"{role},{image},{x:.6f},{y:.6f},")
        queries += len(rows) if role == "query" else 0
    atomic_write_text(path, "\n".join(lines) + "\n")
    return queries


def folder_traversal(name: str, images: Path, poses: Path | None) -> Traversal:
    """A traversal from an image folder (+ a pose file as ``build_map`` reads them)."""
    from vpr_ros.io.images import folder_source

    if not images.is_dir():
        raise AdaptInputError(f"traversal {name}: {images} is not an image folder")
    source = folder_source(images, poses)
    if len(source) == 0:
        raise AdaptInputError(f"traversal {name}: no images in {images}")
    return Traversal(name, source, [str(Path(s).resolve()) for s in source.frames.sources])


def materialised(name: str, source: FrameSource, folder: Path, progress: bool = True) -> Traversal:
    """A traversal whose frames come from a bag: each frame written once as PNG under ``folder`` (the trainer
    reads image files); frames already written by an earlier run are kept."""
    from PIL import Image
    from tqdm import tqdm

    from vpr_ros.core.files import atomic_output

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in tqdm(range(len(source)), desc=f"frames of {name}", unit="frame", disable=not progress):
        path = folder / f"{i:07d}.png"
        if not path.is_file():
            with atomic_output(path, "wb") as fh:
                Image.fromarray(source.load_image(i)).save(fh, format="PNG")
        paths.append(str(path.resolve()))
    return Traversal(name, source, paths)
