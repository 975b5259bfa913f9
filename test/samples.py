"""Small real-format samples built from the shipped real images (no dataset can be downloaded here).

* corridor / Nordland frames written into ROS 2 sqlite3, MCAP and ROS 1 bags with pose topics;
* an Oxford RobotCar run: corridor JPEGs as GBRG Bayer PNGs named by microsecond timestamps, stereo.timestamps,
  and gps/ins.csv + rtk.csv for a trajectory we define (the images are real, their poses are made up);
* an MSLS root: corridor reference / query traversals as one city's database / query with seq_info.csv,
  raw.csv and postprocessed.csv (12.5 m between frames, so MSLS's 25 m rule equals the corridor's +-2 frames),
  plus a second city with a panorama and a test city without GPS.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import cv2
import numpy as np

from vpr_ros.core.image import load_rgb
from vpr_ros.io.bag_writer import BagWriter
from vpr_ros.io.poses import read_pose_file

CORRIDOR_STAMP0 = 100.0


def corridor_stamp(i: int, period: float = 0.5) -> float:
    return CORRIDOR_STAMP0 + period * i


def write_corridor_bag(path: Path, corridor: Path, part: str, storage: str, image: str = "compressed",
                       pose_kind: str = "pose", period: float = 0.5, count: int | None = None) -> dict[str, str]:
    """``part`` (ref/query) images on /cam/image[/compressed], nominal poses on /pose at the image stamps."""
    poses = read_pose_file(corridor / f"{part}_poses.csv")
    n = len(poses.names) if count is None else count
    topic = "/cam/image/compressed" if image == "compressed" else "/cam/image"
    with BagWriter(path, storage) as bag:
        for i, name in enumerate(poses.names[:n]):
            stamp = corridor_stamp(i, period)
            file = corridor / part / name
            if image == "compressed":
                bag.write_compressed(topic, stamp, file.read_bytes())
            elif image == "bgr8":
                bag.write_image(topic, stamp, load_rgb(file)[:, :, ::-1], "bgr8")
            else:
                bag.write_image(topic, stamp, load_rgb(file), "rgb8")
            bag.write_pose("/pose", stamp, poses.positions[i], [0.0, 0.0, 0.0, 1.0], kind=pose_kind)
    return {"image_topic": topic, "pose_topic": "/pose"}


def write_nordland_bag(path: Path, folder: Path, numbers: list[int], storage: str, image: str = "rgb8") -> str:
    """Nordland frames ``images-NNNNN.png`` of one season, stamped frame number / 10 s (every 10th frame)."""
    topic = "/nordland/image/compressed" if image == "compressed" else "/nordland/image"
    with BagWriter(path, storage) as bag:
        for n in numbers:
            file = folder / f"images-{n:05d}.png"
            if image == "compressed":
                bag.write_compressed(topic, n / 10.0, file.read_bytes(), fmt="png")
            elif image == "bgr8":
                bag.write_image(topic, n / 10.0, load_rgb(file)[:, :, ::-1], "bgr8")
            else:
                bag.write_image(topic, n / 10.0, load_rgb(file), "rgb8")
    return topic


# ---- Oxford RobotCar ----------------------------------------------------------------------------------------
ORIGIN_EN = (620500.0, 5734500.0)  # easting, northing of frame 0 (inside the converter's default Oxford origin)


def gbrg_mosaic(rgb: np.ndarray) -> np.ndarray:
    """RGB (H, W, 3) -> GBRG Bayer mosaic (H, W): rows G B G B ... / R G R G ..."""
    h, w = rgb.shape[:2]
    mosaic = np.empty((h, w), np.uint8)
    mosaic[0::2, 0::2] = rgb[0::2, 0::2, 1]
    mosaic[0::2, 1::2] = rgb[0::2, 1::2, 2]
    mosaic[1::2, 0::2] = rgb[1::2, 0::2, 0]
    mosaic[1::2, 1::2] = rgb[1::2, 1::2, 1]
    return mosaic


def robotcar_truth(s: np.ndarray, lateral: float, yaw_offset_deg: float) -> np.ndarray:
    """(N, 6) northing, easting, down, roll, pitch, yaw along a route heading east at 2 m per frame index s."""
    north = ORIGIN_EN[1] + lateral + 0.2 * np.sin(s / 7.0)
    east = ORIGIN_EN[0] + 2.0 * s
    down = -60.0 + 0.01 * s
    yaw = np.radians(90.0 + yaw_offset_deg) + 0.03 * np.sin(s / 5.0)
    return np.stack([north, east, down, 0.01 * np.sin(s / 3.0), 0.02 * np.cos(s / 4.0), yaw], axis=1)


def make_robotcar_run(run: Path, corridor: Path, part: str, t0_us: int, lateral: float = 0.0,
                      yaw_offset_deg: float = 0.0, count: int | None = None, rtk: bool = False) -> list[int]:
    """A RobotCar-style run directory from the corridor ``part`` images (16 Hz); returns the image timestamps."""
    images = sorted((corridor / part).glob("*.jpg"))[:count]
    centre = run / "stereo" / "centre"
    centre.mkdir(parents=True)
    stamps = [t0_us + 62_500 * i for i in range(len(images))]
    for t, path in zip(stamps, images, strict=True):
        cv2.imwrite(str(centre / f"{t}.png"), gbrg_mosaic(load_rgb(path)))
    (run / "stereo.timestamps").write_text("".join(f"{t} 1\n" for t in stamps))
    (run / "gps").mkdir()
    ins_t = np.arange(stamps[0] - 100_000, stamps[-1] + 100_000, 20_000)  # 50 Hz
    s = (ins_t - t0_us) / 62_500.0
    truth = robotcar_truth(s, lateral, yaw_offset_deg)
    with open(run / "gps" / "ins.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", "ins_status", "latitude", "longitude", "altitude", "northing", "easting", "down",
                    "utm_zone", "velocity_north", "velocity_east", "velocity_down", "roll", "pitch", "yaw"])
        for t, (n, e, d, r, p, y) in zip(ins_t.tolist(), truth.tolist(), strict=True):
            w.writerow([t, "INS_SOLUTION_GOOD", 51.76, -1.26, 110.0, n, e, d, "30U", 0.0, 32.0, 0.0, r, p, y])
    if rtk:  # RTK: same trajectory, no ins_status column, 0.1 m further north (to tell the files apart)
        with open(run / "gps" / "rtk.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["timestamp", "latitude", "longitude", "altitude", "northing", "easting", "down", "utm_zone",
                        "velocity_north", "velocity_east", "velocity_down", "roll", "pitch", "yaw"])
            for t, (n, e, d, r, p, y) in zip(ins_t.tolist(), truth.tolist(), strict=True):
                w.writerow([t, 51.76, -1.26, 110.0, n + 0.1, e, d, "30U", 0.0, 32.0, 0.0, r, p, y])
    return stamps


# ---- MSLS ---------------------------------------------------------------------------------------------------
def msls_key(city: str, part: str, i: int) -> str:
    return hashlib.sha1(f"{city}/{part}/{i}".encode()).hexdigest()[:22]


def make_msls_traversal(folder: Path, city: str, part: str, images: list[Path], easting0: float,
                        captured0_ms: int, seq_len: int = 30, pano: tuple[int, ...] = (),
                        gps: bool = True) -> list[str]:
    """One MSLS query/database folder: images named by key, seq_info.csv (+ raw.csv, postprocessed.csv)."""
    (folder / "images").mkdir(parents=True)
    keys = [msls_key(city, part, i) for i in range(len(images))]
    for key, path in zip(keys, images, strict=True):
        (folder / "images" / f"{key}.jpg").write_bytes(path.read_bytes())
    with open(folder / "seq_info.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["", "key", "sequence_key", "frame_number"])
        for i, key in enumerate(keys):
            w.writerow([i, key, f"{city}-{part}-seq{i // seq_len}", i % seq_len])
    if gps:
        with open(folder / "raw.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["", "key", "lon", "lat", "ca", "captured_at", "pano"])
            for i, key in enumerate(keys):
                w.writerow([i, key, 12.5, 55.6, 90.0, captured0_ms + 500 * i, i in pano])
        with open(folder / "postprocessed.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["", "key", "utm", "easting", "northing", "night", "control_panel", "view_direction",
                        "unique_cluster"])
            for i, key in enumerate(keys):
                e = easting0 + 12.5 * i
                w.writerow([i, key, f"({e}, 6160000.0)", e, 6160000.0, False, False, "Forward", i])
    return keys


def make_msls_root(root: Path, corridor: Path) -> Path:
    refs = sorted((corridor / "ref").glob("*.jpg"))
    queries = sorted((corridor / "query").glob("*.jpg"))
    city = root / "train_val" / "corridor"
    make_msls_traversal(city / "database", "corridor", "database", refs, 350000.0, 1_500_000_000_000)
    make_msls_traversal(city / "query", "corridor", "query", queries, 350000.0, 1_600_000_000_000)
    pano = root / "train_val" / "panotown"
    make_msls_traversal(pano / "database", "panotown", "database", refs[:8], 350000.0, 1_500_000_000_000, pano=(3,))
    make_msls_traversal(pano / "query", "panotown", "query", queries[:8], 350000.0, 1_600_000_000_000)
    test_city = root / "test" / "kampala"
    make_msls_traversal(test_city / "database", "kampala", "database", refs[:5], 0.0, 0, gps=False)
    make_msls_traversal(test_city / "query", "kampala", "query", queries[:5], 0.0, 0, gps=False)
    return root
