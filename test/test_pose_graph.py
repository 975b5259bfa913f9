"""The pose-graph back end (vpr_ros.core.pose_graph), ROS-free: covariance conversion, position factor, sessions
placed by loop closures on a simulated-drift run, unverified closures, the robust kernel."""

from __future__ import annotations

import gtsam
import numpy as np
import pytest

from vpr_ros.core.pose_graph import (
    UNINFORMATIVE_VARIANCE,
    PoseGraph,
    PoseGraphConfig,
    place_covariance,
    pose_matrix,
    position_factor,
    ros_covariance_to_gtsam,
)
from vpr_ros.eval.trajectories import DriftModel, ate_rmse, drifted_odometry, planar_poses

PLACES = 80
SIGMA = 2.0  # place-level closure sigma (the corridor's ground-truth tolerance)


def straight_route(n: int = PLACES) -> np.ndarray:
    return planar_poses(np.column_stack([np.arange(n, dtype=np.float64), np.zeros(n), np.zeros(n)]), np.zeros(n))


def odometry_frame() -> np.ndarray:
    return planar_poses(np.array([[20.0, -10.0, 0.0]]), np.radians([40.0]))[0]


def two_sessions(config: PoseGraphConfig, closures: list[tuple[int, int]], odometry_2: np.ndarray,
                 covariance: np.ndarray | None = None) -> PoseGraph:
    """Session 0 = the nominal route (anchored), session 1 = ``odometry_2`` placed by ``closures`` (query, place)."""
    truth = straight_route(len(odometry_2))
    graph = PoseGraph(config)
    graph.start_session(0, anchor="first_pose")
    graph.start_session(1, anchor="closures")
    for i, pose in enumerate(truth):
        graph.add_odometry(0, float(i), pose)
    by_query: dict[int, list[int]] = {}
    for query, place in closures:
        by_query.setdefault(query, []).append(place)
    for i, pose in enumerate(odometry_2):
        graph.add_odometry(1, 1000.0 + i, pose)
        for place in by_query.get(i, []):
            key = graph.node_at(0, float(place))
            assert key is not None
            graph.add_loop_closure(1, 1000.0 + i, key[0], np.eye(4),
                                   place_covariance(SIGMA) if covariance is None else covariance)
    return graph


class TestCovarianceConversion:
    def test_ros_covariance_becomes_gtsam_tangent_covariance(self) -> None:
        """Perturbations drawn in ROS convention (x y z in the parent frame, rotations about fixed axes) seen in
        GTSAM's chart of the pose (what a BetweenFactorPose3 whitens) have the converted covariance."""
        rng = np.random.default_rng(3)
        rotation = gtsam.Rot3.RzRyRx(0.3, -0.5, 1.1)
        pose = gtsam.Pose3(rotation, np.array([1.0, -2.0, 0.5]))
        a = rng.normal(size=(6, 6)) * 0.01
        covariance_ros = a @ a.T + np.diag([4e-4, 1e-4, 9e-4, 1e-4, 4e-4, 2.5e-5])
        samples = rng.multivariate_normal(np.zeros(6), covariance_ros, size=20000)
        tangents = np.array([
            pose.localCoordinates(gtsam.Pose3(gtsam.Rot3.Expmap(d[3:]).compose(rotation), pose.translation() + d[:3]))
            for d in samples])
        expected = ros_covariance_to_gtsam(covariance_ros, rotation.matrix())
        empirical = np.cov(tangents.T)
        scale = np.sqrt(np.outer(np.diag(expected), np.diag(expected)))
        np.testing.assert_allclose(empirical / scale, expected / scale, atol=0.05)

    def test_identity_rotation_only_reorders(self) -> None:
        covariance_ros = np.diag([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        np.testing.assert_allclose(np.diag(ros_covariance_to_gtsam(covariance_ros, np.eye(3))),
                                   [4.0, 5.0, 6.0, 1.0, 2.0, 3.0])


def test_position_factor_jacobians_match_finite_differences() -> None:
    query = gtsam.Pose3(gtsam.Rot3.RzRyRx(0.2, 0.4, -0.7), np.array([1.0, 2.0, 3.0]))
    keyframe = gtsam.Pose3(gtsam.Rot3.RzRyRx(-0.3, 0.1, 1.2), np.array([2.0, -1.0, 0.5]))
    factor = position_factor(1, 2, np.array([0.3, -0.2, 0.1]), gtsam.noiseModel.Unit.Create(3),
                             keyframe_point=np.array([0.5, 0.2, -0.4]))
    values = gtsam.Values()
    values.insert(1, query)
    values.insert(2, keyframe)
    linear = factor.linearize(values)
    analytic = [linear.jacobian()[0][:, 6 * k:6 * k + 6] for k in range(2)]
    base = factor.unwhitenedError(values)
    for k, (key, pose) in enumerate(((1, query), (2, keyframe))):
        numeric = np.zeros((3, 6))
        for j in range(6):
            step = np.zeros(6)
            step[j] = 1e-6
            moved = gtsam.Values(values)
            moved.update(key, pose.retract(step))
            numeric[:, j] = (factor.unwhitenedError(moved) - base) / 1e-6
        np.testing.assert_allclose(analytic[k], numeric, atol=1e-4)


def test_pose_graph_reduces_trajectory_error_on_simulated_drift() -> None:
    """The corridor experiment in small: session 2 drifts in its own frame; place-level closures every third
    frame place it in session 1's frame, with less error than even its odometry started at the true pose."""
    truth = straight_route()
    odometry = drifted_odometry(truth, DriftModel(yaw_bias_deg=0.3, seed=7), odometry_frame())
    closures = [(i, i) for i in range(3, PLACES, 3)]
    graph = two_sessions(PoseGraphConfig(keyframe_distance=0.5), closures, odometry)
    session = graph.trajectory(1)
    assert session.anchored and len(session.stamps) == PLACES
    from_true_start = truth[0] @ np.linalg.inv(odometry[0]) @ odometry
    ate_graph = ate_rmse(session.positions, truth[:, :3, 3])
    ate_odometry = ate_rmse(from_true_start[:, :3, 3], truth[:, :3, 3])
    assert ate_odometry > 3.0  # the drift is real
    assert ate_graph < 0.5 * ate_odometry
    assert ate_graph < SIGMA
    assert ate_rmse(odometry[:, :3, 3], truth[:, :3, 3]) > 10 * ate_graph


def test_session_waits_for_enough_closures_before_it_is_placed() -> None:
    truth = straight_route(20)
    odometry = drifted_odometry(truth, DriftModel(seed=1), odometry_frame())
    graph = two_sessions(PoseGraphConfig(keyframe_distance=0.5, anchor_min_closures=3), [(5, 5), (10, 10)], odometry)
    assert not graph.trajectory(1).anchored  # two closures: not enough for this config
    np.testing.assert_allclose(graph.trajectory(1).matrices, odometry)  # reported in its own frame


def test_verified_closure_with_relative_pose_places_a_session() -> None:
    """One closure with a full relative pose (keyframe seen from a query 0.4 m aside, turned 10 degrees)."""
    truth = straight_route(30)
    query_in_map = truth[12] @ pose_matrix([0.0, 0.4, 0.0], [0.0, 0.0, np.sin(np.radians(5)), np.cos(np.radians(5))])
    route_2 = truth.copy()
    route_2[12] = query_in_map
    odometry = odometry_frame() @ route_2
    relative = np.linalg.inv(query_in_map) @ truth[12]
    covariance = np.diag([0.01, 0.01, 0.01, 1e-4, 1e-4, 1e-4])
    graph = PoseGraph(PoseGraphConfig(keyframe_distance=0.2))
    graph.start_session(0, anchor="first_pose")
    graph.start_session(1, anchor="closures")
    for i, pose in enumerate(truth):
        graph.add_odometry(0, float(i), pose)
    for i, pose in enumerate(odometry):
        graph.add_odometry(1, 1000.0 + i, pose)
    key = graph.node_at(0, 12.0)
    assert key is not None
    assert graph.add_loop_closure(1, 1012.0, key[0], relative, covariance)
    session = graph.trajectory(1)
    assert session.anchored
    np.testing.assert_allclose(session.positions, route_2[:, :3, 3], atol=1e-3)


def test_unverified_closures_move_nothing() -> None:
    truth = straight_route(40)
    odometry = drifted_odometry(truth, DriftModel(yaw_bias_deg=0.5, seed=2), np.eye(4))
    unverified = np.diag([UNINFORMATIVE_VARIANCE] * 6)

    def run(with_unverified: bool) -> tuple[np.ndarray, int]:
        graph = PoseGraph(PoseGraphConfig(keyframe_distance=0.5))
        graph.start_session(0, anchor="first_pose")
        graph.start_session(1, anchor="first_pose")  # both anchored, so anything informative would pull
        for i, pose in enumerate(truth):
            graph.add_odometry(0, float(i), pose)
        added = 0
        for i, pose in enumerate(odometry):
            graph.add_odometry(1, 1000.0 + i, pose)
            if with_unverified and i % 4 == 3:
                key = graph.node_at(0, float(max(i - 20, 0)))  # wrong places, so an effect would show
                assert key is not None
                added += graph.add_loop_closure(1, 1000.0 + i, key[0], np.eye(4), unverified)
        return graph.trajectory(1).matrices, added

    without, _ = run(False)
    with_them, added = run(True)
    assert added == 0
    np.testing.assert_allclose(with_them, without, atol=1e-12)
    np.testing.assert_allclose(without, odometry, atol=1e-6)  # and only odometry shapes it


@pytest.mark.parametrize("kernel", ["cauchy", "huber"])
def test_robust_kernel_rejects_an_outlier_closure(kernel: str) -> None:
    truth = straight_route()
    odometry = drifted_odometry(truth, DriftModel(seed=11), odometry_frame())
    good = [(i, i) for i in range(3, PLACES, 3)]
    outlier = [(70, 5)]  # 65 places off
    reference = two_sessions(PoseGraphConfig(keyframe_distance=0.5, robust_kernel=kernel), good, odometry)
    robust = two_sessions(PoseGraphConfig(keyframe_distance=0.5, robust_kernel=kernel), good + outlier, odometry)
    plain = two_sessions(PoseGraphConfig(keyframe_distance=0.5, robust_kernel="none"), good + outlier, odometry)
    positions = reference.trajectory(1).positions
    shift_robust = ate_rmse(robust.trajectory(1).positions, positions)
    shift_plain = ate_rmse(plain.trajectory(1).positions, positions)
    assert shift_plain > 10.0  # least squares: one wrong closure drags the session
    assert shift_robust < 1.0


def test_closure_before_its_odometry_waits_for_it() -> None:
    truth = straight_route(20)
    graph = PoseGraph(PoseGraphConfig(keyframe_distance=0.5))
    graph.start_session(0, anchor="first_pose")
    for i in range(10):
        graph.add_odometry(0, float(i), truth[i])
    key = graph.node_at(0, 2.0)
    assert key is not None
    # The query stamp 15 is not covered yet: kept, and added when the odometry reaches it.
    assert graph.add_loop_closure(0, 15.0, key[0], np.eye(4), np.diag([0.01] * 3 + [1e-4] * 3))
    assert graph.closures_added == 0
    for i in range(10, 20):
        graph.add_odometry(0, float(i), truth[i])
    assert graph.closures_added == 1
