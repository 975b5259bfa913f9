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
import logging
from collections import defaultdict
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


def read_table(path: Path, required: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """A MSLS CSV as key -> row (column name -> text); raises naming the file and the missing columns."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except FileNotFoundError:
        raise FileNotFoundError(f"MSLS file {path} does not exist") from None
    if not rows:
        return {}
    missing = [c for c in ("key", *required) if c not in rows[0]]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing} (has {list(rows[0])})")
    return {r["key"]: r for r in rows}


def _truthy(text: str) -> bool:
    return text.strip().lower() in ("true", "1", "yes")


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
        seq = read_table(folder / "seq_info.csv", ("sequence_key", "frame_number"))
        raw = read_table(folder / "raw.csv", ("ca", "captured_at", "pano")) if (folder / "raw.csv").is_file() else {}
        post = read_table(folder / "postprocessed.csv", ("easting", "northing")) \
            if (folder / "postprocessed.csv").is_file() else {}
        keys = [k for k in seq if not (raw and _truthy(raw[k]["pano"]))]
        self.panoramas = len(seq) - len(keys)
        # captured_at is in milliseconds; without raw.csv (test cities) frames keep their listed order, 1 s apart.
        captured_ns = np.array([int(float(raw[k]["captured_at"])) * 1_000_000 if raw else i * 1_000_000_000
                                for i, k in enumerate(keys)], dtype=np.int64)
        order = np.argsort(captured_ns, kind="stable")
        self.keys = [keys[i] for i in order]
        self.stamps_ns = strictly_increasing(captured_ns[order])
        self.stamps = self.stamps_ns * 1e-9
        self.sequence = [seq[k]["sequence_key"] for k in self.keys]
        self.frame_number = np.array([int(float(seq[k]["frame_number"])) for k in self.keys])
        self.has_poses = bool(post) and bool(raw)
        n = len(self.keys)
        self.utm = np.array([[float(post[k]["easting"]), float(post[k]["northing"])] for k in self.keys]) \
            if self.has_poses else np.full((n, 2), np.nan)
        self.compass = np.array([float(raw[k]["ca"]) for k in self.keys]) if raw else np.full(n, np.nan)
        missing = [k for k in self.keys if not (folder / "images" / f"{k}.jpg").is_file()]
        if missing:
            raise FileNotFoundError(f"{folder / 'images'}: {len(missing)} image(s) listed in seq_info.csv are "
                                    f"missing, e.g. {missing[0]}.jpg")

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
