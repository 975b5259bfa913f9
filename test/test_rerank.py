"""Patch store in real maps, the localizer's ``rerank`` stage and its refusals, and ``evaluate`` re-ranking.

Real corridor images, the real default encoder, real FAISS and ONNX Runtime.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vpr_ros.config import ConfigError, config_from_dict
from vpr_ros.core.image import load_rgb
from vpr_ros.core.localizer import Localizer, LocalizerConfig
from vpr_ros.core.map_builder import BuildMapConfig, build_map
from vpr_ros.core.patchnetvlad.descriptors import patch_descriptors
from vpr_ros.core.patchnetvlad.rerank import RerankConfig, Reranker, stored_spec
from vpr_ros.core.patchnetvlad.scoring import fuse_scales
from vpr_ros.core.patchnetvlad.store import PatchStoreConfig, decode, encode, resolve_spec
from vpr_ros.core.refmap import MapError, ReferenceMap
from vpr_ros.io.images import folder_source


class TestEncoding:
    def test_round_trip_error_bounds(self):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(3, 50, 64)).astype(np.float32)
        x /= np.linalg.norm(x, axis=-1, keepdims=True)
        codes, scale = encode(x, "float32")
        assert scale is None and np.array_equal(codes, x)
        codes, _ = encode(x, "float16")
        assert codes.dtype == np.float16
        assert np.all(np.abs(decode(codes, "float16") - x) <= np.abs(x) * 2.0 ** -11 + 2.0 ** -25)
        codes, scale = encode(x, "int8")
        assert codes.dtype == np.uint8 and scale.shape == (3,)
        peak = np.abs(x).reshape(3, -1).max(1)
        err = np.abs(decode(codes, "int8", scale) - x).reshape(3, -1).max(1)
        assert np.all(err <= peak / 254 * (1 + 1e-6))
        assert codes.min() >= 1 and codes.max() <= 255  # int8 -127..127 offset by 128
        with pytest.raises(ValueError, match="need their per-frame scales"):
            decode(codes, "int8")

    def test_config_checks_are_named(self):
        with pytest.raises(ConfigError, match=r"patches\.strides needs one value per patches\.sizes"):
            config_from_dict(BuildMapConfig, {"patches": {"preset": "speed", "sizes": [3, 5], "strides": [1]}})
        with pytest.raises(ConfigError, match=r"patches.weights must sum to 1"):
            config_from_dict(BuildMapConfig, {"patches": {"preset": "balanced", "weights": [0.5, 0.5, 0.5]}})
        with pytest.raises(ConfigError, match=r"patches\.preset: 'fast' is not one of"):
            config_from_dict(BuildMapConfig, {"patches": {"preset": "fast"}})


def test_map_stores_patches_memory_mapped(corridor_patch_map: Path, encoder, corridor: Path):
    refmap = ReferenceMap.load(corridor_patch_map)
    spec = stored_spec(refmap)
    assert spec is not None and spec.preset == "speed" and spec.encoding == "int8"
    # 160x120 frames are mapped at 320x240 -> 15x20 feature grid -> the paper's size 5 scales to 3.
    assert [g.size for g in spec.grids] == [3] and spec.feature_hw == (15, 20) and spec.dim == refmap.head.output_dim
    codes = refmap.arrays["patches_s3_t1"]
    assert isinstance(codes, np.memmap) and codes.shape == (len(refmap), 13 * 18, spec.dim)
    section = refmap.sections["patches"]
    assert section["bytes_per_frame"] == 13 * 18 * spec.dim + 4
    # The stored codes are the encoded patch descriptors of the frame.
    src = folder_source(corridor / "ref")
    feats = encoder.features([src.load_image(7)], *refmap.input_size)
    (desc,) = patch_descriptors(feats, refmap.head, spec.grids, spec.dim)
    stored = decode(codes[7:8], "int8", refmap.arrays["patches_s3_t1_scale"][7:8])
    assert np.abs(stored - desc).max() <= np.abs(desc).max() / 254 + 1e-6


def test_localizer_reranks_with_the_stored_patches(corridor_patch_map: Path, encoder, corridor: Path,
                                                   corridor_ground_truth):
    refmap = ReferenceMap.load(corridor_patch_map)
    loc = Localizer(refmap, encoder, LocalizerConfig(top_k=5, rerank=RerankConfig(candidates=20)))
    assert loc.reranker is not None and loc.retrieval_k == 20
    image = load_rgb(corridor / "query" / "0000042.jpg")
    hyp = loc.localize(image)
    assert set(hyp.timings_ms) >= {"encode", "retrieve", "rerank", "total"}
    assert len(hyp.indices) == 5 and np.all(np.diff(hyp.scores) <= 0) and 0 <= hyp.scores.min() <= hyp.scores.max() <= 1
    query = loc.encode(image)
    retrieved = loc.retrieve(query)
    assert set(hyp.indices) <= set(retrieved.indices.tolist())
    # Batched over the candidate list == scored one candidate at a time.
    patches = loc.reranker.query_patches(query.features)
    batched = loc.reranker.scale_scores(patches, retrieved.indices)
    single = np.concatenate([loc.reranker.scale_scores(patches, retrieved.indices[i:i + 1])
                             for i in range(len(retrieved.indices))])
    np.testing.assert_allclose(batched, single, rtol=1e-12)
    assert hyp.indices[0] in corridor_ground_truth[42]
    # method none: global retrieval only, as before
    plain = Localizer(refmap, encoder, LocalizerConfig(top_k=5, rerank=RerankConfig(method="none")))
    assert plain.reranker is None and "rerank" not in plain.localize(image).timings_ms


def test_map_with_other_patches_is_refused_with_a_clear_message(corridor_patch_map: Path, corridor_map: Path,
                                                                 encoder):
    refmap = ReferenceMap.load(corridor_patch_map)
    with pytest.raises(MapError, match=r"rerank.method=performance needs patches \(preset performance: sizes "
                                       r"1,3,4.*but the map stores preset speed: sizes 3.*patches.preset=performance"):
        Localizer(refmap, encoder, LocalizerConfig(rerank=RerankConfig(method="performance")))
    with pytest.raises(MapError, match="needs a map with Patch-NetVLAD patches, but this map stores none"):
        Localizer(ReferenceMap.load(corridor_map), encoder, LocalizerConfig(rerank=RerankConfig(method="speed")))
    # speed and storage resolve to the same patches on this 110-component map: storage is accepted.
    assert Localizer(refmap, encoder, LocalizerConfig(rerank=RerankConfig(method="storage"))).reranker is not None
    # auto on a map without patches: global retrieval only
    assert Localizer(ReferenceMap.load(corridor_map), encoder, LocalizerConfig()).reranker is None


def test_store_that_disagrees_with_its_manifest_is_refused(corridor_patch_map: Path, encoder, tmp_path: Path):
    refmap = ReferenceMap.load(corridor_patch_map, mmap=False)
    refmap.arrays["patches_s3_t1"] = refmap.arrays["patches_s3_t1"][:, :10]
    refmap.save(tmp_path / "broken")
    with pytest.raises(MapError, match=r"patches_s3_t1 is uint8\(111, 10, 110\), the manifest says "
                                       r"uint8\(111, 234, 110\)"):
        Localizer(ReferenceMap.load(tmp_path / "broken"), encoder, LocalizerConfig())


def test_performance_preset_with_ransac_on_a_small_map(tmp_path: Path, corridor: Path, encoder):
    src = folder_source(corridor / "ref", corridor / "ref_poses.csv")
    src.frames = src.frames.__class__(src.frames.ids[:30], src.frames.names[:30], src.frames.sources[:30],
                                      src.frames.stamps[:30], src.frames.positions[:30], src.frames.orientations[:30])
    m = build_map(src, tmp_path / "perf", BuildMapConfig(patches=PatchStoreConfig(preset="performance")),
                  progress=False, encoder=encoder)
    spec = stored_spec(m)
    assert [g.size for g in spec.grids] == [1, 3, 4] and spec.encoding == "float16"
    assert spec.weights == (0.45, 0.15, 0.4)
    loc = Localizer(ReferenceMap.load(tmp_path / "perf"), encoder,
                    LocalizerConfig(top_k=3, rerank=RerankConfig(method="performance", candidates=10)))
    assert loc.reranker.scorer == "ransac"
    hyp = loc.localize(src.load_image(12))
    assert hyp.indices[0] == 12 and hyp.scores[0] > hyp.scores[1]  # a frame matches itself best


def test_build_ignores_patches_for_heads_without_projection(tmp_path: Path, corridor: Path, encoder, caplog):
    src = folder_source(corridor / "ref")
    cfg = config_from_dict(BuildMapConfig, {"vlad": {"pca_dim": 0, "num_clusters": 8}, "patches": {"preset": "speed"}})
    m = build_map(src, tmp_path / "m", cfg, progress=False, encoder=encoder)
    assert "patches" not in m.sections and "patches.preset=speed ignored" in caplog.text
    head = ReferenceMap.load(tmp_path / "m").head
    with pytest.raises(ValueError, match=r"set vlad\.pca_dim > 0 or patches\.preset=none"):
        resolve_spec(PatchStoreConfig(preset="speed"), (15, 20), 16, head)


def test_evaluate_cli_reports_reranked_recall(corridor_patch_map: Path, corridor: Path, default_model: Path,
                                              tmp_path: Path, capsys):
    from vpr_ros.cli.evaluate import main

    queries = tmp_path / "queries"
    queries.mkdir()
    for p in sorted((corridor / "query").glob("*.jpg"))[:12]:
        (queries / p.name).write_bytes(p.read_bytes())
    gt = np.load(corridor / "ground_truth_new.npy", allow_pickle=True)[:12]
    np.save(tmp_path / "gt.npy", gt, allow_pickle=True)
    rc = main(["--map", str(corridor_patch_map), "--queries", str(queries), "--ground-truth", str(tmp_path / "gt.npy"),
               "--out", str(tmp_path / "out"), "--no-plots", "-q", "--set", f"localizer.encoder.model={default_model}",
               "--set", "localizer.rerank.candidates=20"])
    assert rc == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["config"]["rerank"]["method"] == "auto" and report["config"]["rerank"]["active"] == "speed"
    assert "rerank" in report["stage_latency_ms"] and report["stage_latency_ms"]["rerank"]["count"] == 12
    assert report["recall@1"] >= 0.75
    assert "R@1" in capsys.readouterr().out


def test_sequence_stage_fuses_the_reranked_candidates(corridor_patch_map: Path, encoder, corridor: Path,
                                                      corridor_ground_truth):
    """Re-ranking then seq2im: the sequence stage sees the re-ranked pool, and is timed after it."""
    from vpr_ros.core.sequence import SequenceConfig

    refmap = ReferenceMap.load(corridor_patch_map)
    config = LocalizerConfig(top_k=5, rerank=RerankConfig(candidates=20),
                             sequence=SequenceConfig(method="seq2im_min", length=3, frame_top_k=50))
    loc = Localizer(refmap, encoder, config)
    # fused patch scores and cosine similarities cannot be mixed: retrieval stops at the re-ranked pool
    assert loc.retrieval_k == 20
    hyps = [loc.localize(load_rgb(corridor / "query" / f"{i:07d}.jpg"), stamp=float(i)) for i in (40, 41, 42)]
    last = hyps[-1]
    assert list(last.timings_ms)[:4] == ["encode", "retrieve", "rerank", "sequence"]
    assert last.sequence_frames == 3 and last.sequence_complete and last.single is not None
    pool = loc.rerank(loc.encode(load_rgb(corridor / "query" / "0000042.jpg")),
                      loc.retrieve(loc.encode(load_rgb(corridor / "query" / "0000042.jpg"))))
    np.testing.assert_array_equal(last.single.indices, pool.indices[:5])
    assert last.indices[0] in corridor_ground_truth[42]


def test_appending_grows_the_patch_store_from_the_manifest(corridor_patch_map: Path, encoder, corridor: Path,
                                                           tmp_path: Path):
    """append_to_map finds the patch configuration in the manifest: no extractor needs to be passed."""
    import shutil

    from vpr_ros.core.map_builder import append_to_map

    grown = tmp_path / "map"
    shutil.copytree(corridor_patch_map, grown)
    extra = tmp_path / "extra"
    extra.mkdir()
    for name in ("0000010.jpg", "0000011.jpg", "0000012.jpg"):
        (extra / name).symlink_to(corridor / "query" / name)
    before = ReferenceMap.load(corridor_patch_map)
    refmap, added = append_to_map(folder_source(extra), grown, progress=False, encoder=encoder)
    assert added == 3 and len(refmap) == len(before) + 3
    spec = stored_spec(refmap)
    assert spec is not None and spec.describe() == stored_spec(before).describe()
    for name, codes in before.arrays.items():
        assert refmap.arrays[name].shape == (len(before) + 3, *codes.shape[1:])
        np.testing.assert_array_equal(refmap.arrays[name][: len(before)], codes)
    # the appended query frame re-ranks itself to the top
    loc = Localizer(refmap, encoder, LocalizerConfig(top_k=5, rerank=RerankConfig(candidates=20)))
    hyp = loc.localize(load_rgb(corridor / "query" / "0000011.jpg"))
    assert refmap.frames.names[hyp.indices[0]] == "0000011.jpg"


def first_frames(corridor: Path, n: int):
    src = folder_source(corridor / "ref", corridor / "ref_poses.csv")
    f = src.frames
    src.frames = f.__class__(f.ids[:n], f.names[:n], f.sources[:n], f.stamps[:n], f.positions[:n], f.orientations[:n])
    return src


def test_two_stage_coarse_scores_are_those_of_a_map_storing_the_coarser_stride(tmp_path: Path, corridor: Path,
                                                                               encoder):
    """The first stage scores every second patch centre as a map with stride-2 patches of the same size does
    (float32 stores: the same descriptors), for the rapid score and for RANSAC."""
    src = first_frames(corridor, 30)
    fine = build_map(src, tmp_path / "s1", BuildMapConfig(patches=PatchStoreConfig(preset="speed", encoding="float32")),
                     progress=False, encoder=encoder)
    coarse_map = build_map(src, tmp_path / "s2", BuildMapConfig(patches=PatchStoreConfig(
        preset="realtime", encoding="float32")), progress=False, encoder=encoder)
    assert stored_spec(coarse_map).grids[0].stride == 2
    features = encoder.features([src.load_image(7)], *fine.input_size)
    rows = np.arange(30)[::-1]
    for scorer in ("rapid", "ransac"):
        two_stage = Reranker(fine, stored_spec(fine), RerankConfig(coarse_stride=2, scorer=scorer))
        assert two_stage.scorer == scorer
        coarser = Reranker(coarse_map, stored_spec(coarse_map), RerankConfig(scorer=scorer))
        np.testing.assert_allclose(two_stage.scale_scores(None, rows, two_stage.matcher_queries(features), coarse=True),
                                   coarser.scale_scores(None, rows, coarser.matcher_queries(features)), atol=1e-9)


def test_two_stage_reranking_scores_the_best_first_stage_candidates_on_all_patches(corridor_patch_map: Path,
                                                                                  encoder, corridor: Path):
    refmap = ReferenceMap.load(corridor_patch_map)
    spec = stored_spec(refmap)
    one = Reranker(refmap, spec, RerankConfig())
    two = Reranker(refmap, spec, RerankConfig(coarse_stride=2, fine_candidates=4))
    features = encoder.features([load_rgb(corridor / "query" / "0000042.jpg")], *refmap.input_size)
    rows = np.arange(30, 60)
    query_t = one.matcher_queries(features)
    result = two.rank(query_t, rows)
    assert sorted(result.order.tolist()) == list(range(len(rows))) and np.all(np.diff(result.scores) <= 0)
    coarse, _ = fuse_scales(two.scale_scores(None, rows, query_t, coarse=True), np.asarray(spec.weights))
    first = np.argsort(-coarse, kind="stable")
    assert set(result.order[:4].tolist()) == set(first[:4].tolist())
    np.testing.assert_array_equal(result.order[4:], first[4:])
    # The four finalists are ranked by their full scores, as one stage ranks them among themselves.
    finalists = np.sort(first[:4])
    alone = one.rank(query_t, rows[finalists])
    np.testing.assert_array_equal(result.order[:4], finalists[alone.order])
    np.testing.assert_allclose(result.scores[:4], alone.scores, rtol=1e-6)
    # As many finalists as candidates: one stage.
    everyone = Reranker(refmap, spec, RerankConfig(coarse_stride=2, fine_candidates=len(rows))).rank(query_t, rows)
    np.testing.assert_array_equal(everyone.order, one.rank(query_t, rows).order)
