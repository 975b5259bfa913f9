"""The FAISS index of a reference map: which one (``index.factory: auto`` by map size), how it is built and
trained, how it is opened (memory-mapped) and searched (search parameters per call, changeable at run time).

``auto`` (:func:`choose_index`) follows :data:`AUTO_TABLE`, measured by ``python -m bench map_scale``
(bench/results/map_scale.json, README "Large maps"): exact search (``Flat``) while one query over the whole map
stays within a few milliseconds on 2 cores, an inverted file with 8-bit scalar-quantised codes beyond
(``IVF<nlist>,SQ8``: one byte per dimension, a quarter of the float descriptors), whose
approximate top candidates are re-scored exactly against the map's memory-mapped ``descriptors.npy``
(``refine``: k x refine candidates are fetched, the best k by exact inner product are returned; the rows read are
the candidates' only). Whatever auto
picks is logged with the reason and recorded in the manifest (``index.requested``, ``index.reason``).

An index that needs training (IVF) records when and on how many frames it was trained (``index.trained_on``,
``index.trained_at``); appending frames adds them to the trained index, and only a retrain (``build_map --append
--retrain``) trains it again (:func:`build_index`).

Search parameters (:class:`SearchConfig`: nprobe for IVF, efSearch for HNSW, refine) are passed with each
search as FAISS ``SearchParameters`` objects, never set on the shared index, so a change from another thread
(the localize node's ``localizer.search.*`` parameters) applies from the next query and never mid-query.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from vpr_ros.config import setting
from vpr_ros.errors import InputError

log = logging.getLogger(__name__)

AUTO = "auto"


@dataclass(frozen=True)
class IndexConfig:
    """FAISS index over the global descriptors."""

    factory: str = setting(AUTO, "FAISS index_factory string, or auto = exact search (Flat) for small maps and an "
                           "inverted file with 8-bit scalar quantisation (IVF<nlist>,SQ8, re-scored exactly) beyond, "
                           "as measured by bench map_scale (README: Large maps); e.g. Flat, HNSW32, "
                           "IVF4096,PQ32np; metric is inner product on L2-normalised descriptors")
    nprobe: int = setting(0, "IVF lists visited per query (0 = auto's measured value, 16 for a named factory)",
                          min=0)
    ef_search: int = setting(0, "HNSW candidate list length per query (0 = auto's measured value, FAISS's 16 for a "
                             "named factory)", min=0)
    refine: int = setting(0, "approximate indexes: fetch top_k x refine candidates and re-score them exactly "
                          "against the memory-mapped descriptors (0 = auto's measured value, 1 = off)", min=0)


@dataclass(frozen=True)
class SearchConfig:
    """Search parameters of the map's FAISS index at query time; 0 = the value the map was built with."""

    nprobe: int = setting(0, "IVF lists visited per query (0 = the map's index.nprobe)", min=0)
    ef_search: int = setting(0, "HNSW candidate list length (0 = the map's index.ef_search)", min=0)
    refine: int = setting(0, "re-score top_k x refine approximate candidates exactly (0 = the map's index.refine, "
                          "1 = off)", min=0)


@dataclass(frozen=True)
class AutoRow:
    """One row of the auto table: maps of up to ``max_frames`` frames get this index."""

    max_frames: int
    kind: str            # "flat" or "ivf_sq8"
    probe_fraction: int = 8  # nprobe = nlist / probe_fraction
    refine: int = 1
    why: str = ""


#: Measured by ``python -m bench map_scale`` (bench/results/map_scale.json; README "Large maps"), 2 FAISS threads on
#: 2 cores: exact search of 100k frames takes tens of milliseconds per query, growing linearly with the map, so it
#: stays the choice up to 50k frames. Beyond, the inverted file visits 1/8 of its lists (chosen at 100k frames).
#: Its codes were product-quantised first (PQ32, 32 bytes per frame, 32 x top_k candidates re-scored exactly): at
#: 1M frames recall@1 stayed near 0.9 of exact search even visiting 1/4 of the lists, because the true neighbour
#: ranked beyond the re-scored pool, while exact distances inside the same visited lists gave 0.97. 8-bit scalar
#: codes rank almost like exact distances, so re-scoring 4 x top_k recovers the rest (0.97 on the tuning queries
#: of the 1M map) at 256 bytes per frame and a few milliseconds per query.
AUTO_TABLE: tuple[AutoRow, ...] = (
    AutoRow(50_000, "flat", why="exact search; its cost grows with the map and passes a few milliseconds per query "
                                "on 2 cores beyond 50k frames"),
    AutoRow(1 << 62, "ivf_sq8", probe_fraction=8, refine=4,
            why="beyond 50k frames exact search costs tens of milliseconds per query on 2 cores; an inverted file "
                "of 8-bit codes visiting 1/8 of its lists, 4 x top_k candidates re-scored exactly, keeps recall@1 "
                "about 0.95 of exact search or better at a few milliseconds per query and a byte per dimension "
                "(bench map_scale)"),
)
#: FAISS k-means wants at least 39 training points per list; fewer lists rather than a warning.
MIN_POINTS_PER_LIST = 39
#: Training sample: this many points per IVF list at most (FAISS's own cap is 256; it warns below 39), and
#: :data:`TRAIN_ITERATIONS` k-means iterations (FAISS's default is 25): the coarse centroids only route queries
#: to lists, and the measured recall (bench map_scale) is what counts; a million-frame map then trains in
#: minutes, not an hour, on 2 cores.
TRAIN_POINTS_PER_LIST = 40
TRAIN_ITERATIONS = 10
DEFAULT_NPROBE = 16
#: Index files smaller than this are read into RAM at load, larger ones memory-mapped (:func:`read_index`). A query
#: scans the codes of the lists it visits, and scanning memory-mapped pages is slower than RAM (bench map_scale,
#: 1M frames, IVF4096,SQ8, nprobe 512: p50 11.2 vs 6.8 ms; 4 KiB page-table entries for a file mapping against
#: the huge pages anonymous memory gets), so a compressed index of up to half a gigabyte -- auto's at a million
#: 256-d frames is 268 MB -- is worth its RAM; beyond that, bounded memory wins (exact or HNSW indexes of a
#: million frames are gigabytes).
INDEX_IN_RAM_BELOW = 512 << 20


@dataclass(frozen=True)
class IndexSpec:
    """The index a map holds, as its manifest records it (section ``index``)."""

    factory: str
    nprobe: int = DEFAULT_NPROBE
    ef_search: int = 0
    refine: int = 1
    requested: str = ""
    reason: str = ""
    trained_on: int = 0
    trained_at: str = ""

    @property
    def approximate(self) -> bool:
        return not is_exact(self.factory)

    def manifest_entry(self) -> dict[str, Any]:
        return {"factory": self.factory, "nprobe": self.nprobe, "ef_search": self.ef_search, "refine": self.refine,
                "requested": self.requested or self.factory, "reason": self.reason,
                "trained_on": self.trained_on, "trained_at": self.trained_at}

    def request(self) -> IndexConfig:
        """The index settings to build this map's index afresh with (a retrain): auto again if it was auto."""
        if (self.requested or self.factory) == AUTO:
            return IndexConfig()
        return IndexConfig(factory=self.factory, nprobe=self.nprobe, ef_search=self.ef_search, refine=self.refine)

    def resolved(self, search: SearchConfig | None) -> tuple[int, int, int]:
        """(nprobe, ef_search, refine) for one search: ``search``'s non-zero values, else the map's."""
        if search is None:
            return self.nprobe, self.ef_search, self.refine
        return (search.nprobe or self.nprobe, search.ef_search or self.ef_search, search.refine or self.refine)


def is_exact(factory: str) -> bool:
    """Whether the factory string makes an exact (brute-force, uncompressed) index."""
    return factory.replace(" ", "") in ("Flat", "IDMap,Flat")


def is_ivf(factory: str) -> bool:
    return factory.startswith("IVF") or ",IVF" in factory


def auto_nlist(frames: int) -> int:
    """IVF lists for ``frames`` vectors: the power of two nearest 4 sqrt(N) (FAISS's guideline), lowered until every
    list gets :data:`MIN_POINTS_PER_LIST` training points."""
    nlist = 2 ** round(math.log2(max(4.0 * math.sqrt(frames), 1.0)))
    while nlist > 1 and frames < MIN_POINTS_PER_LIST * nlist:
        nlist //= 2
    return max(nlist, 1)


def inverted_file_spec(nlist: int, row: AutoRow) -> IndexSpec:
    """The inverted-file index of ``nlist`` lists that auto's ``row`` describes (8-bit codes, any dimension)."""
    return IndexSpec(f"IVF{nlist},SQ8", nprobe=max(1, nlist // row.probe_fraction), refine=row.refine,
                     requested=AUTO, reason=row.why)


def choose_index(frames: int, dim: int, config: IndexConfig | None = None) -> IndexSpec:
    """The index for ``frames`` descriptors of ``dim`` dimensions under ``config`` (resolving ``auto`` with
    :data:`AUTO_TABLE`); zero search parameters get their automatic values."""
    config = config or IndexConfig()
    if config.factory != AUTO:
        return IndexSpec(config.factory, nprobe=config.nprobe or DEFAULT_NPROBE, ef_search=config.ef_search,
                         refine=config.refine or 1, requested=config.factory, reason="named in index.factory")
    row = next(r for r in AUTO_TABLE if frames <= r.max_frames)
    if row.kind == "flat":
        spec = IndexSpec("Flat", requested=AUTO, reason=row.why)
    else:
        spec = inverted_file_spec(auto_nlist(frames), row)
    spec = replace(spec, nprobe=config.nprobe or spec.nprobe, ef_search=config.ef_search or spec.ef_search,
                   refine=config.refine or spec.refine)
    return spec


def train_sample(descriptors: np.ndarray, nlist: int, seed: int = 0) -> np.ndarray:
    """The rows an IVF index is trained on: all of them, or :data:`TRAIN_POINTS_PER_LIST` x nlist (at least 65536,
    what PQ training uses) drawn without replacement, in row order (a memory-mapped map reads them in order)."""
    n = len(descriptors)
    cap = max(TRAIN_POINTS_PER_LIST * nlist, 65536)
    if n <= cap:
        return np.ascontiguousarray(descriptors, dtype=np.float32)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=cap, replace=False))
    return np.ascontiguousarray(descriptors[rows], dtype=np.float32)


def build_index(descriptors: np.ndarray, config: IndexConfig | IndexSpec | None = None,
                chunk: int = 65536) -> tuple[Any, IndexSpec]:
    """A FAISS index (inner product) over ``descriptors``, trained first when the factory needs it, and its spec.

    ``config``: settings (``auto`` resolved and logged here) or an already resolved spec. Descriptors are added
    in chunks, so a memory-mapped array is never copied whole.
    """
    import faiss

    n, d = descriptors.shape
    spec = config if isinstance(config, IndexSpec) else choose_index(n, d, config)
    if spec.requested == AUTO:
        settings = f" (nprobe {spec.nprobe}, refine {spec.refine})" if spec.approximate else ""
        log.info("index.factory auto: %s%s for %d frames; %s", spec.factory, settings, n, spec.reason)
    try:
        index = faiss.index_factory(d, spec.factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise InputError(f"FAISS cannot build index {spec.factory!r}: {exc}") from None
    if not index.is_trained:
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.cp.niter = TRAIN_ITERATIONS
        sample = train_sample(descriptors, ivf.nlist if ivf is not None else 1)
        if len(sample) < (ivf.nlist if ivf is not None else 1):
            raise InputError(f"index {spec.factory!r} needs at least {ivf.nlist} frames to train, the map has {n}; "
                             "use fewer IVF lists or index.factory auto")
        index.train(sample)
        spec = replace(spec, trained_on=n,
                       trained_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    for start in range(0, n, chunk):
        index.add(np.ascontiguousarray(descriptors[start:start + chunk], dtype=np.float32))
    return index, spec


def read_index(path: Path, mmap: bool, factory: str) -> Any:
    """Read ``global.faiss`` (an index made by ``factory``); with ``mmap`` the inverted lists (IVF) or the flat codes
    (Flat, HNSW storage) stay in the file, memory-mapped read-only, so opening costs what the rest of the index holds
    (coarse quantizer, graph). FAISS maps the two with different flags that cannot be combined."""
    import faiss

    flags = 0
    if mmap:
        flags = faiss.IO_FLAG_MMAP if is_ivf(factory) else faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY
    return faiss.read_index(str(path), flags)


def index_from_bytes(data: bytes) -> Any:
    """An index held in RAM from the bytes of a ``global.faiss`` (read once: hashed and parsed from the same bytes)."""
    import faiss

    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))


def search_parameters(index: Any, nprobe: int, ef_search: int, k: int) -> Any:
    """FAISS search parameters for one call: nprobe for IVF (and efSearch for an HNSW coarse quantizer), efSearch
    (at least k) for HNSW; None for indexes without any."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        quantizer = None
        if isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSW):
            quantizer = faiss.SearchParametersHNSW(efSearch=max(ef_search or 0, nprobe, 16))
        params = faiss.SearchParametersIVF(nprobe=min(nprobe, ivf.nlist))
        if quantizer is not None:
            params.quantizer_params = quantizer
            params._quantizer_params = quantizer  # keep the Python object alive as long as params
        return params
    if isinstance(faiss.downcast_index(index), faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(efSearch=max(ef_search or 16, k))
    return None


def search(index: Any, spec: IndexSpec, descriptors: np.ndarray, queries: np.ndarray, k: int,
           settings: SearchConfig | None = None, placement: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` rows by inner product: the index's own answer, or for approximate indexes with refine > 1 the
    best ``k`` of its top ``k * refine`` re-scored exactly against ``descriptors`` (memory-mapped: only the
    candidates' rows are read). ``placement`` (:class:`vpr_ros.core.gpu_index.IndexPlacement`): a GPU copy of an
    exact index searches there; approximate indexes search on the CPU, where their per-call parameters apply.

    Shape:
        queries (B, P) float32 -> similarities (B, k) float32 and rows (B, k) int64, -1 where fewer exist.
    """
    nprobe, ef_search, refine = spec.resolved(settings)
    n = index.ntotal
    fetch = min(n, k * refine) if spec.approximate and refine > 1 else k
    if placement is not None and not spec.approximate:
        index = placement.index_for(index, fetch)
    params = search_parameters(index, nprobe, ef_search, fetch)
    sims, rows = index.search(queries, fetch, params=params) if params is not None else index.search(queries, fetch)
    if fetch == k:
        return sims, rows
    # Exact re-scoring of the fetched candidates: one gather of B x fetch rows (sorted, so a memory-mapped file
    # is read in order), one batched inner product.
    valid = rows >= 0
    wanted, inverse = np.unique(np.where(valid, rows, 0), return_inverse=True)
    gathered = np.asarray(descriptors[wanted], dtype=np.float32)[inverse.reshape(rows.shape)]
    exact = np.einsum("bfd,bd->bf", gathered, queries)
    exact[~valid] = -np.inf
    order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(exact, order, axis=1).astype(np.float32)
    picked = np.take_along_axis(rows, order, axis=1)
    picked[~np.isfinite(top)] = -1
    return top, picked
