"""Opening a bag of any format ``rosbags`` reads (ROS 2 sqlite3 / MCAP directory or file, ROS 1 ``.bag``),
with every failure translated into one :class:`BagError` that names the bag.

A damaged bag can also read *short* without any error: rosbags stops reading an MCAP chunk at the first record
whose length is garbage and silently drops the rest of the chunk (overwriting 1 KiB in a 40-frame bag lost 31
of its 40 images). So a full pass over a topic compares the messages read with the count the bag declares
(ROS 2: metadata.yaml; a bare MCAP file: its summary statistics; ROS 1: its index) and fails with a
:class:`DamagedBagError` naming the first unreadable message, or, when the caller allows it
(``--skip-damaged``), logs a warning with the counts and goes on with what was read.
"""

from __future__ import annotations

import logging
import struct
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vpr_ros.errors import InputError

log = logging.getLogger(__name__)

BAG_KINDS = {".bag": "ROS 1", ".db3": "ROS 2 (sqlite3)", ".mcap": "ROS 2 (MCAP)"}


class BagError(InputError):
    """A bag cannot be read, lacks a topic, or holds the wrong message type on it; the message says which."""


class DamagedBagError(BagError):
    """Fewer messages of a topic can be read than the bag's index or metadata declares."""


_MCAP_MESSAGE_INDEX = 0x07
# Chunk record: opcode (1), record length (8), message start / end time (8 + 8), uncompressed size (8), CRC (4),
# compression string length (4) + the string, compressed size (8); then the records.
_MCAP_CHUNK_DATA = 1 + 8 + 8 + 8 + 8 + 4 + 4 + 8


def mcap_declared_messages(storage: Any, topic: str) -> list[tuple[int, str]] | None:
    """(log time ns, where) of every message of ``topic`` that an MCAP file's message indexes declare, in file
    order; None if there are none or they cannot be read.

    ``storage`` is rosbags' ``McapReader`` (it parses the chunk indexes, not the message indexes). ``where`` is
    the message's byte offset in the file for uncompressed chunks, or its offset inside a compressed chunk.
    """
    chunks = getattr(storage, "chunks", None)
    channels = getattr(storage, "channels", None)
    if not chunks or channels is None:
        return None
    wanted = {cid for cid, channel in channels.items() if channel.topic == topic}
    declared: list[tuple[tuple[int, int], int, str]] = []
    with open(storage.path, "rb") as fh:
        for chunk in chunks:
            data_start = chunk.chunk_start_offset + _MCAP_CHUNK_DATA + len(chunk.compression)
            for cid, index_offset in chunk.message_index_offsets.items():
                if cid not in wanted:
                    continue
                fh.seek(index_offset)
                head = fh.read(15)
                if len(head) < 15 or head[0] != _MCAP_MESSAGE_INDEX:
                    return None
                record_length, _, entries_length = struct.unpack_from("<QHI", head, 1)
                if entries_length % 16 or entries_length + 6 > record_length:
                    return None
                for log_time, offset in struct.iter_unpack("<QQ", fh.read(entries_length)):
                    where = (f"byte {offset} of the {chunk.compression} chunk at byte offset "
                             f"{chunk.chunk_start_offset}" if chunk.compression else
                             f"byte offset {data_start + offset}")
                    declared.append(((chunk.chunk_start_offset, offset), log_time, where))
    declared.sort(key=lambda d: d[0])
    return [(log_time, where) for _, log_time, where in declared] or None


def resolve_bag_path(path: str | Path) -> Path:
    """The path rosbags opens for ``path``: a ROS 2 bag directory, a .db3/.mcap file or a ROS 1 .bag file."""
    path = Path(path)
    if not path.exists():
        raise BagError(f"bag {path} does not exist")
    if path.is_file() and path.name == "metadata.yaml":
        path = path.parent
    if path.is_dir():
        if (path / "metadata.yaml").is_file():
            return path
        storage = sorted(p for p in path.iterdir() if p.suffix in (".db3", ".mcap"))
        if len(storage) == 1:
            return storage[0]
        raise BagError(f"{path}: not a bag (a ROS 2 bag directory holds metadata.yaml and .db3 or .mcap files)")
    if path.suffix not in BAG_KINDS:
        raise BagError(f"{path}: not a bag (expected a ROS 2 bag directory, a .db3 or .mcap file, or a ROS 1 .bag "
                       "file)")
    return path


def bag_kind(path: Path) -> str:
    """Human-readable format of a resolved bag path."""
    if path.is_dir():
        suffixes = {p.suffix for p in path.iterdir()}
        return BAG_KINDS[".mcap"] if ".mcap" in suffixes else BAG_KINDS[".db3"]
    return BAG_KINDS[path.suffix]


def header_stamp_ns(raw: bytes | memoryview, ros1: bool) -> int | None:
    """Header stamp of a serialised message whose first field is a std_msgs/Header (Image, CompressedImage...).

    ROS 1 serialisation starts with uint32 seq, uint32 sec, uint32 nsec (little endian). ROS 2 CDR starts with a
    4-byte encapsulation header (second byte 1 = little endian, 0 = big endian), then int32 sec, uint32 nanosec.
    Returns None for an encapsulation this does not know (the caller then deserialises the message).
    """
    if len(raw) < 12:
        return None
    if ros1:
        _, sec, nsec = struct.unpack_from("<III", raw, 0)
    else:
        if raw[0] != 0 or raw[1] not in (0, 1):
            return None
        sec, nsec = struct.unpack_from("<iI" if raw[1] == 1 else ">iI", raw, 4)
    return int(sec) * 1_000_000_000 + int(nsec)


class Bag:
    """An open bag (any format rosbags reads) with errors translated into :class:`BagError`.

    Example (a bag of two corridor frames):
        >>> import tempfile
        >>> from vpr_ros.core.image import load_rgb
        >>> from vpr_ros.core.paths import resolve_path
        >>> from vpr_ros.io.bag_writer import BagWriter
        >>> tmp = tempfile.TemporaryDirectory()
        >>> rgb = load_rgb(resolve_path("data/corridor/ref/0000000.jpg"))
        >>> with BagWriter(Path(tmp.name) / "run1", storage="sqlite3") as writer:
        ...     writer.write_image("/camera/image_raw", 12.5, rgb)
        ...     writer.write_image("/camera/image_raw", 13.5, rgb)
        >>> with Bag(Path(tmp.name) / "run1") as bag:
        ...     print(bag.describe_topics())
        topics in this bag: /camera/image_raw (sensor_msgs/msg/Image, 2 msgs)
        >>> tmp.cleanup()
    """

    def __init__(self, path: str | Path, skip_damaged: bool = False) -> None:
        """``skip_damaged``: a topic that reads short (see the module docstring) is a warning, not an error."""
        self.path = resolve_bag_path(path)
        self.kind = bag_kind(self.path)
        self.ros1 = self.path.suffix == ".bag"
        self.skip_damaged = skip_damaged
        #: topic -> (declared, read) message counts of the topics that read short (with ``skip_damaged``).
        self.damaged: dict[str, tuple[int, int]] = {}
        self._reader: Any = None

    # ---- lifecycle -------------------------------------------------------------------------------
    def open(self) -> Bag:
        from rosbags.highlevel import AnyReader
        from rosbags.typesys import Stores, get_typestore

        default = get_typestore(Stores.ROS1_NOETIC if self.ros1 else Stores.ROS2_KILTED)
        with self.errors("open"):
            reader = AnyReader([self.path], default_typestore=default)
            reader.open()
        self._reader = reader
        return self

    def close(self) -> None:
        if self._reader is not None:
            reader, self._reader = self._reader, None
            try:
                reader.close()
            except Exception:
                log.debug("closing %s failed", self.path, exc_info=True)

    def __enter__(self) -> Bag:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def errors(self, doing: str) -> Iterator[None]:
        """Turn whatever the storage layer raises (sqlite, MCAP, ROS 1 records, CDR) into a BagError naming the bag."""
        try:
            yield
        except (BagError, KeyboardInterrupt):
            raise
        except MemoryError:
            # A damaged length field asks the storage layer for an absurd allocation: that is the bag's fault.
            raise BagError(f"{self.path}: cannot {doing} this {self.kind} bag: a record declares a size that cannot "
                           "be allocated (corrupt length field). The file is corrupt or truncated, or not a bag") \
                from None
        except Exception as exc:
            hint = " (a ROS 1 bag without its index is truncated or still being recorded; `rosbag reindex` " \
                   "repairs it)" if self.ros1 and "index" in str(exc).lower() else ""
            # One line: storage errors can quote whole message definitions.
            detail = " ".join(str(exc).split())[:200].rstrip(". ")
            raise BagError(f"{self.path}: cannot {doing} this {self.kind} bag: {type(exc).__name__}: {detail}{hint}. "
                           "The file is corrupt or truncated, or not a bag") from exc

    @property
    def reader(self) -> Any:
        if self._reader is None:
            raise RuntimeError("bag is not open")
        return self._reader

    # ---- topics ----------------------------------------------------------------------------------
    def topics(self) -> dict[str, tuple[str, int]]:
        """Topic -> (message type, message count)."""
        out: dict[str, tuple[str, int]] = {}
        for conn in self.reader.connections:
            msgtype, count = out.get(conn.topic, (conn.msgtype, 0))
            out[conn.topic] = (msgtype, count + int(getattr(conn, "msgcount", 0)))
        return out

    def describe_topics(self) -> str:
        topics = self.topics()
        if not topics:
            return "the bag has no topics"
        return "topics in this bag: " + ", ".join(f"{t} ({m}, {n} msgs)" for t, (m, n) in sorted(topics.items()))

    def connections(self, topic: str, accepted: Sequence[str], role: str) -> list[Any]:
        """Connections of ``topic``; BagError if it is missing or of a type not in ``accepted``."""
        conns = [c for c in self.reader.connections if c.topic == topic]
        if not conns:
            raise BagError(f"{self.path}: no topic {topic!r} ({role}); {self.describe_topics()}")
        wrong = sorted({c.msgtype for c in conns if c.msgtype not in accepted})
        if wrong:
            raise BagError(f"{self.path}: topic {topic!r} has message type {', '.join(wrong)}, but the {role} must be "
                           f"{' or '.join(accepted)}")
        return conns

    def messages(self, connections: Sequence[Any], start_ns: int | None = None) -> Iterator[tuple[Any, int, Any]]:
        """(connection, log time ns, raw bytes) in log-time order, errors translated.

        A full pass (no ``start_ns``) read to its end checks that every declared message was read
        (:meth:`check_complete`).
        """
        read_times: dict[str, list[int]] = {}
        with self.errors("read messages of"):
            it = self.reader.messages(connections=list(connections), start=start_ns)
        while True:
            with self.errors("read messages of"):
                try:
                    item = next(it)
                except StopIteration:
                    break
            read_times.setdefault(item[0].topic, []).append(int(item[1]))
            yield item
        if start_ns is None:
            self.check_complete(connections, read_times)

    # ---- damage ----------------------------------------------------------------------------------
    def declared_by(self) -> str:
        """Where the declared message counts come from."""
        if self.ros1:
            return "index"
        if self.path.is_dir():
            return "metadata.yaml"
        return "summary statistics" if self.path.suffix == ".mcap" else "messages table"

    def check_complete(self, connections: Sequence[Any], read_times: dict[str, list[int]]) -> None:
        """DamagedBagError (or, with ``skip_damaged``, a warning) for each topic of ``connections`` that read
        fewer messages than the bag declares."""
        declared: dict[str, int] = {}
        for conn in connections:
            declared[conn.topic] = declared.get(conn.topic, 0) + int(getattr(conn, "msgcount", 0))
        for topic, count in sorted(declared.items()):
            times = read_times.get(topic, [])
            if count <= len(times):
                continue
            counts = f"{count} declared, {len(times)} read, {count - len(times)} skipped"
            if self.skip_damaged:
                self.damaged[topic] = (count, len(times))
                log.warning("%s: topic %s is damaged: %s (--skip-damaged: going on with the messages read)",
                            self.path, topic, counts)
                continue
            raise DamagedBagError(
                f"{self.path}: this {self.kind} bag is damaged: topic {topic} has {count} messages by its "
                f"{self.declared_by()} but only {len(times)} can be read; first unreadable: "
                f"{self.first_unreadable(topic, times)}. --skip-damaged goes on with the {len(times)} readable ones")

    def _storages(self) -> list[Any]:
        """rosbags' storage readers of this bag (a ROS 2 bag directory holds one per storage file)."""
        storages = []
        for reader in getattr(self.reader, "readers", []):
            storage = getattr(reader, "storage", None)
            storages.extend(getattr(storage, "storages", None) or [storage])
        return [s for s in storages if s is not None]

    def first_unreadable(self, topic: str, read_times: list[int]) -> str:
        """Where the first declared but unread message of ``topic`` is: a byte offset where the storage's index
        gives one (MCAP), else the log-time span of what could be read."""
        for storage in self._storages():
            try:
                declared = mcap_declared_messages(storage, topic)
            except OSError:
                declared = None
            if not declared:
                continue
            remaining = Counter(read_times)
            for ordinal, (log_time, where) in enumerate(declared):
                if remaining[log_time] > 0:
                    remaining[log_time] -= 1
                    continue
                return f"message {ordinal} of the topic in file order, log time {log_time * 1e-9:.6f} s, at {where}"
        if not read_times:
            return "the first message (no offsets in this storage's index; nothing could be read)"
        return (f"unknown (this storage's index gives no message offsets); the messages read span log times "
                f"{min(read_times) * 1e-9:.6f} .. {max(read_times) * 1e-9:.6f} s")

    def deserialize(self, raw: Any, msgtype: str, topic: str) -> Any:
        with self.errors(f"deserialise a {msgtype} message on {topic} in"):
            return self.reader.deserialize(raw, msgtype)

    def to_cdr(self, raw: Any, msgtype: str) -> bytes:
        """The message as ROS 2 CDR bytes (ROS 1 messages are converted), e.g. to publish it unchanged."""
        if not self.ros1:
            return bytes(raw)
        with self.errors(f"convert a {msgtype} message of"):
            return bytes(self.reader.typestore.ros1_to_cdr(raw, msgtype))
