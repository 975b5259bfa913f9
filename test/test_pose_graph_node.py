"""The pose-graph node on a real rclpy graph (loopback): odometry + LoopClosure messages in, nav_msgs/Path out."""

from __future__ import annotations

import threading
import time

import numpy as np
from nav_msgs.msg import Odometry, Path
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import Header
from vpr_ros_interfaces.msg import LoopClosure

from vpr_ros.core.pose_graph import pose_matrix
from vpr_ros.eval.trajectories import DriftModel, ate_rmse, drifted_odometry, planar_poses
from vpr_ros.nodes.harness import RosGraph
from vpr_ros.nodes.messages import stamp_to_msg, unverified_relative_pose
from vpr_ros.nodes.pose_graph import PoseGraphNode, pose_from_msg, pose_to_msg

STEPS = 40
START = 500.0  # the run's stamps: after the prior map's


class PathListener:
    """The latest ~/path, and a way to wait for one that satisfies a condition."""

    def __init__(self, node: Node, topic: str) -> None:
        self.latest: Path | None = None
        self._cond = threading.Condition()
        node.create_subscription(Path, topic, self._on_path, 10)

    def _on_path(self, msg: Path) -> None:
        with self._cond:
            self.latest = msg
            self._cond.notify_all()

    def wait_for(self, poses: int, timeout: float = 30.0) -> Path:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.latest is None or len(self.latest.poses) < poses:
                left = deadline - time.monotonic()
                got = len(self.latest.poses) if self.latest is not None else None
                assert left > 0, f"no ~/path with {poses} poses within {timeout} s (latest: {got})"
                self._cond.wait(left)
            return self.latest


def odometry_msg(stamp: float, pose: np.ndarray) -> Odometry:
    msg = Odometry(header=Header(stamp=stamp_to_msg(stamp), frame_id="odom"), child_frame_id="base_link")
    msg.pose.pose = pose_to_msg(pose)
    return msg


def run_node(parameters: dict[str, object], odometry: np.ndarray, closures: list[LoopClosure]) -> np.ndarray:
    """Start the node, publish the odometry (one message per step) with the closures interleaved, return the
    positions of the final ~/path once it holds every step (its frame is the map frame)."""
    with RosGraph() as graph:
        node = graph.add(PoseGraphNode(context=graph.context, namespace="/pg_test", parameter_overrides=[
            Parameter(name, value=value) for name, value in parameters.items()]))
        client = graph.add(Node("pose_graph_test_client", context=graph.context))
        listener = PathListener(client, "/pg_test/pose_graph/path")
        odom_pub = client.create_publisher(Odometry, "/pg_test/odom", 50)
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        closure_pub = client.create_publisher(LoopClosure, "/pg_test/loop_closure", reliable)
        deadline = time.monotonic() + 20
        while (odom_pub.get_subscription_count() == 0 or closure_pub.get_subscription_count() == 0) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        by_step = {round(c.query_stamp.sec + c.query_stamp.nanosec * 1e-9 - START): c for c in closures}
        for i, pose in enumerate(odometry):
            odom_pub.publish(odometry_msg(START + i, pose))
            if i in by_step:
                closure_pub.publish(by_step[i])
            time.sleep(0.01)
        path = listener.wait_for(len(odometry))
        assert path.header.frame_id == "map"
        assert node.closures_received == len(closures)
        return np.array([pose_from_msg(p.pose)[:3, 3] for p in path.poses])


def place_closure(step: int, keyframe_id: int, keyframe_position: np.ndarray) -> LoopClosure:
    """An unverified closure of query ``step`` to a prior-map keyframe (its stamp 0: not of this run)."""
    msg = LoopClosure(header=Header(stamp=stamp_to_msg(START + step), frame_id="map"),
                      query_stamp=stamp_to_msg(START + step), query_frame_id="camera", keyframe_id=keyframe_id,
                      keyframe_pose_known=True, keyframe_orientation_known=False, verified=False, metric=False,
                      relative_pose=unverified_relative_pose(), score=0.9, confidence=0.5)
    msg.keyframe_pose = pose_to_msg(pose_matrix(keyframe_position))
    return msg


def test_prior_map_closures_place_the_run_in_the_map_frame() -> None:
    """A run in its own odometry frame (turned 90 degrees, 30 units away, drifting) is placed on the prior map's
    keyframes by unverified closures used as place measurements (anchor: closures)."""
    truth = planar_poses(np.column_stack([np.arange(STEPS, dtype=np.float64), np.zeros(STEPS), np.zeros(STEPS)]),
                         np.zeros(STEPS))
    odometry_from_map = planar_poses(np.array([[30.0, 5.0, 0.0]]), np.radians([90.0]))[0]
    odometry = drifted_odometry(truth, DriftModel(yaw_bias_deg=0.3, seed=4), odometry_from_map)
    closures = [place_closure(i, 1000 + i, truth[i, :3, 3]) for i in range(2, STEPS, 3)]
    positions = run_node({"anchor": "closures", "unverified_closures": "place", "place_sigma": 1.0,
                          "graph.keyframe_distance": 0.5}, odometry, closures)
    from_true_start = truth[0] @ np.linalg.inv(odometry[0]) @ odometry
    assert len(positions) == STEPS
    assert ate_rmse(positions, truth[:, :3, 3]) < 0.5 * ate_rmse(from_true_start[:, :3, 3], truth[:, :3, 3])
    assert ate_rmse(positions, truth[:, :3, 3]) < 1.0


def test_unverified_closures_are_ignored_by_default() -> None:
    """anchor first_pose: the path is the odometry itself, the unverified closures (to wrong places) change nothing."""
    truth = planar_poses(np.column_stack([np.arange(STEPS, dtype=np.float64), np.zeros(STEPS), np.zeros(STEPS)]),
                         np.zeros(STEPS))
    odometry = drifted_odometry(truth, DriftModel(yaw_bias_deg=0.5, seed=5), np.eye(4))
    closures = [place_closure(i, 2000 + i, truth[max(i - 15, 0), :3, 3] + [0.0, 8.0, 0.0]) for i in range(2, STEPS, 3)]
    positions = run_node({"graph.keyframe_distance": 0.5}, odometry, closures)
    np.testing.assert_allclose(positions, odometry[:, :3, 3], atol=1e-6)
