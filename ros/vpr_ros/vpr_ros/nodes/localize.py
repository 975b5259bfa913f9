"""``localize`` node: camera images in, place hypotheses out.

Subscriptions
    ``image`` (sensor_msgs/Image) or ``image/compressed`` (sensor_msgs/CompressedImage), sensor-data QoS.
    ``odom`` (nav_msgs/Odometry), optional: spaces the sequence buffer by travelled distance.
Publications
    ``~/pose`` (geometry_msgs/PoseWithCovarianceStamped): best reference pose, stamp = query stamp,
    frame = map frame, covariance from the hypothesis confidence.
    ``~/candidates`` (geometry_msgs/PoseArray): top-k reference poses, best first.
    ``~/matches`` (vpr_ros_interfaces/PlaceCandidates): the top-k map frames with ids, stamps, poses, scores,
    the confidence and the sequence length, best first; stamp = query stamp.
    ``~/loop_closure`` (vpr_ros_interfaces/LoopClosure): gated loop closures, stamp = query stamp (see README
    "Loop closures for SLAM").
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

import difflib
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import rclpy
import yaml
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseArray, PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image
from std_srvs.srv import Trigger
from vpr_ros_interfaces.msg import LoopClosure, PlaceCandidates

from vpr_ros.config import ConfigError, config_from_dict, field_docs, flatten_config, unflatten
from vpr_ros.core.localize_config import LocalizeNodeConfig
from vpr_ros.core.localizer import Localizer
from vpr_ros.core.loop_closure import LoopClosureGate
from vpr_ros.core.sequence_buffer import OdometryTrack
from vpr_ros.io.image_messages import ImageDecodeError, compressed_msg_to_rgb, image_msg_to_rgb
from vpr_ros.nodes.messages import (
    hypothesis_to_candidates,
    hypothesis_to_pose,
    hypothesis_to_pose_array,
    loop_closure_to_msg,
    stamp_from_msg,
)
from vpr_ros.nodes.runtime import LatestSlot, RuntimeStats


def command_line_parameters(args: Sequence[str], node_name: str) -> dict[str, Any]:
    """The ``-p name:=value`` (``--param``) assignments of a ROS command line that apply to ``node_name``.

    Values are read as YAML, as rcl reads them. rcl itself drops an assignment whose type differs from the
    value a ``--params-file`` gives the same parameter, without a word (``-p localizer.top_k:=abc`` with
    ``config/localize.yaml``), so the node checks the command line's assignments itself.

    Example:
        >>> command_line_parameters(["x", "--ros-args", "-p", "localizer.top_k:=abc", "-p", "other:a:=1",
        ...                          "--param", "localize:verify_map:=maybe", "--", "-p", "b:=2"], "localize")
        {'localizer.top_k': 'abc', 'verify_map': 'maybe'}
    """
    assignments: dict[str, Any] = {}
    in_ros_args = False
    items = iter(args)
    for arg in items:
        if arg == "--ros-args":
            in_ros_args = True
        elif arg == "--":
            in_ros_args = False
        elif in_ros_args and arg in ("-p", "--param"):
            name, _, text = next(items, "").partition(":=")
            target, prefixed, leaf = name.rpartition(":")
            if prefixed and target.lstrip("/") != node_name:
                continue
            try:
                assignments[leaf.strip()] = yaml.safe_load(text)
            except yaml.YAMLError:
                assignments[leaf.strip()] = text
    return assignments


def declare_config_parameters(node: Node, cls: type, command_line: Mapping[str, Any] | None = None) -> Any:
    """Declare one read-only ROS parameter per config leaf and build the validated config from them.

    The parameters are declared with dynamic typing first, so a value of the wrong type (from a params file,
    a ``-p`` or ``parameter_overrides``) reaches the typed config's validation, which names the parameter,
    the value and what it expects (rclpy would raise InvalidParameterTypeException with a traceback, and
    refuse an integer for a float parameter). ``command_line`` (see :func:`command_line_parameters`) wins
    over what rcl passed on. Once valid, each parameter holds its validated value, typed and read-only.

    Raises:
        ConfigError: a parameter is of the wrong type or out of range, or a ``-p`` names no parameter.
    """
    command_line = dict(command_line or {})
    docs = field_docs(cls)
    descriptions: dict[str, str] = {}
    values: dict[str, Any] = {}
    for name, (default, help_, meta) in docs.items():
        extra = f" One of {list(meta['choices'])}." if "choices" in meta else ""
        bounds = "".join(f" {k} {meta[k]}." for k in ("min", "max") if k in meta)
        descriptions[name] = f"{help_}.{extra}{bounds}"
        value = list(default) if isinstance(default, tuple) else default
        declared = node.declare_parameter(name, value, ParameterDescriptor(
            description=descriptions[name], dynamic_typing=True)).value
        values[name] = command_line.pop(name) if name in command_line else declared
    unknown = sorted(name for name in command_line if not node.has_parameter(name))
    if unknown:
        close = difflib.get_close_matches(unknown[0], docs, n=1)
        raise ConfigError(f"{unknown[0]}: no such parameter" + (f" (did you mean {close[0]}?)" if close else "")
                          + f"; {node.get_name()} has {len(docs)}, see config/localize.yaml")
    config = config_from_dict(cls, unflatten(values))
    parameters = [Parameter(name, value=list(value) if isinstance(value, tuple) else value)
                  for name, value in flatten_config(config).items()]
    node.set_parameters(parameters)
    for parameter in parameters:
        node.set_descriptor(parameter.name, ParameterDescriptor(description=descriptions[parameter.name],
                                                                read_only=True, type=parameter.type_.value))
    return config


class LocalizeNode(Node):
    """Thin ROS layer over :class:`vpr_ros.core.localizer.Localizer`."""

    def __init__(self, *, command_line: Sequence[str] = (), **kwargs: Any) -> None:
        """``command_line``: the process's arguments (``main`` passes ``sys.argv``), whose ``-p`` assignments
        are checked (see :func:`command_line_parameters`); ``kwargs`` go to :class:`rclpy.node.Node`."""
        super().__init__("localize", **kwargs)
        assignments = command_line_parameters([*command_line, *(kwargs.get("cli_args") or ())], self.get_name())
        self.config: LocalizeNodeConfig = declare_config_parameters(self, LocalizeNodeConfig, assignments)
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
        self.matches_pub = self.create_publisher(PlaceCandidates, "~/matches", 10)
        self.loop_closure_pub = self.create_publisher(LoopClosure, "~/loop_closure", 10)
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
            limit = self.config.max_pixels
            rgb = compressed_msg_to_rgb(msg, limit) if isinstance(msg, CompressedImage) else \
                image_msg_to_rgb(msg, limit)
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
            self.matches_pub.publish(hypothesis_to_candidates(
                hyp, self.frame_id, localizer.refmap.frames.stamps[hyp.indices], localizer.reranker is not None))
        closure = gate.update(hyp) if gate is not None else None
        if closure is not None:
            self.loop_closure_pub.publish(loop_closure_to_msg(closure, self.frame_id, msg.header.frame_id))
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
    args = sys.argv if args is None else args
    try:
        rclpy.init(args=args)
    except RuntimeError as exc:  # rcl refuses the --ros-args (e.g. "-p name" without ":=value", a missing params file)
        reason = str(exc).split(". Error:")[0].split(", at /")[0]
        print(f"localize: invalid ROS arguments: {reason}", file=sys.stderr)
        sys.exit(2)
    node = None
    try:
        node = LocalizeNode(command_line=args)
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
