"""Reference map on disk: frames with poses, global descriptors, FAISS index, aggregation head, extra arrays.

Layout of a map directory (format version :data:`FORMAT_VERSION`)::

    manifest.yaml      format, version, encoder identity, head, index, counts, sha256 + size of every file
    frames.csv         id,name,source,stamp,x,y,z,qx,qy,qz,qw   (NaN where a value is unknown)
    descriptors.npy    (N, P) float32 global descriptors, L2-normalised
    global.faiss       FAISS index over the descriptors (inner product)
    head.npz           VLAD head (centroids, soft assignment, PCA-whitening) the descriptors were made with
                       (absent for ``global`` encoders, whose output already is the descriptor)
    arrays/<name>.npy  extra per-map arrays (e.g. the Patch-NetVLAD patch store), memory-mapped on load

Writes are atomic: everything goes into a temporary sibling directory that is renamed into place, so a
crash never leaves a half-written map under the final name. Loading checks the format version, the manifest's
own ``manifest_sha256``, every manifest value and file name (:mod:`vpr_ros.core.map_manifest`) and the sha256 of
every file, and names the file or field at fault.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from vpr_ros import __version__
from vpr_ros.config import setting
from vpr_ros.core.files import sha256_file
from vpr_ros.core.frames import FrameTable
from vpr_ros.core.map_manifest import (
    MapManifest,
    check_map_data,
    map_file,
    sealed_manifest_text,
    validate_manifest,
)
from vpr_ros.core.vlad import VladHead
from vpr_ros.errors import InputError, MapError

FORMAT_NAME = "vpr_ros.reference_map"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class IndexConfig:
    """FAISS index over the global descriptors."""

    factory: str = setting("Flat", "FAISS index_factory string (Flat exact; e.g. HNSW32 or IVF1024,PQ32 for "
                           "large maps); metric is inner product on L2-normalised descriptors")
    nprobe: int = setting(16, "IVF lists visited per query (IVF indexes only)", min=1)


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
    _index: Any = field(default=None, repr=False)

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
            self._index = build_index(self.descriptors, self.index_config)
        return self._index

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product (cosine for L2-normalised descriptors).

        Shape:
            queries: (B, P) float32; returns similarities (B, k') and row indices (B, k'), k' = min(k, N).
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be (B, {self.dim}), got {queries.shape}")
        k = min(int(k), len(self))
        sims, idx = self.index.search(queries, k)
        return sims, idx

    def append(self, frames: FrameTable, descriptors: np.ndarray,
               arrays: dict[str, np.ndarray] | None = None) -> None:
        """Add frames (incremental map growth); extra arrays are concatenated along axis 0."""
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
        if self._index is not None and self._index.is_trained and "IVF" not in self.index_config.factory:
            self._index.add(descriptors)
        else:
            self._index = None

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
            "index": {"factory": self.index_config.factory, "nprobe": self.index_config.nprobe},
            "sections": self.sections,
            "provenance": self.provenance,
        }

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the map atomically to ``path`` (a directory). Returns the final path."""
        import faiss

        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True (CLI: --overwrite) to replace it")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            (tmp / "frames.csv").write_text(self.frames.to_csv())
            np.save(tmp / "descriptors.npy", self.descriptors)
            faiss.write_index(self.index, str(tmp / "global.faiss"))
            if self.head is not None:
                np.savez(tmp / "head.npz", **self.head.to_arrays())
            if self.arrays:
                (tmp / "arrays").mkdir()
                for name, array in self.arrays.items():
                    np.save(tmp / "arrays" / f"{name}.npy", np.asarray(array))
            manifest = self.manifest()
            manifest["files"] = {
                str(f.relative_to(tmp)): {"sha256": sha256_file(f), "bytes": f.stat().st_size}
                for f in sorted(tmp.rglob("*")) if f.is_file()}
            (tmp / "manifest.yaml").write_text(sealed_manifest_text(manifest))
            _fsync_tree(tmp)
            _swap_into_place(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path, verify: bool = True, mmap: bool = True) -> ReferenceMap:
        """Load and (by default) verify every file's sha256; raise MapError naming the faulty file or manifest
        field (see :mod:`vpr_ros.core.map_manifest` for what the manifest may say)."""
        import faiss

        path = Path(path)
        manifest = open_manifest(path)
        where = str(path / "manifest.yaml")
        files = {rel: map_file(path, rel, where) for rel in manifest.files}
        for rel, meta in manifest.files.items():
            f = files[rel]
            if f.stat().st_size != meta.bytes:
                raise MapError(f"{f}: size {f.stat().st_size} bytes, manifest says {meta.bytes} "
                               "(truncated or replaced)")
            if verify and sha256_file(f) != meta.sha256:
                raise MapError(f"{f}: sha256 mismatch, the file is corrupt or was modified after the map was built")
        try:
            frames = FrameTable.from_csv(files["frames.csv"].read_text(), str(files["frames.csv"]))
            descriptors = np.load(files["descriptors.npy"], mmap_mode="r" if mmap else None)
            head = None
            if "head.npz" in files:
                with np.load(files["head.npz"]) as npz:
                    head = VladHead.from_arrays(dict(npz))
            index = faiss.read_index(str(files["global.faiss"]))
            arrays = {name: np.load(files[rel], mmap_mode="r" if mmap else None)
                      for name, rel in manifest.arrays.items()}
        except MapError:
            raise
        except Exception as exc:
            raise MapError(f"{path}: could not read map data ({type(exc).__name__}: {exc})") from exc
        if index.ntotal != len(frames):
            raise MapError(f"{path / 'global.faiss'}: holds {index.ntotal} vectors for {len(frames)} frames")
        check_map_data(manifest, len(frames), descriptors, head, index, where)
        refmap = cls(frames=frames, descriptors=np.asarray(descriptors), head=head, encoder=dict(manifest.encoder),
                     input_size=(manifest.summary.input_size[0], manifest.summary.input_size[1]),
                     index_config=IndexConfig(factory=manifest.index.factory, nprobe=manifest.index.nprobe),
                     frame_id=manifest.summary.frame_id, sections=dict(manifest.sections), arrays=arrays,
                     provenance=dict(manifest.provenance))
        _set_nprobe(index, refmap.index_config.nprobe)
        refmap._index = index
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
    if version != FORMAT_VERSION:
        raise MapError(f"{mf}: map format version {version}, this vpr_ros {__version__} reads version "
                       f"{FORMAT_VERSION}; rebuild the map")
    return validate_manifest(manifest, str(mf))


def build_index(descriptors: np.ndarray, config: IndexConfig) -> Any:
    """FAISS index (inner product) over ``descriptors``, trained first when the factory needs it."""
    import faiss

    d = descriptors.shape[1]
    try:
        index = faiss.index_factory(d, config.factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise InputError(f"FAISS cannot build index {config.factory!r}: {exc}") from None
    if not index.is_trained:
        index.train(np.ascontiguousarray(descriptors))
    index.add(np.ascontiguousarray(descriptors))
    _set_nprobe(index, config.nprobe)
    return index


def _set_nprobe(index: Any, nprobe: int) -> None:
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = nprobe


def _fsync_tree(root: Path) -> None:
    for f in root.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap_into_place(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` to ``path``; an existing map is moved aside first and removed only afterwards."""
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
        path.rename(old)
    try:
        tmp.rename(path)
    except BaseException:
        if old is not None:
            old.rename(path)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
