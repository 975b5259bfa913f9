"""ROS 2 code only: the localize node, message conversion, its runtime helpers and the replay clients."""
