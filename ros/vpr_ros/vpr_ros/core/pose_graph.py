"""Pose-graph back end for loop closures (ROS-free): odometry + loop closures, optimised incrementally with iSAM2.

The reference for a SLAM user of how to consume ``~/loop_closure`` (vpr_ros_interfaces/LoopClosure). Nodes are
Pose3 values of GTSAM; each robot *session* (one run, with its own odometry frame) is a chain of nodes spaced by
odometry travel, linked by odometry between-factors; loop closures link a node of one session to a keyframe
node (a node of the same or an earlier session, or a keyframe of a prior map with a pose prior).

Loop closures (the LoopClosure message's convention): the measurement is the pose of the keyframe's camera in
the query's camera frame, ``T_query_keyframe``, with a 6x6 covariance in ROS order (x y z roll pitch yaw,
perturbations of the pose *in the query frame*, rotations about fixed axes). GTSAM's tangent order is
(rx ry rz tx ty tz) and its perturbations act on the right (in the keyframe's frame), so
:func:`ros_covariance_to_gtsam` reorders and rotates the covariance: with ``T' = (t + dt, Exp(dtheta) R)``
(ROS) and ``T' = T Exp([w; v]) ~ (R Exp(w), t + R v)`` (GTSAM), ``w = R^T dtheta`` and ``v = R^T dt``.

* A closure whose covariance is uninformative in every axis (an unverified closure: identity pose, variances
  1e12, see LoopClosure.msg) adds no factor at all: it cannot move anything.
* A closure with known translation but uninformative rotation (rotation variances >= ``UNKNOWN_ROTATION_VARIANCE``)
  is a *position* constraint: the keyframe's position in the query frame, ``R_q^T (t_k - t_q) = d``. The
  place-level use of an unverified closure ("the query is within sigma of the keyframe") is this with d = 0
  (:func:`place_covariance`). A Pose3 between-factor cannot express it: the Expmap chart couples the
  translation with the (unknown) rotation, so it is its own small factor (:func:`position_factor`).
* Closures get a robust kernel (Huber or Cauchy, ``PoseGraphConfig.robust_kernel``); odometry does not.

Sessions and frames: the first session is anchored by a prior on its first pose (its odometry frame *is* the
map frame). A later session has its own odometry frame and no prior: its nodes and factors wait outside the
optimiser until the loop closures alone can place it -- one closure with a known rotation, or
``anchor_min_closures`` position closures spread over ``anchor_min_spread`` (the heading needs two distinct
places; the alignment is yaw + translation, for gravity-aligned odometry frames as REP 105 asks) -- then its
values are moved into the map frame by that alignment and everything enters iSAM2, where the closures keep
correcting it. Until then :meth:`PoseGraph.trajectory` reports it as not anchored.

Example:
    >>> import numpy as np
    >>> graph = PoseGraph(PoseGraphConfig(keyframe_distance=1.0))
    >>> graph.start_session(0, anchor="first_pose")
    >>> for i in range(5):
    ...     _ = graph.add_odometry(0, float(i), pose_matrix([float(i), 0.0, 0.0]))
    >>> graph.trajectory(0).positions[:, 0].round(3).tolist()
    [0.0, 1.0, 2.0, 3.0, 4.0]
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

try:
    import gtsam
except ImportError as exc:  # rosdep has no key for gtsam's Python bindings (the kilted gtsam package has none)
    raise ImportError("the pose graph needs gtsam's Python bindings: pip install gtsam==4.3.0 "
                      "(requirements/runtime.txt); no rosdep key provides them") from exc

from vpr_ros.config import setting

#: LoopClosure.msg: the variances an unverified closure carries. A variance this large is "no information".
UNINFORMATIVE_VARIANCE = 1.0e12
#: Variances at or above this count as uninformative (a factor of 1e-2 below the message's constant).
UNINFORMATIVE_THRESHOLD = 1.0e10
#: A rotation with a variance above pi^2 (rad^2) is unknown: its standard deviation exceeds half a turn.
UNKNOWN_ROTATION_VARIANCE = float(np.pi ** 2)
#: Sessions are key ranges of one symbol character; prior-map keyframes have their own character.
_SESSION_CHAR = "x"
_KEYFRAME_CHAR = "m"
_SESSION_STRIDE = 1 << 32
#: Standard deviation of a prior component that is meant to carry no information (map units, radians).
_FREE_SIGMA = 1.0e4
#: ROS (x y z roll pitch yaw) -> GTSAM (rx ry rz tx ty tz) order.
_ROS_TO_GTSAM = np.array([3, 4, 5, 0, 1, 2])


@dataclass(frozen=True)
class PoseGraphConfig:
    """Pose graph (iSAM2): node spacing, odometry noise, robust kernel for loop closures, session anchoring."""

    keyframe_distance: float = setting(1.0, "odometry travel (map units) between pose-graph nodes", min=1e-6)
    keyframe_angle_deg: float = setting(15.0, "odometry rotation (degrees) that adds a node even without travel",
                                        min=0.0)
    keyframe_interval: float = setting(
        0.0, "seconds after which a node is added even without travel or rotation (0 = never)", min=0.0)
    translation_sigma_per_unit: float = setting(
        0.05, "odometry translation standard deviation per map unit travelled (0.05 = 5%)", min=0.0)
    rotation_sigma_per_unit_deg: float = setting(
        1.0, "odometry rotation standard deviation (degrees) per map unit travelled", min=0.0)
    translation_sigma_min: float = setting(
        0.01, "smallest odometry translation standard deviation of an edge (map units)", min=1e-9)
    rotation_sigma_min_deg: float = setting(
        0.2, "smallest odometry rotation standard deviation of an edge (degrees)", min=1e-9)
    first_pose_sigma: float = setting(
        1e-3, "standard deviation of the prior on the first pose of a session anchored at its first pose "
        "(map units and radians)", min=1e-12)
    tilt_sigma_deg: float = setting(
        5.0, "a session placed by loop closures: prior on the tilt (roll, pitch) of its first node, since odometry "
        "frames are gravity-aligned (REP 105) and position-only closures along a straight route leave the roll "
        "about it undetermined; its yaw and position get no prior", min=1e-6)
    robust_kernel: str = setting("cauchy", "robust kernel of loop-closure factors (none = plain least squares)",
                                 choices=("cauchy", "huber", "none"))
    robust_threshold: float = setting(
        2.0, "kernel width in standard deviations: residuals beyond it weigh less (Huber: linearly)", min=1e-6)
    anchor_min_closures: int = setting(
        3, "position-only loop closures needed before a session without a prior is placed in the map frame", min=2)
    anchor_min_spread: float = setting(
        2.0, "... and how far apart (map units) their query positions must lie (the heading needs two places)",
        min=0.0)
    relinearize_threshold: float = setting(0.01, "iSAM2: relinearise a variable whose update exceeds this",
                                           min=0.0)
    closure_iterations: int = setting(
        3, "extra iSAM2 iterations after a loop closure (its correction is large; robust weights settle)", min=0)


def camera_to_body(relative: np.ndarray, covariance: np.ndarray,
                   camera_pose: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """A relative pose between two camera optical frames (LoopClosure.msg's T_query_keyframe) as the relative pose
    of the two bodies: T_qb_kb = T_bc T_qc_kc T_bc^-1, ``camera_pose`` = T_bc (x y z qx qy qz qw). The covariance
    (x y z roll pitch yaw) is rotated into the body frame; the lever arm's coupling of the camera offset with the
    rotation is left out (exact for a camera at the body's origin, the default).

    Example:
        >>> rel = pose_matrix([0.0, 0.0, 1.0])          # keyframe camera 1 m ahead along the optical axis
        >>> body, _ = camera_to_body(rel, np.eye(6), (0, 0, 0, -0.5, 0.5, -0.5, 0.5))
        >>> body[:3, 3].round(6).tolist()               # = 1 m along the body's x axis
        [1.0, 0.0, 0.0]
    """
    t_bc = pose_matrix(camera_pose[:3], camera_pose[3:])
    body = t_bc @ relative @ np.linalg.inv(t_bc)
    rotate = np.kron(np.eye(2), t_bc[:3, :3])
    return body, rotate @ np.asarray(covariance, dtype=np.float64) @ rotate.T


def verified_closure_edge(relative: np.ndarray, covariance: np.ndarray, metric: bool, place_sigma: float,
                          camera_pose: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The body-to-body edge of a verified closure (T_query_keyframe between the camera frames, its covariance).

    Without a metric translation (a unit direction, or none for a pure rotation) only the rotation is a
    measurement: the translation becomes zero with a place-level covariance (``place_sigma``) and no correlation.

    Example:
        >>> unit = pose_matrix([0.0, 0.0, 1.0])   # a direction, not 1 m
        >>> edge, cov = verified_closure_edge(unit, np.eye(6) * 1e-6, False, 2.0, (0, 0, 0, -0.5, 0.5, -0.5, 0.5))
        >>> edge[:3, 3].tolist(), np.diag(cov)[:3].tolist()
        ([0.0, 0.0, 0.0], [4.0, 4.0, 4.0])
    """
    relative = np.array(relative, dtype=np.float64)
    covariance = np.array(covariance, dtype=np.float64)
    if not metric:
        relative[:3, 3] = 0.0
        covariance[:3, :] = 0.0
        covariance[:, :3] = 0.0
        covariance[:3, :3] = np.eye(3) * place_sigma ** 2
    return camera_to_body(relative, covariance, camera_pose)


def pose_matrix(position: np.ndarray | list[float],
                quaternion_xyzw: np.ndarray | list[float] | None = None) -> np.ndarray:
    """(4, 4) homogeneous pose from a position (3,) and a quaternion x y z w (4,; identity when None)."""
    pose = np.eye(4)
    pose[:3, 3] = np.asarray(position, dtype=np.float64).reshape(3)
    if quaternion_xyzw is not None:
        x, y, z, w = np.asarray(quaternion_xyzw, dtype=np.float64).reshape(4)
        pose[:3, :3] = gtsam.Rot3.Quaternion(w, x, y, z).matrix()
    return pose


def position_quaternion(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(4, 4) pose -> position (3,) and quaternion x y z w (4,)."""
    m = np.asarray(matrix, dtype=np.float64)
    return m[:3, 3].copy(), np.asarray(gtsam.Rot3(m[:3, :3]).toQuaternion().coeffs(), dtype=np.float64)


def _pose3(pose: np.ndarray | gtsam.Pose3) -> gtsam.Pose3:
    if isinstance(pose, gtsam.Pose3):
        return pose
    matrix = np.asarray(pose, dtype=np.float64)
    if matrix.shape != (4, 4):
        raise ValueError(f"a pose is a (4, 4) homogeneous matrix, got shape {matrix.shape}")
    return gtsam.Pose3(matrix)


def ros_covariance_to_gtsam(covariance: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """Covariance of a pose in ROS convention -> GTSAM's tangent space of that pose.

    Args:
        covariance: (6, 6) or (36,) row-major, x y z roll pitch yaw, perturbations in the pose's parent frame
            (geometry_msgs/PoseWithCovariance; LoopClosure.relative_pose: the query camera frame).
        rotation: (3, 3) the pose's rotation R (parent <- child).

    Returns:
        (6, 6) in GTSAM order (rx ry rz tx ty tz), right perturbations (child frame): ``J P J^T`` with
        ``J = diag(R^T, R^T)`` after reordering.
    """
    p = np.asarray(covariance, dtype=np.float64).reshape(6, 6)
    r = np.asarray(rotation, dtype=np.float64)
    if r.shape != (3, 3):
        raise ValueError(f"rotation must be (3, 3), got {r.shape}")
    reordered = p[np.ix_(_ROS_TO_GTSAM, _ROS_TO_GTSAM)]
    j = np.zeros((6, 6))
    j[:3, :3] = j[3:, 3:] = r.T
    return j @ reordered @ j.T


def place_covariance(sigma: float) -> np.ndarray:
    """(6, 6) ROS-order covariance of a place-level match: position within ``sigma``, rotation unknown."""
    return np.diag([sigma ** 2] * 3 + [UNINFORMATIVE_VARIANCE] * 3)


def is_uninformative(covariance: np.ndarray) -> bool:
    """Every variance of a (6, 6) ROS-order covariance is uninformative (an unverified closure)."""
    return bool((np.diag(np.asarray(covariance, dtype=np.float64).reshape(6, 6)) >= UNINFORMATIVE_THRESHOLD).all())


def rotation_unknown(covariance: np.ndarray) -> bool:
    """The rotation part of a (6, 6) ROS-order covariance carries no information (a position-only closure)."""
    return bool((np.diag(np.asarray(covariance, dtype=np.float64).reshape(6, 6))[3:] >= UNKNOWN_ROTATION_VARIANCE)
                .all())


def _robust(model: gtsam.noiseModel.Base, config: PoseGraphConfig) -> gtsam.noiseModel.Base:
    if config.robust_kernel == "none":
        return model
    kernel = (gtsam.noiseModel.mEstimator.Cauchy if config.robust_kernel == "cauchy"
              else gtsam.noiseModel.mEstimator.Huber).Create(config.robust_threshold)
    return gtsam.noiseModel.Robust.Create(kernel, model)


def position_factor(query_key: int, keyframe_key: int, offset: np.ndarray, noise: gtsam.noiseModel.Base,
                    keyframe_point: np.ndarray | None = None) -> gtsam.CustomFactor:
    """The keyframe's position in the query's frame is ``offset``: error ``R_q^T (t_k + R_k p - t_q) - offset``.

    Args:
        offset: (3,) measured position of the keyframe in the query frame (0 for a place-level match).
        noise: noise model of that 3-vector (its covariance is in the query frame), robust or not.
        keyframe_point: (3,) ``p``, the keyframe's position in the frame of node ``keyframe_key`` (0 when the
            keyframe is that node).

    Jacobians for right perturbations ``[w; v]`` of each pose: query ``[skew(R_q^T (t_k + R_k p - t_q)), -I]``,
    keyframe ``R_q^T R_k [-skew(p), I]``.
    """
    measured = np.asarray(offset, dtype=np.float64).reshape(3)
    point = np.zeros(3) if keyframe_point is None else np.asarray(keyframe_point, dtype=np.float64).reshape(3)

    def error(this: gtsam.CustomFactor, values: gtsam.Values, jacobians: list[np.ndarray] | None) -> np.ndarray:
        query = values.atPose3(this.keys()[0])
        keyframe = values.atPose3(this.keys()[1])
        r_q, r_k = query.rotation().matrix(), keyframe.rotation().matrix()
        in_query = r_q.T @ (keyframe.translation() + r_k @ point - query.translation())
        if jacobians is not None:
            jacobians[0] = np.hstack([_skew(in_query), -np.eye(3)])
            jacobians[1] = r_q.T @ r_k @ np.hstack([-_skew(point), np.eye(3)])
        return in_query - measured

    return gtsam.CustomFactor(noise, [query_key, keyframe_key], error)


def _skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


@dataclass
class Trajectory:
    """Optimised poses of one session's nodes, in the map frame when ``anchored`` (else its odometry frame).

    Shape: stamps (N,); positions (N, 3); quaternions (N, 4) x y z w; matrices (N, 4, 4).
    """

    session: int
    anchored: bool
    stamps: np.ndarray
    matrices: np.ndarray

    @property
    def positions(self) -> np.ndarray:
        return self.matrices[:, :3, 3]

    @property
    def quaternions(self) -> np.ndarray:
        return np.array([position_quaternion(m)[1] for m in self.matrices]).reshape(-1, 4)


@dataclass
class _Closure:
    query_session: int
    query_stamp: float
    keyframe_key: int
    relative: gtsam.Pose3
    covariance: np.ndarray
    keyframe_offset: gtsam.Pose3


@dataclass
class _Session:
    """One run's nodes: stamps and odometry poses of the nodes, the odometry since the last node."""

    index: int
    anchor_first_pose: bool
    anchored: bool = False
    stamps: list[float] = field(default_factory=list)
    odometry: list[gtsam.Pose3] = field(default_factory=list)
    tail_stamps: list[float] = field(default_factory=list)
    tail_odometry: list[gtsam.Pose3] = field(default_factory=list)
    # Waiting for the anchor: factors and odometry-frame values that are not in iSAM2 yet.
    pending_factors: gtsam.NonlinearFactorGraph = field(default_factory=gtsam.NonlinearFactorGraph)
    pending_closures: list[_Closure] = field(default_factory=list)
    last_node_time: float = -np.inf

    def key(self, node: int) -> int:
        return gtsam.symbol(_SESSION_CHAR, self.index * _SESSION_STRIDE + node)


class PoseGraph:
    """iSAM2 pose graph of one or more sessions, fed by odometry and loop closures.

    Not thread-safe: one owner (the pose-graph node calls it from its executor's callbacks).
    """

    def __init__(self, config: PoseGraphConfig | None = None) -> None:
        self.config = config or PoseGraphConfig()
        params = gtsam.ISAM2Params()
        params.setRelinearizeThreshold(self.config.relinearize_threshold)
        params.relinearizeSkip = 1
        # QR, not the default Cholesky: Cholesky declares a long odometry chain "indeterminate" once its rotation
        # drift makes the system ill-conditioned (a 1180-node straight chain at 1 degree per unit fails at node
        # ~750); QR is as fast here.
        params.setFactorization("QR")
        self.isam = gtsam.ISAM2(params)
        self.sessions: dict[int, _Session] = {}
        self.keyframes: set[int] = set()
        self.estimate = gtsam.Values()
        self.closures_added = 0
        self.closures_ignored = 0

    # ---- sessions and odometry --------------------------------------------------------------------------
    def start_session(self, session: int, anchor: str = "closures") -> None:
        """Start session ``session`` (an int >= 0): ``anchor="first_pose"`` puts a prior on its first pose (its
        odometry frame is the map frame); ``"closures"`` leaves it unconstrained until loop closures place it."""
        if anchor not in ("first_pose", "closures"):
            raise ValueError(f"anchor must be 'first_pose' or 'closures', got {anchor!r}")
        if session in self.sessions:
            raise ValueError(f"session {session} already started")
        if not 0 <= session < (1 << 20):
            raise ValueError(f"session must be in [0, 2^20), got {session}")
        self.sessions[session] = _Session(session, anchor_first_pose=anchor == "first_pose")

    def _odometry_noise(self, step: gtsam.Pose3) -> gtsam.noiseModel.Base:
        travelled = float(np.linalg.norm(step.translation()))
        c = self.config
        sigma_t = max(c.translation_sigma_min, c.translation_sigma_per_unit * travelled)
        sigma_r = np.radians(max(c.rotation_sigma_min_deg, c.rotation_sigma_per_unit_deg * travelled))
        return gtsam.noiseModel.Diagonal.Sigmas(np.array([sigma_r] * 3 + [sigma_t] * 3))

    def _due(self, s: _Session, stamp: float, pose: gtsam.Pose3) -> bool:
        if not s.stamps:
            return True
        step = s.odometry[-1].between(pose)
        c = self.config
        return (float(np.linalg.norm(step.translation())) >= c.keyframe_distance
                or np.degrees(np.linalg.norm(gtsam.Rot3.Logmap(step.rotation()))) >= c.keyframe_angle_deg
                or (c.keyframe_interval > 0 and stamp - s.last_node_time >= c.keyframe_interval))

    def add_odometry(self, session: int, stamp: float, pose: np.ndarray | gtsam.Pose3) -> bool:
        """Feed one odometry pose (the robot's pose in the session's odometry frame at ``stamp``, (4, 4)).

        Adds a node when the robot has moved ``keyframe_distance`` / turned ``keyframe_angle_deg`` since the
        last node (or ``keyframe_interval`` passed); returns whether it did. Stamps must increase.
        """
        s = self._session(session)
        p = _pose3(pose)
        last = s.tail_stamps[-1] if s.tail_stamps else (s.stamps[-1] if s.stamps else -np.inf)
        if stamp <= last:
            raise ValueError(f"session {session}: odometry stamp {stamp} is not after the previous one ({last})")
        if not self._due(s, stamp, p):
            s.tail_stamps.append(stamp)
            s.tail_odometry.append(p)
            self._retry_closures(s)
            return False
        self._add_node(s, stamp, p)
        self._retry_closures(s)
        return True

    def _add_node(self, s: _Session, stamp: float, odometry: gtsam.Pose3) -> None:
        node = len(s.stamps)
        key = s.key(node)
        factors = gtsam.NonlinearFactorGraph()
        values = gtsam.Values()
        if node == 0:
            if s.anchor_first_pose:
                factors.add(gtsam.PriorFactorPose3(key, odometry, gtsam.noiseModel.Isotropic.Sigma(
                    6, self.config.first_pose_sigma)))
                s.anchored = True
            initial = odometry
        else:
            step = s.odometry[-1].between(odometry)
            factors.add(gtsam.BetweenFactorPose3(s.key(node - 1), key, step, self._odometry_noise(step)))
            # Continue from the optimised previous node (anchored) or from odometry (pending).
            previous = self.estimate.atPose3(s.key(node - 1)) if s.anchored else s.odometry[-1]
            initial = previous.compose(step)
        s.stamps.append(stamp)
        s.odometry.append(odometry)
        s.tail_stamps.clear()
        s.tail_odometry.clear()
        s.last_node_time = stamp
        if s.anchored:
            values.insert(key, initial)
            self._update(factors, values)
        else:
            for i in range(factors.size()):
                s.pending_factors.add(factors.at(i))

    def _session(self, session: int) -> _Session:
        if session not in self.sessions:
            raise KeyError(f"session {session} was not started (start_session)")
        return self.sessions[session]

    # ---- lookup -------------------------------------------------------------------------------------------
    def node_at(self, session: int, stamp: float) -> tuple[int, gtsam.Pose3] | None:
        """Key of the session's node nearest ``stamp`` and the pose of the robot at ``stamp`` in that node's
        frame (odometry interpolated between the messages around ``stamp``); None when the session's odometry
        does not cover ``stamp`` yet (or never will: before its first node)."""
        s = self._session(session)
        stamps = s.stamps + s.tail_stamps
        if not s.stamps or stamp < stamps[0] or stamp > stamps[-1]:
            return None
        poses = s.odometry + s.tail_odometry
        i = bisect_left(stamps, stamp)
        if stamps[i] == stamp:
            at = poses[i]
        else:
            w = (stamp - stamps[i - 1]) / (stamps[i] - stamps[i - 1])
            at = poses[i - 1].slerp(w, poses[i])
        j = bisect_left(s.stamps, stamp)
        candidates = [n for n in (j - 1, j) if 0 <= n < len(s.stamps)]
        node = min(candidates, key=lambda n: abs(s.stamps[n] - stamp))
        return s.key(node), s.odometry[node].between(at)

    def covers(self, session: int, stamp: float) -> bool:
        """Whether ``stamp`` lies within the session's nodes (a keyframe of this session, not a prior map)."""
        s = self.sessions.get(session)
        return bool(s and s.stamps and s.stamps[0] <= stamp <= (s.tail_stamps or s.stamps)[-1])

    def keyframe_key(self, keyframe_id: int) -> int:
        """Key of a prior-map keyframe node (see :meth:`add_keyframe`)."""
        return gtsam.symbol(_KEYFRAME_CHAR, keyframe_id)

    # ---- keyframes of a prior map ----------------------------------------------------------------------
    def add_keyframe(self, keyframe_id: int, pose: np.ndarray | gtsam.Pose3, covariance: np.ndarray) -> int:
        """A keyframe of a prior map (not a node of any session): a node with a prior at its map pose.

        ``covariance``: (6, 6) ROS order, in the map frame (rotation uninformative when the map stores no
        orientation). Added once per id; returns its key.
        """
        key = self.keyframe_key(keyframe_id)
        if key in self.keyframes:
            return key
        p = _pose3(pose)
        cov = ros_covariance_to_gtsam(covariance, p.rotation().matrix())
        factors = gtsam.NonlinearFactorGraph()
        factors.add(gtsam.PriorFactorPose3(key, p, gtsam.noiseModel.Gaussian.Covariance(cov)))
        values = gtsam.Values()
        values.insert(key, p)
        self.keyframes.add(key)
        self._update(factors, values)
        return key

    # ---- loop closures ------------------------------------------------------------------------------------
    def add_loop_closure(self, query_session: int, query_stamp: float, keyframe_key: int,
                         relative: np.ndarray | gtsam.Pose3, covariance: np.ndarray,
                         keyframe_offset: np.ndarray | gtsam.Pose3 | None = None) -> bool:
        """A loop closure: ``relative`` = T_query_keyframe (4, 4), ``covariance`` (6, 6) ROS order, query frame.

        ``keyframe_key`` and ``keyframe_offset`` (the keyframe's pose in that node's frame; identity when None)
        from :meth:`node_at` (a session's node) or :meth:`add_keyframe` (a prior map). Returns
        False when the closure carries no information (unverified) and is ignored; a closure whose query stamp
        the odometry does not cover yet is kept and added once it does.
        """
        cov = np.asarray(covariance, dtype=np.float64).reshape(6, 6)
        if is_uninformative(cov):
            self.closures_ignored += 1
            return False
        offset = gtsam.Pose3() if keyframe_offset is None else _pose3(keyframe_offset)
        closure = _Closure(query_session, float(query_stamp), int(keyframe_key), _pose3(relative), cov, offset)
        s = self._session(query_session)
        if not self._try_closure(s, closure):
            s.pending_closures.append(closure)
        return True

    def _retry_closures(self, s: _Session) -> None:
        """Closures that waited for odometry to cover their query stamp (or, unanchored, for the anchor)."""
        if not s.pending_closures:
            return
        if not s.anchored:
            self._try_anchor(s)
            return
        waiting, s.pending_closures = s.pending_closures, []
        for closure in waiting:
            if not self._try_closure(s, closure):
                s.pending_closures.append(closure)

    def _closure_factor(self, node_key: int, node_to_query: gtsam.Pose3, c: _Closure) -> gtsam.NonlinearFactor:
        """The closure between the query's node and the keyframe's node (both ends off their nodes by offsets)."""
        if rotation_unknown(c.covariance):
            # Position of the keyframe in the node's frame: t_nq + R_nq d, covariance R_nq S R_nq^T.
            r_nq = node_to_query.rotation().matrix()
            offset = node_to_query.translation() + r_nq @ c.relative.translation()
            cov = r_nq @ c.covariance[:3, :3] @ r_nq.T
            noise = _robust(gtsam.noiseModel.Gaussian.Covariance(cov), self.config)
            return position_factor(node_key, c.keyframe_key, offset, noise, c.keyframe_offset.translation())
        # Measured node -> keyframe node: A T_qk B with A = T_node_query, B = T_keyframe_node. A right
        # perturbation of T_qk becomes Ad(B^-1) of it on the product.
        to_node = c.keyframe_offset.inverse()
        adjoint = to_node.inverse().AdjointMap()
        cov = adjoint @ ros_covariance_to_gtsam(c.covariance, c.relative.rotation().matrix()) @ adjoint.T
        noise = _robust(gtsam.noiseModel.Gaussian.Covariance(cov), self.config)
        return gtsam.BetweenFactorPose3(node_key, c.keyframe_key, node_to_query.compose(c.relative).compose(to_node),
                                        noise)

    def _try_closure(self, s: _Session, c: _Closure) -> bool:
        """Add the closure's factor if its query stamp is covered and its keyframe is in the graph."""
        found = self.node_at(s.index, c.query_stamp)
        if found is None or not self.estimate.exists(c.keyframe_key):
            return False
        node_key, node_to_query = found
        factor = self._closure_factor(node_key, node_to_query, c)
        if s.anchored:
            graph = gtsam.NonlinearFactorGraph()
            graph.add(factor)
            self._update(graph, gtsam.Values(), iterations=self.config.closure_iterations)
            self.closures_added += 1
            return True
        s.pending_closures.append(c)  # kept for the anchor; its factor enters with the session
        self._try_anchor(s)
        return True

    def _try_anchor(self, s: _Session) -> None:
        """Place a pending session in the map frame from its closures, if they determine it (see module doc)."""
        usable = [(c, self.node_at(s.index, c.query_stamp)) for c in s.pending_closures]
        usable = [(c, f) for c, f in usable if f is not None and self.estimate.exists(c.keyframe_key)]
        if not usable:
            return
        full = [(c, f) for c, f in usable if not rotation_unknown(c.covariance)]
        if full:
            c, (node_key, node_to_query) = full[0]
            keyframe = self.estimate.atPose3(c.keyframe_key).compose(c.keyframe_offset)
            node_in_map = keyframe.compose(node_to_query.compose(c.relative).inverse())
            map_from_odom = node_in_map.compose(s.odometry[self._node_index(node_key)].inverse())
        else:
            query_odom = np.array([s.odometry[self._node_index(k)].compose(nq).translation() for _, (k, nq) in usable])
            keyframe_map = np.array([self.estimate.atPose3(c.keyframe_key).compose(c.keyframe_offset).translation()
                                     for c, _ in usable])
            spread = float(np.linalg.norm(query_odom.max(axis=0) - query_odom.min(axis=0)))
            if len(usable) < self.config.anchor_min_closures or spread < self.config.anchor_min_spread:
                return
            map_from_odom = align_yaw_translation(query_odom, keyframe_map)
        values = gtsam.Values()
        for node, odometry in enumerate(s.odometry):
            values.insert(s.key(node), map_from_odom.compose(odometry))
        graph = s.pending_factors
        # Only the tilt: yaw and position are left to the closures (standard deviation FREE: no information).
        tilt = np.radians(self.config.tilt_sigma_deg)
        graph.add(gtsam.PriorFactorPose3(s.key(0), values.atPose3(s.key(0)), gtsam.noiseModel.Diagonal.Sigmas(
            np.array([tilt, tilt, _FREE_SIGMA, _FREE_SIGMA, _FREE_SIGMA, _FREE_SIGMA]))))
        for c, (node_key, node_to_query) in usable:
            graph.add(self._closure_factor(node_key, node_to_query, c))
        s.anchored = True
        s.pending_factors = gtsam.NonlinearFactorGraph()
        s.pending_closures = [c for c in s.pending_closures if all(c is not u for u, _ in usable)]
        self.closures_added += len(usable)
        self._update(graph, values, iterations=self.config.closure_iterations)

    def _node_index(self, key: int) -> int:
        return gtsam.Symbol(key).index() % _SESSION_STRIDE

    # ---- optimisation and results ------------------------------------------------------------------------
    def _update(self, factors: gtsam.NonlinearFactorGraph, values: gtsam.Values, iterations: int = 0) -> None:
        self.isam.update(factors, values)
        for _ in range(iterations):
            self.isam.update()
        self.estimate = self.isam.calculateEstimate()

    def trajectory(self, session: int) -> Trajectory:
        """The session's nodes: optimised, in the map frame, once anchored; its odometry before that."""
        s = self._session(session)
        if s.anchored:
            matrices = [self.estimate.atPose3(s.key(n)).matrix() for n in range(len(s.stamps))]
        else:
            matrices = [p.matrix() for p in s.odometry]
        return Trajectory(session, s.anchored, np.asarray(s.stamps, dtype=np.float64),
                          np.asarray(matrices, dtype=np.float64).reshape(-1, 4, 4))

    def map_from_odometry(self, session: int) -> np.ndarray | None:
        """(4, 4) correction map <- odometry frame of the session at its latest node (None before anchoring)."""
        s = self._session(session)
        if not s.anchored or not s.stamps:
            return None
        latest = s.key(len(s.stamps) - 1)
        return self.estimate.atPose3(latest).compose(s.odometry[-1].inverse()).matrix()


def align_yaw_translation(source: np.ndarray, target: np.ndarray) -> gtsam.Pose3:
    """Least-squares rotation about z + translation taking ``source`` points (N, 3) onto ``target`` (N, 3).

    The horizontal part is GTSAM's Pose2.Align (closed form); the vertical offset is the mean difference.
    Needs two distinct horizontal points.
    """
    src, dst = np.asarray(source, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3:
        raise ValueError(f"source and target must both be (N, 3), got {src.shape} and {dst.shape}")
    planar = gtsam.Pose2.Align(dst[:, :2].T, src[:, :2].T)
    if planar is None:
        raise ValueError("alignment needs at least two distinct points")
    dz = float(np.mean(dst[:, 2] - src[:, 2]))
    return gtsam.Pose3(gtsam.Rot3.Rz(planar.theta()), np.array([planar.x(), planar.y(), dz]))
