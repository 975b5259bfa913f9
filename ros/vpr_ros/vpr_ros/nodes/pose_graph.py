"""Pose-graph node: odometry + vpr_ros loop closures -> corrected trajectory (iSAM2, vpr_ros.core.pose_graph).

The reference for a SLAM back end of how to consume the localize node's ``~/loop_closure``.

Subscribes:
    ``odom`` (nav_msgs/Odometry): the robot's pose in its odometry frame; a pose-graph node every
    ``graph.keyframe_distance`` map units / ``graph.keyframe_angle_deg`` / ``graph.keyframe_interval`` s.
    Odometry noise comes from the ``graph.*sigma*`` parameters, not from the message (an Odometry covariance
    is that of the absolute pose, not of the motion between two nodes).
    ``loop_closure`` (vpr_ros_interfaces/LoopClosure): remap it to the localize node's ``~/loop_closure``.

Each closure is attached at its query end to the node nearest ``query_stamp`` (the odometry interpolated at
that stamp gives the offset from the node), and at its keyframe end to

* this run's node nearest ``keyframe_stamp`` when that stamp lies within the odometry received (an online map
  of this run: a loop closure in the SLAM sense);
* otherwise a keyframe node of a prior map (one per ``keyframe_id``) with a prior at ``keyframe_pose``
  (``keyframe_position_sigma``, ``keyframe_rotation_sigma_deg`` when its orientation is known), when the pose
  is known; a closure with neither is dropped.

Verified closures use their relative pose and covariance; unverified ones (identity, covariance 1e12) have no
effect unless ``unverified_closures: place`` turns them into place-level position measurements.

Publishes:
    ``~/path`` (nav_msgs/Path, frame ``map_frame``): the run's corrected node poses, after each new node or
    closure, once the run is in the map frame (``anchor: first_pose`` from the start; ``anchor: closures``
    after the closures to a prior map have placed it).
    ``~/map_to_odom`` (geometry_msgs/TransformStamped): map <- odometry frame correction at the latest node.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from geometry_msgs.msg import Pose, PoseStamped, TransformStamped
from nav_msgs.msg import Odometry, Path
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import Header
from vpr_ros_interfaces.msg import LoopClosure

from vpr_ros.core.pose_graph import (
    PoseGraph,
    place_covariance,
    pose_matrix,
    position_quaternion,
    verified_closure_edge,
)
from vpr_ros.core.pose_graph_config import PoseGraphNodeConfig
from vpr_ros.nodes.messages import pose_msg, stamp_from_msg, stamp_to_msg
from vpr_ros.nodes.parameters import command_line_parameters, declare_config_parameters
from vpr_ros.nodes.process import run_node

#: The node's own run is session 0 of the graph.
SESSION = 0


def pose_from_msg(pose: Pose) -> np.ndarray:
    """geometry_msgs/Pose -> (4, 4)."""
    p, q = pose.position, pose.orientation
    return pose_matrix([p.x, p.y, p.z], [q.x, q.y, q.z, q.w])


def pose_to_msg(matrix: np.ndarray) -> Pose:
    """(4, 4) -> geometry_msgs/Pose."""
    return pose_msg(*position_quaternion(matrix))


class PoseGraphNode(Node):
    """See the module docstring. Parameters: :class:`PoseGraphNodeConfig` (``ros2 param describe``)."""

    def __init__(self, *, command_line: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__("pose_graph", **kwargs)
        assignments = command_line_parameters([*command_line, *(kwargs.get("cli_args") or ())], self.get_name())
        self.config: PoseGraphNodeConfig = declare_config_parameters(self, PoseGraphNodeConfig, assignments)
        self.graph = PoseGraph(self.config.graph)
        self.graph.start_session(SESSION, anchor=self.config.anchor)
        self.odometry_frame = ""
        self.closures_received = 0
        self.closures_dropped = 0
        self.path_pub = self.create_publisher(Path, "~/path", 10)
        self.correction_pub = self.create_publisher(TransformStamped, "~/map_to_odom", 10)
        self.create_subscription(Odometry, "odom", self._on_odometry, 50)
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.create_subscription(LoopClosure, "loop_closure", self._on_loop_closure, reliable)

    def _on_odometry(self, msg: Odometry) -> None:
        stamp = stamp_from_msg(msg.header.stamp)
        self.odometry_frame = msg.header.frame_id
        try:
            added = self.graph.add_odometry(SESSION, stamp, pose_from_msg(msg.pose.pose))
        except ValueError as exc:  # stamps not increasing (a bag restarted): keep the graph, skip the message
            self.get_logger().warning(f"odometry skipped: {exc}", throttle_duration_sec=5.0)
            return
        if added:
            self.publish()

    def _on_loop_closure(self, msg: LoopClosure) -> None:
        self.closures_received += 1
        relative = pose_from_msg(msg.relative_pose.pose)
        covariance = np.asarray(msg.relative_pose.covariance, dtype=np.float64).reshape(6, 6)
        if msg.verified:  # T_query_keyframe between the camera frames -> between the bodies (graph nodes)
            relative, covariance = verified_closure_edge(relative, covariance, msg.metric, self.config.place_sigma,
                                                         self.config.camera_pose)
        elif self.config.unverified_closures == "place":
            relative, covariance = np.eye(4), place_covariance(self.config.place_sigma)
        keyframe_stamp = stamp_from_msg(msg.keyframe_stamp)
        own = self.graph.node_at(SESSION, keyframe_stamp) if keyframe_stamp > 0 else None
        if own is not None:
            keyframe_key, keyframe_offset = own[0], own[1].matrix()
        elif msg.keyframe_pose_known:
            keyframe_key = self.graph.add_keyframe(msg.keyframe_id, pose_from_msg(msg.keyframe_pose),
                                                   self._keyframe_prior(msg.keyframe_orientation_known))
            keyframe_offset = np.eye(4)
        else:
            self.closures_dropped += 1
            self.get_logger().warning(f"loop closure to keyframe {msg.keyframe_id} dropped: its stamp is not in this "
                                      "run and its map pose is unknown", throttle_duration_sec=5.0)
            return
        if self.graph.add_loop_closure(SESSION, stamp_from_msg(msg.query_stamp), keyframe_key, relative, covariance,
                                       keyframe_offset):
            self.publish()

    def _keyframe_prior(self, orientation_known: bool) -> np.ndarray:
        rotation_variance = np.radians(self.config.keyframe_rotation_sigma_deg) ** 2 if orientation_known else 1e12
        return np.diag([self.config.keyframe_position_sigma ** 2] * 3 + [rotation_variance] * 3)

    def publish(self) -> None:
        """~/path and ~/map_to_odom, once the run is in the map frame."""
        trajectory = self.graph.trajectory(SESSION)
        if not trajectory.anchored or len(trajectory.stamps) == 0:
            return
        header = Header(stamp=stamp_to_msg(float(trajectory.stamps[-1])), frame_id=self.config.map_frame)
        path = Path(header=header)
        path.poses = [PoseStamped(header=Header(stamp=stamp_to_msg(float(stamp)), frame_id=self.config.map_frame),
                                  pose=pose_to_msg(matrix))
                      for stamp, matrix in zip(trajectory.stamps, trajectory.matrices, strict=True)]
        self.path_pub.publish(path)
        correction = self.graph.map_from_odometry(SESSION)
        if self.config.publish_map_to_odom and correction is not None:
            pose = pose_to_msg(correction)
            transform = TransformStamped(header=header, child_frame_id=self.odometry_frame)
            transform.transform.translation.x = pose.position.x
            transform.transform.translation.y = pose.position.y
            transform.transform.translation.z = pose.position.z
            transform.transform.rotation = pose.orientation
            self.correction_pub.publish(transform)


def main(args: list[str] | None = None) -> None:
    run_node("pose_graph", lambda argv: PoseGraphNode(command_line=argv), args)


if __name__ == "__main__":
    main()
