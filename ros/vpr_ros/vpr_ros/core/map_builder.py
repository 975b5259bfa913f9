"""Build a ReferenceMap from frames (images + poses), resumable and atomic.

Two passes over the images:

1. *fit*: encode a sample of up to ``vlad.fit_images`` frames, fit the VLAD vocabulary (k-means) on
   their local features, then the PCA-whitening on their VLADs;
2. *encode*: encode every frame, aggregate and project its global descriptor, in chunks; with a patch
   store (``patches.preset``, :mod:`vpr_ros.core.patchnetvlad.store`) also its Patch-NetVLAD patch descriptors;
   here, or chunk by chunk on Ray actors (``executor``, :mod:`vpr_ros.core.ray_executor`) with the same result.

Progress lives in a work directory beside the output (``.<name>.partial``): the fitted head and every
finished chunk. An interrupted build started again with the same inputs and settings continues where it
stopped; different inputs or settings start afresh. The map itself is written atomically at the end
(see :meth:`ReferenceMap.save`). :func:`append_to_map` grows an existing map with new frames the same way,
keeping its fitted head. Both hold the map's lock file (:func:`vpr_ros.core.refmap.map_lock`) from start to
end, so two builds of one map cannot race, and first recover what a killed earlier write left.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import yaml
from tqdm import tqdm

from vpr_ros.config import config_to_dict, section, setting
from vpr_ros.core.encoders import Encoder, EncoderConfig, make_encoder
from vpr_ros.core.files import atomic_savez, atomic_write_text
from vpr_ros.core.frames import FrameSource, FrameTable
from vpr_ros.core.patchnetvlad.rerank import stored_spec
from vpr_ros.core.patchnetvlad.store import SECTION as PATCH_SECTION
from vpr_ros.core.patchnetvlad.store import PatchStoreConfig, feature_grid, patch_extractor, resolve_spec
from vpr_ros.core.refmap import (
    IndexConfig,
    ReferenceMap,
    check_overwritable,
    fault_point,
    map_lock,
    read_manifest,
    recover_interrupted_swap,
)
from vpr_ros.core.vlad import (
    VladConfig,
    VladHead,
    assignment_from_centroids,
    fit_pca_whitening,
    global_descriptors,
    kmeans_vocabulary,
    local_descriptors,
)
from vpr_ros.errors import InputError

log = logging.getLogger(__name__)

#: Extra per-frame outputs (e.g. Patch-NetVLAD patch descriptors): encoder output (B, ...), head (None for
#: ``global`` encoders) -> named arrays with B rows each, stored in the map's ``arrays/``.
FrameExtractor = Callable[[np.ndarray, VladHead | None], dict[str, np.ndarray]]


#: Largest network input side: 4K video is 3840 wide; the default model wants 640x480, and a batch of 8 inputs
#: of 4096x4096 already needs several GB of activations.
MAX_INPUT_SIDE = 4096


@dataclass(frozen=True)
class BuildMapConfig:
    """How a reference map is built from images."""

    image_height: int = setting(0, "network input height in pixels (0 = automatic, see max_upscale)", min=0,
                                max=MAX_INPUT_SIDE)
    image_width: int = setting(0, "network input width in pixels (0 = automatic, see max_upscale)", min=0,
                               max=MAX_INPUT_SIDE)
    max_upscale: float = setting(
        2.0, "automatic input size: the model card's default (480x640 for the default model), but images "
        "smaller than that are enlarged at most this many times (more would invent no detail; fewer pixels "
        "leave too few local features for VLAD)", min=1.0)
    chunk_size: int = setting(256, "frames per resumable chunk", min=1)
    frame_id: str = setting("map", "coordinate frame of the poses; published as header.frame_id")
    encoder: EncoderConfig = section(EncoderConfig)
    vlad: VladConfig = section(VladConfig)
    index: IndexConfig = section(IndexConfig)
    patches: PatchStoreConfig = section(PatchStoreConfig)


def _fingerprint(config: BuildMapConfig, encoder: Encoder, frames: FrameTable,
                 extra: dict[str, Any]) -> str:
    payload = json.dumps({"config": config_to_dict(config), "encoder": encoder.sha256, "names": frames.names,
                          "sources": frames.sources, "extra": extra}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def input_size(config: BuildMapConfig, encoder: Encoder, image_hw: tuple[int, int]) -> tuple[int, int]:
    """Network input (height, width): explicit settings, else the card's default capped at max_upscale x image.

    Automatic sizes are rounded up to the model's size multiple (its output stride). Encoders whose card
    declares ``input.fixed_size`` (thumbnails: the size is part of their identity) always get their own size.
    """
    if encoder.card.raw.get("input", {}).get("fixed_size"):
        return encoder.card.default_size
    multiple = int(encoder.card.raw.get("input", {}).get("size_multiple", encoder.card.stride))
    auto = []
    for default, actual in zip(encoder.card.default_size, image_hw, strict=True):
        target = min(default, actual * config.max_upscale)
        auto.append(int(-(-target // multiple) * multiple))
    return (config.image_height or auto[0], config.image_width or auto[1])


def check_output_apart_from_inputs(output: str | Path, inputs: dict[str, str | Path]) -> None:
    """Refuse a map output that is, contains or lies inside one of ``inputs`` (what it is -> path), with symbolic
    links and ``..`` resolved: writing the map there would replace the input."""
    target = Path(output).resolve()
    for what, given in inputs.items():
        source = Path(given).resolve()
        if target == source:
            relation = "is"
        elif source in target.parents:
            relation = "lies inside"
        elif target in source.parents:
            relation = "contains"
        else:
            continue
        raise InputError(f"map output {output} {relation} the input {what} {given}; write the map elsewhere")


def fit_head(source: FrameSource, encoder: Encoder, size: tuple[int, int], cfg: VladConfig,
             progress: bool = True) -> VladHead:
    """Fit the VLAD vocabulary and PCA-whitening on a sample of the frames (pass 1)."""
    rng = np.random.default_rng(cfg.seed)
    n = len(source)
    sample = np.sort(rng.choice(n, size=min(n, cfg.fit_images), replace=False))
    # Feature maps of the sample are kept (as float16, ~270 MB for 1000 images at 640x480) so the PCA can be
    # fitted on their VLADs once the vocabulary exists, without encoding the sample twice.
    feats_list, kmeans_list = [], []
    bs = encoder.config.batch_size
    for start in tqdm(range(0, len(sample), bs), desc="fit: encode sample", unit="batch", disable=not progress):
        feats = encoder.features([source.load_image(int(i)) for i in sample[start:start + bs]], *size)
        local = local_descriptors(feats, normalize=True)  # (b, h*w, D), L2-normalised like the head's input
        per_image = min(cfg.kmeans_features_per_image, local.shape[1])
        picks = np.stack([rng.choice(local.shape[1], per_image, replace=False) for _ in range(len(local))])
        kmeans_list.append(np.take_along_axis(local, picks[:, :, None], axis=1).reshape(-1, local.shape[2]))
        feats_list.append(feats.astype(np.float16))
    kmeans_samples = np.concatenate(kmeans_list)
    log.info("fitting %d-word vocabulary on %d local features from %d images", cfg.num_clusters,
             len(kmeans_samples), len(sample))
    centroids = kmeans_vocabulary(kmeans_samples, cfg.num_clusters, cfg.kmeans_iterations, cfg.seed)
    weight, bias = assignment_from_centroids(centroids, kmeans_samples, cfg.assignment_ratio)
    head = VladHead(centroids, weight, bias, normalize_input=True)
    if cfg.pca_dim > 0:
        vlads = np.concatenate([head.vlad(f.astype(np.float32)) for f in feats_list])
        projection, proj_bias = fit_pca_whitening(vlads, cfg.pca_dim, cfg.whiten, cfg.whiten_regularisation)
        if projection.shape[0] < cfg.pca_dim:
            log.warning("PCA dimension clamped from %d to %d (only %d images to fit it on)",
                        cfg.pca_dim, projection.shape[0], len(vlads))
        head = VladHead(centroids, weight, bias, projection, proj_bias, normalize_input=True)
    return head


def _read_work_state(work: Path) -> dict[str, Any]:
    state_file = work / "state.yaml"
    state = yaml.safe_load(state_file.read_text()) if state_file.exists() else {}
    return state if isinstance(state, dict) else {}


def _open_work_dir(work: Path, fingerprint: str, frames: int, append_to: str | None = None) -> None:
    """Reuse ``work`` if it holds progress for the same fingerprint, else start it afresh.

    ``append_to``: the sha256 of the descriptors of the map being grown, kept in the state so that progress made
    for an earlier version of the map is recognised as stale (:func:`_discard_stale_append_work`).
    """
    if work.exists():
        if _read_work_state(work).get("fingerprint") != fingerprint:
            log.warning("discarding unfinished build in %s (inputs or settings changed)", work)
            shutil.rmtree(work)
        else:
            log.info("resuming unfinished build from %s", work)
    work.mkdir(parents=True, exist_ok=True)
    state = {"fingerprint": fingerprint, "frames": frames, **({"append_to": append_to} if append_to else {})}
    atomic_write_text(work / "state.yaml", yaml.safe_dump(state))


def _discard_stale_append_work(work: Path, base: str) -> None:
    """Remove append progress made for another version of the map than the one with descriptors sha256 ``base``.

    A kill after the grown map was saved but before its progress was removed leaves such progress behind; it can
    never be resumed (its fingerprint names the map it grew), so it would stay forever.
    """
    if work.is_dir() and _read_work_state(work).get("append_to", base) != base:
        log.info("removing %s, progress of an append to an earlier version of the map", work)
        shutil.rmtree(work)


@dataclass(frozen=True)
class Chunk:
    """Frames ``start`` .. ``stop - 1`` of a build, saved as ``chunk_<index>.npz`` in its work directory."""

    index: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start

    def file(self, work: Path) -> Path:
        return work / f"chunk_{self.index:06d}.npz"


def encode_chunk(load_image: Callable[[int], np.ndarray], count: int, encoder: Encoder, head: VladHead | None,
                 size: tuple[int, int], extractors: Sequence[FrameExtractor] = (),
                 on_batch: Callable[[int], object] | None = None) -> dict[str, np.ndarray]:
    """Global descriptors (and extractor outputs) of the ``count`` images ``load_image(0 .. count - 1)``.

    Batches of ``encoder.config.batch_size`` start at the chunk's first frame, so a chunk gives the same batches
    -- and with the same ONNX Runtime threads bitwise the same descriptors -- wherever it is encoded: in this
    process or on a Ray worker (:mod:`vpr_ros.core.ray_executor`). ``on_batch(frames)`` after each batch.

    Shape:
        returns ``descriptors`` (count, P) float32 plus one (count, ...) array per extractor output.
    """
    outputs: dict[str, list[np.ndarray]] = {"descriptors": []}
    bs = encoder.config.batch_size
    for b0 in range(0, count, bs):
        b1 = min(b0 + bs, count)
        feats = encoder.features([load_image(i) for i in range(b0, b1)], *size)
        outputs["descriptors"].append(global_descriptors(feats, head))
        for extract in extractors:
            for name, arr in extract(feats, head).items():
                outputs.setdefault(name, []).append(arr)
        if on_batch is not None:
            on_batch(b1 - b0)
    return {k: np.concatenate(v) for k, v in outputs.items()}


class ChunkExecutor(Protocol):
    """Encodes chunks somewhere else than in this process (e.g. :class:`vpr_ros.core.ray_executor.RayExecutor`).

    ``encode_chunks`` yields ``(chunk, outputs)`` as chunks finish, in any order, each ``outputs`` equal to what
    :func:`encode_chunk` gives for it here; the caller saves each chunk as it arrives.
    """

    def encode_chunks(self, source: FrameSource, chunks: Sequence[Chunk], encoder: Encoder, head: VladHead | None,
                      size: tuple[int, int], extractors: Sequence[FrameExtractor]
                      ) -> Iterator[tuple[Chunk, dict[str, np.ndarray]]]: ...


def encode_in_chunks(source: FrameSource, encoder: Encoder, head: VladHead | None, size: tuple[int, int],
                     work: Path, chunk_size: int, extractors: Sequence[FrameExtractor] = (),
                     progress: bool = True, executor: ChunkExecutor | None = None) -> dict[str, np.ndarray]:
    """Pass 2: global descriptors (and extractor outputs) of every frame, each finished chunk saved in ``work``.

    Chunks already in ``work`` are loaded instead of encoded, which is what makes builds resumable. With an
    ``executor`` the missing chunks are encoded by it (e.g. on Ray workers) and saved here, by this process, as
    each arrives; the chunks, their batches and the files are the same as without one, so a build may be resumed
    with or without an executor.

    Shape:
        returns ``descriptors`` (N, P) float32 plus one (N, ...) array per extractor output.
    """
    n = len(source)
    chunks = [Chunk(i, start, min(start + chunk_size, n)) for i, start in enumerate(range(0, n, chunk_size))]
    missing = [c for c in chunks if not c.file(work).exists()]
    bar = tqdm(total=n, initial=n - sum(len(c) for c in missing), desc="encode frames", unit="img",
               disable=not progress)
    finished: Iterator[tuple[Chunk, dict[str, np.ndarray]]]
    if executor is None:
        finished = ((c, encode_chunk(lambda i, c=c: source.load_image(c.start + i), len(c), encoder, head, size,
                                     extractors, bar.update)) for c in missing)
    else:
        finished = executor.encode_chunks(source, missing, encoder, head, size, extractors)
    for chunk, outputs in finished:
        atomic_savez(chunk.file(work), outputs)
        if executor is not None:
            bar.update(len(chunk))
    bar.close()

    parts: dict[str, list[np.ndarray]] = {}
    for chunk in chunks:
        with np.load(chunk.file(work)) as npz:
            for k in npz.files:
                parts.setdefault(k, []).append(npz[k])
    return {k: np.concatenate(v) for k, v in parts.items()}


def build_map(source: FrameSource, output: str | Path, config: BuildMapConfig | None = None,
              extractors: Sequence[FrameExtractor] = (), sections: dict[str, Any] | None = None,
              overwrite: bool = False, progress: bool = True, encoder: Encoder | None = None,
              provenance: dict[str, Any] | None = None, executor: ChunkExecutor | None = None) -> ReferenceMap:
    """Encode every frame of ``source`` and write a map to ``output`` (atomically). Resumes if interrupted.

    Args:
        source: frames and their images.
        output: map directory to create.
        config: build settings (defaults: :class:`BuildMapConfig`).
        extractors: extra per-frame outputs stored as map arrays (e.g. patch descriptors).
        sections: extra manifest sections describing those arrays (e.g. the patch configuration).
        overwrite: replace an existing map at ``output``.
        progress: show progress bars.
        encoder: an already loaded encoder (else one is made from ``config.encoder``).
        provenance: free-form record of how the map was made (command line, inputs).
        executor: encodes the chunks elsewhere (e.g. on Ray workers, :mod:`vpr_ros.core.ray_executor`); the
            vocabulary / PCA fit still runs here, once.
    """
    config = config or BuildMapConfig()
    output = Path(output)
    if len(source) == 0:
        raise InputError("no frames to map")
    ids, counts = np.unique(source.frames.ids, return_counts=True)
    if (counts > 1).any():
        raise InputError(f"duplicate frame ids: {ids[counts > 1][:5].tolist()}")
    with map_lock(output):
        recover_interrupted_swap(output)
        if output.exists():
            if not overwrite:
                raise FileExistsError(f"{output} already exists (use --overwrite to replace it)")
            check_overwritable(output)  # before any work: it would be refused at the end
        encoder = encoder or make_encoder(config.encoder)
        size = input_size(config, encoder, source.load_image(0).shape[:2])

        work = output.parent / f".{output.name}.partial"
        fingerprint = _fingerprint(config, encoder, source.frames, {"sections": sections or {}, "size": size})
        _open_work_dir(work, fingerprint, len(source))

        head_file = work / "head.npz"
        head: VladHead | None
        if encoder.card.kind != "backbone":
            head = encoder.head  # trained NetVLAD head, or None for global encoders: nothing to fit
        elif head_file.exists():
            with np.load(head_file) as npz:
                head = VladHead.from_arrays(dict(npz))
        else:
            head = fit_head(source, encoder, size, config.vlad, progress)
            atomic_savez(head_file, head.to_arrays())

        sections = dict(sections or {})
        extractors = list(extractors)
        if config.patches.preset != "none":
            if head is None or head.projection is None:
                log.warning("patches.preset=%s ignored: %s", config.patches.preset,
                            "a 'global' encoder has no local features" if head is None else
                            "the VLAD head has no PCA projection (vlad.pca_dim=0)")
            else:
                spec = resolve_spec(config.patches, feature_grid(size, encoder.card.stride), encoder.card.stride,
                                    head)
                assert spec is not None
                log.info("patch store: %s, %.1f kB per frame", spec.describe(), spec.bytes_per_frame() / 1e3)
                extractors.append(patch_extractor(spec, config.patches.strategy))
                sections[PATCH_SECTION] = spec.section()

        merged = encode_in_chunks(source, encoder, head, size, work, config.chunk_size, extractors, progress,
                                  executor)
        descriptors = merged.pop("descriptors")
        refmap = ReferenceMap(frames=source.frames, descriptors=descriptors, head=head,
                              encoder=encoder.describe(), input_size=size, index_config=config.index,
                              frame_id=config.frame_id, sections=sections, arrays=merged,
                              provenance={"build_config": config_to_dict(config), **(provenance or {})})
        refmap.save(output, overwrite=overwrite)
        fault_point("build:after-save")
        shutil.rmtree(work, ignore_errors=True)
    return refmap


def append_to_map(source: FrameSource, map_path: str | Path, config: BuildMapConfig | None = None,
                  extractors: Sequence[FrameExtractor] = (), progress: bool = True, encoder: Encoder | None = None,
                  provenance: dict[str, Any] | None = None, retrain: bool = False,
                  executor: ChunkExecutor | None = None) -> tuple[ReferenceMap, int]:
    """Add the frames of ``source`` to an existing map (incremental growth), atomically and resumably.

    The new descriptors are added to the map's index as it is (a trained IVF index is not trained again; the
    manifest keeps when and on how many frames it was trained); ``retrain`` builds the index afresh over all
    frames (``auto`` choosing again for the new size), also when no frame is new.

    The map's own encoder, input size and fitted head are used (its vocabulary and PCA are not refitted, so
    old and new descriptors stay comparable). Frames whose ``source`` is already in the map are skipped, which
    makes appending the same recording twice a no-op. New frames get ids after the map's largest id. Progress
    lives in ``.<name>.append.partial`` beside the map; the map is replaced only when all frames are encoded.

    Args:
        source: frames to add.
        map_path: an existing map directory.
        config: only ``chunk_size`` and ``encoder`` (device, threads, batch size) are used; the rest is the map's.
        extractors: the same extra per-frame outputs the map was built with (their arrays grow too); a
            Patch-NetVLAD patch store is grown from its manifest section without being given.
        retrain: build the index afresh over all frames instead of adding the new ones to the trained index.
        executor: encodes the new frames' chunks elsewhere (see :func:`build_map`).

    Returns:
        the grown map and the number of frames added.
    """
    config = config or BuildMapConfig()
    map_path = Path(map_path)
    with map_lock(map_path):
        refmap = ReferenceMap.load(map_path)  # recovers a map left aside by a killed write first
        work = map_path.parent / f".{map_path.name}.append.partial"
        base = read_manifest(map_path)["files"]["descriptors.npy"]["sha256"]
        _discard_stale_append_work(work, base)
        encoder = encoder or make_encoder(config.encoder)
        refmap.check_encoder(encoder.describe())
        known = set(refmap.frames.sources)
        fresh = np.array([s not in known for s in source.frames.sources], dtype=bool)
        if not fresh.all():
            log.info("%d of %d frames are already in %s and are skipped", int((~fresh).sum()), len(source),
                     map_path)
        if not fresh.any():
            if not retrain:
                return refmap, 0
            refmap.retrain_index()
            refmap.save(map_path, overwrite=True)
            return ReferenceMap.load(map_path), 0
        rows = np.flatnonzero(fresh)
        start_id = int(refmap.frames.ids.max()) + 1 if len(refmap) else 0
        subset = source.take(rows, ids=start_id + np.arange(len(rows)))
        frames = subset.frames
        size = (int(refmap.input_size[0]), int(refmap.input_size[1]))
        extractors = list(extractors)
        if not extractors and PATCH_SECTION in refmap.sections:
            # A Patch-NetVLAD store describes itself in the manifest: grow it with the same configuration.
            extractors.append(patch_extractor(stored_spec(refmap), config.patches.strategy))
        if refmap.arrays and not extractors:
            raise InputError(f"{map_path} stores per-frame arrays {sorted(refmap.arrays)}; append with the "
                             "extractors that made them")

        fingerprint = _fingerprint(config, encoder, frames, {"append_to": base, "size": size})
        _open_work_dir(work, fingerprint, len(frames), append_to=base)
        merged = encode_in_chunks(subset, encoder, refmap.head, size, work, config.chunk_size, extractors,
                                  progress, executor)
        descriptors = merged.pop("descriptors")
        if set(merged) != set(refmap.arrays):
            raise InputError(f"the extractors produce arrays {sorted(merged)} but {map_path} stores "
                             f"{sorted(refmap.arrays)}")
        refmap.append(frames, descriptors, merged, retrain=retrain)
        refmap.provenance.setdefault("appended", []).append(
            {"frames": len(frames), "first_id": start_id, **(provenance or {})})
        refmap.save(map_path, overwrite=True)
        fault_point("append:after-save")
        shutil.rmtree(work, ignore_errors=True)
        return ReferenceMap.load(map_path), len(frames)
