"""Reading bags written with rosbags (ROS 2 sqlite3 / MCAP, ROS 1): images, stamps, poses, /tf chains, GNSS, frame
selection. Real corridor images, real bag files; expected poses from closed-form geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vpr_ros.core.image import load_rgb
from vpr_ros.io.bag_poses import PoseSpec, tf_chain_poses
from vpr_ros.io.bag_reader import Bag, BagError, header_stamp_ns
from vpr_ros.io.bag_writer import BagWriter
from vpr_ros.io.bags import (
    FrameSelection,
    bag_frame_source,
    index_image_topic,
    load_frame_source,
    select_frames,
)
from vpr_ros.io.geodesy import WGS84_A, WGS84_E2, GeodeticOrigin, geodetic_to_enu
from vpr_ros.io.poses import quaternion_to_yaw, yaw_to_quaternion
from vpr_ros.io.transforms import ned_to_enu, quat_from_euler, rotation_angle_deg

STORAGES = ["sqlite3", "mcap", "ros1"]


def bag_path(tmp_path: Path, storage: str, name: str = "b") -> Path:
    return tmp_path / (f"{name}.bag" if storage == "ros1" else name)


@pytest.fixture(scope="module")
def corridor_images(corridor) -> list[Path]:
    return sorted((corridor / "query").glob("*.jpg"))[:12]


@pytest.mark.parametrize("storage", STORAGES)
def test_images_round_trip_with_stamps_in_every_format(tmp_path, storage, corridor_images):
    path = bag_path(tmp_path, storage)
    stamps = 1700000000.0 + 0.1 * np.arange(len(corridor_images))
    with BagWriter(path, storage) as bag:
        for i, (stamp, p) in enumerate(zip(stamps, corridor_images, strict=True)):
            bag.write_compressed("/c/compressed", stamp, p.read_bytes())
            bag.write_image("/c/raw", stamp, load_rgb(p)[:, :, ::-1], "bgr8", log_time=stamp + 0.05)
            if i == 0:
                bag.write_image("/c/mono", stamp, load_rgb(p)[:, :, 1], "mono8")
    with Bag(path) as bag:
        assert bag.ros1 == (storage == "ros1")
        for topic in ("/c/compressed", "/c/raw"):
            index = index_image_topic(bag, topic, progress=False)
            # Header stamps parsed from the raw bytes equal the deserialised headers (not the log times).
            conns = bag.connections(topic, ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"), "t")
            for k, (conn, _, raw) in enumerate(bag.messages(conns)):
                header = bag.deserialize(raw, conn.msgtype, topic).header.stamp
                assert index.stamps_ns[k] == header.sec * 1_000_000_000 + header.nanosec
                assert header_stamp_ns(raw, bag.ros1) == index.stamps_ns[k]
            np.testing.assert_allclose(index.stamps, stamps, atol=1e-6)
    for topic in ("/c/compressed", "/c/raw"):
        with bag_frame_source(path, topic, progress=False) as source:
            assert len(source) == len(corridor_images)
            for i in (0, 5, 2, 11, 3):  # backwards requests seek, forward ones stream
                np.testing.assert_array_equal(source.load_image(i), load_rgb(corridor_images[i]))
            ns = round(stamps[1] * 1e9)  # names are the header stamps in integer nanoseconds
            assert source.frames.names[1] == f"{ns // 10**9}.{ns % 10**9:09d}"
            # Maps remember bag frames by source; plots load reference images back from it.
            np.testing.assert_array_equal(load_frame_source(source.frames.sources[4]), load_rgb(corridor_images[4]))


@pytest.mark.parametrize(("storage", "kind"), [("sqlite3", "pose"), ("mcap", "odometry"), ("ros1", "pose_cov")])
def test_pose_topics_are_interpolated_to_image_stamps(tmp_path, storage, kind, corridor_images):
    path = bag_path(tmp_path, storage)
    pose_t = np.arange(0.0, 2.01, 0.5)  # poses at 2 Hz, images at 10 Hz in between
    yaw = 0.4 * pose_t
    with BagWriter(path, storage) as bag:
        for t, y in zip(pose_t, yaw, strict=True):
            bag.write_pose("/p", 10 + t, [3.0 * t, -t, 0.5], yaw_to_quaternion(y), kind=kind, frame_id="odom")
        for i, p in enumerate(corridor_images[:10]):
            bag.write_compressed("/img", 10 + 0.2 * i + 0.05, p.read_bytes())
    with bag_frame_source(path, "/img", PoseSpec(topic="/p"), progress=False) as source:
        t = source.frames.stamps - 10
        assert len(source) == 10
        np.testing.assert_allclose(source.frames.positions, np.stack([3 * t, -t, np.full_like(t, 0.5)], 1), atol=1e-9)
        # Constant yaw rate: slerp between samples gives the yaw at the image time exactly.
        np.testing.assert_allclose(quaternion_to_yaw(source.frames.orientations), 0.4 * t, atol=1e-9)
        assert source.info["poses"] == "pose topic /p"


def test_images_outside_the_pose_stream_are_skipped(tmp_path, corridor_images):
    path = tmp_path / "b"
    with BagWriter(path) as bag:
        for t in (1.0, 2.0):
            bag.write_pose("/p", t, [t, 0, 0], [0, 0, 0, 1])
        for i, p in enumerate(corridor_images[:6]):
            bag.write_compressed("/img", 0.5 + 0.4 * i, p.read_bytes())  # 0.5 .. 2.5 s
    with bag_frame_source(path, "/img", PoseSpec(topic="/p", max_time_diff=0.1), progress=False) as source:
        # 0.5 and 2.5 s are skipped; 0.9 and 2.1 s lie within max_time_diff of the stream and keep its end poses.
        np.testing.assert_allclose(source.frames.stamps, [0.9, 1.3, 1.7, 2.1])
        np.testing.assert_allclose(source.frames.positions[:, 0], [1.0, 1.3, 1.7, 2.0])
        np.testing.assert_array_equal(source.load_image(1), load_rgb(corridor_images[2]))


def test_poses_recorded_per_image_hold_across_long_gaps(tmp_path, corridor_images):
    """A pose file with one pose per image (10 s apart here) is exact at the images even though the samples are
    farther apart than max_gap; between them nothing is interpolated."""
    path = tmp_path / "b"
    poses = tmp_path / "poses.csv"
    poses.write_text("name,x,y,stamp\n" + "".join(f"f{i},{10 * i},0,{10.0 * i}\n" for i in range(4)))
    with BagWriter(path, "mcap") as bag:
        for i, p in enumerate(corridor_images[:4]):
            bag.write_compressed("/img", 10.0 * i, p.read_bytes())
        bag.write_compressed("/img", 15.0, corridor_images[4].read_bytes())  # between two distant samples
    with bag_frame_source(path, "/img", PoseSpec(file=poses, max_gap=2.0), progress=False) as source:
        np.testing.assert_allclose(source.frames.stamps, [0, 10, 20, 30])
        np.testing.assert_allclose(source.frames.positions[:, 0], [0, 10, 20, 30])


@pytest.mark.parametrize("storage", ["mcap", "ros1"])
def test_tf_chain_composes_dynamic_and_static_transforms(tmp_path, storage):
    """map -> odom (static: 1 m along x, turned 90 deg), odom -> base_link (driving t m along its x),
    base_link -> camera (static, 0.5 m ahead): the camera is at (1, t + 0.5) in the map, facing +y."""
    path = bag_path(tmp_path, storage)
    q90 = yaw_to_quaternion(np.pi / 2)
    with BagWriter(path, storage) as bag:
        bag.write_transforms("/tf_static", 0.0, [("map", "odom", [1, 0, 0], q90),
                                                 ("base_link", "camera", [0.5, 0, 0], [0, 0, 0, 1])])
        for t in np.arange(0.0, 5.01, 0.25):
            bag.write_transforms("/tf", t, [("odom", "base_link", [t, 0, 0], [0, 0, 0, 1])])
        bag.write_pose("/unrelated", 0.0, [0, 0, 0], [0, 0, 0, 1])
    stamps = np.array([0.1, 1.3, 4.9, 7.0])
    with Bag(path) as bag:
        res = tf_chain_poses(bag, "map", "camera", stamps, progress=False)
        np.testing.assert_array_equal(res.valid, [True, True, True, False])
        np.testing.assert_allclose(res.positions[:3], [[1, 0.6, 0], [1, 1.8, 0], [1, 5.4, 0]], atol=1e-9)
        np.testing.assert_allclose(quaternion_to_yaw(res.orientations[:3]), np.pi / 2, atol=1e-9)
        # The other way round goes through the inverse: the map origin seen from base_link at time t.
        inv = tf_chain_poses(bag, "base_link", "map", stamps[:3], progress=False)
        t = stamps[:3]
        np.testing.assert_allclose(inv.positions, np.stack([-t, np.ones(3), np.zeros(3)], 1), atol=1e-9)
        with pytest.raises(BagError, match="tf frame 'gripper' is not in /tf"):
            tf_chain_poses(bag, "map", "gripper", stamps, progress=False)


def test_gnss_fixes_become_local_metres(tmp_path, corridor_images):
    lat0, lon0 = 51.7520, -1.2577
    dlat, dlon = 2e-4, 3e-4  # per second
    path = tmp_path / "gnss"
    with BagWriter(path, "mcap") as bag:
        bag.write_navsatfix("/fix", 0.5, 0.0, 0.0, 0.0, status=-1)  # no fix: ignored
        for t in range(6):
            bag.write_navsatfix("/fix", float(t), lat0 + dlat * t, lon0 + dlon * t, 80.0)
        for i, p in enumerate(corridor_images[:5]):
            bag.write_compressed("/img", 0.5 + i, p.read_bytes())
    with bag_frame_source(path, "/img", PoseSpec(topic="/fix"), progress=False) as source:
        origin = GeodeticOrigin.from_dict(source.info["geodetic_origin"])
        assert (origin.latitude, origin.longitude, origin.altitude) == (lat0, lon0, 80.0)
        # Small offsets: north = meridian radius x dlat, east = prime-vertical radius x cos(lat) x dlon.
        phi = np.radians(lat0)
        m = WGS84_A * (1 - WGS84_E2) / (1 - WGS84_E2 * np.sin(phi) ** 2) ** 1.5
        n = WGS84_A / np.sqrt(1 - WGS84_E2 * np.sin(phi) ** 2)
        t = source.frames.stamps
        expected = np.stack([n * np.cos(phi) * np.radians(dlon * t), m * np.radians(dlat * t)], 1)
        np.testing.assert_allclose(source.frames.positions[:, :2], expected, atol=0.05)  # 5 cm over ~100 m
        assert np.isnan(source.frames.orientations).all()
    # A given origin (the map's) is used instead of the first fix.
    with bag_frame_source(path, "/img", PoseSpec(topic="/fix", gnss_origin=GeodeticOrigin(lat0 - dlat, lon0, 80.0)),
                          progress=False) as shifted:
        np.testing.assert_allclose(shifted.frames.positions[:, 1] - expected[:, 1], m * np.radians(dlat), atol=0.05)
    far = geodetic_to_enu(np.array([lat0 + 1.0]), np.array([lon0]), np.array([80.0]), GeodeticOrigin(lat0, lon0, 80.0))
    assert 110_000 < far[0, 1] < 112_000 and far[0, 2] < -900  # 1 deg north; the tangent plane drops away


def test_frame_selection_by_window_time_and_distance():
    stamps = np.arange(20) * 0.1
    positions = np.zeros((20, 3))
    positions[:, 0] = np.r_[np.zeros(5), np.arange(15) * 0.6]  # stands still, then 0.6 m per frame
    np.testing.assert_array_equal(select_frames(stamps, positions, FrameSelection(min_interval=0.25)),
                                  [0, 3, 6, 9, 12, 15, 18])
    np.testing.assert_array_equal(select_frames(stamps, positions, FrameSelection(min_distance=1.0)),
                                  [0, 7, 9, 11, 13, 15, 17, 19])
    np.testing.assert_array_equal(select_frames(stamps, positions, FrameSelection(start=0.5, end=1.0)),
                                  [5, 6, 7, 8, 9])
    positions[10] = np.nan  # no pose: never passes a distance test
    assert 10 not in select_frames(stamps, positions, FrameSelection(min_distance=0.5))


def test_ned_attitude_converts_to_enu_flu():
    """REP 103: a vehicle heading east (NED yaw 90 deg) has ENU yaw 0; nose-up pitch is negative about +y."""
    roll, pitch, yaw = np.array([0.1, 0.0]), np.array([0.05, 0.0]), np.radians([90.0, 0.0])
    pos, q = ned_to_enu(np.array([10.0, 1.0]), np.array([20.0, 2.0]), np.array([-3.0, 0.0]), roll, pitch, yaw)
    np.testing.assert_allclose(pos, [[20, 10, 3], [2, 1, 0]])
    expected = quat_from_euler(roll, -pitch, np.pi / 2 - yaw)
    np.testing.assert_allclose(rotation_angle_deg(q, expected), 0.0, atol=1e-6)
