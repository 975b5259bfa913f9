"""The online keyframe map on the real corridor images: saved map == build_map (and == build_map + append_to_map),
exclusion window, keyframe spacing, limit, chunked growth, local features without pickle, the Localizer on it.

Tolerances of the map comparisons: frames.npz and head.npz byte for byte; global descriptors within 1e-5 (build_map
encodes batches of 8, the online map one frame at a time, and ONNX Runtime's convolutions round differently per
batch size); int8 patch codes within 1 code step, their per-frame scales within 1e-4 relative; the FAISS index by
its search results (same top-5 rows for every map frame as query).
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

from vpr_ros.core.encoders import EncoderConfig, make_encoder
from vpr_ros.core.frames import FrameSource
from vpr_ros.core.image import load_rgb
from vpr_ros.core.localizer import Localizer, LocalizerConfig
from vpr_ros.core.map_builder import BuildMapConfig, append_to_map, build_map
from vpr_ros.core.online_map import GrowingArray, OnlineMap, OnlineMapConfig
from vpr_ros.core.patchnetvlad.rerank import RerankConfig
from vpr_ros.core.patchnetvlad.store import PatchStoreConfig
from vpr_ros.core.refmap import ReferenceMap
from vpr_ros.core.sequence import SequenceConfig
from vpr_ros.errors import InputError, MapError
from vpr_ros.io.images import folder_source

THUMBNAIL = EncoderConfig(model="thumbnail:64x32,patch=8")
EVERY_FRAME = OnlineMapConfig(min_distance=0.0, min_time=0.0)


def feed(online: OnlineMap, source: FrameSource, rows: range | None = None) -> list[int | None]:
    """Offer the frames of ``source`` one by one with their stamps, poses, names and sources, as the node would."""
    f = source.frames
    return [online.add(float(f.stamps[i]), image=source.load_image(i), pose=(f.positions[i], f.orientations[i]),
                       name=f.names[i], source=f.sources[i]) for i in (rows if rows is not None else range(len(f)))]


def assert_same_map(online_path: Path, built_path: Path) -> None:
    """The two maps on disk hold the same data, file by file (tolerances in the module doc)."""
    online, built = ReferenceMap.load(online_path), ReferenceMap.load(built_path)
    assert sorted(p.name for p in online_path.rglob("*")) == sorted(p.name for p in built_path.rglob("*"))
    assert (online_path / "frames.npz").read_bytes() == (built_path / "frames.npz").read_bytes()
    if (built_path / "head.npz").exists():
        with np.load(online_path / "head.npz") as a, np.load(built_path / "head.npz") as b:
            assert sorted(a.files) == sorted(b.files)
            for key in a.files:
                np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_allclose(online.descriptors, built.descriptors, atol=1e-5, rtol=0)
    assert sorted(online.arrays) == sorted(built.arrays)
    for name, array in built.arrays.items():
        mine = np.asarray(online.arrays[name])
        assert mine.shape == array.shape and mine.dtype == array.dtype, name
        if array.dtype == np.uint8:
            assert np.abs(mine.astype(np.int16) - np.asarray(array).astype(np.int16)).max() <= 1, name
        else:
            np.testing.assert_allclose(mine, array, rtol=1e-4, atol=0, err_msg=name)
    manifests = [yaml.safe_load((p / "manifest.yaml").read_text()) for p in (online_path, built_path)]
    for key in ("format", "format_version", "frame_count", "frame_id", "encoder", "input_size", "head", "descriptor",
                "index", "sections"):
        assert manifests[0][key] == manifests[1][key], key
    assert manifests[0]["files"].keys() == manifests[1]["files"].keys()
    assert "online" in manifests[0]["provenance"]
    k = 5
    _, rows_online = online.search(built.descriptors, k)
    _, rows_built = built.search(built.descriptors, k)
    np.testing.assert_array_equal(rows_online[:, 0], rows_built[:, 0])
    assert all(set(a) == set(b) for a, b in zip(rows_online, rows_built, strict=True))


def test_online_map_saved_equals_build_map_with_patches(tmp_path, corridor, encoder, corridor_patch_map):
    """Vocabulary, PCA and patch store from the built map; keyframes fed one by one == build_map of the frames."""
    ref = folder_source(corridor / "ref", corridor / "ref_poses.csv")
    config = dataclasses.replace(EVERY_FRAME, vocabulary_from=str(corridor_patch_map),
                                 patches=PatchStoreConfig(preset="speed"))
    online = OnlineMap.empty(encoder, config, exclusion_window=5.0)
    # The localizer holds the map while it is still empty, as the node does: re-ranking and retrieval must see
    # the keyframes added afterwards.
    localizer = Localizer(online, encoder, LocalizerConfig(rerank=RerankConfig(method="auto")))
    assert localizer.reranker is not None
    f = ref.frames
    rows = []
    for i in range(len(ref)):  # as the node: the localizer's encoding of the frame is reused for the keyframe
        query = localizer.encode(ref.load_image(i))
        rows.append(online.add(float(f.stamps[i]), features=query.features, descriptor=query.global_descriptor,
                               pose=(f.positions[i], f.orientations[i]), name=f.names[i], source=f.sources[i]))
    assert rows == list(range(len(ref)))
    online.save(tmp_path / "online")
    assert_same_map(tmp_path / "online", corridor_patch_map)

    fixed = Localizer(ReferenceMap.load(corridor_patch_map), encoder, localizer.config)
    same = 0
    queries = sorted((corridor / "query").glob("*.jpg"))[::11]
    for path in queries:
        image = load_rgb(path)
        grown, built = localizer.localize_single_frame(image), fixed.localize_single_frame(image)
        same += grown.best_index == built.best_index
    assert same >= len(queries) - 1, f"only {same} of {len(queries)} queries got the same answer on both maps"


def test_online_growth_from_prior_equals_build_map_then_append(tmp_path, corridor, encoder):
    """A prior map (first 60 frames) grown online by the other 51 == build_map of 60 then append_to_map of 51."""
    ref = folder_source(corridor / "ref", corridor / "ref_poses.csv")
    first, rest = ref.take(np.arange(60)), ref.take(np.arange(60, len(ref)))
    cfg = BuildMapConfig(patches=PatchStoreConfig(preset="speed"))
    build_map(first, tmp_path / "prior", cfg, progress=False, encoder=encoder)
    shutil.copytree(tmp_path / "prior", tmp_path / "appended")
    _, added = append_to_map(rest, tmp_path / "appended", cfg, progress=False, encoder=encoder)
    assert added == 51

    online = OnlineMap.from_map(tmp_path / "prior", encoder, EVERY_FRAME, exclusion_window=5.0)
    assert feed(online, rest) == list(range(60, 111))
    online.save(tmp_path / "online")
    assert_same_map(tmp_path / "online", tmp_path / "appended")
    # ...and the grown map can be grown again by another online run, keeping every frame
    again = OnlineMap.from_map(tmp_path / "online", encoder, EVERY_FRAME)
    assert len(again) == 111 and again.frames.ids.tolist() == list(range(111))


def test_search_never_returns_keyframes_inside_the_exclusion_window(corridor):
    """Each keyframe, queried at its own stamp right after insertion, is its own best match: the search must leave
    it and every other keyframe within the window out; the localizer with a sequence stage too."""
    ref = folder_source(corridor / "ref", corridor / "ref_poses.csv")
    encoder = make_encoder(THUMBNAIL)
    window = 4.0  # seconds: corridor frames are 0.5 s apart, so 15 keyframes around each query are excluded
    online = OnlineMap.empty(encoder, EVERY_FRAME, exclusion_window=window)
    seq = LocalizerConfig(encoder=THUMBNAIL, top_k=10, sequence=SequenceConfig(method="seqslam", length=5))
    localizer = Localizer(online, encoder, seq)
    stamps = ref.frames.stamps
    self_matches = 0
    for i in range(len(ref)):
        image = ref.load_image(i)
        hyp = localizer.localize(image, stamp=float(stamps[i])) if len(online) else None
        if hyp is not None:
            assert not (np.abs(stamps[hyp.indices] - stamps[i]) < window).any(), f"frame {i}: {hyp.indices}"
            assert hyp.single is not None
            assert not (np.abs(stamps[hyp.single.indices] - stamps[i]) < window).any()
        row = online.add(float(stamps[i]), image=image)
        assert row == i
        query = online.descriptors[row:row + 1]
        sims, rows = online.search(query, 10, stamp=float(stamps[i]))
        found = rows[0][rows[0] >= 0]
        assert not (np.abs(stamps[found] - stamps[i]) < window).any(), f"frame {i}: {found}"
        assert len(found) == min(10, int((np.abs(stamps[: i + 1] - stamps[i]) >= window).sum()))
        assert (np.diff(sims[0][: len(found)]) <= 1e-6).all(), "results must stay best first"
        self_matches += int(online.search(query, 1)[1][0, 0] == row)  # no stamp: no window
    assert self_matches == len(ref), "without a stamp the keyframe itself must come first (the window is what hides it)"


def test_keyframe_spacing_by_odometry_distance_then_time():
    encoder = make_encoder(THUMBNAIL)
    online = OnlineMap.empty(encoder, OnlineMapConfig(min_distance=1.0, min_time=2.0))
    image = np.full((32, 64, 3), 128, np.uint8)
    kept = [online.add(0.1 * i, image=image, pose=((0.3 * i, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)))
            for i in range(14)]
    # 0.3 m per frame, a keyframe once 1 m was travelled since the last: 0, 1.2, 2.4, 3.6 m -> frames 0, 4, 8, 12
    assert [i for i, r in enumerate(kept) if r is not None] == [0, 4, 8, 12]
    np.testing.assert_allclose(online.frames.positions[:, 0], [0.0, 1.2, 2.4, 3.6])
    # Odometry disappears: spacing falls back to time (2 s), starting afresh at the switch
    no_pose = [online.add(2.0 + 0.5 * i, image=image) for i in range(10)]
    assert [i for i, r in enumerate(no_pose) if r is not None] == [0, 4, 8]


def test_keyframe_limit_refuses_new_keyframes_and_keeps_memory_bounded():
    encoder = make_encoder(THUMBNAIL)
    online = OnlineMap.empty(encoder, OnlineMapConfig(min_distance=0.0, min_time=0.0, max_keyframes=5,
                                                      initial_capacity=2))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (32, 64, 3), dtype=np.uint8) for _ in range(8)]
    rows = [online.add(float(i), image=im) for i, im in enumerate(images)]
    assert rows == [0, 1, 2, 3, 4, None, None, None]
    assert len(online) == 5 and online.full and online.refused == 3
    assert online.frames.stamps.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0], "the first keyframes stay, none is dropped"
    assert online.memory_bytes()["allocated"] <= online.memory_bytes()["used"] * 1.0001
    np.testing.assert_allclose(online.descriptors, encoder.features(images[:5], 32, 64) /
                               np.linalg.norm(encoder.features(images[:5], 32, 64), axis=1, keepdims=True),
                               atol=1e-6)


def test_growing_array_doubles_and_earlier_views_stay_valid():
    grown = GrowingArray((3,), np.float32, capacity=4, limit=100)
    capacities, views = [], []
    for i in range(40):
        grown.append(np.full((1, 3), i))
        capacities.append(grown.capacity)
        views.append(grown.view())
    assert sorted(set(capacities)) == [4, 8, 16, 32, 64], "capacity grows by doubling, not by one row per insert"
    for i, view in enumerate(views):
        np.testing.assert_array_equal(view[:, 0], np.arange(i + 1))
    capped = GrowingArray((), np.int64, capacity=4, limit=6)
    capped.append(np.arange(6))
    assert capped.capacity == 6
    with pytest.raises(ValueError, match="limit"):
        capped.append(np.arange(1))


def test_local_features_round_trip_without_pickle(tmp_path):
    encoder = make_encoder(THUMBNAIL)
    online = OnlineMap.empty(encoder, EVERY_FRAME)
    rng = np.random.default_rng(1)
    blobs: list[dict[str, np.ndarray] | None] = []
    for i in range(6):
        n = int(rng.integers(0, 50))
        blob = None if i == 2 else {"keypoints": rng.random((n, 2)).astype(np.float32),
                                    "descriptors": rng.integers(0, 255, (n, 32), dtype=np.uint8),
                                    "intrinsics": np.eye(3)}
        blobs.append(blob)
        online.add(float(i), image=rng.integers(0, 255, (32, 64, 3), dtype=np.uint8), local_features=blob)

    def check(m: OnlineMap, count: int) -> None:
        for row in range(count):
            got = m.local_features(row)
            if blobs[row] is None:
                assert got is None
                continue
            assert got is not None and sorted(got) == sorted(blobs[row])
            for key, value in blobs[row].items():
                np.testing.assert_array_equal(got[key], value)

    check(online, 6)
    online.save(tmp_path / "map")
    for npy in (tmp_path / "map" / "arrays").glob("*.npy"):
        np.load(npy, allow_pickle=False)  # raises if anything needed pickle
    again = OnlineMap.from_map(tmp_path / "map", encoder, EVERY_FRAME)
    check(again, 6)
    blobs.append({"keypoints": np.zeros((3, 2), np.float32), "descriptors": np.zeros((3, 32), np.uint8),
                  "intrinsics": np.eye(3)})
    again.add(10.0, image=np.zeros((32, 64, 3), np.uint8), local_features=blobs[-1])
    check(again, 7)

    with pytest.raises(InputError, match="key"):
        online.add(20.0, image=np.zeros((32, 64, 3), np.uint8), local_features={"../evil": np.zeros(2)})
    with pytest.raises(InputError, match="pickle"):
        online.add(21.0, image=np.zeros((32, 64, 3), np.uint8), local_features={"k": np.array([object()])})
    with pytest.raises(InputError, match="earlier keyframes"):
        online.add(22.0, image=np.zeros((32, 64, 3), np.uint8),
                   local_features={"keypoints": np.zeros((3, 3), np.float32)})


def test_empty_map_vocabulary_comes_from_the_card_or_a_vocabulary_map(tmp_path, corridor, encoder, corridor_map):
    with pytest.raises(InputError, match="vocabulary_from"):
        OnlineMap.empty(encoder, OnlineMapConfig())  # the default model is a backbone: no trained head
    online = OnlineMap.empty(encoder, OnlineMapConfig(vocabulary_from=str(corridor_map)))
    built = ReferenceMap.load(corridor_map)
    assert online.input_size == built.input_size and online.head is not None
    np.testing.assert_array_equal(online.head.centroids, built.head.centroids)
    thumbnails = make_encoder(THUMBNAIL)
    assert OnlineMap.empty(thumbnails).head is None  # a global model needs no vocabulary
    with pytest.raises(MapError, match="encoder"):
        OnlineMap.empty(thumbnails, OnlineMapConfig(vocabulary_from=str(corridor_map)))
    with pytest.raises(InputError, match="no keyframes"):
        OnlineMap.empty(thumbnails).save(tmp_path / "nothing")


def test_concurrent_search_while_adding(corridor):
    """The node adds from its worker thread while services search: every answer is a keyframe that existed."""
    ref = folder_source(corridor / "ref", corridor / "ref_poses.csv")
    encoder = make_encoder(THUMBNAIL)
    online = OnlineMap.empty(encoder, dataclasses.replace(EVERY_FRAME, initial_capacity=1), exclusion_window=1.0)
    images = [ref.load_image(i) for i in range(len(ref))]
    query = encoder.features(images[:1], 32, 64)
    query /= np.linalg.norm(query)
    errors: list[BaseException] = []
    done = threading.Event()

    def reader() -> None:
        try:
            while not done.is_set():
                n = len(online)
                _, rows = online.search(query, 5, stamp=1000.0)
                frames = online.frames
                assert (rows[rows >= 0] < len(online)).all() and len(frames) >= n
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for i, image in enumerate(images):
        online.add(float(ref.frames.stamps[i]), image=image)
    done.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert len(online) == len(ref)
