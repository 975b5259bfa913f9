"""Drive a running localize node over real topics: publish images, collect what it answers.

Used by ``make demo``, the integration tests and replay evaluation, through :mod:`vpr_ros.nodes.harness` (which
starts the node and spins this client). ``LocalizeClient`` publishes frames and pairs each with the node's
``~/matches`` answer (vpr_ros_interfaces/PlaceCandidates) by stamp, measuring end-to-end latency. Lock-step replay
(``send_and_wait``) drops nothing; the rate-based bag player (:mod:`vpr_ros.nodes.live_replay`) publishes
without waiting, so frames the node cannot keep up with are dropped and counted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image
from std_srvs.srv import Trigger
from vpr_ros_interfaces.msg import LoopClosure, PlaceCandidates

from vpr_ros.nodes.messages import candidates_from_msg, stamp_from_msg, stamp_to_msg


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


def call_service(node: Node, srv_type: type, name: str, request: object, timeout: float = 30.0) -> object | None:
    """Call service ``name`` from ``node`` (which must be spinning in an executor); None if it never answered."""
    client = node.create_client(srv_type, name)
    try:
        deadline = time.monotonic() + timeout
        if not client.wait_for_service(timeout):
            return None
        future = client.call_async(request)
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.02)
        return future.result() if future.done() else None
    finally:
        node.destroy_client(client)


@dataclass
class LoopClosureAnswer:
    """One ~/loop_closure message: the query stamp and the matched map frame (``msg``: the whole message)."""

    stamp: float
    ref_id: int
    ref_stamp: float
    position: np.ndarray
    score: float
    msg: LoopClosure


@dataclass
class Answer:
    """The node's answer to one published frame."""

    stamp: float
    ref_ids: np.ndarray
    scores: np.ndarray
    positions: np.ndarray
    latency_ms: float
    ref_stamps: np.ndarray  # the candidates' stamps as stored in the map (NaN where none)


class LocalizeClient(Node):
    """Publishes frames to a localize node and collects its ~/matches, ~/loop_closure and /diagnostics."""

    def __init__(self, node_namespace: str = "/localize", image_topic: str = "image",
                 compressed: bool = False, name: str = "vpr_localize_client", **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        msg_type = CompressedImage if compressed else Image
        self.image_pub = self.create_publisher(msg_type, image_topic, qos_profile_sensor_data)
        self.create_subscription(PlaceCandidates, f"{node_namespace}/matches", self._on_matches, 50)
        self.create_subscription(LoopClosure, f"{node_namespace}/loop_closure", self._on_loop_closure, 50)
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 50)
        self._lock = threading.Condition()
        self._sent: dict[float, float] = {}
        self.answers: dict[float, Answer] = {}
        self.loop_closures: list[LoopClosureAnswer] = []
        self.diagnostics: list[DiagnosticStatus] = []
        self._node_namespace = node_namespace

    def _on_matches(self, msg: PlaceCandidates) -> None:
        now = time.perf_counter()
        table = candidates_from_msg(msg)
        stamp = round(table.stamp, 6)
        with self._lock:
            sent = self._sent.get(stamp)
            self.answers[stamp] = Answer(stamp, table.ids, table.scores, table.positions,
                                         (now - sent) * 1e3 if sent is not None else float("nan"), table.ref_stamps)
            self._lock.notify_all()

    def _on_loop_closure(self, msg: LoopClosure) -> None:
        known = msg.keyframe_pose_known
        position = msg.keyframe_pose.position
        with self._lock:
            self.loop_closures.append(LoopClosureAnswer(
                round(stamp_from_msg(msg.query_stamp), 6), int(msg.keyframe_id), stamp_from_msg(msg.keyframe_stamp),
                np.array([position.x, position.y, position.z]) if known else np.full(3, np.nan), float(msg.score),
                msg))
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

    def ready(self) -> bool:
        """Whether the node subscribes to our image topic and has reported on /diagnostics."""
        return self.image_pub.get_subscription_count() > 0 and bool(self.latest_diagnostic())

    def wait_until_ready(self, timeout: float = 60.0) -> bool:
        """True once :meth:`ready`; False if not within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready():
                return True
            time.sleep(0.05)
        return False

    def wait_for_diagnostic(self, predicate: Callable[[dict[str, str]], bool],
                            timeout: float = 20.0) -> dict[str, str] | None:
        """The node's latest /diagnostics values once ``predicate`` holds for them; None if not within ``timeout``.

        The values are those of :meth:`latest_diagnostic` (``level``, ``message`` and the key/value pairs).
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                values = self.latest_diagnostic()
                if values and predicate(values):
                    return values
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._lock.wait(left)

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
        return call_service(self, Trigger, f"{self._node_namespace}/{service}", Trigger.Request(), timeout)
