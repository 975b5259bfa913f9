"""Pinhole camera intrinsics, from a ``sensor_msgs/CameraInfo``'s numbers or nominal for uncalibrated datasets."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from vpr_ros.errors import InputError


class IntrinsicsError(InputError):
    """Camera intrinsics that cannot describe a camera (non-positive focal length or size, wrong K shape)."""


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics in pixels, for images of ``width`` x ``height``; optional OpenCV distortion
    coefficients (``plumb_bob`` / ``rational_polynomial`` order k1 k2 p1 p2 [k3 ...], as in CameraInfo.d)."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    distortion: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not (self.fx > 0 and self.fy > 0 and math.isfinite(self.fx) and math.isfinite(self.fy)):
            raise IntrinsicsError(f"camera intrinsics: focal lengths must be positive, got fx={self.fx} fy={self.fy}")
        if self.width <= 0 or self.height <= 0:
            raise IntrinsicsError(f"camera intrinsics: image size must be positive, got {self.width}x{self.height}")
        if not (math.isfinite(self.cx) and math.isfinite(self.cy)):
            raise IntrinsicsError(f"camera intrinsics: principal point must be finite, got ({self.cx}, {self.cy})")

    @classmethod
    def from_camera_info_fields(cls, k: Sequence[float], d: Sequence[float], width: int,
                                height: int) -> CameraIntrinsics:
        """From the numbers of a ``sensor_msgs/CameraInfo``: ``k`` (9, row-major 3x3), ``d``, ``width``,
        ``height``. Raises IntrinsicsError for an all-zero K (an uncalibrated camera publishes one)."""
        k = [float(v) for v in k]
        if len(k) != 9:
            raise IntrinsicsError(f"camera_info k: expected 9 numbers (row-major 3x3), got {len(k)}")
        if k[0] <= 0 or k[4] <= 0:
            raise IntrinsicsError("camera_info k: fx and fy must be positive (an all-zero K means uncalibrated)")
        distortion = tuple(float(v) for v in d)
        if distortion and not any(distortion):
            distortion = ()  # all zeros: no distortion, skip the undistortion
        return cls(fx=k[0], fy=k[4], cx=k[2], cy=k[5], width=int(width), height=int(height), distortion=distortion)

    @classmethod
    def nominal(cls, width: int, height: int, hfov_deg: float) -> CameraIntrinsics:
        """An ideal pinhole for a dataset without calibration: square pixels, principal point at the image
        centre, focal length from the horizontal field of view."""
        if not 0.0 < hfov_deg < 180.0:
            raise IntrinsicsError(f"nominal intrinsics: hfov_deg must be in (0, 180), got {hfov_deg}")
        f = (width / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)
        return cls(fx=f, fy=f, cx=(width - 1) / 2.0, cy=(height - 1) / 2.0, width=int(width), height=int(height))

    @property
    def matrix(self) -> np.ndarray:
        """K, shape (3, 3), float64."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def focal(self) -> float:
        """Mean focal length in pixels."""
        return 0.5 * (self.fx + self.fy)

    def scaled_to(self, width: int, height: int) -> CameraIntrinsics:
        """The same camera for the image resized to ``width`` x ``height`` (pixel-centre convention)."""
        sx, sy = width / self.width, height / self.height
        return CameraIntrinsics(fx=self.fx * sx, fy=self.fy * sy, cx=(self.cx + 0.5) * sx - 0.5,
                                cy=(self.cy + 0.5) * sy - 0.5, width=int(width), height=int(height),
                                distortion=self.distortion)

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """Pixel coordinates (N, 2) -> undistorted normalized image coordinates (N, 2) (z = 1 plane), float64."""
        pts = np.asarray(pixels, dtype=np.float64).reshape(-1, 2)
        if not self.distortion:
            return (pts - [self.cx, self.cy]) / [self.fx, self.fy]
        return cv2.undistortPoints(pts.reshape(-1, 1, 2), self.matrix,
                                   np.asarray(self.distortion, dtype=np.float64)).reshape(-1, 2)
