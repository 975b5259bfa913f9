"""Nordland (NRK railway footage, CC BY) -> one rosbag2 per season + pose file + frame-tolerance ground truth.

Format read::

    <root>/<season>/<anything>NNNNN.png|jpg    one folder per season (summer, winter, spring, fall); the frame
                                               number is the last run of digits in the file name (the releases
                                               name them images-00010.png or 10.png); the same number in two
                                               seasons is the same place (the four journeys are frame-aligned)

Every frame of a season becomes one image message stamped ``frame number x frame_period`` seconds (nominal:
the released frames carry no time), with the original file bytes in a CompressedImage (``--image-format
compressed``, lossless for PNG) or decoded to an ``rgb8`` Image (``raw``). The pose file gives each frame the
nominal position x = frame number (y = z = 0, orientation unknown), so distances are in frames and
``evaluate --query-poses <query>_poses.csv --dist-threshold <tolerance>`` is the standard frame-tolerance
ground truth; ``ground_truth.npy`` holds the same positives as a VPR-Bench file (query index -> reference
indices) for ``evaluate --ground-truth``.

Partitions: ``all`` (the frames present in every converted season), ``patchnetvlad-test`` (the Patch-NetVLAD test
set, see :mod:`vpr_ros.io.datasets.nordland_partitions`), or a text file listing image names or paths, one per
line (e.g. the official Patch-NetVLAD lists); ``frames`` (``A:B[:STEP]``) restricts further.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from vpr_ros.core.image import IMAGE_SUFFIXES, load_rgb
from vpr_ros.errors import InputError
from vpr_ros.io.datasets.common import Frame, write_dataset_yaml, write_traversal, write_vpr_bench_ground_truth
from vpr_ros.io.datasets.nordland_partitions import PARTITIONS

log = logging.getLogger(__name__)

_NUMBER = re.compile(r"(\d+)(?!.*\d)")


def frame_number(name: str) -> int | None:
    """Last run of digits in a file name (``images-00010.png`` -> 10), or None."""
    m = _NUMBER.search(Path(name).stem)
    return int(m.group(1)) if m else None


def season_frames(folder: Path) -> dict[int, Path]:
    """Frame number -> image file of one season folder."""
    if not folder.is_dir():
        raise FileNotFoundError(f"Nordland season folder {folder} does not exist")
    frames: dict[int, Path] = {}
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            n = frame_number(p.name)
            if n is None:
                continue
            if n in frames:
                raise InputError(f"{folder}: frame {n} appears twice ({frames[n].name}, {p.name})")
            frames[n] = p
    if not frames:
        raise FileNotFoundError(f"{folder}: no numbered images (expected e.g. images-00010.png)")
    return frames


def partition_frames(partition: str) -> tuple[set[int] | None, int | None]:
    """Frame numbers of a named partition or a list file (None = all), and its standard tolerance."""
    if partition == "all":
        return None, None
    if partition in PARTITIONS:
        ranges, tolerance, _, _ = PARTITIONS[partition]
        return {n for a, b in ranges for n in range(a, b + 1)}, tolerance
    path = Path(partition)
    if not path.is_file():
        raise FileNotFoundError(f"Nordland partition {partition!r} is neither a known name ({', '.join(PARTITIONS)}, "
                                "all) nor a file listing image names")
    numbers = {frame_number(line.strip()) for line in path.read_text().splitlines() if line.strip()}
    numbers.discard(None)
    if not numbers:
        raise InputError(f"{path}: no numbered image names")
    return {int(n) for n in numbers if n is not None}, None


def parse_range(text: str | None) -> tuple[int, int, int] | None:
    """``A:B[:STEP]`` (inclusive A, exclusive B) -> (A, B, STEP)."""
    if not text:
        return None
    parts = text.split(":")
    try:
        a, b = int(parts[0]), int(parts[1])
        step = int(parts[2]) if len(parts) > 2 else 1
    except (ValueError, IndexError):
        raise InputError(f"frame range {text!r}: expected START:END[:STEP] in frame numbers") from None
    if step < 1 or b <= a:
        raise InputError(f"frame range {text!r}: END must exceed START and STEP be >= 1")
    return a, b, step


def convert_nordland(root: str | Path, out: str | Path, seasons: tuple[str, ...] = ("summer", "winter"),
                     partition: str = "all", frames: str | None = None, tolerance: int | None = None,
                     image_format: str = "compressed", frame_period: float = 1.0, storage: str = "sqlite3",
                     progress: bool = True) -> dict[str, Any]:
    """Convert the given seasons (the first is the reference, the others are queries). Returns the description
    written to ``<out>/dataset.yaml``."""
    root, out = Path(root), Path(out)
    if len(seasons) < 2:
        raise InputError("give at least two seasons: a reference and a query")
    if image_format not in ("compressed", "raw"):
        raise InputError(f"image format {image_format!r} is not compressed or raw")
    per_season = {s: season_frames(root / s) for s in seasons}
    common = set.intersection(*(set(f) for f in per_season.values()))
    chosen, partition_tolerance = partition_frames(partition)
    if chosen is not None:
        common &= chosen
    span = parse_range(frames)
    if span is not None:
        a, b, step = span
        common &= set(range(a, b, step))
    numbers = np.array(sorted(common), dtype=np.int64)
    if len(numbers) == 0:
        raise InputError(f"{root}: no frame is in every season {list(seasons)} and in the selection")
    tolerance = tolerance if tolerance is not None else (partition_tolerance if partition_tolerance else 10)
    out.mkdir(parents=True, exist_ok=True)
    description: dict[str, Any] = {
        "dataset": "Nordland (NRK, CC BY: 'Nordlandsbanen: minute by minute, season by season')",
        "source": str(root), "partition": partition, "frames": frames, "frame_count": len(numbers),
        "frame_numbers": {"first": int(numbers[0]), "last": int(numbers[-1])},
        "reference": seasons[0], "queries": list(seasons[1:]),
        "stamps": f"frame number x {frame_period:g} s (nominal)",
        "poses": "nominal: x = frame number, y = z = 0, orientation unknown (distances are in frames)",
        "ground_truth": {"rule": f"same place within +-{tolerance} frames", "tolerance_frames": tolerance,
                         "file": "ground_truth.npy (VPR-Bench rows [query index, [reference indices]])"},
        "traversals": {}}
    for season in seasons:
        files = per_season[season]
        items = [Frame(name=files[n].name, stamp=float(n) * frame_period,
                       payload=_payload(files[n], image_format),
                       position=np.array([float(n), 0.0, 0.0]), orientation=np.full(4, np.nan)) for n in numbers]
        suffix = ".bag" if storage == "ros1" else ""
        description["traversals"][season] = write_traversal(items, out / f"{season}{suffix}", storage, progress)
    # Aligned traversals: query i and reference j are the same place when their frame numbers are close.
    lo = np.searchsorted(numbers, numbers - tolerance, side="left")
    hi = np.searchsorted(numbers, numbers + tolerance, side="right")
    write_vpr_bench_ground_truth(out / "ground_truth.npy", [np.arange(a, b) for a, b in zip(lo, hi, strict=True)])
    ref, query = seasons[0], seasons[1]
    sfx = ".bag" if storage == "ros1" else ""
    topic = description["traversals"][ref]["topics"]["images"]
    description["usage"] = [
        f"build_map --bag {out / (ref + sfx)} --image-topic {topic} --poses {out / (ref + '_poses.csv')} "
        f"--output maps/nordland_{ref}",
        f"evaluate --map maps/nordland_{ref} --bag {out / (query + sfx)} --image-topic {topic} "
        f"--query-poses {out / (query + '_poses.csv')} --dist-threshold {tolerance}"]
    write_dataset_yaml(out / "dataset.yaml", description)
    return description


def _payload(path: Path, image_format: str):  # noqa: ANN202 - Frame.payload callable
    if image_format == "compressed":
        fmt = "png" if path.suffix.lower() == ".png" else "jpeg"
        return lambda: ("compressed", path.read_bytes(), fmt)
    return lambda: ("raw", load_rgb(path), "rgb8")
