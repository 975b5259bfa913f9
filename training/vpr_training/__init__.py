"""Offline model building and training for vpr_ros.

This package is the only place in the repository that imports torch: it builds, trains and exports
encoders to ONNX (with model cards), which the ROS-free runtime in ``vpr_ros.core`` then runs through ONNX
Runtime. Nothing under ``vpr_ros/`` may import from here.
"""

__version__ = "0.1.0"
