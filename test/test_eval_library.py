"""Evaluation as a library: the README's notebook example runs, and agrees with the ``evaluate`` CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from vpr_ros.cli import evaluate
from vpr_ros.cli.common import run_cli
from vpr_ros.errors import InputError
from vpr_ros.eval import EvalConfig, Report, VprBenchFile, WithinDistance, WithinIndex, run
from vpr_ros.eval.report import summary_line
from vpr_ros.io.images import folder_source

DEMO_MAP = "out/demo/corridor_map"


def readme_example(repo: Path) -> str:
    """The first Python block of README's "Python API" section."""
    text = (repo / "README.md").read_text()
    section = text[text.index("## Python API (no ROS needed)"):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README's Python API section has no python block"
    return match.group(1)


def test_readme_example_runs_and_matches_the_cli(repo: Path, corridor_map: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    code = readme_example(repo)
    assert DEMO_MAP in code and "from vpr_ros.eval import run" in code
    monkeypatch.chdir(repo)  # the example's data paths are relative to the checkout, as in README
    namespace: dict = {}
    exec(compile(code.replace(DEMO_MAP, str(corridor_map)), "README.md", "exec"), namespace)
    report: Report = namespace["report"]
    assert report.path is None  # no out=: nothing written

    out = tmp_path / "cli"
    assert run_cli(evaluate.main, ["--map", str(corridor_map), "--queries", "data/corridor/query",
                                   "--ground-truth", "data/corridor/ground_truth_new.npy", "--out", str(out),
                                   "--no-plots", "--quiet"]) == 0
    cli = json.loads((out / "report.json").read_text())
    for n in (1, 5, 10):
        assert report.recall(n) == cli[f"recall@{n}"]
    assert [row["top"] for row in cli["per_query"]] == [r.ranked[:10].tolist() for r in report.results]
    assert report["loop_closures"]["published"] == cli["loop_closures"]["published"]
    assert report.summary().split("latency")[0] == summary_line(cli).split("latency")[0]


def test_ground_truth_rules_agree_on_the_corridor(corridor: Path, corridor_map: Path) -> None:
    """The corridor's VPR-Bench truth is exactly |q - r| <= 2 and its nominal poses are frame indices, so the
    three rules must give the same positives and the same recall."""
    queries = folder_source(corridor / "query", corridor / "query_poses.csv")
    config = EvalConfig(progress=False, plots=False)
    by_file = run(corridor_map, queries, VprBenchFile(corridor / "ground_truth_new.npy"), config)
    by_index = run(corridor_map, queries, WithinIndex(2), config)
    by_distance = run(corridor_map, queries, WithinDistance(2.0), config)
    for other in (by_index, by_distance):
        assert all(np.array_equal(a, b) for a, b in zip(by_file.ground_truth.positives,
                                                         other.ground_truth.positives, strict=True))
        assert other.recall(1) == by_file.recall(1)


def test_out_writes_report_and_plots(corridor: Path, corridor_map: Path, tmp_path: Path) -> None:
    report = run(corridor_map, corridor / "query", corridor / "ground_truth_new.npy",
                 EvalConfig(progress=False, recall_ns=(1, 3)), out=tmp_path)
    assert report.path == tmp_path / "report.json"
    stored = json.loads(report.path.read_text())
    assert stored["recall@3"] == report.recall(3) and "recall@5" not in stored
    assert {p.name for p in tmp_path.glob("*.png")} >= {"recall.png", "latency.png", "precision_recall.png"}


@pytest.mark.parametrize("make", [lambda: WithinDistance(-5.0), lambda: WithinIndex(-1),
                                  lambda: EvalConfig(recall_ns=(0,)), lambda: EvalConfig(pr_score="x")])
def test_nonsense_settings_are_refused(make) -> None:
    with pytest.raises(ValueError):
        make()


def test_queries_without_poses_have_no_distance_truth(corridor: Path, corridor_map: Path) -> None:
    with pytest.raises(InputError, match="no poses"):
        run(corridor_map, corridor / "query", WithinDistance(2.0), EvalConfig(progress=False, plots=False))
