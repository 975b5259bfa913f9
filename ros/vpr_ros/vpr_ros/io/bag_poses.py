"""Poses for bag frames: from a pose topic, a /tf chain, GNSS fixes or a pose file, interpolated to image stamps.

Pose topics (the type is read from the bag):

================================================ ====================================================
 nav_msgs/msg/Odometry                            ``pose.pose`` in ``header.frame_id``
 geometry_msgs/msg/PoseStamped                    ``pose``
 geometry_msgs/msg/PoseWithCovarianceStamped      ``pose.pose``
 sensor_msgs/msg/NavSatFix                        latitude/longitude/altitude -> local east-north-up metres
                                                  (orientation unknown); fixes with status -1 (no fix) are
                                                  ignored
================================================ ====================================================

A /tf chain ``parent -> child`` composes the transforms on ``/tf`` and ``/tf_static`` along the tree path from
``parent`` to ``child`` (through their common ancestor when ``parent`` is not an ancestor of ``child``); each
dynamic edge is interpolated at the image stamp. Positions are interpolated linearly, orientations by slerp
(:func:`vpr_ros.io.poses.interpolate_poses`).

GNSS positions are relative to a geodetic origin: the first fix, or a given one (maps remember theirs, so
queries and appended recordings land in the same frame).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from vpr_ros.errors import InputError
from vpr_ros.io.bag_reader import Bag, BagError
from vpr_ros.io.geodesy import GeodeticOrigin, geodetic_to_enu
from vpr_ros.io.poses import PoseFileError, PoseTable, interpolate_poses, read_pose_file
from vpr_ros.io.transforms import compose, invert

ODOMETRY = "nav_msgs/msg/Odometry"
POSE_STAMPED = "geometry_msgs/msg/PoseStamped"
POSE_COV_STAMPED = "geometry_msgs/msg/PoseWithCovarianceStamped"
NAVSATFIX = "sensor_msgs/msg/NavSatFix"
TF_MESSAGE = "tf2_msgs/msg/TFMessage"
POSE_TOPIC_TYPES = (ODOMETRY, POSE_STAMPED, POSE_COV_STAMPED, NAVSATFIX)
TF_TOPICS = ("/tf", "/tf_static")


@dataclass(frozen=True)
class PoseSpec:
    """Where the poses of bag frames come from (at most one of ``topic``, ``tf``, ``file``)."""

    topic: str | None = None
    tf: tuple[str, str] | None = None
    file: Path | None = None
    file_format: str = "auto"
    max_time_diff: float = 0.1
    max_gap: float = 2.0
    gnss_origin: GeodeticOrigin | None = None

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.topic, self.tf, self.file)) > 1:
            raise InputError("give one pose source: a pose topic, a tf chain or a pose file")

    @property
    def given(self) -> bool:
        return self.topic is not None or self.tf is not None or self.file is not None


@dataclass
class PoseResult:
    """Poses at the requested stamps.

    Shape:
        positions: (N, 3) (NaN = unknown); orientations: (N, 4) x y z w (NaN = unknown); valid: (N,) bool.
    """

    positions: np.ndarray
    orientations: np.ndarray
    valid: np.ndarray
    description: str
    origin: GeodeticOrigin | None = None
    frame_id: str | None = None


def poses_at(bag: Bag, spec: PoseSpec, stamps: np.ndarray, progress: bool = True) -> PoseResult:
    """Poses of ``spec`` at ``stamps`` (seconds); unknown (NaN, valid False) where the source has none."""
    n = len(stamps)
    if not spec.given:
        return PoseResult(np.full((n, 3), np.nan), np.full((n, 4), np.nan), np.zeros(n, bool), "no poses")
    if spec.tf is not None:
        return tf_chain_poses(bag, spec.tf[0], spec.tf[1], stamps, spec.max_gap, spec.max_time_diff, progress)
    if spec.file is not None:
        table = read_pose_file(spec.file, spec.file_format)
        if np.isnan(table.stamps).all():
            raise PoseFileError(f"{spec.file}: poses for bag frames need stamps (a 'stamp' column, or TUM format) to "
                                "be matched to image stamps")
        table = _drop_unstamped(table)
        desc = f"pose file {spec.file}"
        origin, frame_id = None, None
    else:
        assert spec.topic is not None
        table, origin, frame_id = read_pose_topic(bag, spec.topic, spec.gnss_origin, progress)
        desc = f"pose topic {spec.topic}"
    positions, orientations, valid = interpolate_poses(table, stamps, max_gap=spec.max_gap,
                                                       max_extrapolation=spec.max_time_diff)
    _take_coinciding_samples(table, stamps, spec.max_time_diff, positions, orientations, valid)
    return PoseResult(positions, orientations, valid, desc, origin, frame_id)


def _take_coinciding_samples(table: PoseTable, stamps: np.ndarray, tolerance: float, positions: np.ndarray,
                             orientations: np.ndarray, valid: np.ndarray) -> None:
    """Images within ``tolerance`` of a pose sample get that sample even inside a gap longer than max_gap.

    Poses recorded per image (dataset pose files, sparse keyframes) are exact at the images however far apart
    they are; only the interpolation between distant samples is untrustworthy. Updates the arrays in place.
    """
    order = np.argsort(table.stamps, kind="stable")
    ts = table.stamps[order]
    hi = np.clip(np.searchsorted(ts, stamps), 0, len(ts) - 1)
    lo = np.clip(hi - 1, 0, len(ts) - 1)
    nearest = np.where(np.abs(ts[lo] - stamps) <= np.abs(ts[hi] - stamps), lo, hi)
    take = ~valid & (np.abs(ts[nearest] - stamps) <= tolerance)
    positions[take] = table.positions[order[nearest[take]]]
    orientations[take] = table.orientations[order[nearest[take]]]
    valid |= take


def _drop_unstamped(table: PoseTable) -> PoseTable:
    ok = ~np.isnan(table.stamps)
    return PoseTable([n for n, k in zip(table.names, ok, strict=True) if k], table.positions[ok],
                     table.orientations[ok], table.stamps[ok])


def stamp_seconds(stamp: Any) -> float:
    """A message stamp in seconds, computed exactly as image stamps are (integer ns x 1e-9), so a pose recorded
    at an image's stamp is matched to it exactly."""
    return float(int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)) * 1e-9


def read_pose_topic(bag: Bag, topic: str, gnss_origin: GeodeticOrigin | None = None,
                    progress: bool = True) -> tuple[PoseTable, GeodeticOrigin | None, str | None]:
    """Every pose on ``topic`` as a stamped table (GNSS converted to ENU metres), its origin and frame id."""
    conns = bag.connections(topic, POSE_TOPIC_TYPES, "pose topic")
    msgtype = conns[0].msgtype
    stamps, positions, orientations, frame_ids = [], [], [], set()
    fixes: list[tuple[float, float, float]] = []
    for conn, _, raw in tqdm(bag.messages(conns), desc=f"read {topic}", unit="msg", disable=not progress,
                             total=sum(int(getattr(c, "msgcount", 0)) for c in conns) or None):
        msg = bag.deserialize(raw, conn.msgtype, topic)
        if conn.msgtype == NAVSATFIX:
            if int(msg.status.status) < 0 or not np.isfinite([msg.latitude, msg.longitude]).all():
                continue  # no fix
            fixes.append((float(msg.latitude), float(msg.longitude), float(msg.altitude)))
        else:
            pose = msg.pose if conn.msgtype == POSE_STAMPED else msg.pose.pose
            positions.append((pose.position.x, pose.position.y, pose.position.z))
            orientations.append((pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w))
        frame_ids.add(str(msg.header.frame_id))
        stamps.append(stamp_seconds(msg.header.stamp))
    if not stamps:
        raise BagError(f"{bag.path}: pose topic {topic!r} ({msgtype}) holds no usable poses")
    origin = None
    if msgtype == NAVSATFIX:
        lla = np.array(fixes)
        origin = gnss_origin or GeodeticOrigin(*lla[0])
        pos = geodetic_to_enu(lla[:, 0], lla[:, 1], lla[:, 2], origin)
        ori = np.full((len(pos), 4), np.nan)
    else:
        pos = np.array(positions, dtype=np.float64)
        ori = np.array(orientations, dtype=np.float64)
        norm = np.linalg.norm(ori, axis=1, keepdims=True)
        ori = np.where(norm > 1e-9, ori / np.where(norm > 1e-9, norm, 1.0), np.nan)  # all-zero = unknown
    frame_id = frame_ids.pop() if len(frame_ids) == 1 else None
    return PoseTable([""] * len(pos), pos, ori, np.array(stamps)), origin, frame_id


# ---- /tf ---------------------------------------------------------------------------------------------
@dataclass
class _Edge:
    static: bool
    stamps: list[float]
    translations: list[tuple[float, float, float]]
    rotations: list[tuple[float, float, float, float]]


def _read_tf_edges(bag: Bag, progress: bool) -> dict[tuple[str, str], _Edge]:
    topics = [t for t in TF_TOPICS if t in bag.topics()]
    if not topics:
        raise BagError(f"{bag.path}: no /tf or /tf_static topic for the tf chain; {bag.describe_topics()}")
    edges: dict[tuple[str, str], _Edge] = {}
    for topic in topics:
        conns = bag.connections(topic, (TF_MESSAGE,), "tf topic")
        for conn, _, raw in tqdm(bag.messages(conns), desc=f"read {topic}", unit="msg", disable=not progress):
            msg = bag.deserialize(raw, conn.msgtype, topic)
            for tr in msg.transforms:
                key = (tr.header.frame_id.lstrip("/"), tr.child_frame_id.lstrip("/"))
                edge = edges.setdefault(key, _Edge(topic == "/tf_static", [], [], []))
                t, r = tr.transform.translation, tr.transform.rotation
                edge.stamps.append(stamp_seconds(tr.header.stamp))
                edge.translations.append((t.x, t.y, t.z))
                edge.rotations.append((r.x, r.y, r.z, r.w))
    return edges


def _path_to_root(frame: str, parent_of: dict[str, str]) -> list[str]:
    path = [frame]
    while path[-1] in parent_of:
        path.append(parent_of[path[-1]])
        if len(path) > len(parent_of) + 1:
            raise BagError(f"the tf tree has a cycle through {frame!r}")
    return path


def _edge_at(edge: _Edge, stamps: np.ndarray, max_gap: float,
             max_extrapolation: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = np.array(edge.translations, dtype=np.float64)
    q = np.array(edge.rotations, dtype=np.float64)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    n = len(stamps)
    if edge.static:  # the latest static transform holds at all times
        return np.broadcast_to(t[-1], (n, 3)).copy(), np.broadcast_to(q[-1], (n, 4)).copy(), np.ones(n, bool)
    table = PoseTable([""] * len(t), t, q, np.array(edge.stamps))
    return interpolate_poses(table, stamps, max_gap=max_gap, max_extrapolation=max_extrapolation)


def tf_chain_poses(bag: Bag, parent: str, child: str, stamps: np.ndarray, max_gap: float = 2.0,
                   max_extrapolation: float = 0.1, progress: bool = True) -> PoseResult:
    """Pose of ``child`` in ``parent`` at ``stamps`` from the bag's /tf and /tf_static.

    Shape:
        stamps: (N,) seconds; positions (N, 3), orientations (N, 4) in the result.
    """
    parent, child = parent.lstrip("/"), child.lstrip("/")
    edges = _read_tf_edges(bag, progress)
    parent_of: dict[str, str] = {}
    for p, c in edges:
        if c in parent_of and parent_of[c] != p:
            raise BagError(f"{bag.path}: tf frame {c!r} has two parents ({parent_of[c]!r} and {p!r})")
        parent_of[c] = p
    frames = sorted(set(parent_of) | set(parent_of.values()))
    for f in (parent, child):
        if f not in frames:
            raise BagError(f"{bag.path}: tf frame {f!r} is not in /tf or /tf_static; frames there: {', '.join(frames)}")
    up_child, up_parent = _path_to_root(child, parent_of), _path_to_root(parent, parent_of)
    common = [f for f in up_child if f in up_parent]
    if not common:
        raise BagError(f"{bag.path}: tf frames {parent!r} and {child!r} are in different trees (no common ancestor)")
    lca = common[0]
    n = len(stamps)
    valid = np.ones(n, dtype=bool)

    def chain(up: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        nonlocal valid
        down = list(reversed(up[: up.index(lca) + 1]))  # lca ... frame
        t, q = np.zeros((n, 3)), np.tile([0.0, 0.0, 0.0, 1.0], (n, 1))
        for a, b in itertools.pairwise(down):
            et, eq, ok = _edge_at(edges[(a, b)], stamps, max_gap, max_extrapolation)
            t, q = compose(t, q, et, eq)
            valid &= ok
        return t, q

    t_lc, q_lc = chain(up_child)
    t_lp, q_lp = chain(up_parent)
    t, q = compose(*invert(t_lp, q_lp), t_lc, q_lc)
    t[~valid] = np.nan
    q[~valid] = np.nan
    return PoseResult(t, q, valid, f"tf {parent} -> {child}", frame_id=parent)
