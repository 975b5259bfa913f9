"""Pose files: CSV (``name,x,y[,z][,yaw|qx,qy,qz,qw][,stamp]``) and TUM (``stamp tx ty tz qx qy qz qw``).

CSV files should start with a header naming their columns, in any order, from
``name, x, y, z, yaw, qx, qy, qz, qw, stamp`` (``name`` and ``x, y`` are required; ``yaw`` is in radians
about +z and is converted to a quaternion). A file without a header is read by column count:

====== =========================================
 cols  meaning
====== =========================================
 3      name, x, y
 4      name, x, y, z
 5      name, x, y, z, yaw
 6      name, x, y, z, yaw, stamp
 8      name, x, y, z, qx, qy, qz, qw
 9      name, x, y, z, qx, qy, qz, qw, stamp
====== =========================================

TUM files have no names: their poses are matched to images by time (see :func:`interpolate_poses`).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from vpr_ros.errors import InputError
from vpr_ros.io.transforms import known_rows, map_rotations, quat_from_euler

KNOWN_COLUMNS = ("name", "x", "y", "z", "yaw", "qx", "qy", "qz", "qw", "stamp")
HEADERLESS = {
    3: ("name", "x", "y"),
    4: ("name", "x", "y", "z"),
    5: ("name", "x", "y", "z", "yaw"),
    6: ("name", "x", "y", "z", "yaw", "stamp"),
    8: ("name", "x", "y", "z", "qx", "qy", "qz", "qw"),
    9: ("name", "x", "y", "z", "qx", "qy", "qz", "qw", "stamp"),
}


class PoseFileError(InputError):
    """A pose file cannot be read; the message names the file and line."""


@dataclass
class PoseTable:
    """Poses, optionally named and stamped. Missing values are NaN (and names empty strings).

    Shape:
        positions: (N, 3); orientations: (N, 4) quaternion x, y, z, w; stamps: (N,).
    """

    names: list[str]
    positions: np.ndarray
    orientations: np.ndarray
    stamps: np.ndarray

    def __len__(self) -> int:
        return len(self.names)

    def by_name(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}


def yaw_to_quaternion(yaw: np.ndarray) -> np.ndarray:
    """Rotation about +z by ``yaw`` radians as quaternions (..., 4) in x, y, z, w order; NaN stays NaN."""
    return quat_from_euler(0.0, 0.0, yaw)


def quaternion_to_yaw(q: np.ndarray) -> np.ndarray:
    """Heading of quaternions (..., 4) x, y, z, w in radians: the direction of the body x axis in the xy plane.

    This is the yaw of the z-y'-x'' Euler decomposition, computed without scipy's gimbal-lock warning for a
    camera looking straight up or down. NaN stays NaN.
    """
    def heading(r: Rotation) -> np.ndarray:
        forward = r.apply([1.0, 0.0, 0.0])
        return np.arctan2(forward[:, 1], forward[:, 0])

    return map_rotations(q, heading, 0)


def read_pose_file(path: str | Path, fmt: str = "auto") -> PoseTable:
    """Read a CSV or TUM pose file (``fmt`` = auto | csv | tum; auto decides by extension and content)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise PoseFileError(f"pose file {path} does not exist") from None
    except UnicodeDecodeError:
        raise PoseFileError(f"pose file {path} is not a text file") from None
    if fmt == "auto":
        fmt = "tum" if path.suffix.lower() in (".tum", ".txt") and "," not in text.split("\n", 1)[0] else "csv"
    if fmt == "tum":
        return _read_tum(text, path)
    if fmt == "csv":
        return _read_csv(text, path)
    raise PoseFileError(f"unknown pose format {fmt!r} (expected csv or tum)")


def _read_tum(text: str, path: Path) -> PoseTable:
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.replace(",", " ").split()
        if len(parts) != 8:
            raise PoseFileError(f"{path}:{lineno}: TUM lines have 8 values 'stamp tx ty tz qx qy qz qw', "
                                f"got {len(parts)}")
        try:
            rows.append([float(p) for p in parts])
        except ValueError:
            raise PoseFileError(f"{path}:{lineno}: non-numeric value in {line!r}") from None
    if not rows:
        raise PoseFileError(f"{path}: no poses")
    arr = np.array(rows)
    return PoseTable([""] * len(arr), arr[:, 1:4], _normalise(arr[:, 4:8], path), arr[:, 0])


def _read_csv(text: str, path: Path) -> PoseTable:
    rows = [r for r in csv.reader(text.splitlines()) if r and not r[0].lstrip().startswith("#")]
    if not rows:
        raise PoseFileError(f"{path}: no poses")
    first = [c.strip().lower() for c in rows[0]]
    if set(first) & set(KNOWN_COLUMNS) and "name" in first:
        unknown = [c for c in first if c not in KNOWN_COLUMNS]
        if unknown:
            raise PoseFileError(f"{path}: unknown column(s) {unknown}; known: {', '.join(KNOWN_COLUMNS)}")
        columns, body, offset = tuple(first), rows[1:], 2
    else:
        columns = HEADERLESS.get(len(rows[0]))
        if columns is None:
            raise PoseFileError(f"{path}: {len(rows[0])} columns without a header; give a header line naming "
                                f"the columns from {', '.join(KNOWN_COLUMNS)}")
        body, offset = rows, 1
    for req in ("name", "x", "y"):
        if req not in columns:
            raise PoseFileError(f"{path}: column {req!r} is required")
    has_quat = {"qx", "qy", "qz", "qw"} <= set(columns)
    if "yaw" in columns and has_quat:
        raise PoseFileError(f"{path}: give either yaw or qx,qy,qz,qw, not both")
    col = {c: i for i, c in enumerate(columns)}
    n = len(body)
    values = np.full((n, len(columns)), np.nan)
    names = []
    for r, row in enumerate(body):
        if len(row) != len(columns):
            raise PoseFileError(f"{path}:{r + offset}: expected {len(columns)} values, got {len(row)}")
        names.append(row[col["name"]].strip())
        for c, i in col.items():
            if c == "name":
                continue
            try:
                values[r, i] = float(row[i]) if row[i].strip() else np.nan
            except ValueError:
                raise PoseFileError(f"{path}:{r + offset}: column {c!r} is not a number: {row[i]!r}") from None
    positions = np.stack([values[:, col["x"]], values[:, col["y"]],
                          values[:, col["z"]] if "z" in col else np.zeros(n)], axis=1)
    if has_quat:
        orientations = _normalise(values[:, [col["qx"], col["qy"], col["qz"], col["qw"]]], path)
    elif "yaw" in col:
        orientations = yaw_to_quaternion(values[:, col["yaw"]])
    else:
        orientations = np.full((n, 4), np.nan)
    stamps = values[:, col["stamp"]] if "stamp" in col else np.full(n, np.nan)
    dup = {x for x in names if names.count(x) > 1} if len(set(names)) != n else set()
    if dup:
        raise PoseFileError(f"{path}: duplicate names {sorted(dup)[:5]}")
    return PoseTable(names, positions, orientations, stamps)


def _normalise(q: np.ndarray, path: Path) -> np.ndarray:
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    bad = np.flatnonzero(~(norm[:, 0] > 1e-6) & ~np.isnan(norm[:, 0]))
    if bad.size:
        raise PoseFileError(f"{path}: zero quaternion on pose {bad[0]}")
    return q / norm


def write_pose_csv(path: str | Path, table: PoseTable) -> None:
    """Write a CSV pose file with a header (quaternion and stamp columns when known)."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["name", "x", "y", "z", "qx", "qy", "qz", "qw", "stamp"])
        for i, name in enumerate(table.names):
            writer.writerow([name, *(repr(float(v)) for v in table.positions[i]),
                             *(repr(float(v)) for v in table.orientations[i]), repr(float(table.stamps[i]))])


def slerp(q0: np.ndarray, q1: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Spherical linear interpolation between quaternion rows (N, 4) at fractions t (N,), along the shorter arc.

    The same maths as scipy's ``Slerp`` (q0 · exp(t · log(q0⁻¹ q1))), one pair of key rotations per row; the
    result lies in q0's hemisphere. Rows where q0 or q1 is unknown (NaN) come back NaN.
    """
    q0, q1 = np.asarray(q0, dtype=np.float64), np.asarray(q1, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    known = known_rows(q0, q1)
    q = np.full(q0.shape, np.nan)
    if known.any():
        r0 = Rotation.from_quat(q0[known])
        delta = (r0.inv() * Rotation.from_quat(q1[known])).as_rotvec()  # shorter arc: angle <= pi
        q[known] = (r0 * Rotation.from_rotvec(delta * t[known, None])).as_quat()
    return q


def interpolate_poses(table: PoseTable, stamps: np.ndarray, max_gap: float = np.inf,
                      max_extrapolation: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Poses at ``stamps``: linear in position, slerp in orientation.

    Returns (positions (M, 3), orientations (M, 4), valid (M,)). A stamp is invalid (NaN pose) when it lies
    outside the pose stamps by more than ``max_extrapolation`` seconds, or between two poses more than
    ``max_gap`` seconds apart.
    """
    order = np.argsort(table.stamps)
    ts, pos, ori = table.stamps[order], table.positions[order], table.orientations[order]
    stamps = np.asarray(stamps, dtype=np.float64)
    if len(ts) == 0:
        raise InputError("no poses to interpolate")
    if len(ts) == 1:
        ok = np.abs(stamps - ts[0]) <= max_extrapolation
        return (np.where(ok[:, None], pos[0], np.nan), np.where(ok[:, None], ori[0], np.nan), ok)
    hi = np.clip(np.searchsorted(ts, stamps), 1, len(ts) - 1)
    lo = hi - 1
    span = ts[hi] - ts[lo]
    t = np.clip((stamps - ts[lo]) / np.where(span > 0, span, 1), 0.0, 1.0)
    # Weighted sum rather than lo + t * (hi - lo): a pose sampled exactly at a requested stamp comes back unchanged.
    positions = (1.0 - t)[:, None] * pos[lo] + t[:, None] * pos[hi]
    orientations = slerp(ori[lo], ori[hi], t)
    outside = (stamps < ts[0] - max_extrapolation) | (stamps > ts[-1] + max_extrapolation)
    valid = ~outside & (span <= max_gap)
    positions[~valid] = np.nan
    orientations[~valid] = np.nan
    return positions, orientations, valid
