"""vpr_ros: visual place recognition for ROS 2 robots (relocalization and loop-closure candidates)."""

__version__ = "0.1.0"
