"""Reference map on disk: frames with poses, global descriptors, FAISS index, aggregation head, extra arrays.

Layout of a map directory (format version :data:`FORMAT_VERSION`)::

    manifest.yaml      format, version, encoder identity, head, index, counts, sha256 + size of every file
    frames.npz         frame table: ids, stamps, positions (N, 3), orientations (N, 4) (NaN where unknown),
                       names and sources (:meth:`FrameTable.to_columns`); format version 1 maps have frames.csv
                       (id,name,source,stamp,x,y,z,qx,qy,qz,qw) instead
    descriptors.npy    (N, P) float32 global descriptors, L2-normalised, memory-mapped on load
    global.faiss       FAISS index over the descriptors (inner product; :mod:`vpr_ros.core.map_index`),
                       its inverted lists / flat codes memory-mapped on load
    head.npz           VLAD head (centroids, soft assignment, PCA-whitening) the descriptors were made with
                       (absent for ``global`` encoders, whose output already is the descriptor)
    arrays/<name>.npy  extra per-map arrays (e.g. the Patch-NetVLAD patch store), memory-mapped on load

Writes are atomic and crash-safe: everything goes into a temporary sibling directory (``.NAME.tmp-*``) that
is fsynced and renamed into place; an existing map is first renamed aside (``.NAME.old-*``) and removed only
once the new one is in place. A kill at any step leaves a complete map, the old or the new: if it struck
between the two renames, the next open or write puts the old map back (:func:`recover_interrupted_swap`),
and leftover temporary directories are removed. Writers hold the map's lock file (``.NAME.lock``,
:func:`map_lock`) for the whole build, append and swap, so two of them cannot race. Only a vpr_ros map is
ever replaced (:func:`check_overwritable`). Loading checks the format version, the manifest's
own ``manifest_sha256``, every manifest value and file name (:mod:`vpr_ros.core.map_manifest`) and the sha256 of
every file, and names the file or field at fault. Each file is read from disk once: the small ones (frames,
head, and the index when it is not memory-mapped) are hashed and parsed from the same bytes, the memory-mapped
ones (descriptors, index, arrays) are hashed in one streamed pass (two threads) and then mapped, so a map's
resident memory stays well below its size.

Format versions: 2 (written now) adds the index's search settings and training record to the manifest's
``index`` section (:class:`~vpr_ros.core.map_index.IndexSpec`); version 1 maps open unchanged, and any write of
one (append, merge, overwrite) writes version 2.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import io
import logging
import os
import re
import shutil
import signal
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from vpr_ros import __version__
from vpr_ros.core import map_index
from vpr_ros.core.files import sha256_file
from vpr_ros.core.frames import FrameTable
from vpr_ros.core.map_index import IndexConfig, IndexSpec, SearchConfig
from vpr_ros.core.map_manifest import (
    MapManifest,
    check_map_data,
    map_file,
    sealed_manifest_text,
    validate_manifest,
)
from vpr_ros.core.vlad import VladHead
from vpr_ros.errors import InputError, MapError

log = logging.getLogger(__name__)

FORMAT_NAME = "vpr_ros.reference_map"
FORMAT_VERSION = 2
#: Versions this vpr_ros opens (see the module doc).
READABLE_FORMAT_VERSIONS = (1, 2)

#: Test hook: ``VPR_ROS_FAULT_AT=<step>`` in the environment makes a map writer kill itself at that step (see
#: :func:`fault_point`). Read once at import, so that unset it costs one string comparison per step.
_FAULT_AT = os.environ.get("VPR_ROS_FAULT_AT")


__all__ = ["IndexConfig", "ReferenceMap", "SearchConfig"]


@dataclass
class ReferenceMap:
    """Frames, global descriptors and search index of one mapped environment.

    Usually built by :func:`vpr_ros.core.map_builder.build_map` and opened with :meth:`load`; in memory, from the
    shipped corridor reference images and a weights-free thumbnail encoder:

    Example:
        >>> from vpr_ros.core.encoders import EncoderConfig, make_encoder
        >>> from vpr_ros.core.image import load_rgb
        >>> from vpr_ros.core.paths import resolve_path
        >>> from vpr_ros.io.images import folder_source
        >>> ref = folder_source(resolve_path("data/corridor/ref"), resolve_path("data/corridor/ref_poses.csv"))
        >>> encoder = make_encoder(EncoderConfig(model="thumbnail:64x32,patch=8"))
        >>> descriptors = encoder.features([ref.load_image(i) for i in range(len(ref))], 32, 64)
        >>> m = ReferenceMap(ref.frames, descriptors, head=None, encoder=encoder.describe(), input_size=(32, 64))
        >>> len(m), m.dim
        (111, 2048)
        >>> query = encoder.features([load_rgb(resolve_path("data/corridor/query/0000042.jpg"))], 32, 64)
        >>> sims, rows = m.search(query, k=3)   # query 42 is at reference 42 +- 2 (ground truth)
        >>> m.frames.names[rows[0, 0]]
        '0000044.jpg'
    """

    frames: FrameTable
    descriptors: np.ndarray
    head: VladHead | None
    encoder: dict[str, Any]
    input_size: tuple[int, int]
    index_config: IndexConfig = field(default_factory=IndexConfig)
    frame_id: str = "map"
    sections: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    #: The index the map holds (set when it is built or loaded; None until then).
    index_spec: IndexSpec | None = None
    _index: Any = field(default=None, repr=False)
    #: The file ``_index`` is memory-mapped from (read-only), None when it is in RAM: adding to it reads the file
    #: into RAM first.
    _index_file: Path | None = field(default=None, repr=False)
    #: Where searches run when :meth:`place_search` was called (:mod:`vpr_ros.core.gpu_index`); None: the CPU.
    _placement: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.descriptors = np.ascontiguousarray(self.descriptors, dtype=np.float32)
        if self.descriptors.ndim != 2 or self.descriptors.shape[0] != len(self.frames):
            raise ValueError(f"descriptors must be ({len(self.frames)}, P), got {self.descriptors.shape}")
        if self.head is not None and self.descriptors.shape[1] != self.head.output_dim:
            raise ValueError(f"descriptor dim {self.descriptors.shape[1]} != head output {self.head.output_dim}")

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def dim(self) -> int:
        return int(self.descriptors.shape[1])

    # ---- search ----------------------------------------------------------------------------------
    @property
    def index(self) -> Any:
        if self._index is None:
            self._index, self.index_spec = map_index.build_index(self.descriptors, self.index_spec or
                                                                 self.index_config)
            self._index_file = None
        return self._index

    def search(self, queries: np.ndarray, k: int,
               settings: SearchConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product (cosine for L2-normalised descriptors).

        ``settings``: search parameters for this call (nprobe, efSearch, refine; zeros = the map's own), see
        :func:`vpr_ros.core.map_index.search`.

        Shape:
            queries: (B, P) float32; returns similarities (B, k') and row indices (B, k'), k' = min(k, N).
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be (B, {self.dim}), got {queries.shape}")
        k = min(int(k), len(self))
        index = self.index
        assert self.index_spec is not None
        return map_index.search(index, self.index_spec, self.descriptors, queries, k, settings, self._placement)

    def place_search(self, device: str) -> str:
        """Search this map on ``device`` (``cpu``, ``cuda`` or ``auto``: a GPU copy of the index when FAISS can
        make one, :func:`vpr_ros.core.gpu_index.place_index`); returns where searches now run (``cpu``,
        ``cuda:0``)."""
        from vpr_ros.core.gpu_index import place_index

        self._placement = place_index(self.index, device)
        return self._placement.device

    def append(self, frames: FrameTable, descriptors: np.ndarray,
               arrays: dict[str, np.ndarray] | None = None, retrain: bool = False) -> None:
        """Add frames (incremental map growth); extra arrays are concatenated along axis 0.

        The new descriptors are added to the map's index as it is, a trained IVF index included (its training
        record keeps the frame count it was trained on); ``retrain`` builds the index afresh at the next save or
        search instead, re-choosing it when it was ``auto`` (the map may have outgrown exact search).
        """
        descriptors = np.ascontiguousarray(descriptors, dtype=np.float32)
        if descriptors.shape != (len(frames), self.dim):
            raise ValueError(f"appended descriptors must be ({len(frames)}, {self.dim}), got {descriptors.shape}")
        clash = np.intersect1d(frames.ids, self.frames.ids)
        if clash.size:
            raise InputError(f"frame ids already in the map: {clash[:5].tolist()}")
        self.frames = FrameTable.concatenate([self.frames, frames])
        self.descriptors = np.concatenate([self.descriptors, descriptors])
        for name, extra in (arrays or {}).items():
            self.arrays[name] = np.concatenate([np.asarray(self.arrays[name]), extra]) if name in self.arrays \
                else extra
        if retrain:
            self.retrain_index()
        elif self._index is not None:
            self.index_in_ram().add(descriptors)
            if self.index_spec is not None and self.index_spec.requested == map_index.AUTO:
                wanted = map_index.choose_index(len(self), self.dim)
                if map_index.is_exact(wanted.factory) != map_index.is_exact(self.index_spec.factory):
                    log.warning("the map now holds %d frames; index.factory auto would choose %s instead of its "
                                "%s: append with --retrain to rebuild the index", len(self), wanted.factory,
                                self.index_spec.factory)

    def retrain_index(self) -> None:
        """Drop the index so that the next search or save builds (and trains) it afresh over all frames, choosing
        again when it was ``auto``."""
        if self.index_spec is not None:
            self.index_config = self.index_spec.request()
        self._index, self.index_spec, self._index_file = None, None, None

    # ---- persistence -----------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "created_by": f"vpr_ros {__version__}",
            "frame_count": len(self),
            "frame_id": self.frame_id,
            "encoder": dict(self.encoder),
            "input_size": list(self.input_size),
            "head": {"type": "none"} if self.head is None else {
                "type": "vlad", "num_clusters": self.head.num_clusters, "feature_dim": self.head.feature_dim,
                "output_dim": self.head.output_dim},
            "descriptor": {"dim": self.dim, "dtype": "float32", "metric": "inner_product"},
            "index": self._built_spec().manifest_entry(),
            "sections": self.sections,
            "provenance": self.provenance,
        }

    def index_in_ram(self) -> Any:
        """The index, read into RAM (writable) if it was memory-mapped."""
        if self._index_file is not None:
            self._index, self._index_file = map_index.read_index(self._index_file, False, ""), None
        return self.index

    def _built_spec(self) -> IndexSpec:
        self.index  # noqa: B018 -- builds the index (and its spec) if not yet built
        assert self.index_spec is not None
        return self.index_spec

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the map to ``path`` (a directory), crash-safely (see the module doc). Returns the final path.

        Holds the map's lock (:func:`map_lock`) throughout and first recovers what a killed earlier write left
        (:func:`recover_interrupted_swap`). With ``overwrite``, only a vpr_ros map is replaced
        (:func:`check_overwritable`); anything else at ``path`` is refused.
        """
        import faiss

        path = Path(path)
        with map_lock(path):
            recover_interrupted_swap(path)
            if os.path.lexists(path):
                if not overwrite:
                    raise FileExistsError(f"{path} exists; pass overwrite=True (CLI: --overwrite) to replace it")
                check_overwritable(path)
            tmp = _sibling(path, "tmp")
            tmp.mkdir()
            try:
                (tmp / "frames.npz").write_bytes(self.frames.to_columns())
                fault_point("save:wrote:frames.npz")
                np.save(tmp / "descriptors.npy", self.descriptors)
                fault_point("save:wrote:descriptors.npy")
                faiss.write_index(self.index, str(tmp / "global.faiss"))
                fault_point("save:wrote:global.faiss")
                if self.head is not None:
                    np.savez(tmp / "head.npz", **self.head.to_arrays())
                    fault_point("save:wrote:head.npz")
                if self.arrays:
                    (tmp / "arrays").mkdir()
                    for name, array in self.arrays.items():
                        np.save(tmp / "arrays" / f"{name}.npy", np.asarray(array))
                        fault_point(f"save:wrote:arrays/{name}.npy")
                manifest = self.manifest()
                manifest["files"] = {
                    str(f.relative_to(tmp)): {"sha256": sha256_file(f), "bytes": f.stat().st_size}
                    for f in sorted(tmp.rglob("*")) if f.is_file()}
                (tmp / "manifest.yaml").write_text(sealed_manifest_text(manifest))
                fault_point("save:wrote:manifest.yaml")
                _fsync_tree(tmp)
                fault_point("save:after-fsync")
                _swap_into_place(tmp, path)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return path

    @classmethod
    def load(cls, path: str | Path, verify: bool = True, mmap: bool = True,
             index_in_ram_below: int = map_index.INDEX_IN_RAM_BELOW) -> ReferenceMap:
        """Load and (by default) verify every file's sha256; raise MapError naming the faulty file or manifest
        field (see :mod:`vpr_ros.core.map_manifest` for what the manifest may say).

        ``mmap``: descriptors, extra arrays and the index's inverted lists / flat codes stay in their files,
        memory-mapped read-only (see :func:`vpr_ros.core.map_index.read_index`); else everything is read into RAM.
        An index file smaller than ``index_in_ram_below`` bytes is read into RAM all the same: searching scans it,
        and scanning mapped pages is slower (:data:`vpr_ros.core.map_index.INDEX_IN_RAM_BELOW`).
        Every file is read once (see the module doc).
        """
        recover_interrupted_swap(path)  # a write killed between its two renames left the map aside: put it back
        path = Path(path)
        manifest = open_manifest(path)
        where = str(path / "manifest.yaml")
        files = {rel: map_file(path, rel, where) for rel in manifest.files}
        for rel, meta in manifest.files.items():
            size = files[rel].stat().st_size
            if size != meta.bytes:
                raise MapError(f"{files[rel]}: size {size} bytes, manifest says {meta.bytes} (truncated or replaced)")
        # Memory-mapped files are hashed in one streamed read each (two at a time: hashlib releases the GIL),
        # the others are read once into bytes that are hashed and parsed.
        mapped = {rel for rel in files if mmap and (rel.endswith(".npy") or (
            rel == "global.faiss" and manifest.files[rel].bytes >= index_in_ram_below))}  # size checked above
        if verify:
            with ThreadPoolExecutor(max_workers=2) as pool:
                digests = dict(zip(sorted(mapped), pool.map(lambda rel: sha256_file(files[rel]), sorted(mapped)),
                                   strict=True))
            for rel in sorted(mapped):
                _check_digest(files[rel], digests[rel], manifest.files[rel].sha256)

        def read(rel: str) -> bytes:
            data = files[rel].read_bytes()
            if verify:
                _check_digest(files[rel], hashlib.sha256(data).hexdigest(), manifest.files[rel].sha256)
            return data

        try:
            if "frames.npz" in files:
                frames = FrameTable.from_columns(read("frames.npz"), str(files["frames.npz"]))
            else:
                frames = FrameTable.from_csv(read("frames.csv").decode("utf-8"), str(files["frames.csv"]))
            descriptors = np.load(files["descriptors.npy"], mmap_mode="r") if "descriptors.npy" in mapped \
                else np.load(io.BytesIO(read("descriptors.npy")))
            head = None
            if "head.npz" in files:
                with np.load(io.BytesIO(read("head.npz"))) as npz:
                    head = VladHead.from_arrays(dict(npz))
            index = map_index.read_index(files["global.faiss"], True, manifest.index.factory) \
                if "global.faiss" in mapped \
                else map_index.index_from_bytes(read("global.faiss"))
            arrays = {name: np.load(files[rel], mmap_mode="r") if rel in mapped else np.load(io.BytesIO(read(rel)))
                      for name, rel in manifest.arrays.items()}
        except MapError:
            raise
        except Exception as exc:
            raise MapError(f"{path}: could not read map data ({type(exc).__name__}: {exc})") from exc
        if index.ntotal != len(frames):
            raise MapError(f"{path / 'global.faiss'}: holds {index.ntotal} vectors for {len(frames)} frames")
        check_map_data(manifest, len(frames), descriptors, head, index, where)
        spec = index_spec_from_manifest(manifest)
        refmap = cls(frames=frames, descriptors=np.asarray(descriptors), head=head, encoder=dict(manifest.encoder),
                     input_size=(manifest.summary.input_size[0], manifest.summary.input_size[1]),
                     index_config=spec.request(), frame_id=manifest.summary.frame_id,
                     sections=dict(manifest.sections), arrays=arrays, provenance=dict(manifest.provenance),
                     index_spec=spec)
        refmap._index = index
        refmap._index_file = files["global.faiss"] if "global.faiss" in mapped else None
        return refmap

    def check_encoder(self, encoder: dict[str, Any]) -> None:
        """Refuse an encoder other than the one the map was built with (same id and every sha256 it records:
        the ONNX file's for models, the spec's for weights-free encoders such as thumbnails)."""
        mine = self.encoder
        digests = sorted(k for k in set(mine) | set(encoder) if k.endswith("sha256"))
        if mine.get("id") != encoder.get("id") or any(mine.get(k) != encoder.get(k) for k in digests):
            def ident(e: dict[str, Any]) -> str:
                sums = ", ".join(f"{k.replace('_', ' ')} {str(e.get(k))[:12]}..." for k in digests)
                return f"{e.get('id')} ({sums})" if sums else str(e.get("id"))

            raise MapError(f"map was built with encoder {ident(mine)} but the pipeline loaded {ident(encoder)}; "
                           "use the same model or rebuild the map")


def read_manifest(path: Path) -> dict[str, Any]:
    """A map's manifest as read, once checked (format, version, its own hash, every value and file name)."""
    return open_manifest(path).raw


def open_manifest(path: Path) -> MapManifest:
    """Read and check a map's manifest: format name and version first, then :func:`validate_manifest`."""
    if not path.is_dir():
        raise MapError(f"reference map {path} does not exist or is not a directory "
                       "(build one with `build_map`)")
    mf = path / "manifest.yaml"
    if mf.is_symlink():
        raise MapError(f"{mf}: is a symbolic link; a map's files must be regular files inside its directory")
    try:
        manifest = yaml.safe_load(mf.read_text())
    except FileNotFoundError:
        raise MapError(f"{mf}: missing; {path} is not a vpr_ros map (or its build was interrupted)") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise MapError(f"{mf}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise MapError(f"{mf}: not a vpr_ros map manifest (format is {found!r})")
    version = manifest.get("format_version")
    if version not in READABLE_FORMAT_VERSIONS:
        raise MapError(f"{mf}: map format version {version}, this vpr_ros {__version__} reads versions "
                       f"{', '.join(map(str, READABLE_FORMAT_VERSIONS))}; rebuild the map")
    return validate_manifest(manifest, str(mf))


def index_spec_from_manifest(manifest: MapManifest) -> IndexSpec:
    """The index a map holds, from its manifest. Version 1 maps record only factory and nprobe: their index was
    built (and, if it needs training, trained) on all their frames when the map was written."""
    entry = manifest.index
    if manifest.raw.get("format_version") == 1:
        trains = map_index.is_ivf(entry.factory) or "PQ" in entry.factory
        return IndexSpec(entry.factory, nprobe=entry.nprobe, requested=entry.factory,
                         reason="format version 1 map",
                         trained_on=manifest.summary.frame_count if trains else 0,
                         trained_at=manifest.summary.created if trains else "")
    return IndexSpec(entry.factory, nprobe=entry.nprobe, ef_search=entry.ef_search, refine=entry.refine,
                     requested=entry.requested or entry.factory, reason=entry.reason, trained_on=entry.trained_on,
                     trained_at=entry.trained_at)


def _check_digest(path: Path, digest: str, expected: str) -> None:
    if digest != expected:
        raise MapError(f"{path}: sha256 mismatch, the file is corrupt or was modified after the map was built")


def fault_point(step: str) -> None:
    """Test hook: kill this process with SIGKILL here when the environment variable ``VPR_ROS_FAULT_AT`` is ``step``.

    Steps of :meth:`ReferenceMap.save`, in order: ``save:wrote:<file>`` after each file of the new map is written
    into its temporary directory (``frames.npz``, ``descriptors.npy``, ``global.faiss``, ``head.npz``,
    ``arrays/<name>.npy``, ``manifest.yaml``), ``save:after-fsync``, ``swap:after-aside`` (old map renamed aside),
    ``swap:after-in-place`` (new map renamed in), ``swap:after-old-disowned`` (the old copy's manifest removed),
    ``swap:after-old-removed``; :mod:`vpr_ros.core.map_builder` adds ``build:after-save`` and
    ``append:after-save``. Only test/test_map_faults.py sets it, to kill a real writer at every step.
    """
    if step == _FAULT_AT:
        os.kill(os.getpid(), signal.SIGKILL)


class MapLockedError(MapError):
    """Another process holds the map's lock file: it is building, appending to or replacing that map."""


def lock_file(path: Path) -> Path:
    """The lock file of the map at ``path``: ``.NAME.lock`` beside it."""
    return path.parent / f".{path.name}.lock"


# Lock files this process holds (absolute path -> [descriptor, depth]): map_lock is re-entrant within a process,
# as build_map holds the lock and calls ReferenceMap.save, which takes it again.
_held_locks: dict[str, list[int]] = {}
_held_locks_guard = threading.Lock()


@contextmanager
def map_lock(path: str | Path) -> Iterator[None]:
    """Hold the lock of the map at ``path`` (an exclusive ``fcntl.flock`` on ``.NAME.lock``) for a whole write.

    Never waits: while another process holds it, :class:`MapLockedError` names the lock file and the holder's
    pid (which the holder writes into it). Re-entrant within a process. The lock file is removed on release;
    the kernel releases the lock of a killed holder. Creates the map's parent folder.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the folder of map {path}: {exc.strerror or exc}") from None
    lock = lock_file(path)
    key = str(lock.parent.resolve() / lock.name)
    with _held_locks_guard:
        if key in _held_locks:
            _held_locks[key][1] += 1
        else:
            _held_locks[key] = [_acquire_lock(lock, path), 1]
    try:
        yield
    finally:
        with _held_locks_guard:
            held = _held_locks[key]
            held[1] -= 1
            if held[1] == 0:
                del _held_locks[key]
                with suppress(OSError):  # a read-only folder: the stale file is harmless, the lock goes anyway
                    lock.unlink()
                os.close(held[0])


def _acquire_lock(lock: Path, path: Path) -> int:
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise MapError(f"cannot create the lock file {lock} of map {path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise MapLockedError(f"{path} is being written by another process (lock file {lock} held by pid "
                                 f"{holder}); wait for it to finish") from None
        except BaseException:
            os.close(fd)
            raise
        # The previous holder removes the file on release: if that happened between our open and our flock, we
        # locked a file nobody else will look at, so lock the one now at that name instead.
        try:
            current = lock.stat()
        except FileNotFoundError:
            current = None
        mine = os.fstat(fd)
        if current is not None and (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _sibling(path: Path, kind: str) -> Path:
    """A fresh ``.NAME.<kind>-<8 hex digits>`` beside ``path`` (kind ``tmp``: a map being written, ``old``: a map
    moved aside); :func:`_leftovers` recognises exactly these names."""
    return path.parent / f".{path.name}.{kind}-{uuid.uuid4().hex[:8]}"


def _leftovers(path: Path) -> dict[str, list[Path]]:
    """The ``.NAME.tmp-*`` directories and ``.NAME.old-*`` directories (or links) beside ``path``, by kind."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(tmp|old)-[0-9a-f]{{8}}")
    found: dict[str, list[Path]] = {"tmp": [], "old": []}
    try:
        entries = list(os.scandir(path.parent))
    except OSError:  # no parent folder, or not readable: nothing of ours can be there
        return found
    for entry in sorted(entries, key=lambda e: e.name):
        match = pattern.fullmatch(entry.name)
        if match is None:
            continue
        kind = match.group(1)
        if entry.is_dir(follow_symlinks=False) or (kind == "old" and entry.is_symlink()):
            found[kind].append(Path(entry.path))
    return found


def recover_interrupted_swap(path: str | Path) -> None:
    """Clean up after a write of the map at ``path`` that was killed: put back a map it had moved aside, remove
    its temporary directories.

    - No map at ``path`` but a complete ``.NAME.old-*`` (one that still has its manifest): the kill struck
      between moving the old map aside and moving the new one in, so the old one is renamed back.
    - Any other ``.NAME.old-*`` (the new map arrived) and every ``.NAME.tmp-*`` is removed.

    Only while nobody else holds the map's lock (a running writer owns the leftovers it is making), and only
    names of exactly the pattern this module creates. Cheap when there is nothing to do: one folder listing.
    """
    path = Path(path)
    leftovers = _leftovers(path)
    if not (leftovers["tmp"] or leftovers["old"] or lock_file(path).exists()):
        return
    with ExitStack() as stack:
        try:
            stack.enter_context(map_lock(path))
        except MapError:  # another process is writing this map, or its folder is read-only: leave it
            return
        leftovers = _leftovers(path)  # again: the previous holder may have finished meanwhile
        restorable = [old for old in leftovers["old"] if (old / "manifest.yaml").is_file()]
        if not os.path.lexists(path) and restorable:
            if len(restorable) > 1:
                raise MapError(f"{path} is missing and {len(restorable)} earlier copies of it were left by interrupted "
                               f"writes ({', '.join(p.name for p in restorable)}); rename the one to keep to "
                               f"{path.name}")
            log.warning("%s: putting back the map that an interrupted write had moved aside to %s", path,
                        restorable[0].name)
            restorable[0].rename(path)
            _fsync_dir(path.parent)
        for leftover in leftovers["tmp"] + leftovers["old"]:
            if os.path.lexists(leftover):
                log.info("removing %s, left by an interrupted write of %s", leftover, path)
                _remove(leftover)


def check_overwritable(path: str | Path) -> None:
    """Refuse to replace ``path`` unless it is a vpr_ros map: a directory whose ``manifest.yaml`` names the format
    :data:`FORMAT_NAME` (of any version). Guards ``overwrite`` against deleting, say, an image folder."""
    path = Path(path)
    reason = None
    if not path.is_dir():
        reason = "not a directory"
    else:
        try:
            manifest = yaml.safe_load((path / "manifest.yaml").read_text())
        except FileNotFoundError:
            reason = "it has no manifest.yaml"
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            reason = f"its manifest.yaml is unreadable: {type(exc).__name__}"
        else:
            found = manifest.get("format") if isinstance(manifest, dict) else None
            if found != FORMAT_NAME:
                reason = f"its manifest.yaml names format {found!r}"
    if reason is not None:
        raise InputError(f"{path} is not a vpr_ros map ({reason}); refusing to replace it: overwrite replaces only "
                         f"a directory whose manifest.yaml names format {FORMAT_NAME!r}")


def _remove(path: Path) -> None:
    """Remove a leftover: a link is unlinked (never what it points to), a directory removed with its content."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` and ``root`` itself: the new map is on disk before its rename."""
    entries = sorted(root.rglob("*"))
    for f in entries:
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    for folder in [f for f in entries if f.is_dir()] + [root]:
        _fsync_dir(folder)


def _swap_into_place(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` to ``path``. An existing map is renamed aside first and removed only once the new one is in
    place; a kill in between leaves it aside, complete, for :func:`recover_interrupted_swap` to put back."""
    old = None
    if os.path.lexists(path):
        old = _sibling(path, "old")
        path.rename(old)
        _fsync_dir(path.parent)
        fault_point("swap:after-aside")
    try:
        tmp.rename(path)
    except BaseException:
        if old is not None:
            old.rename(path)
        raise
    _fsync_dir(path.parent)
    fault_point("swap:after-in-place")
    if old is not None:
        if not old.is_symlink():
            # The manifest goes first: a copy aside without one is never put back, so a kill while it is being
            # removed cannot bring back half a map.
            (old / "manifest.yaml").unlink(missing_ok=True)
            fault_point("swap:after-old-disowned")
        _remove(old)
        fault_point("swap:after-old-removed")
