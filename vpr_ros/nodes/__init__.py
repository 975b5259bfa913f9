"""ROS 2 nodes and command-line tools: thin layers over vpr_ros.core."""
