"""``localize`` node: camera images in, place hypotheses out. A lifecycle (managed) node.

Lifecycle (``rclpy.lifecycle``; drive it with ``ros2 lifecycle set /localize configure`` or a lifecycle
manager)
    unconfigured --configure--> inactive: load and verify the map and the encoder. On a bad map the
    transition fails, the node stays unconfigured and /diagnostics says why (ERROR).
    inactive --activate--> active: subscribe to the image (and odometry) topics and publish; the query
    sequence and the loop-closure history start afresh.
    active --deactivate--> inactive: unsubscribe and stop publishing; the map stays loaded.
    inactive --cleanup--> unconfigured: drop the map. Any state --shutdown--> finalized: stop the worker.
    With ``autostart`` (default true) the node configures and activates itself at start, as ``ros2 run``
    users expect; with ``autostart:=false`` it waits for a lifecycle manager (as nav2's nodes do). Invalid
    parameters stop the process at start with exit code 2, before any transition.
Parameters
    One per field of :class:`vpr_ros.core.localize_config.LocalizeNodeConfig` (``config/localize.yaml``).
    Those in :data:`RUNTIME_PARAMETERS` can be set while the node runs (``ros2 param set``); the same typed
    config that validates them at start accepts or rejects them (the reason is in the SetParametersResult),
    and an accepted change applies from the next frame. The others are read-only.
Subscriptions (while active)
    ``image`` (sensor_msgs/Image) or ``image/compressed`` (sensor_msgs/CompressedImage), sensor-data QoS.
    ``odom`` (nav_msgs/Odometry), optional: spaces the sequence buffer by travelled distance.
Publications (lifecycle publishers: only while active)
    ``~/pose`` (geometry_msgs/PoseWithCovarianceStamped): best reference pose, stamp = query stamp,
    frame = map frame, covariance from the hypothesis confidence.
    ``~/candidates`` (geometry_msgs/PoseArray): top-k reference poses, best first.
    ``~/matches`` (vpr_ros_interfaces/PlaceCandidates): the top-k map frames with ids, stamps, poses, scores,
    the confidence and the sequence length, best first; stamp = query stamp.
    ``~/loop_closure`` (vpr_ros_interfaces/LoopClosure): gated loop closures, stamp = query stamp (see README
    "Loop closures for SLAM").
    ``~/debug_image`` (sensor_msgs/Image, rgb8): the query beside its best match with the matched
    Patch-NetVLAD patches, score and confidence; computed only while someone subscribes.
    ``~/markers`` (visualization_msgs/MarkerArray): map keyframes (sent on activate and to each new viewer),
    the current hypothesis and candidates, loop-closure links; built only while someone subscribes.
    ``/diagnostics`` (diagnostic_msgs/DiagnosticArray), in every state: lifecycle state, map loads, rate,
    latency percentiles, drops, errors.
Services
    ``~/reload_map`` (std_srvs/Trigger): load the map (and encoder) again, e.g. after rebuilding it; only
    while configured (inactive or active). If that fails, the map loaded before stays in use and
    /diagnostics reports WARN with the map path and the error until a reload succeeds.
    ``~/reset`` (std_srvs/Trigger): forget the sequence buffer and the loop-closure history.
    ``~/localize`` (vpr_ros_interfaces/Localize): one-shot relocalization of one image (raw or compressed)
    with retrieval and re-ranking alone; the live sequence and loop-closure state are not touched. Answers
    while configured (inactive or active).
    The standard lifecycle (``~/change_state``, ``~/get_state``, ...) and parameter services.

The image callback only hands the message to a latest-only slot; a worker thread decodes, localizes and
publishes. A frame that arrives while the worker is busy replaces the waiting one (counted as dropped), so
the executor never blocks and the output is never older than one frame. Bad input (undecodable images,
unsupported encodings) is logged, counted and reported on /diagnostics; the node keeps running.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseArray, PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import LifecycleNode, LifecyclePublisher, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data
from rclpy.subscription import Subscription
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_srvs.srv import Trigger
from visualization_msgs.msg import MarkerArray
from vpr_ros_interfaces.msg import LoopClosure, PlaceCandidates
from vpr_ros_interfaces.srv import Localize, SaveMap

from vpr_ros.config import ConfigError, config_from_dict, flatten_config, unflatten
from vpr_ros.core.debug_image import render_hypothesis
from vpr_ros.core.encoders import make_encoder
from vpr_ros.core.geometry import CameraIntrinsics, IntrinsicsError, extract_features
from vpr_ros.core.geometry.closure import ClosureCheck, blob_features, check_closure, keyframe_blob, query_pose_in_map
from vpr_ros.core.localize_config import LocalizeNodeConfig
from vpr_ros.core.localizer import Hypothesis, Localizer
from vpr_ros.core.loop_closure import LoopClosure as GatedClosure
from vpr_ros.core.loop_closure import LoopClosureGate
from vpr_ros.core.online_map import OnlineMap
from vpr_ros.core.sequence_buffer import OdometryTrack
from vpr_ros.io.bags import load_frame_source
from vpr_ros.io.image_messages import ImageDecodeError, compressed_msg_to_rgb, depth_msg_to_metres, image_msg_to_rgb
from vpr_ros.nodes.markers import LoopClosureLinks, MarkerStyle, delete_all_markers, frame_markers, keyframes_marker
from vpr_ros.nodes.messages import (
    hypothesis_to_candidates,
    hypothesis_to_pose,
    hypothesis_to_pose_array,
    loop_closure_to_msg,
    pose_msg,
    stamp_from_msg,
)
from vpr_ros.nodes.parameters import command_line_parameters, declare_config_parameters
from vpr_ros.nodes.process import run_node
from vpr_ros.nodes.replay import rgb_to_image_msg
from vpr_ros.nodes.runtime import LatestSlot, RuntimeStats

#: Parameters of the localize node that may change while it runs (``ros2 param set``); they apply from the next
#: frame. A name ending in "." stands for its whole section. Everything else depends on the loaded map and
#: encoder, the subscriptions or the timers, and is read-only.
RUNTIME_PARAMETERS: tuple[str, ...] = (
    "publish_candidates", "position_sigma_min", "position_sigma_max", "yaw_sigma_deg",
    "localizer.top_k", "localizer.confidence_radius", "localizer.search.",
    "localizer.rerank.candidates", "localizer.rerank.scorer", "localizer.rerank.fusion",
    "localizer.rerank.ransac_tolerance",
    "localizer.sequence.",  # a change restarts the query sequence (as ~/reset)
    "loop_closure.",
)
def runtime_changeable(name: str) -> bool:
    """Whether the localize node parameter ``name`` may change while the node runs (see RUNTIME_PARAMETERS)."""
    return any(name == entry or (entry.endswith(".") and name.startswith(entry)) for entry in RUNTIME_PARAMETERS)


def reference_loader(sources: Sequence[str], cached: int = 8) -> Callable[[int], np.ndarray | None]:
    """Map row -> its image for the debug image (from the image file or bag the map was built from; None when it
    is gone), keeping the last few: consecutive frames mostly show the same map frames."""
    return functools.lru_cache(maxsize=cached)(lambda row: load_frame_source(sources[row]))


@dataclass(frozen=True)
class NodeOutputs:
    """The node's lifecycle publishers: created at configure, publishing while active, destroyed at cleanup."""

    pose: LifecyclePublisher[PoseWithCovarianceStamped]
    candidates: LifecyclePublisher[PoseArray]
    matches: LifecyclePublisher[PlaceCandidates]
    loop_closure: LifecyclePublisher[LoopClosure]
    debug_image: LifecyclePublisher[Image]
    markers: LifecyclePublisher[MarkerArray]

    def all(self) -> tuple[LifecyclePublisher[Any], ...]:
        return self.pose, self.candidates, self.matches, self.loop_closure, self.debug_image, self.markers


class LocalizeNode(LifecycleNode):
    """Thin ROS layer over :class:`vpr_ros.core.localizer.Localizer`, as a lifecycle node (see the module
    docstring for the transitions)."""

    def __init__(self, *, command_line: Sequence[str] = (), **kwargs: Any) -> None:
        """``command_line``: the process's arguments (``main`` passes ``sys.argv``), whose ``-p`` assignments
        are checked (see :func:`command_line_parameters`); ``kwargs`` go to :class:`rclpy.lifecycle.LifecycleNode`.

        Raises:
            ConfigError: invalid parameters (checked here, before any transition).
        """
        super().__init__("localize", **kwargs)
        assignments = command_line_parameters([*command_line, *(kwargs.get("cli_args") or ())], self.get_name())
        self.config: LocalizeNodeConfig = declare_config_parameters(self, LocalizeNodeConfig, assignments,
                                                                    runtime_changeable)
        if self.config.map_mode == "fixed" and not self.config.map_path:
            raise ConfigError("parameter map_path is required: the reference map directory made by build_map (or "
                              "map_mode:=online to build the map as the robot drives)")
        self.stats = RuntimeStats()
        self.slot: LatestSlot[tuple[Any, float]] = LatestSlot()
        # _pipeline_lock guards what a frame reads (config, localizer, gate); _frame_lock is held while one frame
        # is processed, so deactivate, cleanup and shutdown return only after the frame in flight is done.
        self._pipeline_lock = threading.Lock()
        self._frame_lock = threading.Lock()
        self.localizer: Localizer | None = None
        self.gate: LoopClosureGate | None = None
        self.map_error = ""
        self.map_loads = 0
        self.frame_id = "map"
        self.odometry = OdometryTrack(timeout=self.config.localizer.sequence.odometry_timeout)
        self.online_map: OnlineMap | None = None
        self.camera_info: CameraIntrinsics | None = None  # from camera_info, for geometric verification
        self.depth: tuple[float, np.ndarray] | None = None  # latest depth image (stamp, metres), aligned with image
        self.closure_checks: Counter[str] = Counter()     # verified / failed / impossible
        self.loop_closures = 0
        self.debug_images = 0
        self.lifecycle_state = "unconfigured"  # the primary state, as the lifecycle services report it
        self._active = False
        self._outputs: NodeOutputs | None = None
        self._inputs: list[Subscription[Any]] = []
        self.links = LoopClosureLinks()
        self._marker_style = MarkerStyle()
        self._marker_subscribers = 0  # ~/markers subscribers when the map's keyframes were last published
        self._load_reference: Callable[[int], np.ndarray | None] = lambda row: None

        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)  # reports in every state
        self.initial_pose_pub = self.create_publisher(PoseWithCovarianceStamped, "/initialpose", 1)
        self.create_service(Trigger, "~/reload_map", self._on_reload)
        self.create_service(Trigger, "~/reset", self._on_reset)
        self.create_service(Localize, "~/localize", self._on_localize)
        self.create_service(SaveMap, "~/save_map", self._on_save_map)
        self.create_timer(self.config.diagnostics_period, self._publish_diagnostics)
        self.add_pre_set_parameters_callback(self._numbers_as_declared)
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._worker = threading.Thread(target=self._work, name="vpr_localize_worker", daemon=True)
        self._worker.start()
        if self.config.autostart and self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()

    # ---- lifecycle -------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load and verify the map and the encoder; FAILURE (stay unconfigured, reason on /diagnostics) if not."""
        if not self.load_pipeline():
            return TransitionCallbackReturn.FAILURE
        self._outputs = NodeOutputs(
            pose=self.create_lifecycle_publisher(PoseWithCovarianceStamped, "~/pose", 10),
            candidates=self.create_lifecycle_publisher(PoseArray, "~/candidates", 10),
            matches=self.create_lifecycle_publisher(PlaceCandidates, "~/matches", 10),
            loop_closure=self.create_lifecycle_publisher(LoopClosure, "~/loop_closure", 10),
            debug_image=self.create_lifecycle_publisher(Image, "~/debug_image", 2),
            markers=self.create_lifecycle_publisher(MarkerArray, "~/markers", 10))
        return self._entered(super().on_configure(state), "inactive")

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Subscribe and publish; the query sequence and the loop-closure history start afresh."""
        self._reset_history()
        self._inputs = [self.create_subscription(Odometry, "odom", self._on_odometry, 50),
                        self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, 5),
                        self.create_subscription(Image, "depth", self._on_depth, qos_profile_sensor_data)]
        if self.config.image_transport == "compressed":
            self._inputs.append(self.create_subscription(CompressedImage, "image/compressed", self._on_image,
                                                         qos_profile_sensor_data))
        else:
            self._inputs.append(self.create_subscription(Image, "image", self._on_image, qos_profile_sensor_data))
        result = super().on_activate(state)  # enables the lifecycle publishers
        with self._frame_lock:
            self._active = True
        self._marker_subscribers = 0  # the next diagnostics tick publishes the map's keyframes
        return self._entered(result, "active")

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Unsubscribe and stop publishing; the map stays loaded."""
        self._stop_processing()
        return self._entered(super().on_deactivate(state), "inactive")

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Drop the map and the publishers."""
        self._release()
        return self._entered(super().on_cleanup(state), "unconfigured")

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """From any state: stop processing, drop the map and stop the worker thread."""
        self._release()
        self.shutdown()
        return self._entered(super().on_shutdown(state), "finalized")

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """A transition raised: release everything and go back to unconfigured."""
        self.get_logger().error(f"lifecycle transition from {state.label} failed; releasing the map")
        self._release()
        return self._entered(super().on_error(state), "unconfigured")

    def _entered(self, result: TransitionCallbackReturn, state: str) -> TransitionCallbackReturn:
        if result == TransitionCallbackReturn.SUCCESS:
            self.lifecycle_state = state
        return result

    def _stop_processing(self) -> None:
        for subscription in self._inputs:
            self.destroy_subscription(subscription)
        self._inputs = []
        with self._frame_lock:  # waits for the frame in flight; frames still queued are dropped unanswered
            self._active = False

    def _release(self) -> None:
        """Back to the unconfigured resources: no subscriptions, no publishers, no map."""
        self._stop_processing()
        if self._outputs is not None:
            for publisher in self._outputs.all():
                self.destroy_lifecycle_publisher(publisher)
            self._outputs = None
        with self._pipeline_lock:
            self.localizer = None
            self.online_map = None
            self.gate = None
            self.map_error = ""

    # ---- pipeline --------------------------------------------------------------------------------
    def load_pipeline(self) -> bool:
        """(Re)load map and encoder; on failure keep what was loaded before (if anything) and report why."""
        config = self.config
        try:
            t0 = time.perf_counter()
            online = None
            if config.map_mode == "online":
                online = self._open_online_map(config)
                localizer = Localizer(online, online.encoder, config.localizer)
            else:
                localizer = Localizer.from_paths(config.map_path, config.localizer, verify=config.verify_map)
                localizer.refmap.place_search(config.search_device)
        except Exception as exc:
            self.map_error = f"{type(exc).__name__}: {exc}"
            self.get_logger().error(f"cannot load map {config.map_path}: {self.map_error}")
            return False
        with self._pipeline_lock:
            # Parameters set while the map loaded: the new localizer starts with the current values.
            config = self.config
            if localizer.config != config.localizer:
                localizer.reconfigure(config.localizer)
            self.localizer = localizer
            self.online_map = online
            self.gate = self._make_gate(config, localizer)
            self.frame_id = localizer.refmap.frame_id
            self._marker_style = MarkerStyle.for_map(localizer.refmap.frames.positions)
            self._load_reference = reference_loader(localizer.refmap.frames.sources)
            self._marker_subscribers = 0
            self.links.reset()
            self.map_error = ""
            self.map_loads += 1
        self.get_logger().info(
            f"map {config.map_path or '(empty)'} ({config.map_mode}): {len(localizer.refmap)} frames, "
            f"encoder {localizer.encoder.id} on "
            f"{localizer.encoder.providers[0]}, input {localizer.width}x{localizer.height}, re-ranking: "
            f"{localizer.reranker.spec.describe() if localizer.reranker else 'off'}, "
            f"loaded in {time.perf_counter() - t0:.2f} s")
        return True

    @staticmethod
    def _open_online_map(config: LocalizeNodeConfig) -> OnlineMap:
        """The keyframe map of online mode: the prior map at map_path grown further, or an empty one."""
        encoder = make_encoder(config.localizer.encoder)
        window = config.loop_closure.exclusion_window
        if config.map_path:
            return OnlineMap.from_map(config.map_path, encoder, config.online_map, exclusion_window=window)
        return OnlineMap.empty(encoder, config.online_map, exclusion_window=window)

    @staticmethod
    def _make_gate(config: LocalizeNodeConfig, localizer: Localizer) -> LoopClosureGate | None:
        if not config.loop_closure.enabled:
            return None
        return LoopClosureGate(config.loop_closure, localizer.refmap.frames, config.localizer.confidence_radius)

    def _on_reload(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if self.lifecycle_state not in ("inactive", "active"):
            response.success = False
            response.message = (f"the node is {self.lifecycle_state}: reload_map needs a configured node "
                                "(configure loads the map)")
            return response
        response.success = self.load_pipeline()
        response.message = "map loaded" if response.success else self.map_error
        return response

    def _reset_history(self) -> None:
        with self._pipeline_lock:
            localizer, gate = self.localizer, self.gate
        if localizer is not None:
            localizer.reset_sequence()
        if gate is not None:
            gate.reset()
        self.links.reset()
        outputs = self._outputs
        if outputs is not None and outputs.markers.is_activated:
            outputs.markers.publish(delete_all_markers(self.frame_id))
            self._marker_subscribers = 0

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self._reset_history()
        response.success = True
        response.message = "sequence buffer and loop-closure history cleared"
        return response

    # ---- runtime parameters ----------------------------------------------------------------------
    def _numbers_as_declared(self, parameters: list[Parameter]) -> list[Parameter]:
        """An integer for a float parameter becomes that float (``ros2 param set ... 3`` for 3.0), as at start;
        rclpy itself would refuse it as the wrong type."""
        return [Parameter(p.name, value=float(p.value))
                if p.type_ == Parameter.Type.INTEGER and self.has_parameter(p.name)
                and self.get_parameter(p.name).type_ == Parameter.Type.DOUBLE else p
                for p in parameters]

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        """Validate changed parameters with the typed config (as at start) and apply them from the next frame.

        rclpy has already refused read-only parameters and wrong types; this builds the candidate config from the
        current and the new values, so a refusal names the parameter and what it expects.
        """
        values = flatten_config(self.config)
        ours = [p for p in parameters if p.name in values]  # not rclpy's own (use_sim_time)
        if not ours:
            return SetParametersResult(successful=True)
        values.update({p.name: p.value for p in ours})
        try:
            config = config_from_dict(LocalizeNodeConfig, unflatten(values))
        except ConfigError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        with self._pipeline_lock:
            localizer, gate = self.localizer, self.gate
            if localizer is not None:
                try:
                    localizer.reconfigure(config.localizer)
                except Exception as exc:  # e.g. MapError: settings the loaded map cannot serve; nothing changed
                    return SetParametersResult(successful=False, reason=f"{type(exc).__name__}: {exc}")
                sequence_changed = config.localizer.sequence != self.config.localizer.sequence
                if gate is None or not config.loop_closure.enabled:
                    self.gate = self._make_gate(config, localizer)
                else:
                    gate.reconfigure(config.loop_closure, config.localizer.confidence_radius)
                    if sequence_changed:
                        gate.reset()  # its history rests on answers of the sequence that was just restarted
            self.odometry.timeout = config.localizer.sequence.odometry_timeout
            self.config = config
        self.get_logger().info("parameters set: " + ", ".join(f"{p.name}={p.value!r}" for p in ours))
        return SetParametersResult(successful=True)

    # ---- data path -------------------------------------------------------------------------------
    def _on_odometry(self, msg: Odometry) -> None:
        p, q = msg.pose.pose.position, msg.pose.pose.orientation
        stamp = stamp_from_msg(msg.header.stamp)
        self.odometry.add(stamp, (p.x, p.y, p.z), (q.x, q.y, q.z, q.w))

    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            self.camera_info = CameraIntrinsics.from_camera_info_fields(msg.k, msg.d, msg.width, msg.height)
        except IntrinsicsError as exc:
            self.camera_info = None
            self.stats.on_error("camera_info", str(exc))

    def _on_depth(self, msg: Image) -> None:
        try:
            self.depth = (stamp_from_msg(msg.header.stamp), depth_msg_to_metres(msg, self.config.max_pixels))
        except ImageDecodeError as exc:
            self.stats.on_error("depth", str(exc))

    def depth_at(self, stamp: float, height: int, width: int) -> np.ndarray | None:
        """The depth image taken with the camera image at ``stamp`` (within 50 ms, same size: registered depth),
        for metric loop closures (PnP); None otherwise."""
        depth = self.depth
        if depth is None or abs(depth[0] - stamp) > 0.05 or depth[1].shape != (height, width):
            return None
        return depth[1]

    def query_camera(self, width: int, height: int) -> CameraIntrinsics | None:
        """Intrinsics of the camera images: from camera_info, else nominal from geometry.camera_hfov_deg."""
        if self.camera_info is not None:
            return self.camera_info
        hfov = self.config.geometry.camera_hfov_deg
        return CameraIntrinsics.nominal(width, height, hfov) if hfov > 0 else None

    def _on_image(self, msg: Any) -> None:
        self.stats.on_received()
        self.slot.put((msg, time.perf_counter()))

    def _work(self) -> None:
        while self.context.ok() and not self.slot.closed:
            item = self.slot.take(timeout=0.5)
            if item is None:
                continue
            with self._frame_lock:
                if not self._active:
                    continue  # deactivated after the frame arrived: it is not answered
                try:
                    self.process(*item)
                except Exception:
                    if self.context.ok():
                        raise
                    # SIGINT shuts the context down (rclpy's handler) before main() can stop this thread; the
                    # frame in flight has nowhere left to be published, so stop quietly instead of dying on it.
                    return

    def process(self, msg: Any, received_at: float) -> None:
        """Decode, localize and publish one frame; every failure is counted and reported."""
        with self._pipeline_lock:
            localizer, gate, config, outputs = self.localizer, self.gate, self.config, self._outputs
        if localizer is None or outputs is None:
            self.stats.on_error("no_map", f"frame ignored, no map loaded: {self.map_error}")
            return
        try:
            limit = config.max_pixels
            rgb = compressed_msg_to_rgb(msg, limit) if isinstance(msg, CompressedImage) else \
                image_msg_to_rgb(msg, limit)
        except ImageDecodeError as exc:
            self.stats.on_error(exc.kind, str(exc))
            self.get_logger().warning(f"bad image: {exc}", throttle_duration_sec=5.0)
            return
        stamp = stamp_from_msg(msg.header.stamp)
        want_debug_image = outputs.debug_image.get_subscription_count() > 0  # computed only for someone watching
        try:
            hyp = localizer.localize(rgb, stamp, self.odometry.travelled_at(stamp), explain=want_debug_image)
        except Exception as exc:
            self.stats.on_error("pipeline", f"{type(exc).__name__}: {exc}")
            self.get_logger().error(f"localization failed: {exc}", throttle_duration_sec=5.0)
            return
        online = self.online_map
        if gate is not None and online is not None:
            gate.frames = online.frames  # the map grows; the gate reads the stamps and poses of its rows
        closure = gate.update(hyp) if gate is not None else None
        check = self._check_closure(closure, rgb, localizer, config) if closure is not None else None
        pose = self._pose_msg(hyp, config)
        if check is not None and check.status == "verified" and config.geometry.metric_pose and pose is not None:
            pose = self._metric_pose(pose, closure, check)
        if pose is not None:
            outputs.pose.publish(pose)
        if config.publish_candidates:
            outputs.candidates.publish(hypothesis_to_pose_array(hyp, self.frame_id))
            outputs.matches.publish(self._candidates_msg(hyp, localizer))
        if online is not None and hyp.query is not None:
            self._add_keyframe(online, hyp, rgb, stamp, msg.header.frame_id)
        if closure is not None and check is not None and (
                check.status == "verified" or (check.status == "impossible" and config.geometry.publish_unverified)):
            outputs.loop_closure.publish(loop_closure_to_msg(
                closure, self.frame_id, msg.header.frame_id,
                check.verification if check.status == "verified" else None))
            self.loop_closures += 1
            self.links.add(hyp, closure)
        self.stats.on_processed((time.perf_counter() - received_at) * 1e3, hyp.timings_ms)
        if want_debug_image:
            self._publish_debug_image(outputs, rgb, hyp, localizer, msg.header.stamp)
        if outputs.markers.get_subscription_count() > 0:
            outputs.markers.publish(frame_markers(hyp, self.frame_id, self.links, self._marker_style))

    def _pose_msg(self, hyp: Hypothesis, config: LocalizeNodeConfig) -> PoseWithCovarianceStamped | None:
        """~/pose for ``hyp`` (the service answers with the same message)."""
        return hypothesis_to_pose(hyp, self.frame_id, config.position_sigma_min, config.position_sigma_max,
                                  config.yaw_sigma_deg)

    def _candidates_msg(self, hyp: Hypothesis, localizer: Localizer) -> PlaceCandidates:
        """~/matches for ``hyp`` (the service answers with the same message)."""
        return hypothesis_to_candidates(hyp, self.frame_id, localizer.refmap.frames.stamps[hyp.indices],
                                        localizer.reranker is not None)

    def _add_keyframe(self, online: OnlineMap, hyp: Hypothesis, rgb: np.ndarray, stamp: float,
                      camera_frame: str) -> int | None:
        """Online mode: the frame joins the map when the keyframe spacing allows (after it was answered, so it
        never matches itself); its pose is the odometry pose at its stamp (NaN without odometry), and with
        geometric verification it carries its local features and intrinsics (the image itself is not kept)."""
        pose = self.odometry.pose_at(stamp)
        travelled = self.odometry.travelled_at(stamp)
        geometry = self.config.geometry

        def local_features() -> dict[str, np.ndarray] | None:  # only for frames that become keyframes
            if not (geometry.enabled and geometry.store_keyframe_features):
                return None
            camera = self.query_camera(rgb.shape[1], rgb.shape[0])
            if camera is None:  # features without intrinsics cannot be verified against
                return None
            depth = self.depth_at(stamp, rgb.shape[0], rgb.shape[1])
            return keyframe_blob(extract_features(rgb, geometry.verification.features, depth=depth), camera)

        return online.add(stamp, features=hyp.query.features, descriptor=hyp.query.global_descriptor, pose=pose,
                          travelled=travelled, source=f"live:{self.get_namespace().rstrip('/')}/image@{stamp:.9f}",
                          name=f"{camera_frame or 'camera'}_{stamp:.9f}", local_features=local_features)

    def _check_closure(self, closure: GatedClosure, rgb: np.ndarray, localizer: Localizer,
                       config: LocalizeNodeConfig) -> ClosureCheck:
        """Geometric verification of a gated closure against its keyframe's stored features, or its image."""
        geometry = config.geometry
        if not geometry.enabled:
            check = ClosureCheck("impossible", "geometric verification is off (geometry.enabled false)")
        else:
            camera = self.query_camera(rgb.shape[1], rgb.shape[0])
            keyframe, keyframe_camera = None, camera
            online = self.online_map
            blob = online.local_features(closure.row) if online is not None else None
            try:
                if blob is not None:
                    keyframe, keyframe_camera = blob_features(blob)
                else:
                    keyframe = self._load_reference(closure.row)
                check = check_closure(rgb, keyframe, camera, keyframe_camera, geometry,
                                      query_depth=self.depth_at(closure.stamp, rgb.shape[0], rgb.shape[1]))
            except Exception as exc:  # an unreadable keyframe image or features: nothing to verify with
                check = ClosureCheck("impossible", f"{type(exc).__name__}: {exc}")
        self.closure_checks[check.status] += 1
        if check.status != "verified":
            self.get_logger().info(f"loop closure to keyframe {closure.ref_id}: {check.status} ({check.reason})",
                                   throttle_duration_sec=2.0)
        return check

    def _metric_pose(self, pose: PoseWithCovarianceStamped, closure: GatedClosure,
                     check: ClosureCheck) -> PoseWithCovarianceStamped:
        """~/pose on a verified closure: the keyframe's pose composed with the verified relative pose."""
        geometry = self.config.geometry
        if not np.isfinite(closure.orientation).all():
            return pose  # the keyframe's orientation is unknown: nothing to compose with
        position, orientation, metric = query_pose_in_map(closure.position, closure.orientation,
                                                          check.verification, geometry.camera_pose)
        pose.pose.pose = pose_msg(position, orientation)
        covariance = np.array(pose.pose.covariance).reshape(6, 6)
        rotation_variances = np.diag(check.verification.covariance)[3:]
        covariance[3:, 3:] = np.diag(np.maximum(rotation_variances, 1e-6))  # the verified rotation's, not the prior's
        if metric:
            covariance[:3, :3] = check.verification.covariance[:3, :3] + np.eye(3) * 1e-4
        pose.pose.covariance = covariance.ravel().tolist()
        if geometry.publish_initial_pose and metric:
            self.initial_pose_pub.publish(pose)
        return pose

    def _on_save_map(self, request: SaveMap.Request, response: SaveMap.Response) -> SaveMap.Response:
        """Write the online map in the build_map format (atomic, under the map lock)."""
        online, config = self.online_map, self.config
        path = request.path or config.online_map.save_path
        if online is None:
            response.success, response.message = False, (
                "not in online mode (map_mode fixed)" if config.map_mode == "fixed"
                else f"the node is {self.lifecycle_state}: no map loaded")
        elif not path:
            response.success, response.message = False, "no path: give one, or set online_map.save_path"
        else:
            try:
                saved = online.save(path, overwrite=request.overwrite)
            except Exception as exc:  # InputError (no keyframes, path exists), MapLockedError, OSError
                response.success, response.message = False, f"{type(exc).__name__}: {exc}"
            else:
                response.success, response.keyframes = True, len(online)
                response.message = f"saved {len(online)} keyframes to {saved}"
        if response.success:
            self.get_logger().info(f"save_map: {response.message}")
        else:  # rclpy wants one severity per logging call site
            self.get_logger().error(f"save_map: {response.message}")
        return response

    def _publish_debug_image(self, outputs: NodeOutputs, rgb: np.ndarray, hyp: Hypothesis, localizer: Localizer,
                             stamp: Any) -> None:
        """Query beside its best match with the matched patches (after the answer went out: not in its latency)."""
        try:
            canvas = render_hypothesis(rgb, hyp, localizer.refmap.frames, self._load_reference)
        except Exception as exc:  # a reference image that cannot be read must not stop localization
            self.stats.on_error("debug_image", f"{type(exc).__name__}: {exc}")
            return
        image = rgb_to_image_msg(canvas, stamp_from_msg(stamp), frame_id=self.frame_id)
        outputs.debug_image.publish(image)
        self.debug_images += 1

    def _publish_keyframes_if_new_subscribers(self) -> None:
        """The map's keyframes marker is large and static: sent on activate and when a new viewer subscribes."""
        outputs, localizer = self._outputs, self.localizer
        if outputs is None or localizer is None or not outputs.markers.is_activated:
            return
        subscribers = outputs.markers.get_subscription_count()
        if subscribers > self._marker_subscribers:
            marker = keyframes_marker(localizer.refmap.frames.positions, self.frame_id, self._marker_style)
            outputs.markers.publish(MarkerArray(markers=[marker]))
        self._marker_subscribers = subscribers

    # ---- one-shot relocalization -----------------------------------------------------------------
    def _on_localize(self, request: Localize.Request, response: Localize.Response) -> Localize.Response:
        """Answer one image with retrieval and re-ranking alone; the live sequence and loop closures are untouched."""
        with self._pipeline_lock:
            localizer, config = self.localizer, self.config
        if localizer is None:
            response.success = False
            response.message = (f"the node is {self.lifecycle_state}: no map loaded"
                                + (f" ({self.map_error})" if self.map_error else "") + "; configure loads it")
            return response
        has_raw, has_compressed = len(request.image.data) > 0, len(request.compressed_image.data) > 0
        if has_raw == has_compressed:
            response.success = False
            response.message = ("set exactly one of image and compressed_image (got "
                                + ("both" if has_raw else "neither") + ")")
            return response
        try:
            msg = request.image if has_raw else request.compressed_image
            rgb = image_msg_to_rgb(msg, config.max_pixels) if has_raw else \
                compressed_msg_to_rgb(msg, config.max_pixels)
        except ImageDecodeError as exc:
            response.success = False
            response.message = f"bad image: {exc}"
            return response
        stamp = stamp_from_msg(msg.header.stamp)
        try:
            hyp = localizer.localize_single_frame(rgb, stamp, top_k=int(request.top_k) or None)
        except Exception as exc:
            response.success = False
            response.message = f"localization failed: {type(exc).__name__}: {exc}"
            return response
        response.candidates = self._candidates_msg(hyp, localizer)
        pose = self._pose_msg(hyp, config)
        response.pose_valid = pose is not None
        if pose is not None:
            response.pose = pose
        response.success = True
        response.message = f"{len(hyp.indices)} candidates, confidence {hyp.confidence:.3f}"
        return response

    # ---- diagnostics -----------------------------------------------------------------------------
    def diagnostic_status(self) -> DiagnosticStatus:
        s = self.stats
        errors = sum(s.errors.values())
        state = self.lifecycle_state
        localizer = self.localizer
        if state == "unconfigured" and self.map_error:
            level, message = DiagnosticStatus.ERROR, f"no map loaded: {self.map_error}"
        elif state in ("unconfigured", "finalized"):
            level, message = DiagnosticStatus.OK, (f"{state}: no map loaded" + (
                ", waiting for configure (lifecycle)" if state == "unconfigured" else ""))
        elif self.map_error:
            # A failed ~/reload_map keeps the previous pipeline running; say so until a reload succeeds.
            level, message = DiagnosticStatus.WARN, (f"reload of map {self.config.map_path} failed, still "
                                                     f"localizing with the map loaded before: {self.map_error}")
        elif state == "inactive":
            level, message = DiagnosticStatus.OK, "inactive: map loaded, waiting for activate (lifecycle)"
        elif errors:
            level, message = DiagnosticStatus.WARN, f"{errors} frame(s) failed; last: {s.last_error}"
        else:
            level, message = DiagnosticStatus.OK, "localizing"
        values = {"lifecycle_state": state, "map_loads": self.map_loads,
                  "frames_received": s.received, "frames_processed": s.processed, "frames_dropped": self.slot.dropped,
                  "errors_total": errors, "rate_hz": round(s.rate_hz(), 3),
                  **{k: round(v, 3) for k, v in s.latency_percentiles().items()},
                  **{f"errors_{k}": v for k, v in sorted(s.errors.items())},
                  "map_path": self.config.map_path, "map_error": self.map_error, "last_error": s.last_error,
                  "loop_closures": self.loop_closures, "debug_images": self.debug_images,
                  **{f"closures_{k}": v for k, v in sorted(self.closure_checks.items())},
                  "camera_info": "yes" if self.camera_info is not None else "no"}
        online = self.online_map
        if online is not None:
            values.update(map_mode="online", keyframes=len(online), keyframes_refused=online.refused)
        sequence = localizer.sequence if localizer is not None else None
        if sequence is not None:
            values.update(sequence_method=sequence.config.method, sequence_buffered=len(sequence.buffer),
                          sequence_restarts=sequence.buffer.restarts,
                          odometry="yes" if self.odometry.latest_stamp is not None else "no")
        return DiagnosticStatus(level=level, name=f"vpr_ros: {self.get_fully_qualified_name()}", message=message,
                                hardware_id=self.config.map_path,
                                values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])

    def _publish_diagnostics(self) -> None:
        self._publish_keyframes_if_new_subscribers()
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [self.diagnostic_status()]
        self.diag_pub.publish(msg)

    def shutdown(self) -> None:
        """Stop the worker thread (the shutdown transition does this too; safe to call twice)."""
        self.slot.close()
        if self._worker is not threading.current_thread():
            self._worker.join(timeout=5.0)


def main(args: list[str] | None = None) -> None:
    run_node("localize", lambda argv: LocalizeNode(command_line=argv), args)


if __name__ == "__main__":
    main()
