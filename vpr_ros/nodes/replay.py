"""Drive a running localize node over real topics: publish images, collect what it answers.

Used by ``make demo``, the integration tests and replay evaluation. ``NodeProcess`` starts the node as its own
executable (``localize --ros-args --params-file ...``); ``LocalizeClient`` publishes frames and pairs each
with the node's ``~/matches`` answer by stamp, measuring end-to-end latency. Lock-step replay
(``send_and_wait``) drops nothing; the rate-based bag player (:mod:`vpr_ros.nodes.live_replay`) publishes
without waiting, so frames the node cannot keep up with are dropped and counted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, PointCloud2
from std_srvs.srv import Trigger

from vpr_ros.nodes.messages import loop_closure_from_msg, matches_from_msg, stamp_from_msg, stamp_to_msg


def rgb_to_image_msg(rgb: np.ndarray, stamp: float, frame_id: str = "camera", encoding: str = "rgb8") -> Image:
    """RGB uint8 (H, W, 3) -> sensor_msgs/Image (rgb8, or bgr8 with the channels swapped)."""
    data = rgb if encoding == "rgb8" else rgb[:, :, ::-1]
    msg = Image(height=int(rgb.shape[0]), width=int(rgb.shape[1]), encoding=encoding, is_bigendian=0,
                step=int(rgb.shape[1] * 3))
    msg.header.stamp = stamp_to_msg(stamp)
    msg.header.frame_id = frame_id
    msg.data = np.ascontiguousarray(data).tobytes()
    return msg


def jpeg_to_compressed_msg(jpeg: bytes, stamp: float, frame_id: str = "camera") -> CompressedImage:
    msg = CompressedImage(format="jpeg", data=jpeg)
    msg.header.stamp = stamp_to_msg(stamp)
    msg.header.frame_id = frame_id
    return msg


@dataclass
class LoopClosureAnswer:
    """One ~/loop_closure message: the query stamp and the matched map frame."""

    stamp: float
    ref_id: int
    ref_stamp: float
    position: np.ndarray
    score: float


@dataclass
class Answer:
    """The node's answer to one published frame."""

    stamp: float
    ref_ids: np.ndarray
    scores: np.ndarray
    positions: np.ndarray
    latency_ms: float


class LocalizeClient(Node):
    """Publishes frames to a localize node and collects its ~/matches, ~/loop_closure and /diagnostics."""

    def __init__(self, node_namespace: str = "/localize", image_topic: str = "image",
                 compressed: bool = False, name: str = "vpr_localize_client", **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        msg_type = CompressedImage if compressed else Image
        self.image_pub = self.create_publisher(msg_type, image_topic, qos_profile_sensor_data)
        self.create_subscription(PointCloud2, f"{node_namespace}/matches", self._on_matches, 50)
        self.create_subscription(PointCloud2, f"{node_namespace}/loop_closure", self._on_loop_closure, 50)
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 50)
        self._lock = threading.Condition()
        self._sent: dict[float, float] = {}
        self.answers: dict[float, Answer] = {}
        self.loop_closures: list[LoopClosureAnswer] = []
        self.diagnostics: list[DiagnosticStatus] = []
        self._node_namespace = node_namespace

    def _on_matches(self, msg: PointCloud2) -> None:
        now = time.perf_counter()
        rows = matches_from_msg(msg)
        stamp = round(stamp_from_msg(msg.header.stamp), 6)
        with self._lock:
            sent = self._sent.get(stamp)
            self.answers[stamp] = Answer(stamp, rows["ref_id"].astype(np.int64), rows["score"].astype(np.float32),
                                         np.stack([rows["x"], rows["y"], rows["z"]], axis=1),
                                         (now - sent) * 1e3 if sent is not None else float("nan"))
            self._lock.notify_all()

    def _on_loop_closure(self, msg: PointCloud2) -> None:
        row = loop_closure_from_msg(msg)[0]
        with self._lock:
            self.loop_closures.append(LoopClosureAnswer(
                round(stamp_from_msg(msg.header.stamp), 6), int(row["ref_id"]), float(row["ref_stamp"]),
                np.array([row["x"], row["y"], row["z"]]), float(row["score"])))
            self._lock.notify_all()

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        with self._lock:
            for status in msg.status:
                if self._node_namespace.strip("/") in status.name:
                    self.diagnostics.append(status)
            self._lock.notify_all()

    def latest_diagnostic(self) -> dict[str, str]:
        with self._lock:
            if not self.diagnostics:
                return {}
            status = self.diagnostics[-1]
        return {"level": str(int.from_bytes(status.level, "little") if isinstance(status.level, bytes)
                             else status.level), "message": status.message,
                **{kv.key: kv.value for kv in status.values}}

    def wait_until_ready(self, timeout: float = 60.0) -> bool:
        """True once the node subscribes to our image topic and reports on /diagnostics."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.image_pub.get_subscription_count() > 0 and self.latest_diagnostic():
                return True
            time.sleep(0.05)
        return False

    def publish(self, msg: Image | CompressedImage) -> float:
        stamp = round(stamp_from_msg(msg.header.stamp), 6)
        with self._lock:
            self._sent[stamp] = time.perf_counter()
        self.image_pub.publish(msg)
        return stamp

    def publish_serialized(self, data: bytes, stamp: float) -> float:
        """Publish an already serialised (CDR) image message whose header stamp is ``stamp`` (e.g. from a bag)."""
        stamp = round(stamp, 6)
        with self._lock:
            self._sent[stamp] = time.perf_counter()
        self.image_pub.publish(data)
        return stamp

    def forget(self) -> None:
        """Drop what was sent and answered so far (e.g. after a warm-up frame)."""
        with self._lock:
            self._sent.clear()
            self.answers.clear()

    def wait_for(self, stamp: float, timeout: float) -> Answer | None:
        deadline = time.monotonic() + timeout
        with self._lock:
            while stamp not in self.answers:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._lock.wait(left)
            return self.answers[stamp]

    def send_and_wait(self, msg: Image | CompressedImage, timeout: float = 30.0) -> Answer | None:
        """Publish one frame and wait for the node's answer to it (lock-step replay, nothing dropped)."""
        return self.wait_for(self.publish(msg), timeout)

    def trigger(self, service: str, timeout: float = 30.0) -> Trigger.Response | None:
        """Call the node's Trigger service ``service`` (``reload_map`` or ``reset``); None if it never answered.

        The client must be spinning in an executor (as for answers) for the response to arrive.
        """
        client = self.create_client(Trigger, f"{self._node_namespace}/{service}")
        try:
            deadline = time.monotonic() + timeout
            if not client.wait_for_service(timeout):
                return None
            future = client.call_async(Trigger.Request())
            while not future.done() and time.monotonic() < deadline:
                time.sleep(0.02)
            return future.result() if future.done() else None
        finally:
            self.destroy_client(client)


class NodeProcess:
    """The localize node as its own process, as ``ros2 run vpr_ros localize`` would start it.

    Example:
        >>> with NodeProcess(["--params-file", "config/localize.yaml", "-p", "map_path:=m"]) as proc:  # doctest: +SKIP
        ...     ...
    """

    def __init__(self, ros_args: Sequence[str], executable: str | None = None, log_path: Path | None = None) -> None:
        exe = executable or str(Path(sys.executable).with_name("localize"))
        if not Path(exe).exists():
            exe_cmd = [sys.executable, "-m", "vpr_ros.nodes.localize"]
        else:
            exe_cmd = [exe]
        self.cmd = [*exe_cmd, "--ros-args", *ros_args]
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    def __enter__(self) -> NodeProcess:
        env = dict(os.environ)
        env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.cmd, env=env, stdout=self._log or subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGINT (clean shutdown), then SIGKILL if it does not exit in ``timeout`` seconds."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._log is not None:
            self._log.close()
