"""ROS 2 code only: the localize node, message conversion, its runtime helpers, the replay client and the harness
that starts the node and its client together (:mod:`vpr_ros.nodes.harness`)."""
