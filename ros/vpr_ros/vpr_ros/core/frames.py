"""Frames as the pipeline sees them: a table of per-frame metadata, and a source that loads their images.

Kept apart from the map builder and the reference map so that reading an image folder or a bag imports
neither FAISS nor ONNX Runtime.
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vpr_ros.errors import MapError

FRAME_COLUMNS = ("id", "name", "source", "stamp", "x", "y", "z", "qx", "qy", "qz", "qw")
#: Members of a ``frames.npz`` (:meth:`FrameTable.to_columns`).
FRAME_NPZ_COLUMNS = ("ids", "stamps", "positions", "orientations", "names", "sources")


@dataclass
class FrameTable:
    """Per-frame metadata. Orientation is a unit quaternion (x, y, z, w); NaN rows mean unknown.

    Shape:
        ids: (N,) int64; stamps: (N,) float64 seconds; positions: (N, 3); orientations: (N, 4).
    """

    ids: np.ndarray
    names: list[str]
    sources: list[str]
    stamps: np.ndarray
    positions: np.ndarray
    orientations: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.ids)
        self.ids = np.asarray(self.ids, dtype=np.int64)
        self.stamps = np.asarray(self.stamps, dtype=np.float64).reshape(n)
        self.positions = np.asarray(self.positions, dtype=np.float64).reshape(n, 3)
        self.orientations = np.asarray(self.orientations, dtype=np.float64).reshape(n, 4)
        if len(self.names) != n or len(self.sources) != n:
            raise ValueError(f"frame table columns disagree in length ({n} ids, {len(self.names)} names, "
                             f"{len(self.sources)} sources)")

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @classmethod
    def empty(cls) -> FrameTable:
        return cls(np.zeros(0, np.int64), [], [], np.zeros(0), np.zeros((0, 3)), np.zeros((0, 4)))

    def take(self, rows: np.ndarray, ids: np.ndarray | None = None) -> FrameTable:
        """The frames at ``rows``, in that order, keeping their ids unless new ``ids`` are given."""
        rows = np.asarray(rows, dtype=np.int64)
        return FrameTable(self.ids[rows] if ids is None else ids, [self.names[i] for i in rows],
                          [self.sources[i] for i in rows], self.stamps[rows], self.positions[rows],
                          self.orientations[rows])

    @classmethod
    def concatenate(cls, tables: list[FrameTable]) -> FrameTable:
        return cls(np.concatenate([t.ids for t in tables]), [n for t in tables for n in t.names],
                   [s for t in tables for s in t.sources], np.concatenate([t.stamps for t in tables]),
                   np.concatenate([t.positions for t in tables]),
                   np.concatenate([t.orientations for t in tables]))

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(FRAME_COLUMNS)
        for i in range(len(self)):
            writer.writerow([int(self.ids[i]), self.names[i], self.sources[i], repr(float(self.stamps[i])),
                             *(repr(float(v)) for v in self.positions[i]),
                             *(repr(float(v)) for v in self.orientations[i])])
        return buf.getvalue()

    # ---- binary column table (maps of format version 2) -----------------------------------------------------
    def to_columns(self) -> bytes:
        """The table as a ``frames.npz`` (uncompressed, byte-for-byte reproducible): numeric columns as arrays, names
        and sources as UTF-8 joined by NUL (which no file name or bag source holds). A million frames read back in
        well under a second (:meth:`from_columns`), where parsing the same text table takes tens."""
        for what, strings in (("name", self.names), ("source", self.sources)):
            if any("\0" in s for s in strings):
                raise ValueError(f"a frame {what} holds a NUL character")
        columns = {"ids": self.ids, "stamps": self.stamps, "positions": self.positions,
                   "orientations": self.orientations,
                   "names": np.frombuffer("\0".join(self.names).encode("utf-8"), dtype=np.uint8),
                   "sources": np.frombuffer("\0".join(self.sources).encode("utf-8"), dtype=np.uint8)}
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
            for name, column in columns.items():
                member = io.BytesIO()
                np.lib.format.write_array(member, np.ascontiguousarray(column), allow_pickle=False)
                archive.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), member.getvalue())
        return buf.getvalue()

    @classmethod
    def from_columns(cls, data: bytes, where: str) -> FrameTable:
        """The table :meth:`to_columns` wrote; MapError naming ``where`` when a column is missing or inconsistent."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                columns = {name: npz[name] for name in FRAME_NPZ_COLUMNS}
            n = len(columns["ids"])
            names = bytes(columns["names"]).decode("utf-8").split("\0") if n else []
            sources = bytes(columns["sources"]).decode("utf-8").split("\0") if n else []
            return cls(columns["ids"], names, sources, columns["stamps"], columns["positions"],
                       columns["orientations"])
        except (KeyError, ValueError, OSError, UnicodeDecodeError, zipfile.BadZipFile) as exc:
            raise MapError(f"{where}: not a frame table ({type(exc).__name__}: {exc})") from None

    @classmethod
    def from_csv(cls, text: str, where: str) -> FrameTable:
        """The text table of maps of format version 1 (:meth:`to_csv`)."""
        return cls._from_quoted_csv(text, where)

    @classmethod
    def _from_quoted_csv(cls, text: str, where: str) -> FrameTable:
        rows = list(csv.reader(io.StringIO(text)))
        if not rows or tuple(rows[0]) != FRAME_COLUMNS:
            raise MapError(f"{where}: expected header {','.join(FRAME_COLUMNS)}")
        body = rows[1:]
        try:
            ids = np.array([int(r[0]) for r in body], dtype=np.int64)
            nums = np.array([[float(v) for v in r[3:]] for r in body], dtype=np.float64).reshape(len(body), 8)
        except (ValueError, IndexError) as exc:
            raise MapError(f"{where}: malformed row ({exc})") from None
        return cls(ids, [r[1] for r in body], [r[2] for r in body], nums[:, 0], nums[:, 1:4], nums[:, 4:8])


@dataclass
class FrameSource:
    """Frames to map: metadata plus a loader of frame ``i`` as RGB uint8 (H, W, 3)."""

    frames: FrameTable
    load_image: Callable[[int], np.ndarray]

    def __len__(self) -> int:
        return len(self.frames)

    def take(self, rows: np.ndarray, ids: np.ndarray | None = None) -> FrameSource:
        """The frames at ``rows`` (see :meth:`FrameTable.take`), loading their images from this source."""
        rows = np.asarray(rows, dtype=np.int64)
        return FrameSource(self.frames.take(rows, ids), lambda i: self.load_image(int(rows[i])))
