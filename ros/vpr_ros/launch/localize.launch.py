"""Launch the vpr_ros localize node (a lifecycle node) with its parameters from config/localize.yaml.

    ros2 launch vpr_ros localize.launch.py map_path:=/path/to/map image:=/camera/image_raw

By default the node configures and activates itself (``autostart:=true``). With ``autostart:=false`` it stays
unconfigured until a lifecycle manager (e.g. nav2's lifecycle_manager, or ``ros2 lifecycle set /localize
configure`` then ``activate``) brings it up.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("vpr_ros")
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "localize.yaml"),
                              description="node parameters (ROS 2 params file)"),
        DeclareLaunchArgument("map_path", description="reference map directory made by build_map"),
        DeclareLaunchArgument("image", default_value="/camera/image_raw", description="camera image topic"),
        DeclareLaunchArgument("odom", default_value="/odom",
                              description="nav_msgs/Odometry topic (optional; spaces sequence frames by distance)"),
        DeclareLaunchArgument("model", default_value=os.path.join(share, "models", "efficientnet_lite0_b10.onnx"),
                              description="encoder ONNX model the map was built with"),
        DeclareLaunchArgument("autostart", default_value="true", choices=["true", "false"],
                              description="configure and activate the lifecycle node at start; false = leave it "
                              "unconfigured for a lifecycle manager"),
        Node(
            package="vpr_ros",
            executable="localize",
            name="localize",
            output="screen",
            parameters=[LaunchConfiguration("params_file"),
                        {"map_path": LaunchConfiguration("map_path"),
                         "localizer.encoder.model": LaunchConfiguration("model"),
                         "autostart": ParameterValue(LaunchConfiguration("autostart"), value_type=bool)}],
            remappings=[("image", LaunchConfiguration("image")), ("odom", LaunchConfiguration("odom")),
                        ("image/compressed", [LaunchConfiguration("image"), "/compressed"])],
        ),
    ])
