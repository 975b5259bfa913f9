"""Files a user is handed never run code: crafted ground-truth .npy files and crafted checkpoints are refused.

Each crafted file carries a pickle payload that would call ``os.system`` to create a marker file; the tests check
that it is refused with one line naming the file and the refused global, and that the marker does not exist.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.lib import format as npy_format

from vpr_ros.cli import evaluate
from vpr_ros.cli.common import run_cli
from vpr_ros.errors import InputError
from vpr_ros.eval.ground_truth import positives_from_vpr_bench


class RunsCommand:
    """Unpickling this calls ``os.system(command)``: what a crafted file would do."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (self.command,)


def touch_command(marker: Path) -> str:
    return f"touch {marker}"


def crafted_object_npy(path: Path, marker: Path) -> Path:
    """A VPR-Bench-shaped object array whose second row holds the payload in place of its reference list."""
    rows = np.empty((2, 2), dtype=object)
    rows[0, 0], rows[0, 1] = 0, [0, 1]
    rows[1, 0], rows[1, 1] = 1, RunsCommand(touch_command(marker))
    np.save(path, rows, allow_pickle=True)
    return path


def crafted_bare_payload_npy(path: Path, marker: Path) -> Path:
    """A valid object-array .npy header followed by a pickle that is only the payload (no array at all)."""
    with path.open("wb") as fh:
        npy_format.write_array_header_1_0(fh, {"descr": "|O", "fortran_order": False, "shape": (1, 2)})
        pickle.dump(RunsCommand(touch_command(marker)), fh, protocol=3)
    return path


@pytest.mark.parametrize("craft", [crafted_object_npy, crafted_bare_payload_npy])
def test_crafted_ground_truth_is_refused_without_running_code(tmp_path: Path, craft):
    marker = tmp_path / "pwned"
    path = craft(tmp_path / "ground_truth.npy", marker)
    with pytest.raises(InputError) as err:
        positives_from_vpr_bench(path, np.arange(10), 2)
    assert not marker.exists()
    message = str(err.value)
    assert str(path) in message and "system" in message and "\n" not in message


def test_real_vpr_bench_file_gives_the_same_positives(corridor: Path, corridor_map: Path):
    from vpr_ros.core.refmap import ReferenceMap

    path = corridor / "ground_truth_new.npy"
    ref_ids = ReferenceMap.load(corridor_map).frames.ids
    trusted = np.load(path, allow_pickle=True)  # the shipped file, read the old way, as the reference
    expected = [np.array(sorted(int(np.flatnonzero(ref_ids == r)[0]) for r in refs if r in ref_ids), np.int64)
                for _, refs in trusted]
    gt = positives_from_vpr_bench(path, ref_ids, len(trusted))
    assert len(gt) == len(expected) == 111
    for got, want in zip(gt.positives, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert sum(p.size for p in gt.positives) > len(gt)


def test_files_written_by_the_dataset_converters_are_read(tmp_path: Path):
    from vpr_ros.io.datasets.common import write_vpr_bench_ground_truth

    positives = [np.array([3, 1]), np.zeros(0, np.int64), np.array([2])]
    path = write_vpr_bench_ground_truth(tmp_path / "gt.npy", positives)
    gt = positives_from_vpr_bench(path, np.arange(5), 3)
    assert [p.tolist() for p in gt.positives] == [[1, 3], [], [2]]
    # numpy scalars as query indices (a file written from numpy ints) are plain data too
    rows = np.empty((2, 2), dtype=object)
    rows[0, 0], rows[0, 1], rows[1, 0], rows[1, 1] = np.int64(0), [4], np.int32(1), np.array([0, 2], np.int32)
    np.save(tmp_path / "scalars.npy", rows, allow_pickle=True)
    assert [p.tolist() for p in positives_from_vpr_bench(tmp_path / "scalars.npy", np.arange(5), 2).positives] \
        == [[4], [0, 2]]


def evaluate_with_ground_truth(corridor: Path, corridor_map: Path, ground_truth: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``evaluate`` on the first two corridor queries (the file is refused whatever the queries are)."""
    queries = tmp_path / "queries"
    queries.mkdir()
    for image in sorted((corridor / "query").glob("*.jpg"))[:2]:
        (queries / image.name).symlink_to(image)
    code = run_cli(evaluate.main, ["--map", str(corridor_map), "--queries", str(queries), "--quiet",
                                   "--ground-truth", str(ground_truth), "--out", str(tmp_path / "eval"), "--no-plots"])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("kind", ["numeric_npy", "csv", "crafted"])
def test_evaluate_refuses_bad_ground_truth_with_one_line(tmp_path: Path, corridor: Path, corridor_map: Path,
                                                         capsys: pytest.CaptureFixture[str], kind: str):
    marker = tmp_path / "pwned"
    if kind == "numeric_npy":
        path = tmp_path / "gt.npy"
        np.save(path, np.arange(222).reshape(111, 2))
        expected = "numeric"
    elif kind == "csv":
        path = tmp_path / "gt.csv"
        path.write_text("query,reference\n0,0\n1,1\n")
        expected = "not a .npy"
    else:
        path = crafted_object_npy(tmp_path / "gt.npy", marker)
        expected = "system"
    code, err = evaluate_with_ground_truth(corridor, corridor_map, path, tmp_path, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and expected in lines[0], err
    assert "Traceback" not in err and not marker.exists()


# ---- checkpoints ---------------------------------------------------------------------------------------------

def crafted_training_checkpoint(path: Path, marker: Path) -> Path:
    """A file that passes for a vpr_training checkpoint, with the payload as its config."""
    import torch

    from vpr_training.trainer import CHECKPOINT_FORMAT, CHECKPOINT_VERSION

    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                "config": RunsCommand(touch_command(marker)), "model": {}}, path)
    return path


def one_line_error(err: str, path: Path, refused: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and refused in lines[0], err


@pytest.mark.torch
def test_crafted_checkpoint_is_refused_by_the_loader(tmp_path: Path):
    from vpr_training.checkpoints import CheckpointError
    from vpr_training.trainer import load_checkpoint

    marker = tmp_path / "pwned"
    path = crafted_training_checkpoint(tmp_path / "best.pt", marker)
    with pytest.raises(CheckpointError, match="system"):
        load_checkpoint(path)
    assert not marker.exists()
    for junk in (b"", b"junk" * 10, b"PK\x03\x04 not a zip"):  # damaged files: one line too, not a traceback
        path.write_bytes(junk)
        with pytest.raises(CheckpointError, match="not a readable"):
            load_checkpoint(path)


@pytest.mark.torch
def test_crafted_checkpoint_is_refused_by_the_exporter(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from vpr_training.export.onnx_export import main as export_main

    marker = tmp_path / "pwned"
    path = crafted_training_checkpoint(tmp_path / "best.pt", marker)
    assert export_main(["--checkpoint", str(path), "--out-dir", str(tmp_path / "models")]) == 2
    one_line_error(capsys.readouterr().err, path, "posix.system")
    assert not marker.exists() and not (tmp_path / "models").exists()


@pytest.mark.torch
@pytest.mark.slow
def test_crafted_checkpoint_is_refused_on_resume(tmp_path: Path, repo: Path, capsys: pytest.CaptureFixture[str]):
    from vpr_training.cli import main as train_main

    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    run.mkdir()
    path = crafted_training_checkpoint(run / "last.pt", marker)
    root = str(repo / "data" / "nordland_part1")
    code = run_cli(train_main, ["--config", str(repo / "training/configs/nordland_cpu_small.yaml"), "--out", str(run),
                                "--resume", "--no-progress", "--set", f"train.root={root}", "--set",
                                f"val.root={root}", "--set", "val.count=40"])
    assert code == 2
    one_line_error(capsys.readouterr().err, path, "posix.system")
    assert not marker.exists()


def official_like_checkpoint(path: Path, extra: dict[str, Any]) -> Path:
    """The official Patch-NetVLAD training layout in miniature: state_dict plus metrics as the official code saves
    them (numpy floats) and, like checkpoints of the NetVLAD code it derives from, its options as a Namespace."""
    import torch

    state = {"pool.centroids": torch.randn(2, 4), "pool.conv.weight": torch.randn(2, 4, 1, 1)}
    torch.save({"epoch": 3, "state_dict": state, **extra}, path)
    return path


@pytest.mark.torch
def test_official_patchnetvlad_checkpoint_loads_with_its_allow_list_only(tmp_path: Path):
    import argparse

    from vpr_training.checkpoints import CheckpointError, load_checkpoint
    from vpr_training.export.patchnetvlad_checkpoint import load_state_dict

    path = official_like_checkpoint(tmp_path / "pitts_WPCA4096.pth.tar", {
        "recalls": {1: np.float64(0.81), 5: np.float64(0.9)}, "best_score": np.float64(0.9),
        "opt": argparse.Namespace(num_clusters=2, pooling="patchnetvlad")})
    assert set(load_state_dict(path)) == {"pool.centroids", "pool.conv.weight"}
    with pytest.raises(CheckpointError, match="numpy"):  # without the importer's allow-list: refused
        load_checkpoint(path)


@pytest.mark.torch
def test_crafted_patchnetvlad_checkpoint_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from vpr_training.export.patchnetvlad_checkpoint import main as import_main

    marker = tmp_path / "pwned"
    path = official_like_checkpoint(tmp_path / "evil_WPCA512.pth.tar",
                                    {"best_score": RunsCommand(touch_command(marker))})
    assert import_main(["--checkpoint", str(path), "--out-dir", str(tmp_path / "models")]) == 2
    one_line_error(capsys.readouterr().err, path, "posix.system")
    assert not marker.exists() and not (tmp_path / "models").exists()


@pytest.mark.torch
def test_plain_data_converts_numpy_and_refuses_other_objects():
    import torch

    from vpr_training.checkpoints import plain_data

    converted = plain_data({"a": np.arange(3, dtype=np.float32), "b": [np.int64(2), (np.float64(0.5), Path("x"))]})
    assert isinstance(converted["a"], torch.Tensor) and converted["a"].tolist() == [0.0, 1.0, 2.0]
    assert converted["b"] == [2, (0.5, "x")] and type(converted["b"][0]) is int
    with pytest.raises(TypeError, match="RunsCommand"):
        plain_data({"config": RunsCommand("true")})
