"""Geometric verification of loop-closure candidates: local features, two-view geometry, PnP (ROS-free).

Example:
    >>> import numpy as np
    >>> from vpr_ros.core.geometry import CameraIntrinsics, extract_features, verify_pair
    >>> camera = CameraIntrinsics.nominal(640, 480, hfov_deg=60.0)    # or from_camera_info_fields(k, d, w, h)
    >>> keyframe = np.zeros((480, 640, 3), np.uint8)                  # a blank image: nothing to match
    >>> stored = extract_features(keyframe)                           # what the map keeps per keyframe
    >>> result = verify_pair(keyframe, stored, camera, camera)
    >>> result.verified, result.reason
    (False, 'too few matches: 0 < min_matches 20')
"""

from vpr_ros.core.geometry.camera import CameraIntrinsics, IntrinsicsError
from vpr_ros.core.geometry.features import FeatureConfig, Features, extract_features, match_features
from vpr_ros.core.geometry.verification import Verification, VerificationConfig, verify_pair

__all__ = ["CameraIntrinsics", "FeatureConfig", "Features", "IntrinsicsError", "Verification",
           "VerificationConfig", "extract_features", "match_features", "verify_pair"]
