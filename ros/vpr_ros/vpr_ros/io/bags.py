"""Recordings as frame sources: ROS 2 bags (sqlite3, MCAP) and ROS 1 bags, read with ``rosbags`` (no ROS needed).

A bag is given as a ROS 2 bag directory (with ``metadata.yaml``), its ``metadata.yaml``, a single ``.db3`` /
``.mcap`` storage file, or a ROS 1 ``.bag`` file. Images come from a ``sensor_msgs/Image`` or
``sensor_msgs/CompressedImage`` topic; each frame is stamped with its header stamp (the camera's time; the log
time where the header stamp is zero). Poses come from a pose topic, a /tf chain or a pose file
(:mod:`vpr_ros.io.bag_poses`) and are interpolated to the image stamps.

Frames are read lazily: the loader walks forward through the bag and only seeks (by log time) when asked for an
earlier frame, so map building streams a bag of any size in two passes (vocabulary sample, then all frames).

Every failure names the bag and what is wrong: a corrupt or truncated file, a missing topic (listing the topics
the bag has), a topic of the wrong message type (naming the accepted types), an undecodable image.

Example (a bag of three corridor frames 1 m apart, keeping frames at least 2 m apart):
    >>> import tempfile
    >>> from vpr_ros.core.image import load_rgb
    >>> from vpr_ros.core.paths import resolve_path
    >>> from vpr_ros.io.bag_poses import PoseSpec
    >>> from vpr_ros.io.bag_writer import BagWriter
    >>> tmp = tempfile.TemporaryDirectory()
    >>> with BagWriter(Path(tmp.name) / "run1", storage="mcap") as writer:
    ...     for i in range(3):
    ...         rgb = load_rgb(resolve_path(f"data/corridor/ref/{i:07d}.jpg"))
    ...         writer.write_image("/camera/image_raw", 12.5 + i, rgb)
    ...         writer.write_pose("/odom", 12.5 + i, [float(i), 0.0, 0.0], [0, 0, 0, 1], kind="odometry")
    >>> with bag_frame_source(Path(tmp.name) / "run1", "/camera/image_raw", PoseSpec(topic="/odom"),
    ...                       FrameSelection(min_distance=2.0), progress=False) as source:
    ...     print(len(source), source.frames.positions[:, 0].tolist(), source.load_image(1).shape)
    2 [0.0, 2.0] (120, 160, 3)
    >>> tmp.cleanup()

``source`` is what :func:`vpr_ros.core.map_builder.build_map` maps.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from vpr_ros.core.frames import FrameSource, FrameTable
from vpr_ros.core.image import DEFAULT_MAX_PIXELS, load_rgb
from vpr_ros.io.bag_poses import PoseSpec, poses_at
from vpr_ros.io.bag_reader import Bag, BagError, bag_kind, header_stamp_ns
from vpr_ros.io.image_messages import ImageDecodeError, compressed_msg_to_rgb, image_msg_to_rgb

log = logging.getLogger(__name__)

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = (IMAGE, COMPRESSED_IMAGE)
SOURCE_PREFIX = "rosbag://"


# ---- image topics ----------------------------------------------------------------------------------
@dataclass
class ImageTopicIndex:
    """Every message of one image topic, in bag order.

    Shape:
        log_times: (N,) int64 ns (the bag's receive time); stamps_ns: (N,) int64 header stamps (the log time
        where the header stamp is zero).
    """

    bag: Path
    topic: str
    msgtype: str
    log_times: np.ndarray
    stamps_ns: np.ndarray

    def __len__(self) -> int:
        return int(self.log_times.shape[0])

    @property
    def stamps(self) -> np.ndarray:
        return self.stamps_ns.astype(np.float64) * 1e-9


def index_image_topic(bag: Bag, topic: str, progress: bool = True) -> ImageTopicIndex:
    """Log times and header stamps of every image on ``topic`` (reads the topic once, decodes nothing)."""
    conns = bag.connections(topic, IMAGE_TYPES, "image topic")
    msgtypes = {c.msgtype for c in conns}
    if len(msgtypes) > 1:
        raise BagError(f"{bag.path}: topic {topic!r} mixes message types {sorted(msgtypes)}")
    msgtype = msgtypes.pop()
    total = sum(int(getattr(c, "msgcount", 0)) for c in conns) or None
    log_times, stamps = [], []
    for conn, t, raw in tqdm(bag.messages(conns), total=total, desc=f"index {topic}", unit="msg",
                             disable=not progress):
        stamp = header_stamp_ns(raw, bag.ros1)
        if stamp is None:
            stamp = _stamp_ns(bag.deserialize(raw, conn.msgtype, topic).header.stamp)
        log_times.append(t)
        stamps.append(stamp if stamp > 0 else t)
    if not log_times:
        raise BagError(f"{bag.path}: topic {topic!r} holds no messages")
    return ImageTopicIndex(bag.path, topic, msgtype, np.array(log_times, np.int64), np.array(stamps, np.int64))


def _stamp_ns(stamp: Any) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def decode_image(bag: Bag, msgtype: str, raw: Any, topic: str, log_time: int,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """RGB uint8 (H, W, 3) of one serialised Image / CompressedImage; BagError naming the message if it fails
    (an image declaring more than ``max_pixels`` pixels is refused before decoding)."""
    msg = bag.deserialize(raw, msgtype, topic)
    try:
        return (compressed_msg_to_rgb(msg, max_pixels) if msgtype == COMPRESSED_IMAGE
                else image_msg_to_rgb(msg, max_pixels))
    except ImageDecodeError as exc:
        raise BagError(f"{bag.path}: image on {topic} at log time {log_time * 1e-9:.6f} s cannot be decoded: "
                       f"{exc}") from exc


class BagImageLoader:
    """Loads frame ``i`` (= message ``ordinals[i]`` of the topic) as RGB; reads forward, seeks only backwards.

    Owns its own open bag, so it can outlive the reader used for indexing; call :meth:`close` (or use the
    :class:`BagFrameSource` as a context manager) when done.
    """

    def __init__(self, index: ImageTopicIndex, ordinals: np.ndarray, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.index = index
        self.ordinals = np.asarray(ordinals, dtype=np.int64)
        self.max_pixels = max_pixels
        self._bag: Bag | None = None
        self._conns: list[Any] = []
        self._it: Iterator[tuple[Any, int, Any]] | None = None
        self._next_ordinal = 0

    def _open(self) -> Bag:
        if self._bag is None:
            self._bag = Bag(self.index.bag).open()
            self._conns = self._bag.connections(self.index.topic, IMAGE_TYPES, "image topic")
        return self._bag

    def _seek(self, ordinal: int) -> None:
        """Restart reading at the first message that shares the log time of message ``ordinal``."""
        bag = self._open()
        # Messages come in log-time order (rosbags merges connections by log time), so log_times is sorted and
        # the messages before the first one at time t are exactly those with an earlier log time.
        t = int(self.index.log_times[ordinal])
        if self._it is not None:
            self._it.close()  # type: ignore[attr-defined]
        self._it = bag.messages(self._conns, start_ns=t)
        self._next_ordinal = int(np.searchsorted(self.index.log_times, t, side="left"))

    def __call__(self, i: int) -> np.ndarray:
        ordinal = int(self.ordinals[i])
        if self._it is None or ordinal < self._next_ordinal:
            self._seek(ordinal)
        bag = self._open()
        assert self._it is not None
        for conn, t, raw in self._it:
            current = self._next_ordinal
            self._next_ordinal += 1
            if current == ordinal:
                return decode_image(bag, conn.msgtype, raw, self.index.topic, t, self.max_pixels)
        raise BagError(f"{self.index.bag}: topic {self.index.topic} ended before message {ordinal}; the bag changed "
                       "since it was indexed")

    def close(self) -> None:
        if self._it is not None:
            self._it.close()  # type: ignore[attr-defined]
            self._it = None
        if self._bag is not None:
            self._bag.close()
            self._bag = None


def iter_serialized_frames(index: ImageTopicIndex, ordinals: np.ndarray) -> Iterator[tuple[int, int, bytes]]:
    """(frame number, header stamp ns, ROS 2 CDR bytes) of the selected messages, in order, without decoding them.

    For replaying a bag onto a live topic: the bytes are published unchanged (ROS 1 messages converted to CDR).
    """
    wanted = {int(o): k for k, o in enumerate(np.asarray(ordinals).tolist())}
    last = max(wanted) if wanted else -1
    with Bag(index.bag) as bag:
        conns = bag.connections(index.topic, IMAGE_TYPES, "image topic")
        for ordinal, (conn, _, raw) in enumerate(bag.messages(conns)):
            if ordinal in wanted:
                k = wanted[ordinal]
                yield k, int(index.stamps_ns[ordinal]), bag.to_cdr(raw, conn.msgtype)
            if ordinal >= last:
                return


def frame_source_string(bag: Path, topic: str, log_time_ns: int) -> str:
    """How a map records where a bag frame came from: ``rosbag://<bag>#<topic>@<log time ns>``."""
    return f"{SOURCE_PREFIX}{Path(bag).resolve()}#{topic}@{int(log_time_ns)}"


def load_frame_source(source: str) -> np.ndarray | None:
    """RGB image of a map frame's ``source`` (an image file or a bag message); None if it is gone."""
    if not source.startswith(SOURCE_PREFIX):
        return load_rgb(source) if Path(source).is_file() else None
    rest = source[len(SOURCE_PREFIX):]
    bag_path, _, topic_time = rest.rpartition("#")
    topic, _, t = topic_time.rpartition("@")
    if not Path(bag_path).exists():
        return None
    with Bag(bag_path) as bag:
        conns = bag.connections(topic, IMAGE_TYPES, "image topic")
        for conn, log_time, raw in bag.messages(conns, start_ns=int(t)):
            if log_time == int(t):
                return decode_image(bag, conn.msgtype, raw, topic, log_time)
            break
    return None


# ---- frame selection -------------------------------------------------------------------------------
@dataclass(frozen=True)
class FrameSelection:
    """Which image messages become frames: a time window, then greedy spacing by time and by distance."""

    min_interval: float = 0.0
    min_distance: float = 0.0
    start: float | None = None
    end: float | None = None

    def describe(self) -> dict[str, float | None]:
        return {"min_interval_s": self.min_interval, "min_distance_m": self.min_distance,
                "start_s": self.start, "end_s": self.end}


def select_frames(stamps: np.ndarray, positions: np.ndarray, selection: FrameSelection) -> np.ndarray:
    """Indices of the frames to keep, in order.

    The window ``[start, end)`` is in seconds after the first stamp. Then a frame is kept when at least
    ``min_interval`` seconds and ``min_distance`` (pose units) separate it from the last kept frame; frames without
    a position never pass a distance test.

    Shape:
        stamps: (N,) seconds; positions: (N, 3) (NaN = unknown); returns (M,) int64.
    """
    stamps = np.asarray(stamps, dtype=np.float64)
    n = len(stamps)
    if n == 0:
        return np.zeros(0, np.int64)
    rel = stamps - stamps.min()
    window = np.ones(n, dtype=bool)
    if selection.start is not None:
        window &= rel >= selection.start
    if selection.end is not None:
        window &= rel < selection.end
    candidates = np.flatnonzero(window)
    if selection.min_interval <= 0 and selection.min_distance <= 0:
        return candidates.astype(np.int64)
    keep: list[int] = []
    last_t, last_p = -np.inf, None
    # Greedy spacing is sequential by nature; this loops over frame metadata only (no pixels).
    for i in candidates:
        if stamps[i] - last_t < selection.min_interval:
            continue
        if selection.min_distance > 0:
            p = positions[i]
            if np.isnan(p).any():
                continue
            if last_p is not None and np.linalg.norm(p - last_p) < selection.min_distance:
                continue
            last_p = p
        keep.append(int(i))
        last_t = stamps[i]
    return np.array(keep, dtype=np.int64)


# ---- the frame source --------------------------------------------------------------------------------
@dataclass
class BagFrameSource(FrameSource):
    """Frames of one image topic of a bag, with poses; a context manager that closes the bag reader."""

    loader: BagImageLoader | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:
        if self.loader is not None:
            self.loader.close()

    def __enter__(self) -> BagFrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bag_frame_source(bag_path: str | Path, image_topic: str, poses: PoseSpec | None = None,
                     selection: FrameSelection | None = None, progress: bool = True, skip_damaged: bool = False,
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> BagFrameSource:
    """Frames from ``image_topic`` of a bag, with poses from ``poses`` (a :class:`vpr_ros.io.bag_poses.PoseSpec`).

    Frames without a pose (outside the pose stream, or in a gap) are skipped when a pose source is given.
    A damaged bag whose topics read short is an error (:class:`vpr_ros.io.bag_reader.DamagedBagError`) unless
    ``skip_damaged``, which goes on with the readable messages and records the counts in ``info``.
    Images declaring more than ``max_pixels`` pixels are refused before decoding.
    ``info`` records the bag, topic, pose source, GNSS origin (if any) and counts, for map provenance.
    """
    selection = selection or FrameSelection()
    poses = poses or PoseSpec()
    with Bag(bag_path, skip_damaged=skip_damaged) as bag:
        index = index_image_topic(bag, image_topic, progress=progress)
        stamps = index.stamps
        result = poses_at(bag, poses, stamps, progress=progress)
        damaged = dict(bag.damaged)
    n = len(index)
    keep_pose = result.valid if poses.given else np.ones(n, dtype=bool)
    if poses.given and not keep_pose.all():
        log.warning("%d of %d images on %s have no pose (outside the %s stream or in a gap) and are skipped",
                    int((~keep_pose).sum()), n, image_topic, result.description)
    with_pose = np.flatnonzero(keep_pose)
    picked = with_pose[select_frames(stamps[with_pose], result.positions[with_pose], selection)]
    if len(picked) == 0:
        raise BagError(f"{index.bag}: no frames left on {image_topic} after pose matching and frame selection "
                       f"({n} images, {len(with_pose)} with a pose)")
    stamps_ns = index.stamps_ns[picked]
    frames = FrameTable(ids=np.arange(len(picked)),
                        names=[f"{s // 1_000_000_000}.{s % 1_000_000_000:09d}" for s in stamps_ns.tolist()],
                        sources=[frame_source_string(index.bag, image_topic, t) for t in index.log_times[picked]],
                        stamps=stamps[picked], positions=result.positions[picked],
                        orientations=result.orientations[picked])
    info = {"bag": str(index.bag), "bag_format": bag_kind(index.bag), "image_topic": image_topic,
            "image_type": index.msgtype, "images_in_topic": n, "images_with_pose": len(with_pose),
            "frames": len(picked), "poses": result.description, "selection": selection.describe()}
    if result.origin is not None:
        info["geodetic_origin"] = result.origin.to_dict()
    if damaged:
        info["damaged_topics"] = {topic: {"declared": declared, "read": read, "skipped": declared - read}
                                  for topic, (declared, read) in damaged.items()}
    log.info("%s: %d of %d images on %s selected as frames (%s)", index.bag, len(picked), n, image_topic,
             result.description)
    loader = BagImageLoader(index, picked, max_pixels)
    return BagFrameSource(frames=frames, load_image=loader, loader=loader, info=info)
