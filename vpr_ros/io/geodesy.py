"""GNSS fixes (WGS84 latitude, longitude, ellipsoidal altitude) -> a local metric east-north-up frame.

The conversion is exact (geodetic -> Earth-centred Earth-fixed -> ENU tangent plane at an origin), so it holds
for routes of any length; only "metres along the ground" drift from the tangent plane far from the origin
(about 8 cm vertical drop per km of distance), which does not matter for 25 m place-recognition thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: WGS84 semi-major axis (m) and first eccentricity squared.
WGS84_A = 6378137.0
WGS84_E2 = 6.69437999014e-3


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


def geodetic_to_ecef(lat_deg: np.ndarray, lon_deg: np.ndarray, alt: np.ndarray) -> np.ndarray:
    """WGS84 geodetic -> ECEF metres.

    Shape:
        inputs (N,) (or broadcastable); returns (N, 3).
    """
    lat, lon = np.radians(np.asarray(lat_deg, dtype=np.float64)), np.radians(np.asarray(lon_deg, dtype=np.float64))
    alt = np.asarray(alt, dtype=np.float64)
    n = WGS84_A / np.sqrt(1.0 - WGS84_E2 * np.sin(lat) ** 2)
    return np.stack([(n + alt) * np.cos(lat) * np.cos(lon), (n + alt) * np.cos(lat) * np.sin(lon),
                     (n * (1.0 - WGS84_E2) + alt) * np.sin(lat)], axis=-1)


def geodetic_to_enu(lat_deg: np.ndarray, lon_deg: np.ndarray, alt: np.ndarray, origin: GeodeticOrigin) -> np.ndarray:
    """WGS84 geodetic -> east, north, up metres in the tangent plane at ``origin``.

    Shape:
        inputs (N,); returns (N, 3).

    Example:
        >>> o = GeodeticOrigin(51.75, -1.25)
        >>> np.round(geodetic_to_enu(np.array([51.75]), np.array([-1.25]), np.array([0.0]), o), 6).tolist()
        [[0.0, 0.0, 0.0]]
    """
    d = geodetic_to_ecef(lat_deg, lon_deg, alt) - geodetic_to_ecef(origin.latitude, origin.longitude, origin.altitude)
    lat0, lon0 = np.radians(origin.latitude), np.radians(origin.longitude)
    east = np.array([-np.sin(lon0), np.cos(lon0), 0.0])
    north = np.array([-np.sin(lat0) * np.cos(lon0), -np.sin(lat0) * np.sin(lon0), np.cos(lat0)])
    up = np.array([np.cos(lat0) * np.cos(lon0), np.cos(lat0) * np.sin(lon0), np.sin(lat0)])
    return d @ np.stack([east, north, up], axis=1)
