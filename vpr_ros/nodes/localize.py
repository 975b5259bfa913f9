"""``localize`` node: camera images in, place hypotheses out.

Subscriptions
    ``image`` (sensor_msgs/Image) or ``image/compressed`` (sensor_msgs/CompressedImage), sensor-data QoS.
    ``odom`` (nav_msgs/Odometry), optional: spaces the sequence buffer by travelled distance.
Publications
    ``~/pose`` (geometry_msgs/PoseWithCovarianceStamped): best reference pose, stamp = query stamp,
    frame = map frame, covariance from the hypothesis confidence.
    ``~/candidates`` (geometry_msgs/PoseArray): top-k reference poses, best first.
    ``~/matches`` (sensor_msgs/PointCloud2): top-k as typed rows x y z qx qy qz qw score ref_id.
    ``~/loop_closure`` (sensor_msgs/PointCloud2): gated loop closures, one typed point per message
    (x y z qx qy qz qw ref_stamp score ref_id), stamp = query stamp (see README "Loop closures for SLAM").
    ``/diagnostics`` (diagnostic_msgs/DiagnosticArray): rate, latency percentiles, drops, errors.
Services
    ``~/reload_map`` (std_srvs/Trigger): load the map (and encoder) again, e.g. after rebuilding it.
    If that fails, the map loaded before stays in use and /diagnostics reports WARN with the map path and
    the error until a reload succeeds.
    ``~/reset`` (std_srvs/Trigger): forget the sequence buffer and the loop-closure history.

The image callback only hands the message to a latest-only slot; a worker thread decodes, localizes and
publishes. A frame that arrives while the worker is busy replaces the waiting one (counted as dropped), so
the executor never blocks and the output is never older than one frame. Bad input (undecodable images,
unsupported encodings, a missing map) is logged, counted and reported on /diagnostics; the node keeps
running.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseArray, PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, PointCloud2
from std_srvs.srv import Trigger

from vpr_ros.config import ConfigError, config_from_dict, field_docs, unflatten
from vpr_ros.core.localize_config import LocalizeNodeConfig
from vpr_ros.core.localizer import Localizer
from vpr_ros.core.loop_closure import LoopClosureGate
from vpr_ros.core.sequence_buffer import OdometryTrack
from vpr_ros.io.image_messages import ImageDecodeError, compressed_msg_to_rgb, image_msg_to_rgb
from vpr_ros.nodes.messages import (
    hypothesis_to_matches,
    hypothesis_to_pose,
    hypothesis_to_pose_array,
    loop_closure_to_msg,
    stamp_from_msg,
)
from vpr_ros.nodes.runtime import LatestSlot, RuntimeStats


def declare_config_parameters(node: Node, cls: type) -> Any:
    """Declare one read-only ROS parameter per config leaf and build the validated config from them."""
    values = {}
    for name, (default, help_, meta) in field_docs(cls).items():
        extra = f" One of {list(meta['choices'])}." if "choices" in meta else ""
        bounds = "".join(f" {k} {meta[k]}." for k in ("min", "max") if k in meta)
        descriptor = ParameterDescriptor(description=f"{help_}.{extra}{bounds}", read_only=True)
        value = list(default) if isinstance(default, tuple) else default
        values[name] = node.declare_parameter(name, value, descriptor).value
    return config_from_dict(cls, unflatten(values), where=f"node {node.get_name()} parameters")


class LocalizeNode(Node):
    """Thin ROS layer over :class:`vpr_ros.core.localizer.Localizer`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("localize", **kwargs)
        self.config: LocalizeNodeConfig = declare_config_parameters(self, LocalizeNodeConfig)
        if not self.config.map_path:
            raise ConfigError("parameter map_path is required: the reference map directory made by build_map")
        self.stats = RuntimeStats()
        self.slot: LatestSlot[tuple[Any, float]] = LatestSlot()
        self._pipeline_lock = threading.Lock()
        self.localizer: Localizer | None = None
        self.gate: LoopClosureGate | None = None
        self.map_error = ""
        self.frame_id = "map"
        self.odometry = OdometryTrack(timeout=self.config.localizer.sequence.odometry_timeout)
        self.loop_closures = 0

        self.pose_pub = self.create_publisher(PoseWithCovarianceStamped, "~/pose", 10)
        self.candidates_pub = self.create_publisher(PoseArray, "~/candidates", 10)
        self.matches_pub = self.create_publisher(PointCloud2, "~/matches", 10)
        self.loop_closure_pub = self.create_publisher(PointCloud2, "~/loop_closure", 10)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_subscription(Odometry, "odom", self._on_odometry, 50)
        if self.config.image_transport == "compressed":
            self.create_subscription(CompressedImage, "image/compressed", self._on_image, qos_profile_sensor_data)
        else:
            self.create_subscription(Image, "image", self._on_image, qos_profile_sensor_data)
        self.create_service(Trigger, "~/reload_map", self._on_reload)
        self.create_service(Trigger, "~/reset", self._on_reset)
        self.create_timer(self.config.diagnostics_period, self._publish_diagnostics)

        self.load_pipeline()
        self._worker = threading.Thread(target=self._work, name="vpr_localize_worker", daemon=True)
        self._worker.start()

    # ---- pipeline --------------------------------------------------------------------------------
    def load_pipeline(self) -> bool:
        """(Re)load map and encoder; on failure keep running without a pipeline and report why."""
        try:
            t0 = time.perf_counter()
            localizer = Localizer.from_paths(self.config.map_path, self.config.localizer,
                                             verify=self.config.verify_map)
        except Exception as exc:
            self.map_error = f"{type(exc).__name__}: {exc}"
            self.get_logger().error(f"cannot load map {self.config.map_path}: {self.map_error}")
            return False
        gate = None
        if self.config.loop_closure.enabled:
            gate = LoopClosureGate(self.config.loop_closure, localizer.refmap.frames,
                                   self.config.localizer.confidence_radius)
        with self._pipeline_lock:
            self.localizer = localizer
            self.gate = gate
            self.frame_id = localizer.refmap.frame_id
            self.map_error = ""
        self.get_logger().info(
            f"map {self.config.map_path}: {len(localizer.refmap)} frames, encoder {localizer.encoder.id} on "
            f"{localizer.encoder.providers[0]}, input {localizer.width}x{localizer.height}, re-ranking: "
            f"{localizer.reranker.spec.describe() if localizer.reranker else 'off'}, "
            f"loaded in {time.perf_counter() - t0:.2f} s")
        return True

    def _on_reload(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        response.success = self.load_pipeline()
        response.message = "map loaded" if response.success else self.map_error
        return response

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self._pipeline_lock:
            localizer, gate = self.localizer, self.gate
        if localizer is not None:
            localizer.reset_sequence()
        if gate is not None:
            gate.reset()
        response.success = True
        response.message = "sequence buffer and loop-closure history cleared"
        return response

    # ---- data path -------------------------------------------------------------------------------
    def _on_odometry(self, msg: Odometry) -> None:
        p = msg.pose.pose.position
        self.odometry.add(stamp_from_msg(msg.header.stamp), (p.x, p.y, p.z))

    def _on_image(self, msg: Any) -> None:
        self.stats.on_received()
        self.slot.put((msg, time.perf_counter()))

    def _work(self) -> None:
        while self.context.ok() and not self.slot.closed:
            item = self.slot.take(timeout=0.5)
            if item is None:
                continue
            try:
                self.process(*item)
            except Exception:
                if self.context.ok():
                    raise
                # SIGINT shuts the context down (rclpy's handler) before main() can stop this thread; the frame
                # in flight has nowhere left to be published, so stop quietly instead of dying on the publish.
                return

    def process(self, msg: Any, received_at: float) -> None:
        """Decode, localize and publish one frame; every failure is counted and reported."""
        with self._pipeline_lock:
            localizer, gate = self.localizer, self.gate
        if localizer is None:
            self.stats.on_error("no_map", f"frame ignored, no map loaded: {self.map_error}")
            return
        try:
            rgb = compressed_msg_to_rgb(msg) if isinstance(msg, CompressedImage) else image_msg_to_rgb(msg)
        except ImageDecodeError as exc:
            self.stats.on_error(exc.kind, str(exc))
            self.get_logger().warning(f"bad image: {exc}", throttle_duration_sec=5.0)
            return
        stamp = stamp_from_msg(msg.header.stamp)
        try:
            hyp = localizer.localize(rgb, stamp, self.odometry.travelled_at(stamp))
        except Exception as exc:
            self.stats.on_error("pipeline", f"{type(exc).__name__}: {exc}")
            self.get_logger().error(f"localization failed: {exc}", throttle_duration_sec=5.0)
            return
        pose = hypothesis_to_pose(hyp, self.frame_id, self.config.position_sigma_min,
                                  self.config.position_sigma_max, self.config.yaw_sigma_deg)
        if pose is not None:
            self.pose_pub.publish(pose)
        if self.config.publish_candidates:
            self.candidates_pub.publish(hypothesis_to_pose_array(hyp, self.frame_id))
            self.matches_pub.publish(hypothesis_to_matches(hyp, self.frame_id))
        closure = gate.update(hyp) if gate is not None else None
        if closure is not None:
            self.loop_closure_pub.publish(loop_closure_to_msg(closure, self.frame_id))
            self.loop_closures += 1
        self.stats.on_processed((time.perf_counter() - received_at) * 1e3, hyp.timings_ms)

    # ---- diagnostics -----------------------------------------------------------------------------
    def diagnostic_status(self) -> DiagnosticStatus:
        s = self.stats
        errors = sum(s.errors.values())
        if self.localizer is None:
            level, message = DiagnosticStatus.ERROR, f"no map loaded: {self.map_error}"
        elif self.map_error:
            # A failed ~/reload_map keeps the previous pipeline running; say so until a reload succeeds.
            level, message = DiagnosticStatus.WARN, (f"reload of map {self.config.map_path} failed, still "
                                                     f"localizing with the map loaded before: {self.map_error}")
        elif errors:
            level, message = DiagnosticStatus.WARN, f"{errors} frame(s) failed; last: {s.last_error}"
        else:
            level, message = DiagnosticStatus.OK, "localizing"
        values = {"frames_received": s.received, "frames_processed": s.processed, "frames_dropped": self.slot.dropped,
                  "errors_total": errors, "rate_hz": round(s.rate_hz(), 3),
                  **{k: round(v, 3) for k, v in s.latency_percentiles().items()},
                  **{f"errors_{k}": v for k, v in sorted(s.errors.items())},
                  "map_path": self.config.map_path, "map_error": self.map_error, "last_error": s.last_error,
                  "loop_closures": self.loop_closures}
        sequence = self.localizer.sequence if self.localizer is not None else None
        if sequence is not None:
            values.update(sequence_method=sequence.config.method, sequence_buffered=len(sequence.buffer),
                          sequence_restarts=sequence.buffer.restarts,
                          odometry="yes" if self.odometry.latest_stamp is not None else "no")
        return DiagnosticStatus(level=level, name=f"vpr_ros: {self.get_fully_qualified_name()}", message=message,
                                hardware_id=self.config.map_path,
                                values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])

    def _publish_diagnostics(self) -> None:
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [self.diagnostic_status()]
        self.diag_pub.publish(msg)

    def shutdown(self) -> None:
        self.slot.close()
        self._worker.join(timeout=5.0)


def main(args: list[str] | None = None) -> None:
    rclpy.init(args=args)
    node = None
    try:
        node = LocalizeNode()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except ConfigError as exc:
        print(f"localize: invalid parameters: {exc}", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.shutdown()
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
