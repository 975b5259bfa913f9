"""Pose files (CSV with/without header, TUM), interpolation and folder matching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vpr_ros.io.images import folder_source
from vpr_ros.io.poses import (
    PoseFileError,
    interpolate_poses,
    quaternion_to_yaw,
    read_pose_file,
    slerp,
    yaw_to_quaternion,
)
from vpr_ros.io.transforms import compose, invert, rotation_angle_deg


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


class TestCsv:
    def test_header_any_order_with_yaw(self, tmp_path):
        t = read_pose_file(write(tmp_path, "p.csv", "yaw,name,y,x\n1.5707963,a.jpg,2,1\n0,b.jpg,4,3\n"))
        assert t.names == ["a.jpg", "b.jpg"]
        np.testing.assert_allclose(t.positions, [[1, 2, 0], [3, 4, 0]])
        np.testing.assert_allclose(quaternion_to_yaw(t.orientations), [np.pi / 2, 0], atol=1e-6)
        assert np.isnan(t.stamps).all()

    @pytest.mark.parametrize(("line", "pos", "has_quat", "stamp"), [
        ("a,1,2", [1, 2, 0], False, None),
        ("a,1,2,3", [1, 2, 3], False, None),
        ("a,1,2,3,0.5", [1, 2, 3], True, None),
        ("a,1,2,3,0.5,17.25", [1, 2, 3], True, 17.25),
        ("a,1,2,3,0,0,0,2", [1, 2, 3], True, None),
        ("a,1,2,3,0,0,0,1,9", [1, 2, 3], True, 9.0),
    ])
    def test_headerless_by_column_count(self, tmp_path, line, pos, has_quat, stamp):
        t = read_pose_file(write(tmp_path, "p.csv", line + "\n"))
        np.testing.assert_allclose(t.positions[0], pos)
        assert np.isnan(t.orientations).any() != has_quat
        if has_quat:
            assert np.linalg.norm(t.orientations[0]) == pytest.approx(1.0)
        assert (np.isnan(t.stamps[0]) and stamp is None) or t.stamps[0] == stamp

    def test_errors_name_file_and_line(self, tmp_path):
        with pytest.raises(PoseFileError, match=r"p\.csv:3: column 'x' is not a number"):
            read_pose_file(write(tmp_path, "p.csv", "name,x,y\na,1,2\nb,oops,2\n"))
        with pytest.raises(PoseFileError, match="unknown column"):
            read_pose_file(write(tmp_path, "q.csv", "name,x,y,speed\na,1,2,3\n"))
        with pytest.raises(PoseFileError, match="7 columns without a header"):
            read_pose_file(write(tmp_path, "r.csv", "a,1,2,3,4,5,6\n"))
        with pytest.raises(PoseFileError, match="duplicate names"):
            read_pose_file(write(tmp_path, "s.csv", "name,x,y\na,1,2\na,3,4\n"))
        with pytest.raises(PoseFileError, match="does not exist"):
            read_pose_file(tmp_path / "missing.csv")


class TestTum:
    def test_read_and_normalise(self, tmp_path):
        t = read_pose_file(write(tmp_path, "traj.txt", "# comment\n1.0 0 0 0 0 0 0 2\n2.0 1 0 0 0 0 1 1\n"))
        np.testing.assert_allclose(t.stamps, [1.0, 2.0])
        np.testing.assert_allclose(np.linalg.norm(t.orientations, axis=1), 1.0)

    def test_bad_line(self, tmp_path):
        with pytest.raises(PoseFileError, match=r"traj\.txt:1: TUM lines have 8 values"):
            read_pose_file(write(tmp_path, "traj.txt", "1.0 0 0 0\n"))


def test_interpolation_linear_and_slerp():
    from vpr_ros.io.poses import PoseTable

    table = PoseTable(["", ""], np.array([[0.0, 0, 0], [10.0, 0, 0]]),
                      np.stack([yaw_to_quaternion(0.0), yaw_to_quaternion(np.pi / 2)]), np.array([0.0, 1.0]))
    pos, ori, ok = interpolate_poses(table, np.array([0.25, 0.5, 1.5]))
    np.testing.assert_allclose(pos[:2, 0], [2.5, 5.0])
    np.testing.assert_allclose(quaternion_to_yaw(ori[:2]), [np.pi / 8, np.pi / 4], atol=1e-9)
    assert ok.tolist() == [True, True, False] and np.isnan(pos[2]).all()


def test_slerp_takes_short_way():
    q0 = yaw_to_quaternion(np.array([0.1]))
    q1 = -yaw_to_quaternion(np.array([0.3]))  # same rotation, opposite sign
    np.testing.assert_allclose(quaternion_to_yaw(slerp(q0, q1, np.array([0.5]))), [0.2], atol=1e-9)


def test_unknown_orientations_stay_nan_and_known_rows_are_unaffected():
    """scipy refuses NaN quaternions; rows with an unknown orientation must come back NaN, the others exact."""
    q90, nan = yaw_to_quaternion(np.pi / 2), np.full(4, np.nan)
    q = np.stack([q90, nan, q90])
    t = np.array([[1.0, 0, 0], [1.0, 0, 0], [1.0, 0, 0]])
    t_ac, q_ac = compose(t, q, t, q)  # two steps of (1 m forward, turn left 90 degrees)
    np.testing.assert_allclose(t_ac[[0, 2]], [[1.0, 1.0, 0.0]] * 2, atol=1e-12)
    np.testing.assert_allclose(quaternion_to_yaw(q_ac[[0, 2]]), [np.pi, np.pi], atol=1e-12)
    assert np.isnan(t_ac[1]).all() and np.isnan(q_ac[1]).all()
    t_ba, q_ba = invert(t, q)
    np.testing.assert_allclose(t_ba[0], [0.0, 1.0, 0.0], atol=1e-12)
    assert np.isnan(t_ba[1]).all() and np.isnan(q_ba[1]).all()
    np.testing.assert_allclose(rotation_angle_deg(q, yaw_to_quaternion([0.0, 0.0, -np.pi / 2])), [90.0, np.nan, 180.0])
    out = slerp(q, np.stack([q90, q90, nan]), np.full(3, 0.5))
    np.testing.assert_allclose(out[0], q90, atol=1e-12)
    assert np.isnan(out[1:]).all()
    assert np.isnan(yaw_to_quaternion([np.nan])).all() and np.isnan(quaternion_to_yaw(nan))


def test_folder_source_matches_names_and_stems(tmp_path, corridor):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("0000000.jpg", "0000001.jpg", "0000002.jpg"):
        (folder / name).write_bytes((corridor / "ref" / name).read_bytes())
    poses = write(tmp_path, "p.csv", "name,x,y\n0000000,0,0\n0000002.jpg,2,0\n")
    src = folder_source(folder, poses)
    assert src.frames.names == ["0000000.jpg", "0000002.jpg"]
    np.testing.assert_array_equal(src.frames.ids, [0, 1])
    assert src.load_image(1).shape == (120, 160, 3)
    with pytest.raises(PoseFileError, match="name images missing"):
        folder_source(folder, write(tmp_path, "bad.csv", "name,x,y\nnope.jpg,0,0\n0000000.jpg,0,0\n"))


def test_folder_source_with_tum_by_timestamp_names(tmp_path, corridor):
    folder = tmp_path / "rgb"
    folder.mkdir()
    jpg = (corridor / "ref" / "0000000.jpg").read_bytes()
    for stamp in ("100.5", "101.5", "200.0"):
        (folder / f"{stamp}.jpg").write_bytes(jpg)
    traj = write(tmp_path, "gt.txt", "100.0 0 0 0 0 0 0 1\n102.0 2 0 0 0 0 0 1\n")
    src = folder_source(folder, traj)
    assert src.frames.names == ["100.5.jpg", "101.5.jpg"]  # 200.0 is outside the trajectory
    np.testing.assert_allclose(src.frames.positions[:, 0], [0.5, 1.5])


def test_pose_file_without_rows_is_one_clear_error(tmp_path, corridor):
    """Regression: a header-only pose file gave an IndexError from the image folder reader."""
    poses = tmp_path / "poses.csv"
    poses.write_text("name,x,y\n")
    with pytest.raises(PoseFileError, match="poses"):
        folder_source(corridor / "ref", poses)
