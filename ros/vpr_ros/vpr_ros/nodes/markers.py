"""visualization_msgs/MarkerArray builders for RViz: the map's keyframes, the current answer, loop closures.

Every marker has a fixed namespace and id, so each new message replaces the previous one in RViz instead of
piling up, and the markers live until replaced (``lifetime`` 0). All are in the map frame.

===============  ===  ==================  ====================================================================
namespace        id   type                what
===============  ===  ==================  ====================================================================
keyframes        0    SPHERE_LIST         every map frame with a known position (:func:`keyframes_marker`)
hypothesis       0    SPHERE              the best candidate's position, red (confidence 0) to green (1)
hypothesis       1    ARROW               its orientation (x forward, REP 103); deleted when unknown
hypothesis       2    TEXT_VIEW_FACING    ``id <ref id>  score <s>  conf <c>`` above the sphere
candidates       0    SPHERE_LIST         the other top-k candidates, smaller
loop_closures    0    LINE_LIST           one segment per recent loop closure (:class:`LoopClosureLinks`)
loop_closures    1    SPHERE_LIST         the map frames those closures matched
===============  ===  ==================  ====================================================================

Loop-closure links join the query's position estimate (the best candidate of the answer the closure came from)
to the map frame the closure matched. With a map built on-line from the same camera the best candidate is the
robot's own latest keyframe, so the segment spans the loop; against a prior map the two are often the same frame
and the segment has no length, so the matched frames are also drawn as spheres. (Segments between consecutive
closures' keyframes would only retrace the route.)

Building a marker converts each point to a ``geometry_msgs/Point`` (rclpy has no array fast path): about 2 us a
point, and publishing 100k points costs about 0.1 s. So build the keyframes marker once per map and publish it
when the map is loaded and when a viewer subscribes, not with every frame; ``max_points`` thins very large maps.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np
from geometry_msgs.msg import Point, Pose, Quaternion, Vector3
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from vpr_ros.core.localizer import Hypothesis
from vpr_ros.core.loop_closure import LoopClosure
from vpr_ros.nodes.messages import stamp_to_msg

NS_KEYFRAMES = "keyframes"
NS_HYPOTHESIS = "hypothesis"
NS_CANDIDATES = "candidates"
NS_LOOP_CLOSURES = "loop_closures"
HYPOTHESIS_SPHERE, HYPOTHESIS_ARROW, HYPOTHESIS_TEXT = 0, 1, 2
LOOP_LINKS, LOOP_KEYFRAMES = 0, 1


@dataclass(frozen=True)
class MarkerStyle:
    """Marker sizes in map units (sphere diameters, arrow length, text height) and colours (r, g, b, a)."""

    keyframe_size: float = 0.3
    hypothesis_size: float = 0.9
    candidate_size: float = 0.5
    arrow_length: float = 1.5
    text_height: float = 0.5
    link_width: float = 0.1
    keyframe_colour: tuple[float, float, float, float] = (0.6, 0.6, 0.6, 0.8)
    candidate_colour: tuple[float, float, float, float] = (0.2, 0.5, 1.0, 0.8)
    link_colour: tuple[float, float, float, float] = (1.0, 0.6, 0.0, 1.0)
    text_colour: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)

    @classmethod
    def for_map(cls, positions: np.ndarray) -> MarkerStyle:
        """Sizes in proportion to the median distance between consecutive keyframes (the defaults are for 1 map
        unit), so the markers look alike on a 1 m corridor map and a 50 m road map.

        Shape:
            positions: (N, 3) keyframe positions, NaN rows for unknown ones.
        """
        steps = np.linalg.norm(np.diff(np.asarray(positions, dtype=np.float64), axis=0), axis=1)
        steps = steps[np.isfinite(steps) & (steps > 0)]
        unit = float(np.median(steps)) if steps.size else 1.0
        base = cls()
        return cls(**{name: getattr(base, name) * unit for name in
                      ("keyframe_size", "hypothesis_size", "candidate_size", "arrow_length", "text_height",
                       "link_width")})


def points(xyz: np.ndarray) -> list[Point]:
    """geometry_msgs/Point per row of ``xyz`` (N, 3), rows with a NaN or inf left out."""
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    return [Point(x=x, y=y, z=z) for x, y, z in xyz[np.isfinite(xyz).all(axis=1)].tolist()]


def _colour(rgba: tuple[float, float, float, float]) -> ColorRGBA:
    return ColorRGBA(r=float(rgba[0]), g=float(rgba[1]), b=float(rgba[2]), a=float(rgba[3]))


def _marker(ns: str, marker_id: int, marker_type: int, frame_id: str, stamp: float | None, size: float,
            colour: tuple[float, float, float, float]) -> Marker:
    """An ADD marker; ``stamp`` None = time 0 (RViz then uses the latest transform, right for static content)."""
    header = Header(frame_id=frame_id)
    if stamp is not None:
        header.stamp = stamp_to_msg(stamp)
    return Marker(header=header, ns=ns, id=marker_id, type=marker_type, action=Marker.ADD,
                  pose=Pose(orientation=Quaternion(w=1.0)), scale=Vector3(x=size, y=size, z=size),
                  color=_colour(colour))


def delete_marker(ns: str, marker_id: int, frame_id: str) -> Marker:
    """Removes the marker ``ns``/``marker_id`` (e.g. an orientation arrow once the orientation is unknown)."""
    return Marker(header=Header(frame_id=frame_id), ns=ns, id=marker_id, action=Marker.DELETE)


def delete_all_markers(frame_id: str) -> MarkerArray:
    """One DELETEALL marker without a namespace: RViz removes every marker this display shows (on reset, on a
    new map, before deactivating)."""
    return MarkerArray(markers=[Marker(header=Header(frame_id=frame_id), action=Marker.DELETEALL)])


def keyframes_marker(positions: np.ndarray, frame_id: str, style: MarkerStyle | None = None,
                     max_points: int | None = None) -> Marker:
    """All map frames with a known position as one SPHERE_LIST (``keyframes``/0).

    Args:
        positions: (N, 3) the map's positions (``refmap.frames.positions``), NaN rows for unknown ones.
        frame_id: the map frame.
        max_points: draw at most this many, evenly spaced along the map (None = all).
    """
    style = style or MarkerStyle()
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    known = positions[np.isfinite(positions).all(axis=1)]
    if max_points is not None and len(known) > max_points:
        known = known[np.linspace(0, len(known) - 1, max(max_points, 1)).round().astype(np.int64)]
    marker = _marker(NS_KEYFRAMES, 0, Marker.SPHERE_LIST, frame_id, None, style.keyframe_size, style.keyframe_colour)
    marker.points = points(known)
    return marker


def confidence_colour(confidence: float) -> tuple[float, float, float, float]:
    """Red at confidence 0 to green at 1 (NaN counts as 0)."""
    c = float(np.clip(np.nan_to_num(confidence, nan=0.0), 0.0, 1.0))
    return (1.0 - c, c, 0.0, 1.0)


def hypothesis_markers(hyp: Hypothesis, frame_id: str, style: MarkerStyle | None = None) -> list[Marker]:
    """Sphere, orientation arrow and text of the best candidate (``hypothesis``/0-2), stamped with the query.

    Parts that cannot be drawn (no candidate, unknown position or orientation) are DELETE markers, so RViz
    never keeps showing a previous frame's answer as if it were this one's.
    """
    style = style or MarkerStyle()
    ids = (HYPOTHESIS_SPHERE, HYPOTHESIS_ARROW, HYPOTHESIS_TEXT)
    if len(hyp.indices) == 0 or not np.isfinite(hyp.positions[0]).all():
        return [delete_marker(NS_HYPOTHESIS, i, frame_id) for i in ids]
    position = Point(x=float(hyp.positions[0, 0]), y=float(hyp.positions[0, 1]), z=float(hyp.positions[0, 2]))
    sphere = _marker(NS_HYPOTHESIS, HYPOTHESIS_SPHERE, Marker.SPHERE, frame_id, hyp.stamp, style.hypothesis_size,
                     confidence_colour(hyp.confidence))
    sphere.pose.position = position
    orientation = np.asarray(hyp.orientations[0], dtype=np.float64)
    if np.isfinite(orientation).all() and np.linalg.norm(orientation) > 0:
        q = orientation / np.linalg.norm(orientation)
        arrow = _marker(NS_HYPOTHESIS, HYPOTHESIS_ARROW, Marker.ARROW, frame_id, hyp.stamp, style.arrow_length,
                        confidence_colour(hyp.confidence))
        # ARROW with a pose: scale.x = length along the pose's x axis, y = shaft diameter, z = head diameter.
        arrow.scale = Vector3(x=style.arrow_length, y=style.arrow_length * 0.1, z=style.arrow_length * 0.2)
        arrow.pose = Pose(position=position, orientation=Quaternion(x=q[0], y=q[1], z=q[2], w=q[3]))
    else:
        arrow = delete_marker(NS_HYPOTHESIS, HYPOTHESIS_ARROW, frame_id)
    text = _marker(NS_HYPOTHESIS, HYPOTHESIS_TEXT, Marker.TEXT_VIEW_FACING, frame_id, hyp.stamp, style.text_height,
                   style.text_colour)
    text.pose.position = Point(x=position.x, y=position.y, z=position.z + style.hypothesis_size + style.text_height)
    text.text = f"id {int(hyp.ids[0])}  score {float(hyp.scores[0]):.3f}  conf {hyp.confidence:.2f}"
    return [sphere, arrow, text]


def candidates_marker(hyp: Hypothesis, frame_id: str, style: MarkerStyle | None = None) -> Marker:
    """The candidates after the best one with known positions, as one SPHERE_LIST (``candidates``/0); a DELETE
    marker when there are none."""
    style = style or MarkerStyle()
    others = points(hyp.positions[1:])
    if not others:
        return delete_marker(NS_CANDIDATES, 0, frame_id)
    marker = _marker(NS_CANDIDATES, 0, Marker.SPHERE_LIST, frame_id, hyp.stamp, style.candidate_size,
                     style.candidate_colour)
    marker.points = others
    return marker


class LoopClosureLinks:
    """The last ``max_links`` loop closures as segments from the query's position estimate to the matched map
    frame (module docstring). Thread-safe: the node adds from its worker and clears from its reset service."""

    def __init__(self, max_links: int = 100) -> None:
        if max_links < 1:
            raise ValueError(f"max_links must be at least 1, got {max_links}")
        self._links: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=max_links)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._links)

    def add(self, hyp: Hypothesis, closure: LoopClosure) -> bool:
        """Remember the link of ``closure`` (from ``hyp``, the answer it came from); False when a position is
        unknown and there is nothing to draw."""
        if len(hyp.indices) == 0:
            return False
        start = np.asarray(hyp.positions[0], dtype=np.float64)
        end = np.asarray(closure.position, dtype=np.float64)
        if not (np.isfinite(start).all() and np.isfinite(end).all()):
            return False
        with self._lock:
            self._links.append((start, end))
        return True

    def reset(self) -> None:
        with self._lock:
            self._links.clear()

    def segments(self) -> np.ndarray:
        """(L, 2, 3) start and end of each remembered link, oldest first."""
        with self._lock:
            return np.array(list(self._links), dtype=np.float64).reshape(-1, 2, 3)

    def markers(self, frame_id: str, stamp: float | None = None, style: MarkerStyle | None = None) -> list[Marker]:
        """LINE_LIST of the links (``loop_closures``/0) and SPHERE_LIST of their map frames (``loop_closures``/1);
        DELETE markers while there are none."""
        style = style or MarkerStyle()
        segments = self.segments()
        if len(segments) == 0:
            return [delete_marker(NS_LOOP_CLOSURES, LOOP_LINKS, frame_id),
                    delete_marker(NS_LOOP_CLOSURES, LOOP_KEYFRAMES, frame_id)]
        lines = _marker(NS_LOOP_CLOSURES, LOOP_LINKS, Marker.LINE_LIST, frame_id, stamp, style.link_width,
                        style.link_colour)
        lines.points = points(segments.reshape(-1, 3))           # start, end, start, end, ...
        ends = _marker(NS_LOOP_CLOSURES, LOOP_KEYFRAMES, Marker.SPHERE_LIST, frame_id, stamp,
                       style.hypothesis_size * 0.8, style.link_colour)
        ends.points = points(segments[:, 1])
        return [lines, ends]


def frame_markers(hyp: Hypothesis, frame_id: str, links: LoopClosureLinks | None = None,
                  style: MarkerStyle | None = None) -> MarkerArray:
    """Everything that changes with each answer: hypothesis, candidates and (if given) the loop-closure links."""
    markers = [*hypothesis_markers(hyp, frame_id, style), candidates_marker(hyp, frame_id, style)]
    if links is not None:
        markers += links.markers(frame_id, hyp.stamp, style)
    return MarkerArray(markers=markers)
