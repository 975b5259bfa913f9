"""Frame buffer spacing (time, odometry distance), restarts, and the odometry path length."""

from __future__ import annotations

import numpy as np
import pytest

from vpr_ros.core.sequence_buffer import BufferedFrame, FrameBuffer, OdometryTrack


def frame(stamp: float, travelled: float | None = None) -> BufferedFrame:
    return BufferedFrame(stamp, np.zeros(2, np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32), travelled)


def test_every_frame_is_buffered_without_spacing_and_the_oldest_leave():
    buf = FrameBuffer(length=3)
    windows = [buf.push(frame(float(t))) for t in range(5)]
    assert [len(w) for w in windows] == [1, 2, 3, 3, 3]
    assert [f.stamp for f in windows[-1].frames] == [2.0, 3.0, 4.0]
    assert windows[-1].offsets.tolist() == [2.0, 1.0, 0.0] and windows[-1].current_buffered


def test_time_spacing_buffers_one_frame_per_interval_and_the_current_frame_always_heads():
    buf = FrameBuffer(length=3, min_time_spacing=1.0)
    for t in (0.0, 0.4, 1.0, 1.5):
        w = buf.push(frame(t))
    assert len(buf) == 2  # 0.0 and 1.0; 0.4 and 1.5 only stood in as the current frame
    assert [f.stamp for f in w.frames] == [0.0, 1.0, 1.5] and not w.current_buffered
    np.testing.assert_allclose(w.offsets, [1.5, 0.5, 0.0])


def test_distance_spacing_ignores_a_standing_robot():
    buf = FrameBuffer(length=4, min_distance_spacing=2.0)
    for stamp, travelled in [(0, 0.0), (1, 2.0), (2, 2.1), (3, 2.1), (4, 2.1), (5, 4.5), (6, 5.0)]:
        w = buf.push(frame(float(stamp), travelled))
    assert [f.travelled for f in w.frames] == [0.0, 2.0, 4.5, 5.0]
    np.testing.assert_allclose(w.offsets, [2.5, 1.5, 0.25, 0.0])  # steps of 2 m back from the current frame
    assert len(buf) == 3


@pytest.mark.parametrize(("second", "why"), [(frame(0.5), "stamp went backwards"),
                                             (frame(20.0), "gap longer than max_gap"),
                                             (frame(2.0, travelled=1.0), "odometry appeared")])
def test_buffer_restarts_on_breaks(second, why):
    buf = FrameBuffer(length=5, max_gap=10.0, min_distance_spacing=1.0)
    buf.push(frame(0.0))
    buf.push(frame(1.0))
    w = buf.push(second)
    assert len(w) == 1 and buf.restarts == 1, why


def test_reset_forgets_everything():
    buf = FrameBuffer(length=5)
    buf.push(frame(0.0))
    buf.push(frame(1.0))
    buf.reset()
    assert len(buf) == 0 and len(buf.push(frame(2.0))) == 1


def test_odometry_path_length_interpolates_and_times_out():
    odo = OdometryTrack(timeout=0.5)
    assert odo.travelled_at(0.0) is None
    for t, xy in [(0.0, (0, 0)), (1.0, (3, 4)), (2.0, (3, 0)), (3.0, (3, 0))]:
        odo.add(t, (*xy, 0.0))
    assert odo.travelled_at(0.5) == pytest.approx(2.5)
    assert odo.travelled_at(2.0) == pytest.approx(9.0), "path length, not displacement"
    assert odo.travelled_at(3.4) == pytest.approx(9.0)
    assert odo.travelled_at(3.6) is None and odo.travelled_at(-1.0) is None
    odo.add(0.5, (100.0, 0.0, 0.0))  # time went backwards: a new recording
    assert odo.travelled_at(0.5) == 0.0 and odo.latest_stamp == 0.5
    odo.add(0.6, (np.nan, 0.0, 0.0))
    assert odo.latest_stamp == 0.5, "invalid positions are ignored"


def test_odometry_pose_interpolates_position_and_orientation_within_the_timeout():
    from scipy.spatial.transform import Rotation

    odo = OdometryTrack(timeout=0.5)
    assert odo.pose_at(0.0) is None
    odo.add(0.0, (0.0, 0.0, 0.0), Rotation.from_euler("z", 0, degrees=True).as_quat())
    odo.add(1.0, (2.0, 0.0, 0.0), Rotation.from_euler("z", 90, degrees=True).as_quat())
    position, orientation = odo.pose_at(0.5)
    np.testing.assert_allclose(position, [1.0, 0.0, 0.0])
    assert Rotation.from_quat(orientation).as_euler("zyx", degrees=True)[0] == pytest.approx(45.0)
    np.testing.assert_allclose(odo.pose_at(1.4)[0], [2.0, 0.0, 0.0])  # the last pose, within the timeout
    assert odo.pose_at(1.6) is None and odo.pose_at(-0.6) is None
    odo.add(2.0, (3.0, 0.0, 0.0))  # no orientation: unknown, not invented
    assert np.isnan(odo.pose_at(2.0)[1]).all()
    odo.add(0.5, (100.0, 0.0, 0.0))  # time went backwards: the poses of the old recording are gone
    np.testing.assert_allclose(odo.pose_at(0.5)[0], [100.0, 0.0, 0.0])
