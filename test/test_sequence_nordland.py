"""Nordland part 1 (real data): sequences clearly beat single frames; evaluate reports both side by side."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vpr_ros.cli import evaluate
from vpr_ros.cli.common import run_cli
from vpr_ros.core.encoders import EncoderConfig, make_encoder
from vpr_ros.core.localizer import Localizer, LocalizerConfig
from vpr_ros.core.map_builder import BuildMapConfig, build_map
from vpr_ros.core.refmap import ReferenceMap
from vpr_ros.core.sequence import SequenceConfig
from vpr_ros.io.images import folder_source

THUMBNAIL = EncoderConfig(model="thumbnail:64x32,patch=8")


@pytest.fixture(scope="module")
def nordland(repo: Path) -> Path:
    return repo / "data" / "nordland_part1"


@pytest.fixture(scope="module")
def summer_thumbnail_map(tmp_path_factory: pytest.TempPathFactory, nordland: Path) -> Path:
    out = tmp_path_factory.mktemp("maps") / "summer_thumb"
    build_map(folder_source(nordland / "summer"), out, BuildMapConfig(encoder=THUMBNAIL), progress=False,
              encoder=make_encoder(THUMBNAIL))
    return out


def test_ten_frame_seqslam_reaches_the_issue_target(summer_thumbnail_map: Path, nordland: Path):
    """The acceptance figure of issue 4: recall@1 >= 0.70 with 10-frame sequences (single frame ~0.2)."""
    refmap = ReferenceMap.load(summer_thumbnail_map)
    encoder = make_encoder(THUMBNAIL)
    winter = folder_source(nordland / "winter")
    config = LocalizerConfig(encoder=THUMBNAIL, sequence=SequenceConfig(method="seqslam", length=10))
    loc = Localizer(refmap, encoder, config)
    feats = loc.encode_many([winter.load_image(i) for i in range(len(winter))])
    hyps = [loc.localize_features(f, float(i)) for i, f in enumerate(feats)]
    truth = np.arange(len(hyps))
    single = np.mean([abs(h.single.best_index - i) <= 1 for h, i in zip(hyps, truth, strict=True)])
    sequence = np.mean([abs(h.best_index - i) <= 1 for h, i in zip(hyps, truth, strict=True)])
    assert single < 0.3, f"single-frame recall@1 {single:.3f}: Nordland winter vs summer should be hard"
    assert sequence >= 0.70, f"10-frame seqslam recall@1 {sequence:.3f} < 0.70 (single frame {single:.3f})"
    assert all(h.sequence_frames == min(i + 1, 10) for i, h in enumerate(hyps[:12]))
    assert "sequence" in hyps[-1].timings_ms


def test_evaluate_reports_single_frame_and_sequence_side_by_side(summer_thumbnail_map: Path, nordland: Path,
                                                                 tmp_path: Path, capsys: pytest.CaptureFixture):
    queries = tmp_path / "winter_part"
    queries.mkdir()
    for src in sorted((nordland / "winter").glob("*.png"))[600:900]:
        (queries / src.name).symlink_to(src)
    # Query files 600..899 are map frames 600..899: shift the index ground truth by a pose file instead.
    poses = tmp_path / "winter_poses.csv"
    poses.write_text("name,x,y\n" + "".join(f"{p.name},{600 + i}.0,0.0\n"
                                            for i, p in enumerate(sorted(queries.glob("*.png")))))
    summer_poses = tmp_path / "summer.csv"
    names = sorted(p.name for p in (nordland / "summer").glob("*.png"))
    summer_poses.write_text("name,x,y\n" + "".join(f"{n},{i}.0,0.0\n" for i, n in enumerate(names)))
    mapped = tmp_path / "map_with_poses"
    build_map(folder_source(nordland / "summer", summer_poses), mapped, BuildMapConfig(encoder=THUMBNAIL),
              progress=False, encoder=make_encoder(THUMBNAIL))
    out = tmp_path / "eval"
    code = evaluate.main(["--map", str(mapped), "--queries", str(queries), "--query-poses", str(poses),
                          "--dist-threshold", "1", "--out", str(out), "-q",
                          "--set", f"localizer.encoder.model={THUMBNAIL.model}",
                          "--set", "localizer.sequence.method=seqslam", "--set", "localizer.sequence.length=10"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["sequence"] == {"method": "seqslam", "length": 10, "search": "topk"}
    assert report["recall@1"] > report["single_frame"]["recall@1"] + 0.3
    seq_pr, single_pr = report["precision_recall"], report["single_frame"]["precision_recall"]
    assert seq_pr["auc"] > single_pr["auc"] and seq_pr["recall_at_100_precision"] > 0.2
    assert len(seq_pr["curve"]["precision"]) > 10
    assert report["loop_closures"]["published"] > 0 and report["loop_closures"]["precision"] == 1.0
    for png in ("precision_recall.png", "recall.png", "latency.png"):
        assert (out / png).stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "single frame: R@1" in printed and "threshold for 100% precision" in printed


def test_evaluate_index_tolerance_ground_truth(summer_thumbnail_map: Path, nordland: Path, tmp_path: Path):
    queries = tmp_path / "q"
    queries.mkdir()
    for src in sorted((nordland / "summer").glob("*.png"))[:40]:
        (queries / src.name).symlink_to(src)
    out = tmp_path / "eval"
    assert evaluate.main(["--map", str(summer_thumbnail_map), "--queries", str(queries), "--index-tolerance", "0",
                          "--out", str(out), "-q", "--no-plots",
                          "--set", f"localizer.encoder.model={THUMBNAIL.model}"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["ground_truth"] == "same index +-0"
    # The map's own images: every non-black frame finds itself (the first 17 summer frames are black).
    assert report["recall@1"] >= (40 - 17) / 40 and "single_frame" not in report
    bad = ["--map", str(summer_thumbnail_map), "--queries", str(queries), "--index-tolerance", "-1", "--out",
           str(out), "-q", "--set", f"localizer.encoder.model={THUMBNAIL.model}"]
    assert run_cli(evaluate.main, bad) == 2
