"""Write camera frames, poses, GNSS fixes and transforms into ROS 2 (sqlite3, MCAP) or ROS 1 bags with rosbags.

Used by the dataset converters (``vpr_convert``) and the tests. Messages are the standard ones
(sensor_msgs/Image and CompressedImage, geometry_msgs/PoseStamped and PoseWithCovarianceStamped,
nav_msgs/Odometry, sensor_msgs/NavSatFix, tf2_msgs/TFMessage), serialised with the type definitions of ROS 2
Kilted (ROS 2 bags) or ROS 1 Noetic (ROS 1 bags), which the bags embed. The log time of every message is its
header stamp unless given.

A bag is written under a temporary name and renamed into place when closed without error, so an interrupted
conversion never leaves a half-written bag under the final name.

Example (three corridor frames with poses 1 m apart):
    >>> import tempfile
    >>> from vpr_ros.core.image import load_rgb
    >>> from vpr_ros.core.paths import resolve_path
    >>> tmp = tempfile.TemporaryDirectory()
    >>> with BagWriter(Path(tmp.name) / "run1", storage="mcap") as bag:
    ...     for i in range(3):
    ...         rgb = load_rgb(resolve_path(f"data/corridor/ref/{i:07d}.jpg"))
    ...         bag.write_image("/camera/image_raw", 12.5 + i, rgb)
    ...         bag.write_pose("/pose", 12.5 + i, [float(i), 0.0, 0.0], [0, 0, 0, 1])
    >>> sorted(p.name for p in (Path(tmp.name) / "run1").iterdir())
    ['metadata.yaml', 'run1_0.mcap']
    >>> tmp.cleanup()
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from vpr_ros.errors import InputError

STORAGES = ("sqlite3", "mcap", "ros1")
POSE_KINDS = {"pose": "geometry_msgs/msg/PoseStamped",
              "pose_cov": "geometry_msgs/msg/PoseWithCovarianceStamped",
              "odometry": "nav_msgs/msg/Odometry"}
_TF_MESSAGE_ROS1 = "geometry_msgs/TransformStamped[] transforms"


def _ns(stamp: float, stamp_ns: int | None = None) -> int:
    """Seconds -> integer nanoseconds, unless the exact nanoseconds are given (float seconds since 1970 only
    resolve ~0.2 µs)."""
    return int(stamp_ns) if stamp_ns is not None else round(float(stamp) * 1e9)


class BagWriter:
    """Writes standard messages into one bag; topics (connections) are created on first use."""

    def __init__(self, path: str | Path, storage: str = "sqlite3") -> None:
        from rosbags.typesys import Stores, get_types_from_msg, get_typestore

        if storage not in STORAGES:
            raise InputError(f"bag storage {storage!r} is not one of {list(STORAGES)}")
        self.path = Path(path)
        if storage == "ros1" and self.path.suffix != ".bag":
            raise InputError(f"{self.path}: ROS 1 bags must be named *.bag")
        if self.path.exists():
            raise FileExistsError(f"{self.path} already exists")
        self.storage = storage
        self.ros1 = storage == "ros1"
        self.typestore = get_typestore(Stores.ROS1_NOETIC if self.ros1 else Stores.ROS2_KILTED)
        if self.ros1:
            self.typestore.register(get_types_from_msg(_TF_MESSAGE_ROS1, "tf2_msgs/msg/TFMessage"))
        self._tmp = self.path.with_name(f".{self.path.name}.writing-{uuid.uuid4().hex[:8]}{self.path.suffix}")
        self._writer: Any = None
        self._connections: dict[tuple[str, str], Any] = {}
        self.counts: dict[str, int] = {}

    # ---- lifecycle -------------------------------------------------------------------------------
    def open(self) -> BagWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.ros1:
            from rosbags.rosbag1 import Writer as Writer1

            self._writer = Writer1(self._tmp)
        else:
            from rosbags.rosbag2 import StoragePlugin
            from rosbags.rosbag2 import Writer as Writer2

            plugin = StoragePlugin.MCAP if self.storage == "mcap" else StoragePlugin.SQLITE3
            self._writer = Writer2(self._tmp, version=Writer2.VERSION_LATEST, storage_plugin=plugin)
        self._writer.open()
        return self

    def close(self) -> Path:
        """Finish the bag and move it to its final name."""
        self._writer.close()
        if self.storage != "ros1":
            self._rename_storage_files()
        self._tmp.rename(self.path)
        return self.path

    def abort(self) -> None:
        try:
            if self._writer is not None:
                self._writer.close()
        except Exception:
            pass
        if self._tmp.is_dir():
            shutil.rmtree(self._tmp, ignore_errors=True)
        else:
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> BagWriter:
        return self.open()

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _rename_storage_files(self) -> None:
        """rosbag2 names its storage file after the directory; give it the final directory's name."""
        import yaml

        meta_path = self._tmp / "metadata.yaml"
        meta = yaml.safe_load(meta_path.read_text())
        info = meta["rosbag2_bagfile_information"]
        renamed = []
        for rel in info.get("relative_file_paths", []):
            new = f"{self.path.name}_0{Path(rel).suffix}" if len(info["relative_file_paths"]) == 1 else rel
            (self._tmp / rel).rename(self._tmp / new)
            renamed.append((rel, new))
        text = meta_path.read_text()
        for old, new in renamed:
            text = text.replace(old, new)
        meta_path.write_text(text)

    # ---- low level -------------------------------------------------------------------------------
    def _connection(self, topic: str, msgtype: str) -> Any:
        key = (topic, msgtype)
        if key not in self._connections:
            self._connections[key] = self._writer.add_connection(topic, msgtype, typestore=self.typestore)
        return self._connections[key]

    def write_message(self, topic: str, msgtype: str, message: Any, log_time_ns: int) -> None:
        """Serialise ``message`` (a rosbags message object of ``msgtype``) and write it at ``log_time_ns``."""
        conn = self._connection(topic, msgtype)
        data = self.typestore.serialize_ros1(message, msgtype) if self.ros1 else \
            self.typestore.serialize_cdr(message, msgtype)
        self._writer.write(conn, int(log_time_ns), data)
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def header(self, stamp: float, frame_id: str, stamp_ns: int | None = None) -> Any:
        t = self.typestore.types
        ns = _ns(stamp, stamp_ns)
        time = t["builtin_interfaces/msg/Time"](sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)
        if self.ros1:
            return t["std_msgs/msg/Header"](seq=0, stamp=time, frame_id=frame_id)
        return t["std_msgs/msg/Header"](stamp=time, frame_id=frame_id)

    def _pose(self, position: Any, orientation: Any) -> Any:
        t = self.typestore.types
        p = [float(v) for v in position]
        q = [float(v) for v in orientation]
        return t["geometry_msgs/msg/Pose"](position=t["geometry_msgs/msg/Point"](x=p[0], y=p[1], z=p[2]),
                                           orientation=t["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2],
                                                                                         w=q[3]))

    # ---- images ----------------------------------------------------------------------------------
    def write_image(self, topic: str, stamp: float, pixels: np.ndarray, encoding: str = "rgb8",
                    frame_id: str = "camera", log_time: float | None = None, stamp_ns: int | None = None) -> None:
        """sensor_msgs/Image from an (H, W) or (H, W, C) uint8/uint16 array already in ``encoding``'s layout."""
        pixels = np.ascontiguousarray(pixels)
        h, w = pixels.shape[:2]
        msg = self.typestore.types["sensor_msgs/msg/Image"](
            header=self.header(stamp, frame_id, stamp_ns), height=h, width=w, encoding=encoding, is_bigendian=0,
            step=int(pixels.strides[0]), data=pixels.reshape(-1).view(np.uint8))
        self.write_message(topic, "sensor_msgs/msg/Image", msg,
                           _ns(stamp, stamp_ns) if log_time is None else _ns(log_time))

    def write_compressed(self, topic: str, stamp: float, data: bytes, fmt: str = "jpeg", frame_id: str = "camera",
                         log_time: float | None = None, stamp_ns: int | None = None) -> None:
        """sensor_msgs/CompressedImage holding encoded bytes (JPEG, PNG) unchanged."""
        msg = self.typestore.types["sensor_msgs/msg/CompressedImage"](
            header=self.header(stamp, frame_id, stamp_ns), format=fmt, data=np.frombuffer(data, dtype=np.uint8))
        self.write_message(topic, "sensor_msgs/msg/CompressedImage", msg,
                           _ns(stamp, stamp_ns) if log_time is None else _ns(log_time))

    # ---- poses -----------------------------------------------------------------------------------
    def write_pose(self, topic: str, stamp: float, position: Any, orientation: Any, kind: str = "pose",
                   frame_id: str = "map", child_frame_id: str = "base_link", stamp_ns: int | None = None) -> None:
        """One pose as PoseStamped (``pose``), PoseWithCovarianceStamped (``pose_cov``) or Odometry."""
        t = self.typestore.types
        if kind not in POSE_KINDS:
            raise InputError(f"pose kind {kind!r} is not one of {list(POSE_KINDS)}")
        pose = self._pose(position, orientation)
        header = self.header(stamp, frame_id, stamp_ns)
        cov = t["geometry_msgs/msg/PoseWithCovariance"](pose=pose, covariance=np.zeros(36))
        if kind == "pose":
            msg = t["geometry_msgs/msg/PoseStamped"](header=header, pose=pose)
        elif kind == "pose_cov":
            msg = t["geometry_msgs/msg/PoseWithCovarianceStamped"](header=header, pose=cov)
        else:
            vec = t["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=0.0)
            twist = t["geometry_msgs/msg/TwistWithCovariance"](
                twist=t["geometry_msgs/msg/Twist"](linear=vec, angular=vec), covariance=np.zeros(36))
            msg = t["nav_msgs/msg/Odometry"](header=header, child_frame_id=child_frame_id, pose=cov, twist=twist)
        self.write_message(topic, POSE_KINDS[kind], msg, _ns(stamp, stamp_ns))

    def write_navsatfix(self, topic: str, stamp: float, latitude: float, longitude: float, altitude: float,
                        status: int = 0, frame_id: str = "gps") -> None:
        """sensor_msgs/NavSatFix (status -1 = no fix, 0 = fix, 1 = SBAS, 2 = GBAS/RTK)."""
        t = self.typestore.types
        msg = t["sensor_msgs/msg/NavSatFix"](
            header=self.header(stamp, frame_id), status=t["sensor_msgs/msg/NavSatStatus"](status=status, service=1),
            latitude=float(latitude), longitude=float(longitude), altitude=float(altitude),
            position_covariance=np.zeros(9), position_covariance_type=0)
        self.write_message(topic, "sensor_msgs/msg/NavSatFix", msg, _ns(stamp))

    def write_transforms(self, topic: str, stamp: float, transforms: list[tuple[str, str, Any, Any]]) -> None:
        """tf2_msgs/TFMessage with (parent, child, translation xyz, rotation xyzw) entries, all at ``stamp``."""
        t = self.typestore.types
        items = []
        for parent, child, trans, rot in transforms:
            tr = [float(v) for v in trans]
            q = [float(v) for v in rot]
            items.append(t["geometry_msgs/msg/TransformStamped"](
                header=self.header(stamp, parent), child_frame_id=child,
                transform=t["geometry_msgs/msg/Transform"](
                    translation=t["geometry_msgs/msg/Vector3"](x=tr[0], y=tr[1], z=tr[2]),
                    rotation=t["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3]))))
        self.write_message(topic, "tf2_msgs/msg/TFMessage", t["tf2_msgs/msg/TFMessage"](transforms=items), _ns(stamp))
