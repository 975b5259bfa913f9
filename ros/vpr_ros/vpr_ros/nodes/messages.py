"""numpy / core results -> standard ROS 2 messages (and back, for listeners such as the evaluator)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose, PoseArray, PoseWithCovariance, PoseWithCovarianceStamped
from std_msgs.msg import Header
from vpr_ros_interfaces.msg import LoopClosure as LoopClosureMsg
from vpr_ros_interfaces.msg import PlaceCandidate, PlaceCandidates

from vpr_ros.core.geometry.verification import Verification
from vpr_ros.core.localizer import Hypothesis
from vpr_ros.core.loop_closure import LoopClosure


def stamp_to_msg(stamp: float) -> Time:
    sec = math.floor(stamp)
    return Time(sec=int(sec), nanosec=round((stamp - sec) * 1e9) % 1_000_000_000)


def stamp_from_msg(stamp: Time) -> float:
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def pose_msg(position: np.ndarray, orientation: np.ndarray) -> Pose:
    """geometry_msgs/Pose from a position (3,) and a quaternion x y z w (4,; the identity when unknown/NaN)."""
    pose = Pose()
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in position)
    q = orientation if not np.isnan(orientation).any() else np.array([0.0, 0.0, 0.0, 1.0])
    pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = (float(v) for v in q)
    return pose


def pose_covariance(confidence: float, sigma_min: float, sigma_max: float, yaw_sigma_deg: float,
                    orientation_known: bool) -> list[float]:
    """Row-major 6x6 covariance (x y z roll pitch yaw) from the hypothesis confidence.

    Position sigma interpolates linearly from ``sigma_max`` (confidence 0) to ``sigma_min`` (confidence 1);
    angular sigmas scale by the same factor. Unknown orientation gets a variance of pi^2 (uninformative).
    """
    c = float(np.clip(confidence, 0.0, 1.0))
    sigma = sigma_min + (sigma_max - sigma_min) * (1.0 - c)
    scale = sigma / sigma_min if sigma_min > 0 else 1.0
    ang = math.radians(yaw_sigma_deg) * scale if orientation_known else math.pi
    cov = np.zeros((6, 6))
    cov[np.diag_indices(3)] = sigma ** 2
    cov[3, 3] = cov[4, 4] = cov[5, 5] = min(ang, math.pi) ** 2
    return cov.ravel().tolist()


def hypothesis_to_pose(hyp: Hypothesis, frame_id: str, sigma_min: float, sigma_max: float,
                       yaw_sigma_deg: float) -> PoseWithCovarianceStamped | None:
    """Best candidate's reference pose, or None when that pose is unknown."""
    if len(hyp.indices) == 0 or np.isnan(hyp.positions[0]).any():
        return None
    msg = PoseWithCovarianceStamped()
    msg.header = Header(stamp=stamp_to_msg(hyp.stamp), frame_id=frame_id)
    msg.pose.pose = pose_msg(hyp.positions[0], hyp.orientations[0])
    msg.pose.covariance = pose_covariance(hyp.confidence, sigma_min, sigma_max, yaw_sigma_deg,
                                          not np.isnan(hyp.orientations[0]).any())
    return msg


def hypothesis_to_pose_array(hyp: Hypothesis, frame_id: str) -> PoseArray:
    """All candidates with known positions, best first."""
    msg = PoseArray(header=Header(stamp=stamp_to_msg(hyp.stamp), frame_id=frame_id))
    known = ~np.isnan(hyp.positions).any(axis=1)
    msg.poses = [pose_msg(p, q) for p, q in zip(hyp.positions[known], hyp.orientations[known], strict=True)]
    return msg


def _stamp_or_zero(stamp: float) -> Time:
    """A map frame's stamp as builtin time; 0 when the map stores none (NaN), as the interface files say."""
    return stamp_to_msg(stamp) if np.isfinite(stamp) else Time()


def hypothesis_to_candidates(hyp: Hypothesis, frame_id: str, ref_stamps: np.ndarray,
                             reranked: bool) -> PlaceCandidates:
    """The hypothesis as vpr_ros_interfaces/PlaceCandidates: every candidate, best first.

    ``ref_stamps`` are the candidates' stamps as stored in the map (``refmap.frames.stamps[hyp.indices]``, NaN
    where unknown); ``reranked`` whether Patch-NetVLAD re-ranked them (their scores are then fused scores).
    """
    msg = PlaceCandidates(header=Header(stamp=stamp_to_msg(hyp.stamp), frame_id=frame_id),
                          confidence=float(hyp.confidence), sequence_length=int(hyp.sequence_frames),
                          reranked=bool(reranked))
    position_known = np.isfinite(hyp.positions).all(axis=1)
    orientation_known = np.isfinite(hyp.orientations).all(axis=1)
    msg.candidates = [
        PlaceCandidate(ref_id=int(ref_id), ref_stamp=_stamp_or_zero(float(stamp)),
                       pose=pose_msg(np.where(pos_ok, position, 0.0), orientation), pose_known=bool(pos_ok),
                       orientation_known=bool(ori_ok), score=float(score), rank=rank)
        for rank, (ref_id, stamp, position, orientation, pos_ok, ori_ok, score) in enumerate(zip(
            hyp.ids, ref_stamps, hyp.positions, hyp.orientations, position_known, orientation_known, hyp.scores,
            strict=True))]
    return msg


@dataclass(frozen=True)
class CandidateTable:
    """The columns of a PlaceCandidates message (for listeners such as the replay client and the evaluator).

    Shape: ids (K,) int64; scores (K,) float32; positions (K, 3) float64, NaN where ``pose_known`` is false;
    ref_stamps (K,) float64 seconds, NaN where the map stores no stamp.
    """

    stamp: float
    ids: np.ndarray
    scores: np.ndarray
    positions: np.ndarray
    confidence: float
    ref_stamps: np.ndarray


def candidates_from_msg(msg: PlaceCandidates) -> CandidateTable:
    """Inverse of :func:`hypothesis_to_candidates` for the columns a listener needs."""
    rows = msg.candidates
    positions = np.array([(c.pose.position.x, c.pose.position.y, c.pose.position.z) if c.pose_known
                          else (np.nan, np.nan, np.nan) for c in rows], dtype=np.float64).reshape(len(rows), 3)
    return CandidateTable(stamp=stamp_from_msg(msg.header.stamp),
                          ids=np.array([c.ref_id for c in rows], dtype=np.int64),
                          scores=np.array([c.score for c in rows], dtype=np.float32),
                          positions=positions, confidence=float(msg.confidence),
                          ref_stamps=np.array([stamp_from_msg(c.ref_stamp) if c.ref_stamp.sec or c.ref_stamp.nanosec
                                               else np.nan for c in rows], dtype=np.float64))


def unverified_relative_pose() -> PoseWithCovariance:
    """Identity with the uninformative covariance of LoopClosure.msg: what an unverified closure carries."""
    relative = PoseWithCovariance()
    relative.pose.orientation.w = 1.0
    variances = [LoopClosureMsg.UNINFORMATIVE_TRANSLATION_VARIANCE] * 3 + \
        [LoopClosureMsg.UNINFORMATIVE_ROTATION_VARIANCE] * 3
    relative.covariance = np.diag(variances).ravel().tolist()
    return relative


def loop_closure_to_msg(closure: LoopClosure, frame_id: str, query_frame_id: str,
                        verification: Verification | None = None) -> LoopClosureMsg:
    """A gated loop closure as vpr_ros_interfaces/LoopClosure (header stamp = query stamp, frame = map frame).

    With a successful ``verification`` the message carries its relative pose T_query_keyframe (camera optical
    frames), covariance and inliers, ``verified`` true and ``metric`` as measured; without one, ``verified`` and
    ``metric`` are false, ``inliers`` is 0 and the relative pose is the identity with the uninformative covariance
    (:func:`unverified_relative_pose`).
    """
    stamp = stamp_to_msg(closure.stamp)
    position_known = bool(np.isfinite(closure.position).all())
    orientation_known = bool(np.isfinite(closure.orientation).all())
    return LoopClosureMsg(
        header=Header(stamp=stamp, frame_id=frame_id), query_stamp=stamp, query_frame_id=query_frame_id,
        keyframe_id=int(closure.ref_id), keyframe_stamp=_stamp_or_zero(closure.ref_stamp),
        keyframe_pose=pose_msg(np.where(position_known, closure.position, 0.0), closure.orientation),
        keyframe_pose_known=position_known, keyframe_orientation_known=orientation_known,
        relative_pose=verified_relative_pose(verification) if verification else unverified_relative_pose(),
        inliers=int(verification.inliers) if verification else 0, score=float(closure.score),
        confidence=float(closure.confidence), verified=verification is not None,
        metric=bool(verification.metric) if verification else False)


def verified_relative_pose(verification: Verification) -> PoseWithCovariance:
    """T_query_keyframe of a verification with its 6x6 covariance (x y z roll pitch yaw, query camera frame)."""
    relative = PoseWithCovariance(pose=pose_msg(verification.translation, verification.quaternion_xyzw))
    relative.covariance = np.asarray(verification.covariance, dtype=np.float64).ravel().tolist()
    return relative
