"""Moved to :mod:`vpr_ros.io.image_messages` (bag readers decode the same messages without ROS); kept so
existing imports keep working."""

from vpr_ros.io.image_messages import (  # noqa: F401
    SUPPORTED_ENCODINGS,
    ImageDecodeError,
    compressed_msg_to_rgb,
    image_msg_to_rgb,
)
