"""GNSS fixes (WGS84 latitude, longitude, ellipsoidal altitude) -> a local metric east-north-up frame.

The conversion is pymap3d's exact one (geodetic -> Earth-centred Earth-fixed -> ENU tangent plane at an origin),
so it holds for routes of any length; only "metres along the ground" drift from the tangent plane far from the
origin (about 8 cm vertical drop per km of distance), which does not matter for 25 m place-recognition thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pymap3d

#: WGS84 semi-major axis (m), flattening and first eccentricity squared, for callers that work with the ellipsoid
#: directly. pymap3d's default ellipsoid is this one (left as the default: pymap3d 2.x, which Debian and Ubuntu
#: ship, has no ``Ellipsoid.from_name``).
WGS84_A = 6378137.0
WGS84_F = 1.0 / 298.257223563
WGS84_E2 = WGS84_F * (2.0 - WGS84_F)


@dataclass(frozen=True)
class GeodeticOrigin:
    """Origin of a local ENU frame (degrees, degrees, metres)."""

    latitude: float
    longitude: float
    altitude: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return {"latitude": self.latitude, "longitude": self.longitude, "altitude": self.altitude}

    @classmethod
    def from_dict(cls, data: dict[str, float]) -> GeodeticOrigin:
        return cls(float(data["latitude"]), float(data["longitude"]), float(data.get("altitude", 0.0)))


def geodetic_to_enu(lat_deg: np.ndarray, lon_deg: np.ndarray, alt: np.ndarray, origin: GeodeticOrigin) -> np.ndarray:
    """WGS84 geodetic -> east, north, up metres in the tangent plane at ``origin``.

    Shape:
        inputs (N,); returns (N, 3).

    Example:
        >>> o = GeodeticOrigin(51.75, -1.25)
        >>> np.round(geodetic_to_enu(np.array([51.75]), np.array([-1.25]), np.array([0.0]), o), 6).tolist()
        [[0.0, 0.0, 0.0]]
    """
    east, north, up = pymap3d.geodetic2enu(np.asarray(lat_deg, dtype=np.float64), np.asarray(lon_deg, dtype=np.float64),
                                           np.asarray(alt, dtype=np.float64), origin.latitude, origin.longitude,
                                           origin.altitude)
    return np.stack(np.broadcast_arrays(east, north, up), axis=-1)
