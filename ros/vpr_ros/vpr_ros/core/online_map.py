"""A keyframe map that grows online from the live camera, searchable while it grows, saved in the build_map format.

The localize node in online mode starts from an empty map (or a prior map made by ``build_map`` or by an
earlier online run) and adds the frames of its camera as keyframes::

    online = OnlineMap.empty(encoder, OnlineMapConfig(vocabulary_from="maps/corridor"), exclusion_window=30.0)
    loc = Localizer(online, encoder, localizer_config)       # retrieval, re-ranking, sequences on the growing map
    hyp = loc.localize(rgb, stamp)                           # never answers with keyframes within the window
    row = online.add(stamp, features=query.features, pose=(position, orientation))   # a keyframe, or None
    online.save("maps/run1", overwrite=True)                 # ~/save_map: the build_map format

**Keyframe spacing** follows the sequence buffer's rules (:class:`vpr_ros.core.sequence_buffer.FrameBuffer`, reused
as it is): a frame becomes a keyframe once the robot travelled ``min_distance`` metres of odometry since the
last keyframe (path length, from ``travelled`` or from the poses given to :meth:`OnlineMap.add`), else, without
odometry, once ``min_time`` seconds passed; the first frame, a frame after the stamps went backwards and a
frame where odometry appears or disappears always become keyframes.

**What a keyframe stores**: its global descriptor, its Patch-NetVLAD patch descriptors when the map has a patch
store, its stamp and pose (NaN when unknown), and an optional opaque blob of local features for geometric
verification (a dict of numpy arrays, e.g. what ``vpr_ros.core.geometry.verification.extract_features``
returns). The blob is stored without pickle, as map arrays that concatenate along their first axis exactly
like every other per-frame array (so ``ReferenceMap.append`` keeps them right): ``arrays/localfeat_present.npy``
(N,) bool, and per key ``arrays/localfeat_rows_<key>.npy`` (N,) int64 (rows of that key per keyframe) and
``arrays/localfeat_data_<key>.npy`` (sum of rows, ...) with the keyframes' arrays one after the other. A map
holding such arrays is grown by another online run; ``build_map --append`` refuses it (it cannot compute them).

**Memory**: every per-keyframe array lives in a buffer whose capacity doubles (from
``initial_capacity``, capped at ``max_keyframes``), so an insert is an amortised O(1) row copy, never a copy
of the map. At ``max_keyframes`` the map is full and **refuses** new keyframes (``add`` returns None and
:attr:`OnlineMap.refused` counts them, with one warning): dropping the oldest keyframes instead would renumber
the rows that the sequence buffer, pending loop closures and a pose graph refer to, lose the start of the
route from the saved map, and need a FAISS index that can remove vectors. Rows are never changed once
written, so the views handed to readers stay valid while the map grows. A prior map is copied into memory
(not memory-mapped) at start. The global index is an exact FAISS flat index (inner product) grown with
``index.add``; the saved map gets the index ``index.factory`` asks for, built from the descriptors as
``build_map`` builds it.

**Search** (:meth:`OnlineMap.search` with the query's stamp) leaves out every keyframe whose stamp lies within
``exclusion_window`` seconds of the query's (the robot's own recent frames, the definition of
:mod:`vpr_ros.core.loop_closure`; keyframes without a stamp are never left out): it asks the index for k more
results than there are excluded keyframes and drops those, so up to k results outside the window come back.

**VLAD vocabulary and PCA of an empty map** (the aggregation head):

* ``global`` models (e.g. the ``thumbnail:`` encoders) output the descriptor themselves: no head;
* ``netvlad`` models ship their trained head in the model card (``head_file``): the map uses it;
* ``backbone`` models (the default EfficientNet-Lite0) have no trained head: their card says nothing about VLAD,
  the vocabulary and PCA are fitted on a map's images. An empty online map takes them from the map named by
  ``vocabulary_from`` (a map built with the same model, e.g. of a previous run or of a similar place), together
  with its network input size; without one it is refused with a message saying so. A prior map brings its own.

Thread safety: one lock guards the map's state; :meth:`OnlineMap.add` encodes outside it (readers are not held
up by encoding), and adds are serialised among themselves. Reads (search, frames, descriptors, save) see every
keyframe added before they started.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vpr_ros.config import config_to_dict, section, setting
from vpr_ros.core.encoders import Encoder
from vpr_ros.core.frames import FrameTable
from vpr_ros.core.map_builder import BuildMapConfig, input_size
from vpr_ros.core.map_manifest import ARRAY_NAME
from vpr_ros.core.patchnetvlad.store import SECTION as PATCH_SECTION
from vpr_ros.core.patchnetvlad.store import (
    PatchSpec,
    PatchStoreConfig,
    check_store,
    feature_grid,
    patch_extractor,
    resolve_spec,
)
from vpr_ros.core.refmap import IndexConfig, ReferenceMap
from vpr_ros.core.sequence_buffer import BufferedFrame, FrameBuffer, OdometryTrack
from vpr_ros.core.vlad import VladHead, global_descriptors
from vpr_ros.errors import InputError, MapError

log = logging.getLogger(__name__)

#: Map arrays holding the keyframes' local features (module doc).
LOCAL_PRESENT = "localfeat_present"
LOCAL_ROWS = "localfeat_rows_"
LOCAL_DATA = "localfeat_data_"

Pose = tuple[np.ndarray | tuple[float, float, float], np.ndarray | tuple[float, float, float, float]]


@dataclass(frozen=True)
class OnlineMapConfig:
    """The keyframe map the localize node grows from its camera (online mode)."""

    vocabulary_from: str = setting(
        "", "map directory whose VLAD vocabulary, PCA and network input size an empty online map uses, for models "
        "without a trained head in their model card (kind backbone, e.g. the default model); must be built with "
        "the same model. Not needed for netvlad / global models, nor when starting from a prior map")
    max_keyframes: int = setting(
        50000, "keyframe limit: at the limit the map is full and refuses new keyframes (the rows already there "
        "are referred to by loop closures and pose graphs, so none is dropped); bounds memory", min=1)
    min_distance: float = setting(
        1.0, "metres of odometry travelled between keyframes (0 = space by time only)", min=0.0)
    min_time: float = setting(
        1.0, "seconds between keyframes when no odometry distance is known (0 = every frame)", min=0.0)
    initial_capacity: int = setting(
        256, "keyframes the arrays hold before they first grow (they double, up to max_keyframes)", min=1)
    image_height: int = setting(0, "network input height for an empty map (0 = the vocabulary map's, else the "
                                "model card's default capped like build_map's max_upscale)", min=0)
    image_width: int = setting(0, "network input width for an empty map (0 = automatic, as image_height)", min=0)
    max_upscale: float = setting(2.0, "as build_map's max_upscale, for an empty map's automatic input size",
                                 min=1.0)
    save_path: str = setting("", "map directory ~/save_map writes when its request names none (the localize node)")
    frame_id: str = setting("map", "coordinate frame of the keyframe poses (an empty map's; a prior map keeps its "
                            "own)")
    patches: PatchStoreConfig = section(PatchStoreConfig)
    index: IndexConfig = section(IndexConfig)


class GrowingArray:
    """Rows appended into a buffer whose capacity doubles up to ``limit``: amortised O(1) per row.

    :meth:`view` is the filled part without a copy; rows once written never change, so a view taken earlier
    stays valid (it keeps the old buffer alive after a growth).

    Example:
        >>> a = GrowingArray((2,), np.float32, capacity=2)
        >>> a.append(np.ones((3, 2)))
        >>> a.view().shape, a.capacity
        ((3, 2), 4)
    """

    def __init__(self, row_shape: tuple[int, ...], dtype: Any, capacity: int = 256,
                 limit: int | None = None) -> None:
        self.row_shape = tuple(int(s) for s in row_shape)
        self.dtype = np.dtype(dtype)
        self.limit = limit
        self._buf = np.empty((max(1, capacity if limit is None else min(capacity, limit)), *self.row_shape),
                             self.dtype)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    @property
    def capacity(self) -> int:
        return int(self._buf.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes allocated (the whole capacity)."""
        return int(self._buf.nbytes)

    def view(self) -> np.ndarray:
        return self._buf[: self._n]

    def append(self, rows: np.ndarray) -> None:
        """Append ``rows`` (m, *row_shape), cast to the array's dtype."""
        rows = np.asarray(rows)
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"rows must be (m, {', '.join(map(str, self.row_shape))}), got {rows.shape}")
        need = self._n + rows.shape[0]
        if self.limit is not None and need > self.limit:
            raise ValueError(f"{need} rows exceed the limit of {self.limit}")
        if need > self.capacity:
            capacity = max(need, 2 * self.capacity)
            if self.limit is not None:
                capacity = min(capacity, self.limit)
            grown = np.empty((capacity, *self.row_shape), self.dtype)
            grown[: self._n] = self._buf[: self._n]
            self._buf = grown
        self._buf[self._n:need] = rows
        self._n = need


class OnlineMap:
    """Keyframes of the live camera, grown one at a time; reads like a :class:`ReferenceMap` (module doc).

    Make one with :meth:`empty` or :meth:`from_map`. It offers what the :class:`vpr_ros.core.localizer.Localizer`
    reads from a map (``frames``, ``descriptors``, ``arrays``, ``head``, ``input_size``, ``sections``,
    ``search``, ``check_encoder``), each a view of the keyframes so far.
    """

    def __init__(self, encoder: Encoder, config: OnlineMapConfig, *, head: VladHead | None,
                 input_size: tuple[int, int], exclusion_window: float, patch_spec: PatchSpec | None,
                 prior: ReferenceMap | None = None, provenance: dict[str, Any] | None = None) -> None:
        import faiss

        if exclusion_window < 0 or not math.isfinite(exclusion_window):
            raise InputError(f"exclusion_window must be a finite number of seconds >= 0, got {exclusion_window}")
        self.encoder = encoder
        self._encoder_identity = encoder.describe() if prior is None else dict(prior.encoder)
        self.config = config
        self.head = head
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.exclusion_window = float(exclusion_window)
        self.patch_spec = patch_spec
        self._extract_patches = patch_extractor(patch_spec, config.patches.strategy) if patch_spec else None
        self.frame_id = prior.frame_id if prior is not None else config.frame_id
        self.index_config = prior.index_config if prior is not None else config.index
        self.sections: dict[str, Any] = dict(prior.sections) if prior is not None else (
            {PATCH_SECTION: patch_spec.section()} if patch_spec else {})
        self.provenance: dict[str, Any] = copy.deepcopy(prior.provenance) if prior is not None else {}
        self.provenance.setdefault("online", []).append({"config": config_to_dict(config), **(provenance or {})})
        self.refused = 0

        prior_rows = len(prior) if prior is not None else 0
        if prior_rows > config.max_keyframes:
            raise InputError(f"the prior map holds {prior_rows} frames, more than online_map.max_keyframes="
                             f"{config.max_keyframes}")
        capacity, limit = max(config.initial_capacity, prior_rows), config.max_keyframes
        self.dim = int(head.output_dim) if head is not None else (
            prior.dim if prior is not None else int(encoder.card.channels))

        def grow(shape: tuple[int, ...], dtype: Any) -> GrowingArray:
            return GrowingArray(shape, dtype, capacity, limit)

        self._ids = grow((), np.int64)
        self._stamps = grow((), np.float64)
        self._positions = grow((3,), np.float64)
        self._orientations = grow((4,), np.float64)
        self._descriptors = grow((self.dim,), np.float32)
        self._names: list[str] = []
        self._sources: list[str] = []
        self._arrays: dict[str, GrowingArray] = {}
        self._local = _LocalFeatureStore(grow)
        self._index = faiss.IndexFlatIP(self.dim)
        self._next_id = 0
        if prior is not None:
            self._load_prior(prior, grow)
        elif patch_spec is not None:
            self._arrays = self._patch_arrays(grow)
        self._session_start = len(self._ids)  # rows before this are the prior map's
        self.provenance["online"][-1]["first_id"] = self._next_id

        # Spacing: the sequence buffer's rules on a one-frame buffer (its last frame is the last keyframe).
        self._spacing = FrameBuffer(1, config.min_time, config.min_distance)
        self._odometry = OdometryTrack(timeout=math.inf)
        self._lock = threading.Lock()       # the map's state
        self._add_lock = threading.Lock()   # one add at a time (encoding runs outside _lock)
        self._save_lock = threading.Lock()  # one save at a time
        self._view: tuple[int, FrameTable, dict[str, np.ndarray]] | None = None

    # ---- construction ---------------------------------------------------------------------------------------
    @classmethod
    def empty(cls, encoder: Encoder, config: OnlineMapConfig | None = None, exclusion_window: float = 30.0,
              image_hw: tuple[int, int] | None = None) -> OnlineMap:
        """An empty map for ``encoder``; its head comes from the model card or ``config.vocabulary_from``.

        Args:
            image_hw: the camera's image (height, width), for the automatic network input size (as build_map's);
                None = the model card's default size.

        Raises:
            InputError: a ``backbone`` model without ``vocabulary_from``; MapError: a vocabulary map that is
                unreadable or was built with another model.
        """
        config = config or OnlineMapConfig()
        card = encoder.card
        head: VladHead | None
        vocabulary: ReferenceMap | None = None
        if config.vocabulary_from:
            vocabulary = ReferenceMap.load(config.vocabulary_from)
            vocabulary.check_encoder(encoder.describe())
        if card.kind == "backbone":
            if vocabulary is None:
                raise InputError(
                    f"model {encoder.id} has no trained VLAD head (model card kind 'backbone'): an empty online map "
                    "needs the vocabulary and PCA of a map built with this model; set online_map.vocabulary_from "
                    "to such a map, or start from a prior map")
            head = vocabulary.head
        else:
            head = encoder.head  # the card's trained head (netvlad), or None (global models)
        if vocabulary is not None and not config.image_height and not config.image_width:
            size = vocabulary.input_size
        else:
            size = _input_size(config, encoder, image_hw)
        spec = None
        if config.patches.preset != "none":
            if head is None or head.projection is None:
                raise InputError(f"online_map.patches.preset={config.patches.preset} needs a VLAD head with a PCA "
                                 "projection; this model / vocabulary has none (set the preset to none)")
            spec = resolve_spec(config.patches, feature_grid(size, card.stride), card.stride, head)
        provenance = {"vocabulary_from": str(config.vocabulary_from)} if vocabulary is not None else {}
        return cls(encoder, config, head=head, input_size=size, exclusion_window=exclusion_window,
                   patch_spec=spec, provenance=provenance)

    @classmethod
    def from_map(cls, prior: ReferenceMap | str | Path, encoder: Encoder, config: OnlineMapConfig | None = None,
                 exclusion_window: float = 30.0) -> OnlineMap:
        """A map that starts with the frames of ``prior`` (loaded if a path) and grows from there.

        The prior map's head, input size, patch store, index settings and frame id are kept (``config``'s
        vocabulary, size, patches, index and frame id are not used), so new keyframes are comparable with
        its frames, as with ``build_map --append``.
        """
        config = config or OnlineMapConfig()
        refmap = prior if isinstance(prior, ReferenceMap) else ReferenceMap.load(prior)
        refmap.check_encoder(encoder.describe())
        spec = None
        if PATCH_SECTION in refmap.sections:
            spec = PatchSpec.from_section(refmap.sections[PATCH_SECTION], where="prior map manifest")
            try:
                check_store(spec, refmap.arrays, len(refmap), where="prior map")
            except ValueError as exc:
                raise MapError(str(exc)) from None
        return cls(encoder, config, head=refmap.head, input_size=refmap.input_size,
                   exclusion_window=exclusion_window, patch_spec=spec, prior=refmap)

    def _patch_arrays(self, grow: Callable[[tuple[int, ...], Any], GrowingArray]) -> dict[str, GrowingArray]:
        assert self.patch_spec is not None
        spec = self.patch_spec
        dtype = {"float32": np.float32, "float16": np.float16, "int8": np.uint8}[spec.encoding]
        arrays = {}
        for grid in spec.grids:
            arrays[spec.array_name(grid)] = grow((grid.count, spec.dim), dtype)
            if spec.encoding == "int8":
                arrays[spec.array_name(grid) + "_scale"] = grow((), np.float32)
        return arrays

    def _load_prior(self, prior: ReferenceMap, grow: Callable[[tuple[int, ...], Any], GrowingArray]) -> None:
        frames = prior.frames
        self._ids.append(frames.ids)
        self._stamps.append(frames.stamps)
        self._positions.append(frames.positions)
        self._orientations.append(frames.orientations)
        self._names += list(frames.names)
        self._sources += list(frames.sources)
        self._descriptors.append(np.asarray(prior.descriptors, np.float32))
        self._index.add(np.ascontiguousarray(self._descriptors.view()))
        local = {name: arr for name, arr in prior.arrays.items() if name.startswith("localfeat_")}
        for name, arr in prior.arrays.items():
            if name in local:
                continue
            array = np.asarray(arr)
            self._arrays[name] = grow(array.shape[1:], array.dtype)
            self._arrays[name].append(array)
        self._local.load(local, len(prior))
        self._next_id = int(frames.ids.max()) + 1 if len(prior) else 0

    # ---- growth -------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._ids)

    @property
    def full(self) -> bool:
        """True at ``max_keyframes``: further keyframes are refused."""
        return len(self) >= self.config.max_keyframes

    def add(self, stamp: float, *, image: np.ndarray | None = None, features: np.ndarray | None = None,
            descriptor: np.ndarray | None = None, pose: Pose | None = None, travelled: float | None = None,
            name: str | None = None, source: str | None = None,
            local_features: dict[str, np.ndarray] | Callable[[], dict[str, np.ndarray] | None] | None = None
            ) -> int | None:
        """Offer a camera frame; returns its map row when it becomes a keyframe, None when spacing skips it or the
        map is full.

        Args:
            stamp: capture time in seconds.
            image: RGB uint8 (H, W, 3), encoded here only when the frame becomes a keyframe; or
            features: the encoder's output for the frame at this map's :attr:`input_size` (e.g.
                ``QueryFeatures.features`` of the localizer, (1, C, h, w); (1, P) for global models).
            descriptor: with ``features``, their global descriptor (P,) if already computed
                (``QueryFeatures.global_descriptor``): saves the VLAD aggregation.
            pose: (position (3,), orientation quaternion x y z w (4,)) in the map's frame, or None.
            travelled: odometry path length at ``stamp`` in metres; None = from the poses given to ``add``.
            name, source: the keyframe's name and source in the frame table (default: from the stamp).
            local_features: per-keyframe local features for geometric verification (module doc); arrays of at
                least one dimension whose first axis may differ between keyframes, same dtype and trailing
                shape per key throughout the map. A callable is called only when the frame becomes a keyframe
                (extracting features costs more than most frames are worth).
        """
        if (image is None) == (features is None):
            raise ValueError("give the frame as exactly one of image= or features=")
        if descriptor is not None and features is None:
            raise ValueError("descriptor= goes with features= (the encoder output it was computed from)")
        stamp = float(stamp)
        if not math.isfinite(stamp):
            raise InputError(f"keyframe stamp must be finite, got {stamp}")
        position, orientation = _pose_arrays(pose)
        blob = _check_local_features(local_features) if isinstance(local_features, dict) else None
        with self._add_lock:
            if np.isfinite(position).all():
                self._odometry.add(stamp, position)
                if travelled is None:
                    travelled = self._odometry.travelled_at(stamp)
            if self.full:
                if self.refused == 0:
                    log.warning("online map full (%d keyframes, online_map.max_keyframes): new keyframes are "
                                "refused", len(self))
                self.refused += 1
                return None
            window = self._spacing.push(BufferedFrame(stamp, np.zeros(0, np.float32), np.zeros(0, np.int64),
                                                      np.zeros(0, np.float32), travelled))
            if not window.current_buffered:
                return None
            if features is None:
                features = self.encoder.features([image], *self.input_size)  # type: ignore[list-item]
            if descriptor is None:
                descriptor = global_descriptors(features, self.head)
            descriptor = np.asarray(descriptor, np.float32).reshape(1, -1)
            if descriptor.shape != (1, self.dim):
                raise ValueError(f"features must be one frame's encoder output giving a {self.dim}-d descriptor, "
                                 f"got features {features.shape} -> {descriptor.shape}")
            patches = self._extract_patches(features, self.head) if self._extract_patches else {}
            if callable(local_features):
                produced = local_features()
                blob = _check_local_features(produced) if produced is not None else None
            with self._lock:
                row = len(self)
                key = self._next_id
                self._next_id += 1
                self._ids.append(np.array([key]))
                self._stamps.append(np.array([stamp]))
                self._positions.append(position[None])
                self._orientations.append(orientation[None])
                self._names.append(name if name is not None else f"{stamp:.9f}")
                self._sources.append(source if source is not None else f"online:{stamp:.9f}")
                for array_name, grown in self._arrays.items():
                    grown.append(patches[array_name])
                self._local.append(blob, row)
                self._descriptors.append(descriptor)
                self._index.add(descriptor)
                self._view = None
            return row

    # ---- reading (what the Localizer reads from a map) ------------------------------------------------------
    def _current(self) -> tuple[int, FrameTable, dict[str, np.ndarray]]:
        with self._lock:
            if self._view is None or self._view[0] != len(self):
                n = len(self)
                frames = FrameTable(self._ids.view(), self._names[:n], self._sources[:n], self._stamps.view(),
                                    self._positions.view(), self._orientations.view())
                arrays = {name: grown.view() for name, grown in self._arrays.items()}
                arrays.update(self._local.arrays())
                self._view = (n, frames, arrays)
            return self._view

    @property
    def frames(self) -> FrameTable:
        """The keyframes so far (views; a later keyframe does not change a table already returned)."""
        return self._current()[1]

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """Per-keyframe arrays so far (patch store, local features), as a saved map names them."""
        return self._current()[2]

    @property
    def descriptors(self) -> np.ndarray:
        """(N, P) float32 global descriptors so far (a view)."""
        with self._lock:
            return self._descriptors.view()

    @property
    def encoder_identity(self) -> dict[str, Any]:
        return dict(self._encoder_identity)

    def check_encoder(self, encoder: dict[str, Any]) -> None:
        """As :meth:`ReferenceMap.check_encoder`: refuse an encoder other than the map's."""
        self._snapshot(len(self)).check_encoder(encoder)

    def local_features(self, row: int) -> dict[str, np.ndarray] | None:
        """The local features stored with keyframe ``row``, or None when it has none."""
        with self._lock:
            if not 0 <= row < len(self):
                raise IndexError(f"keyframe row {row} out of range: the map has {len(self)}")
            return self._local.get(row)

    def searchable(self, rows: np.ndarray, stamp: float) -> np.ndarray:
        """(k,) bool: which of map ``rows`` a query stamped ``stamp`` may match (outside the exclusion window)."""
        rows = np.asarray(rows, dtype=np.int64)
        with self._lock:
            stamps = self._stamps.view()[rows]
        return ~(np.abs(stamps - float(stamp)) < self.exclusion_window)  # NaN stamps stay searchable

    def search(self, queries: np.ndarray, k: int, stamp: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k keyframes by inner product, leaving out those within the exclusion window of ``stamp``.

        Shape:
            queries: (B, P) float32; returns similarities (B, k') and rows (B, k'), k' = min(k, N), best first,
            padded with row -1 (similarity -inf) where fewer than k' keyframes lie outside the window.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be (B, {self.dim}), got {queries.shape}")
        with self._lock:
            n = len(self)
            k = min(int(k), n)
            if k <= 0:
                return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
            if stamp is None or self.exclusion_window <= 0:
                sims, idx = self._index.search(queries, k)
                return sims, idx.astype(np.int64)
            excluded = ~self._searchable_mask(float(stamp))
            fetch = min(k + int(excluded.sum()), n)
            sims, idx = self._index.search(queries, fetch)
        keep = (idx >= 0) & ~excluded[np.clip(idx, 0, None)]
        out_sims = np.full((len(queries), k), -np.inf, np.float32)
        out_idx = np.full((len(queries), k), -1, np.int64)
        for b in range(len(queries)):  # per query: its kept results, in rank order, up to k
            rows = np.flatnonzero(keep[b])[:k]
            out_sims[b, : len(rows)] = sims[b, rows]
            out_idx[b, : len(rows)] = idx[b, rows]
        return out_sims, out_idx

    def _searchable_mask(self, stamp: float) -> np.ndarray:
        return ~(np.abs(self._stamps.view() - stamp) < self.exclusion_window)

    def set_exclusion_window(self, seconds: float) -> None:
        """Use a new exclusion window from the next search on (e.g. after a parameter change)."""
        if seconds < 0 or not math.isfinite(seconds):
            raise InputError(f"exclusion_window must be a finite number of seconds >= 0, got {seconds}")
        self.exclusion_window = float(seconds)

    # ---- memory and persistence ---------------------------------------------------------------------------------
    def memory_bytes(self) -> dict[str, int]:
        """Bytes held: ``allocated`` by the growing buffers (whole capacity) and the index, ``used`` by the
        keyframes themselves."""
        with self._lock:
            buffers = [self._ids, self._stamps, self._positions, self._orientations, self._descriptors,
                       *self._arrays.values()]
            allocated = sum(b.nbytes for b in buffers) + self._local.nbytes()
            used = sum(b.view().nbytes for b in buffers) + self._local.used_bytes()
            index = 4 * self.dim * int(self._index.ntotal)
        return {"allocated": allocated + index, "used": used + index}

    def _snapshot(self, n: int) -> ReferenceMap:
        _, frames, arrays = self._current()
        with self._lock:
            descriptors = self._descriptors.view()
        return ReferenceMap(frames=frames, descriptors=descriptors[: len(frames)], head=self.head,
                            encoder=self.encoder_identity, input_size=self.input_size,
                            index_config=self.index_config, frame_id=self.frame_id, sections=dict(self.sections),
                            arrays=arrays, provenance=self._provenance(len(frames)))

    def _provenance(self, n: int) -> dict[str, Any]:
        """The prior map's provenance plus one record per online run; this run's says how many keyframes it added."""
        runs = [dict(r) for r in self.provenance["online"]]
        runs[-1]["keyframes"] = n - self._session_start
        return {**self.provenance, "online": runs}

    def snapshot(self) -> ReferenceMap:
        """The keyframes so far as a :class:`ReferenceMap` (views, no copy; its index is built when first used)."""
        return self._snapshot(len(self))

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the keyframes so far to ``path`` in the build_map format, atomically and crash-safely, under the
        map's lock (:meth:`ReferenceMap.save`). Keyframes added meanwhile are not in it (the next save has them).

        Raises:
            InputError: no keyframe yet; FileExistsError: ``path`` exists and not ``overwrite``; MapLockedError:
                another process writes that map.
        """
        with self._save_lock:
            snapshot = self.snapshot()
            if len(snapshot) == 0:
                raise InputError("the online map has no keyframes yet: nothing to save")
            return snapshot.save(path, overwrite=overwrite)


class _LocalFeatureStore:
    """The keyframes' local features as growing flat arrays per key plus rows per keyframe (module doc)."""

    def __init__(self, grow: Callable[[tuple[int, ...], Any], GrowingArray]) -> None:
        self._grow = grow
        self._present: GrowingArray | None = None
        self._counts: dict[str, GrowingArray] = {}
        self._starts: dict[str, GrowingArray] = {}
        self._data: dict[str, GrowingArray] = {}

    def load(self, arrays: dict[str, np.ndarray], frames: int) -> None:
        if not arrays:
            return
        if LOCAL_PRESENT not in arrays:
            raise MapError(f"prior map: local feature arrays {sorted(arrays)} without {LOCAL_PRESENT}")
        self._present = self._grow((), np.bool_)
        self._present.append(np.asarray(arrays[LOCAL_PRESENT], bool))
        for name in arrays:
            if not name.startswith(LOCAL_ROWS):
                continue
            key = name[len(LOCAL_ROWS):]
            counts = np.asarray(arrays[name], np.int64)
            data = np.asarray(arrays.get(LOCAL_DATA + key))
            if data.ndim == 0 or len(counts) != frames or counts.sum() != len(data):
                raise MapError(f"prior map: local features '{key}' do not add up ({LOCAL_ROWS}{key} sums to "
                               f"{int(counts.sum())} rows over {len(counts)} frames, {LOCAL_DATA}{key} has "
                               f"{data.shape})")
            self._add_key(key, data.shape[1:], data.dtype, 0)
            self._counts[key].append(counts)
            self._starts[key].append(np.cumsum(counts) - counts)
            self._data[key].append(data)

    def _add_key(self, key: str, row_shape: tuple[int, ...], dtype: Any, frames: int) -> None:
        self._counts[key] = self._grow((), np.int64)
        self._starts[key] = self._grow((), np.int64)
        self._data[key] = GrowingArray(row_shape, dtype, 1024)
        self._counts[key].append(np.zeros(frames, np.int64))
        self._starts[key].append(np.zeros(frames, np.int64))

    def append(self, blob: dict[str, np.ndarray] | None, row: int) -> None:
        if blob is None and self._present is None:
            return
        if self._present is None:
            self._present = self._grow((), np.bool_)
            self._present.append(np.zeros(row, bool))
        for key, value in (blob or {}).items():
            if key not in self._data:
                self._add_key(key, value.shape[1:], value.dtype, row)
            data = self._data[key]
            if value.shape[1:] != data.row_shape or value.dtype != data.dtype:
                raise InputError(f"local_features['{key}'] is {value.dtype}{value.shape}, earlier keyframes stored "
                                 f"{data.dtype}(n, {', '.join(map(str, data.row_shape))})")
        self._present.append(np.array([blob is not None]))
        for key in self._data:
            value = (blob or {}).get(key)
            count = 0 if value is None else len(value)
            self._starts[key].append(np.array([len(self._data[key])]))
            self._counts[key].append(np.array([count]))
            if count:
                self._data[key].append(value)

    def get(self, row: int) -> dict[str, np.ndarray] | None:
        if self._present is None or not self._present.view()[row]:
            return None
        out = {}
        for key, data in self._data.items():
            start, count = int(self._starts[key].view()[row]), int(self._counts[key].view()[row])
            out[key] = data.view()[start:start + count].copy()
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        if self._present is None:
            return {}
        out = {LOCAL_PRESENT: self._present.view()}
        for key in self._data:
            out[LOCAL_ROWS + key] = self._counts[key].view()
            out[LOCAL_DATA + key] = self._data[key].view()
        return out

    def _all(self) -> list[GrowingArray]:
        return [*([self._present] if self._present is not None else []), *self._counts.values(),
                *self._starts.values(), *self._data.values()]

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._all())

    def used_bytes(self) -> int:
        return sum(a.view().nbytes for a in self._all())


def _check_local_features(blob: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The blob with every value an array of at least one dimension (0-d values become 1 row); InputError for keys
    that cannot name a map array, and for object arrays (they could only be stored with pickle)."""
    if not isinstance(blob, dict):
        raise InputError(f"local_features must be a dict of numpy arrays, got {type(blob).__name__}")
    out = {}
    for key, value in blob.items():
        if not isinstance(key, str) or not ARRAY_NAME.fullmatch(LOCAL_DATA + key):
            raise InputError(f"local_features key {key!r}: use letters, digits, _ and - only (it names a map file)")
        array = np.asarray(value)
        if array.dtype.hasobject or array.dtype.kind not in "biufc":
            raise InputError(f"local_features['{key}'] has dtype {array.dtype}: only numeric and bool arrays are "
                             "stored (no pickle)")
        out[key] = array.reshape(1) if array.ndim == 0 else array
    return out


def _pose_arrays(pose: Pose | None) -> tuple[np.ndarray, np.ndarray]:
    if pose is None:
        return np.full(3, np.nan), np.full(4, np.nan)
    position = np.asarray(pose[0], dtype=np.float64).reshape(3)
    orientation = np.asarray(pose[1], dtype=np.float64).reshape(4)
    return position, orientation


def _input_size(config: OnlineMapConfig, encoder: Encoder, image_hw: tuple[int, int] | None) -> tuple[int, int]:
    """An empty map's network input: build_map's rule (:func:`vpr_ros.core.map_builder.input_size`), with the
    model card's default size standing in for an unknown camera image."""
    hw = image_hw or encoder.card.default_size
    build = BuildMapConfig(image_height=config.image_height, image_width=config.image_width,
                           max_upscale=config.max_upscale)
    return input_size(build, encoder, (int(hw[0]), int(hw[1])))
