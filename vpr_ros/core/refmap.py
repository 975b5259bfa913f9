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
crash never leaves a half-written map under the final name. Loading checks the format version and the
sha256 of every file and names the file at fault.
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
            (tmp / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
            _fsync_tree(tmp)
            _swap_into_place(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path, verify: bool = True, mmap: bool = True) -> ReferenceMap:
        """Load and (by default) verify every file's sha256; raise MapError naming the faulty file."""
        import faiss

        path = Path(path)
        manifest = read_manifest(path)
        files = manifest.get("files") or {}
        required = ["frames.csv", "descriptors.npy", "global.faiss"]
        if (manifest.get("head") or {}).get("type", "vlad") != "none":
            required.append("head.npz")
        for rel in required:
            if rel not in files:
                raise MapError(f"{path / 'manifest.yaml'}: lists no {rel}")
        for rel, meta in files.items():
            f = path / rel
            if not f.is_file():
                raise MapError(f"{f}: missing (listed in the manifest)")
            if f.stat().st_size != int(meta["bytes"]):
                raise MapError(f"{f}: size {f.stat().st_size} bytes, manifest says {meta['bytes']} "
                               "(truncated or replaced)")
            if verify and sha256_file(f) != meta["sha256"]:
                raise MapError(f"{f}: sha256 mismatch, the file is corrupt or was modified after the map was built")
        try:
            frames = FrameTable.from_csv((path / "frames.csv").read_text(), str(path / "frames.csv"))
            descriptors = np.load(path / "descriptors.npy", mmap_mode="r" if mmap else None)
            head = None
            if "head.npz" in files:
                with np.load(path / "head.npz") as npz:
                    head = VladHead.from_arrays(dict(npz))
            index = faiss.read_index(str(path / "global.faiss"))
            arrays = {rel[len("arrays/"):-len(".npy")]: np.load(path / rel, mmap_mode="r" if mmap else None)
                      for rel in files if rel.startswith("arrays/") and rel.endswith(".npy")}
        except MapError:
            raise
        except Exception as exc:
            raise MapError(f"{path}: could not read map data ({type(exc).__name__}: {exc})") from exc
        if index.ntotal != len(frames):
            raise MapError(f"{path / 'global.faiss'}: holds {index.ntotal} vectors for {len(frames)} frames")
        idx_meta = manifest.get("index", {})
        refmap = cls(frames=frames, descriptors=np.asarray(descriptors), head=head,
                     encoder=dict(manifest["encoder"]), input_size=tuple(manifest["input_size"]),
                     index_config=IndexConfig(factory=str(idx_meta.get("factory", "Flat")),
                                              nprobe=int(idx_meta.get("nprobe", 16))),
                     frame_id=str(manifest.get("frame_id", "map")), sections=dict(manifest.get("sections") or {}),
                     arrays=arrays, provenance=dict(manifest.get("provenance") or {}))
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
    """Read and check a map's manifest (format name and version)."""
    if not path.is_dir():
        raise MapError(f"reference map {path} does not exist or is not a directory "
                       "(build one with `build_map`)")
    mf = path / "manifest.yaml"
    try:
        manifest = yaml.safe_load(mf.read_text())
    except FileNotFoundError:
        raise MapError(f"{mf}: missing; {path} is not a vpr_ros map (or its build was interrupted)") from None
    except yaml.YAMLError as exc:
        raise MapError(f"{mf}: not valid YAML ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise MapError(f"{mf}: not a vpr_ros map manifest (format is {found!r})")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise MapError(f"{mf}: map format version {version}, this vpr_ros {__version__} reads version "
                       f"{FORMAT_VERSION}; rebuild the map")
    return manifest


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
