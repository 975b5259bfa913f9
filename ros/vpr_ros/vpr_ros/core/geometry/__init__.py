"""Geometric verification of loop-closure candidates: local features, two-view geometry, PnP (ROS-free)."""

from vpr_ros.core.geometry.camera import CameraIntrinsics, IntrinsicsError
from vpr_ros.core.geometry.features import FeatureConfig, Features, extract_features, match_features
from vpr_ros.core.geometry.verification import Verification, VerificationConfig, verify_pair

__all__ = ["CameraIntrinsics", "FeatureConfig", "Features", "IntrinsicsError", "Verification",
           "VerificationConfig", "extract_features", "match_features", "verify_pair"]
