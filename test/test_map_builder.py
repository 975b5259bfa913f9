"""Map building from real corridor images: resume after interruption, input size, extra arrays, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vpr_ros.core.frames import FrameSource
from vpr_ros.core.localizer import Localizer, LocalizerConfig
from vpr_ros.core.map_builder import BuildMapConfig, build_map, input_size
from vpr_ros.core.refmap import ReferenceMap
from vpr_ros.io.images import folder_source


class InterruptError(Exception):
    pass


def counting(source: FrameSource, fail_at: int | None = None) -> tuple[FrameSource, list[int]]:
    calls: list[int] = []

    def load(i: int) -> np.ndarray:
        if fail_at is not None and len(calls) == fail_at:
            raise InterruptError(f"simulated crash at load #{fail_at}")
        calls.append(i)
        return source.load_image(i)

    return FrameSource(source.frames, load), calls


def test_interrupted_build_resumes_and_equals_uninterrupted(tmp_path, corridor, encoder):
    cfg = BuildMapConfig(chunk_size=16)
    ref = folder_source(corridor / "ref", corridor / "ref_poses.csv")
    fresh = build_map(ref, tmp_path / "fresh", cfg, progress=False, encoder=encoder)

    broken, calls = counting(ref, fail_at=111 + 1 + 70)  # fit pass (111) + size probe (1) + 70 encodes
    with pytest.raises(InterruptError):
        build_map(broken, tmp_path / "map", cfg, progress=False, encoder=encoder)
    assert not (tmp_path / "map").exists(), "an interrupted build must not leave a map behind"
    work = tmp_path / ".map.partial"
    assert (work / "head.npz").exists() and len(list(work.glob("chunk_*.npz"))) == 4

    resumed_source, calls = counting(ref)
    resumed = build_map(resumed_source, tmp_path / "map", cfg, progress=False, encoder=encoder)
    assert calls[1:] == list(range(64, 111)), "resume must re-encode only the unfinished chunks"
    assert not work.exists()
    np.testing.assert_allclose(resumed.descriptors, fresh.descriptors, atol=1e-6)
    ReferenceMap.load(tmp_path / "map")


def test_changed_settings_discard_stale_progress(tmp_path, corridor, encoder):
    ref = folder_source(corridor / "ref", corridor / "ref_poses.csv")
    broken, _ = counting(ref, fail_at=120)
    with pytest.raises(InterruptError):
        build_map(broken, tmp_path / "map", BuildMapConfig(chunk_size=16), progress=False, encoder=encoder)
    m = build_map(ref, tmp_path / "map", BuildMapConfig(chunk_size=16, vlad=BuildMapConfig().vlad.__class__(
        num_clusters=8, pca_dim=32)), progress=False, encoder=encoder)
    assert m.head.num_clusters == 8 and m.dim == 32


def test_input_size_rules(encoder):
    auto = BuildMapConfig()
    assert input_size(auto, encoder, (120, 160)) == (240, 320)        # small camera: at most 2x
    assert input_size(auto, encoder, (1080, 1920)) == (480, 640)      # large camera: model default
    assert input_size(auto, encoder, (100, 150)) == (208, 304)        # rounded up to multiples of 16
    assert input_size(BuildMapConfig(image_height=96, image_width=128), encoder, (120, 160)) == (96, 128)


def test_extractors_store_per_frame_arrays(tmp_path, corridor, encoder):
    ref = folder_source(corridor / "ref", corridor / "ref_poses.csv")
    sub = FrameSource(ref.frames.__class__(ref.frames.ids[:20], ref.frames.names[:20], ref.frames.sources[:20],
                                           ref.frames.stamps[:20], ref.frames.positions[:20],
                                           ref.frames.orientations[:20]), ref.load_image)

    def mean_feature(feats: np.ndarray, head) -> dict[str, np.ndarray]:
        return {"mean_feature": feats.mean(axis=(2, 3)).astype(np.float16)}

    m = build_map(sub, tmp_path / "m", BuildMapConfig(vlad=BuildMapConfig().vlad.__class__(num_clusters=4)),
                  extractors=[mean_feature], sections={"mean_feature": {"dtype": "float16"}}, progress=False,
                  encoder=encoder)
    again = ReferenceMap.load(tmp_path / "m")
    assert again.arrays["mean_feature"].shape == (20, 112)
    np.testing.assert_array_equal(again.arrays["mean_feature"], m.arrays["mean_feature"])
    assert again.sections == {"mean_feature": {"dtype": "float16"}}


def test_localizer_recall_on_corridor(corridor_map, corridor, corridor_ground_truth, default_model):
    """The acceptance figure of the foundation issue, in-process: recall@1 >= 0.90, recall@5 >= 0.98."""
    from vpr_ros.core.encoders import EncoderConfig

    loc = Localizer.from_paths(str(corridor_map), LocalizerConfig(encoder=EncoderConfig(model=str(default_model))))
    queries = folder_source(corridor / "query")
    hyps = loc.localize_many(queries.load_image(i) for i in range(len(queries)))
    r1 = np.mean([h.indices[0] in corridor_ground_truth[i] for i, h in enumerate(hyps)])
    r5 = np.mean([np.isin(h.indices[:5], corridor_ground_truth[i]).any() for i, h in enumerate(hyps)])
    print(f"corridor in-process: recall@1 {r1:.3f} recall@5 {r5:.3f}")
    assert r1 >= 0.90 and r5 >= 0.98
    assert all(0.0 <= h.confidence <= 1.0 for h in hyps)
    correct = np.array([h.indices[0] in corridor_ground_truth[i] for i, h in enumerate(hyps)])
    conf = np.array([h.confidence for h in hyps])
    assert conf[correct].mean() > conf[~correct].mean(), "confidence should be higher on correct matches"


def run_cli(exe: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", f"vpr_ros.cli.{exe}", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_build_map_and_evaluate_clis(tmp_path, corridor, default_model, repo):
    model = f"encoder.model={default_model}"
    out = run_cli("build_map", "--images", str(corridor / "ref"), "--poses", str(corridor / "ref_poses.csv"),
                  "--output", str(tmp_path / "map"), "--quiet", "--set", model, cwd=repo)
    assert out.returncode == 0, out.stderr
    assert "111 frames" in out.stdout
    out = run_cli("evaluate", "--map", str(tmp_path / "map"), "--queries", str(corridor / "query"),
                  "--query-poses", str(corridor / "query_poses.csv"), "--dist-threshold", "2",
                  "--out", str(tmp_path / "eval"), "--quiet", "--set", f"localizer.{model}", cwd=repo)
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["counts"]["queries"] == 111 and report["recall@1"] >= 0.9 and report["recall@5"] >= 0.98
    assert report["latency_ms"]["p50"] > 0 and "encode" in report["stage_latency_ms"]
    for png in ("recall.png", "latency.png"):
        assert (tmp_path / "eval" / png).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(("args", "message"), [
    (["--images", "/nowhere", "--output", "x"], "image folder /nowhere does not exist"),
    (["--images", "{ref}", "--poses", "/nowhere.csv", "--output", "x"], "pose file /nowhere.csv does not exist"),
    (["--images", "{ref}", "--output", "x", "--set", "vlad.num_clusters=1"], "vlad.num_clusters: 1 is below"),
    (["--images", "{ref}", "--output", "x", "--set", "encoder.model=/no/model.onnx"], "encoder model"),
])
def test_build_map_bad_input_exits_nonzero_with_clear_message(tmp_path, corridor, args, message):
    args = [a.replace("{ref}", str(corridor / "ref")).replace("x", str(tmp_path / "m")) if a in ("{ref}", "x")
            else a for a in args]
    out = run_cli("build_map", *args)
    assert out.returncode == 2
    assert message in out.stderr
    assert not (tmp_path / "m").exists()


def test_evaluate_missing_map_exits_nonzero(tmp_path, corridor):
    out = run_cli("evaluate", "--map", str(tmp_path / "none"), "--queries", str(corridor / "query"),
                  "--ground-truth", str(corridor / "ground_truth_new.npy"))
    assert out.returncode == 2 and "does not exist" in out.stderr
