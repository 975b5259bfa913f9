"""Mapillary Street-Level Sequences (MSLS) -> per city, query and database rosbag2 + pose files + ground truth.

Format read (as the dataset's archives extract)::

    <root>/train_val|test/<city>/query|database/
        images/<key>.jpg
        seq_info.csv        ,key,sequence_key,frame_number          (first column: row index)
        raw.csv             ,key,lon,lat,ca,captured_at,pano         (ca: compass angle, degrees clockwise from
                                                                       north; captured_at: ms since 1970)
        postprocessed.csv   ,key,easting,northing,...,night,view_direction,unique_cluster  (UTM metres)
        subtask_index.csv   (not needed here)

Columns are found by name. Panoramas (``pano`` true) are left out, as the official loader does. Each
traversal's images become CompressedImage messages (the JPEG bytes unchanged) stamped ``captured_at``, in
capture order (repeated times nudged by 1 µs); ``<traversal>_keys.csv`` maps bag index -> MSLS key, sequence
and frame number. Poses (when ``postprocessed.csv`` exists; the test cities have none): x = easting, y = northing
(metres from a per-city origin shared by query and database), heading from the compass angle.

Ground truth (MSLS paper / thesis: same place = within 25 m and less than 40 deg of viewing direction):

* ``ground_truth_im2im.npy``: every query image -> database images within 25 m and 40 deg (VPR-Bench rows,
  for ``evaluate --ground-truth``; ``evaluate --query-poses query_poses.csv --dist-threshold 25
  --angle-threshold 40`` gives the same).
* ``seq<L>_queries.csv`` and ``ground_truth_seq<L>.npy`` (L odd, the *seq* tasks): query sequences of L
  consecutive frames of one sequence, listed by their centre frame, with the positives of any of their frames
  (as the official loader does); ``--ground-truth ground_truth_seq<L>.npy`` scores single-frame retrieval on
  the sequence centres, sequence methods read the member frames from the CSV.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vpr_ros.errors import InputError
from vpr_ros.eval.ground_truth import positives_within
from vpr_ros.io.datasets.common import (
    Frame,
    strictly_increasing,
    write_dataset_yaml,
    write_traversal,
    write_vpr_bench_ground_truth,
)
from vpr_ros.io.poses import yaw_to_quaternion

log = logging.getLogger(__name__)

POSITIVE_DISTANCE_M = 25.0
POSITIVE_ANGLE_DEG = 40.0
TRAVERSALS = ("database", "query")


#: The CSV files of a query / database folder and the columns read from each (besides ``key``).
MSLS_TABLES: dict[str, tuple[str, ...]] = {
    "seq_info.csv": ("sequence_key", "frame_number"),
    "raw.csv": ("ca", "captured_at", "pano"),
    "postprocessed.csv": ("easting", "northing"),
}


def read_table(path: Path, required: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """A MSLS CSV as key -> row (column name -> text, whitespace stripped); raises naming the file and the
    missing columns."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except FileNotFoundError:
        raise FileNotFoundError(f"MSLS file {path} is missing") from None
    if not rows:
        return {}
    rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in rows]
    missing = [c for c in ("key", *required) if c not in rows[0]]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing} (has {list(rows[0])})")
    return {r["key"]: r for r in rows}


def _truthy(text: str) -> bool:
    return text.strip().lower() in ("true", "1", "yes")


def _number(text: str | None) -> float:
    """A CSV cell as a float; empty or absent -> NaN."""
    return float(text) if text else np.nan


@dataclass(frozen=True)
class MslsFolder:
    """The tables of one city's query or database folder: one row per image, panoramas included.

    Read by :func:`read_msls_folder`; the converter (:class:`Traversal`) and ``vpr_training``'s MSLS reader
    both start from it. Values a folder does not have (a missing file, row or cell) are NaN, -1 or empty.

    Shape:
        N = number of images; ``utm`` is (N, 2), every other array (N,).
    """

    folder: Path
    keys: list[str]
    sequence: list[str]         # sequence_key (seq_info.csv)
    frame_number: np.ndarray    # int64, frame in its sequence (seq_info.csv; -1 unknown)
    captured_ms: np.ndarray     # float64, capture time in ms since 1970 (raw.csv)
    compass: np.ndarray         # float64, compass angle: degrees clockwise from north (raw.csv)
    pano: np.ndarray            # bool, a panorama (raw.csv)
    utm: np.ndarray             # float64, easting, northing in metres (postprocessed.csv)
    night: np.ndarray           # bool (postprocessed.csv, optional column)
    view_direction: list[str]   # "Forward", "Sideways", ... (postprocessed.csv, optional column)
    tables: frozenset[str]      # the CSV files present with at least one row

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def images(self) -> list[Path]:
        """Image file of every row: ``<folder>/images/<key>.jpg``."""
        return [self.folder / "images" / f"{k}.jpg" for k in self.keys]

    def take(self, rows: np.ndarray) -> MslsFolder:
        """The rows ``rows`` (indices, in that order)."""
        rows = np.asarray(rows, dtype=np.int64)
        return dataclasses.replace(
            self, keys=[self.keys[i] for i in rows], sequence=[self.sequence[i] for i in rows],
            frame_number=self.frame_number[rows], captured_ms=self.captured_ms[rows], compass=self.compass[rows],
            pano=self.pano[rows], utm=self.utm[rows].reshape(-1, 2), night=self.night[rows],
            view_direction=[self.view_direction[i] for i in rows])


def read_msls_folder(folder: Path, required: tuple[str, ...]) -> MslsFolder:
    """Read the CSV files of one query / database folder (module docstring).

    Args:
        folder: ``<root>/train_val|test/<city>/query|database``.
        required: files of :data:`MSLS_TABLES` that must exist; the rows of the first one (in its order) are
            the images; the other files are read when present.

    Raises:
        FileNotFoundError: a required file is missing.
        ValueError: a file lacks a column of :data:`MSLS_TABLES`.
    """
    tables = {name: read_table(folder / name, columns) for name, columns in MSLS_TABLES.items()
              if name in required or (folder / name).is_file()}
    keys = list(tables[required[0]])
    seq, raw, post = (tables.get(name, {}) for name in ("seq_info.csv", "raw.csv", "postprocessed.csv"))
    none: dict[str, str] = {}
    return MslsFolder(
        folder=folder, keys=keys,
        sequence=[seq.get(k, none).get("sequence_key", "") for k in keys],
        frame_number=np.array([int(_number(seq[k]["frame_number"])) if k in seq else -1 for k in keys],
                              dtype=np.int64),
        captured_ms=np.array([_number(raw.get(k, none).get("captured_at")) for k in keys], dtype=np.float64),
        compass=np.array([_number(raw.get(k, none).get("ca")) for k in keys], dtype=np.float64),
        pano=np.array([_truthy(raw.get(k, none).get("pano", "false")) for k in keys], dtype=bool),
        utm=np.array([[_number(post.get(k, none).get("easting")), _number(post.get(k, none).get("northing"))]
                      for k in keys], dtype=np.float64).reshape(-1, 2),
        night=np.array([_truthy(post.get(k, none).get("night", "false")) for k in keys], dtype=bool),
        view_direction=[post.get(k, none).get("view_direction", "") for k in keys],
        tables=frozenset(name for name, rows in tables.items() if rows))


def city_dirs(root: Path, cities: list[str] | None) -> dict[str, Path]:
    """City name -> its folder under train_val/ or test/."""
    found = {p.name: p for sub in ("train_val", "test") if (root / sub).is_dir()
             for p in sorted((root / sub).iterdir()) if (p / "query").is_dir() and (p / "database").is_dir()}
    if not found:
        raise FileNotFoundError(f"{root}: no MSLS cities (expected train_val/<city>/query and database folders)")
    if cities:
        unknown = [c for c in cities if c not in found]
        if unknown:
            raise FileNotFoundError(f"{root}: no MSLS city {unknown}; cities there: {', '.join(found)}")
        return {c: found[c] for c in cities}
    return found


class Traversal:
    """One city's query or database folder, panoramas removed, in capture order."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        table = read_msls_folder(folder, ("seq_info.csv",))
        has_raw = "raw.csv" in table.tables
        kept = table.take(np.flatnonzero(~table.pano))
        self.panoramas = len(table) - len(kept)
        if has_raw and np.isnan(kept.captured_ms).any():
            raise ValueError(f"{folder / 'raw.csv'}: no captured_at for "
                             f"{kept.keys[int(np.flatnonzero(np.isnan(kept.captured_ms))[0])]}")
        # captured_at is in milliseconds; without raw.csv (test cities) frames keep their listed order, 1 s apart.
        captured_ns = (kept.captured_ms.astype(np.int64) * 1_000_000 if has_raw
                       else np.arange(len(kept), dtype=np.int64) * 1_000_000_000)
        order = np.argsort(captured_ns, kind="stable")
        ordered = kept.take(order)
        self.keys = ordered.keys
        self.stamps_ns = strictly_increasing(captured_ns[order])
        self.stamps = self.stamps_ns * 1e-9
        self.sequence = ordered.sequence
        self.frame_number = ordered.frame_number
        self.has_poses = "postprocessed.csv" in table.tables and has_raw
        n = len(self.keys)
        self.utm = ordered.utm if self.has_poses else np.full((n, 2), np.nan)
        self.compass = ordered.compass if has_raw else np.full(n, np.nan)
        missing = [p for p in ordered.images if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{folder / 'images'}: {len(missing)} image(s) listed in seq_info.csv are "
                                    f"missing, e.g. {missing[0].name}")

    def __len__(self) -> int:
        return len(self.keys)

    def poses(self, origin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """ENU positions (N, 3) from UTM minus ``origin`` and quaternions (N, 4) from the compass angle."""
        positions = np.zeros((len(self), 3))
        positions[:, :2] = self.utm - origin
        # Compass angle: clockwise from north; ENU yaw: counter-clockwise from east.
        return positions, yaw_to_quaternion(np.radians(90.0 - self.compass))

    def frames(self, origin: np.ndarray) -> list[Frame]:
        positions, orientations = self.poses(origin)
        if not self.has_poses:
            positions[:] = np.nan
            orientations[:] = np.nan
        images = self.folder / "images"
        return [Frame(name=f"{k}.jpg", stamp=float(self.stamps[i]), payload=_payload(images / f"{k}.jpg"),
                      position=positions[i], orientation=orientations[i], stamp_ns=int(self.stamps_ns[i]))
                for i, k in enumerate(self.keys)]

    def sequences(self, length: int) -> list[np.ndarray]:
        """Frames (bag indices) of every window of ``length`` consecutive frames of one sequence, centre order."""
        by_seq: dict[str, list[int]] = defaultdict(list)
        for i, s in enumerate(self.sequence):
            by_seq[s].append(i)
        half = length // 2
        windows = []
        for members in by_seq.values():
            members.sort(key=lambda i: self.frame_number[i])
            numbers = self.frame_number[members]
            for c in range(half, len(members) - half):
                window = numbers[c - half:c + half + 1]
                if (np.diff(window) == 1).all():
                    windows.append(np.array(members[c - half:c + half + 1], dtype=np.int64))
        windows.sort(key=lambda w: int(w[half]))
        return windows

    def write_keys(self, path: Path) -> None:
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["index", "key", "sequence_key", "frame_number", "stamp"])
            for i, k in enumerate(self.keys):
                writer.writerow([i, k, self.sequence[i], int(self.frame_number[i]), repr(float(self.stamps[i]))])


def convert_msls(root: str | Path, out: str | Path, cities: list[str] | None = None, seq_length: int = 3,
                 storage: str = "sqlite3", progress: bool = True) -> dict[str, Any]:
    """Convert the cities (default: all found) to ``<out>/<city>/``; returns ``<out>/dataset.yaml``'s content."""
    root, out = Path(root), Path(out)
    if seq_length < 3 or seq_length % 2 == 0:
        raise InputError(f"sequence length {seq_length}: MSLS sequences have an odd length >= 3 (a centre frame)")
    summary: dict[str, Any] = {"dataset": "Mapillary Street-Level Sequences (Warburg et al., CVPR 2020)",
                               "source": str(root), "cities": {}}
    for city, folder in city_dirs(root, cities).items():
        summary["cities"][city] = convert_city(folder, out / city, seq_length, storage, progress)
    out.mkdir(parents=True, exist_ok=True)
    write_dataset_yaml(out / "dataset.yaml", summary)
    return summary


def convert_city(folder: Path, out: Path, seq_length: int, storage: str, progress: bool) -> dict[str, Any]:
    traversals = {name: Traversal(folder / name) for name in TRAVERSALS}
    db, q = traversals["database"], traversals["query"]
    out.mkdir(parents=True, exist_ok=True)
    known = db.has_poses and q.has_poses
    origin = np.floor(np.nanmin(db.utm, axis=0) / 1000.0) * 1000.0 if known else np.zeros(2)
    sfx = ".bag" if storage == "ros1" else ""
    desc: dict[str, Any] = {"source": str(folder), "traversals": {}}
    for name, trav in traversals.items():
        desc["traversals"][name] = write_traversal(trav.frames(origin), out / f"{name}{sfx}", storage, progress)
        desc["traversals"][name]["panoramas_left_out"] = trav.panoramas
        trav.write_keys(out / f"{name}_keys.csv")
    if not known:
        log.warning("%s: no postprocessed.csv / raw.csv (a test city?): bags without poses, no ground truth", folder)
        desc["ground_truth"] = None
        write_dataset_yaml(out / "dataset.yaml", desc)
        return desc
    q_pos, q_ori = q.poses(origin)
    db_pos, db_ori = db.poses(origin)
    gt = positives_within(q_pos, db_pos, POSITIVE_DISTANCE_M, q_ori, db_ori, POSITIVE_ANGLE_DEG)
    write_vpr_bench_ground_truth(out / "ground_truth_im2im.npy", gt.positives)
    windows = q.sequences(seq_length)
    seq_positives = [np.unique(np.concatenate([gt.positives[i] for i in w])) for w in windows]
    per_centre = [np.zeros(0, np.int64) for _ in range(len(q))]
    for w, p in zip(windows, seq_positives, strict=True):
        per_centre[int(w[seq_length // 2])] = p
    write_vpr_bench_ground_truth(out / f"ground_truth_seq{seq_length}.npy", per_centre)
    with open(out / f"seq{seq_length}_queries.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sequence", "centre_query_index", "query_indices", "positives"])
        for s, (w, p) in enumerate(zip(windows, seq_positives, strict=True)):
            writer.writerow([s, int(w[seq_length // 2]), " ".join(map(str, w.tolist())), len(p)])
    topic = desc["traversals"]["query"]["topics"]["images"]
    desc.update({
        "utm_origin": {"easting": float(origin[0]), "northing": float(origin[1])},
        "ground_truth": {
            "rule": f"within {POSITIVE_DISTANCE_M:g} m and {POSITIVE_ANGLE_DEG:g} deg of viewing direction",
            "im2im": {"file": "ground_truth_im2im.npy", "queries": len(q),
                      "queries_with_positives": int(gt.has_positive.sum())},
            f"seq{seq_length}": {"file": f"ground_truth_seq{seq_length}.npy",
                                 "sequences": f"seq{seq_length}_queries.csv", "count": len(windows)}},
        "usage": [f"build_map --bag {out / ('database' + sfx)} --image-topic {topic} --pose-topic /pose "
                  f"--output maps/msls_{out.name}",
                  f"evaluate --map maps/msls_{out.name} --bag {out / ('query' + sfx)} --image-topic {topic} "
                  f"--ground-truth {out / 'ground_truth_im2im.npy'}"]})
    write_dataset_yaml(out / "dataset.yaml", desc)
    return desc


def _payload(path: Path):  # noqa: ANN202 - Frame.payload callable
    return lambda: ("compressed", path.read_bytes(), "jpeg")
