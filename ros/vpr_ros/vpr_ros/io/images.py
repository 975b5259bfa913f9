"""Image folders with pose files as frame sources for map building and evaluation."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from vpr_ros.core.frames import FrameSource, FrameTable
from vpr_ros.core.image import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, load_rgb
from vpr_ros.io.poses import PoseFileError, interpolate_poses, read_pose_file

log = logging.getLogger(__name__)


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise FileNotFoundError(f"image folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return images


def stamp_from_name(path: Path) -> float:
    """Seconds from a file stem that is a timestamp (seconds, or integer nanoseconds/microseconds)."""
    stem = path.stem
    try:
        value = float(stem)
    except ValueError:
        raise PoseFileError(f"{path.name}: a TUM pose file needs images named by their timestamp") from None
    if stem.isdigit() and value > 1e17:
        return value * 1e-9
    if stem.isdigit() and value > 1e14:
        return value * 1e-6
    return value


def folder_source(folder: str | Path, pose_file: str | Path | None = None, pose_format: str = "auto",
                  max_time_diff: float = 0.1, max_pixels: int = DEFAULT_MAX_PIXELS) -> FrameSource:
    """Frames from an image folder and an optional pose file.

    Named poses (CSV) are matched to image file names (with or without extension); unnamed, stamped poses
    (TUM) are interpolated at the image stamps read from the file names, and images farther than
    ``max_time_diff`` seconds outside the pose stamps are skipped. Without a pose file, poses are unknown
    (NaN) and the stamp is the image's index.
    """
    folder = Path(folder)
    images = list_images(folder)
    n = len(images)
    positions = np.full((n, 3), np.nan)
    orientations = np.full((n, 4), np.nan)
    stamps = np.arange(n, dtype=np.float64)
    keep = np.ones(n, dtype=bool)
    if pose_file is not None:
        table = read_pose_file(pose_file, pose_format)
        if len(table) == 0:
            raise PoseFileError(f"{pose_file}: no poses (expected one row per image of {folder})")
        if all(table.names):
            lookup = table.by_name()
            rows = np.array([lookup.get(p.name, lookup.get(p.stem, -1)) for p in images])
            keep = rows >= 0
            if not keep.any():
                raise PoseFileError(f"{pose_file}: no pose names match the images in {folder} "
                                    f"(e.g. image {images[0].name!r}, pose {table.names[0]!r})")
            matched = set(rows[keep].tolist())
            unmatched = [table.names[i] for i in range(len(table)) if i not in matched]
            if unmatched:
                raise PoseFileError(f"{pose_file}: {len(unmatched)} pose(s) name images missing from {folder}, "
                                    f"e.g. {unmatched[:3]}")
            positions[keep] = table.positions[rows[keep]]
            orientations[keep] = table.orientations[rows[keep]]
            named_stamps = table.stamps[rows[keep]]
            stamps[keep] = np.where(np.isnan(named_stamps), stamps[keep], named_stamps)
        else:
            stamps = np.array([stamp_from_name(p) for p in images])
            positions, orientations, keep = interpolate_poses(table, stamps, max_extrapolation=max_time_diff)
        if not keep.all():
            log.warning("%d of %d images in %s have no pose and are skipped", int((~keep).sum()), n, folder)
    kept = [p for p, k in zip(images, keep, strict=True) if k]
    frames = FrameTable(ids=np.arange(len(kept)), names=[p.name for p in kept], sources=[str(p) for p in kept],
                        stamps=stamps[keep], positions=positions[keep], orientations=orientations[keep])
    return FrameSource(frames=frames, load_image=lambda i: load_rgb(kept[i], max_pixels))
