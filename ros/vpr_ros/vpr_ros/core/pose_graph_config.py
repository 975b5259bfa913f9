"""Settings of the pose-graph node (ROS-free, like localize_config.py): its topics' frames, how it uses loop
closures, and the graph's own settings (:class:`vpr_ros.core.pose_graph.PoseGraphConfig`)."""

from __future__ import annotations

from dataclasses import dataclass

from vpr_ros.config import section, setting
from vpr_ros.core.geometry.closure import OPTICAL_IN_BODY
from vpr_ros.core.pose_graph import PoseGraphConfig


@dataclass(frozen=True)
class PoseGraphNodeConfig:
    """Parameters of the pose-graph node; nested sections become dotted ROS parameter names."""

    map_frame: str = setting("map", "frame of ~/path and of the keyframe poses of the loop closures")
    anchor: str = setting(
        "first_pose", "first_pose = the first odometry pose is the map frame's origin pose (one run, loop closures "
        "with its own keyframes); closures = no prior: the run is placed in the map frame by loop closures to a "
        "prior map's keyframes, and ~/path waits until they determine it", choices=("first_pose", "closures"))
    unverified_closures: str = setting(
        "ignore", "closures with verified false carry no geometry (identity, covariance 1e12): ignore = no effect; "
        "place = use them as a place-level position measurement (the query within place_sigma of the keyframe, "
        "rotation unknown)", choices=("ignore", "place"))
    place_sigma: float = setting(
        5.0, "standard deviation (map units) of an unverified closure used as a place measurement", min=1e-6)
    keyframe_position_sigma: float = setting(
        0.1, "standard deviation (map units) of the pose prior of a keyframe from a prior map (not a node of "
        "this run: its keyframe_stamp is outside the odometry received)", min=1e-6)
    keyframe_rotation_sigma_deg: float = setting(
        5.0, "... and of its orientation when the map stores one (else unknown)", min=1e-6)
    publish_map_to_odom: bool = setting(
        True, "publish ~/map_to_odom (geometry_msgs/TransformStamped): the correction map <- odometry frame at the "
        "latest node (what a /tf broadcaster of map -> odom sends)")
    camera_pose: tuple[float, ...] = setting(
        OPTICAL_IN_BODY, "the camera's optical frame in the odometry's body frame, x y z qx qy qz qw: verified "
        "relative poses (camera frames) become body-to-body edges with it (default: REP 103 optical rotation, "
        "camera looking along x at the body's origin)")
    graph: PoseGraphConfig = section(PoseGraphConfig)
