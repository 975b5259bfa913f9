"""Bad input to the localize node and the CLIs (issue 12): each is refused with exit status 2 and one line that
names it, never a traceback, never silently ignored or accepted as something else.

The node runs as its own process, started as ``ros2 run vpr_ros localize --ros-args ...`` starts it, with and
without ``--params-file`` (rcl drops a ``-p`` whose type differs from the params file's value without a word).
The CLIs run in this process through ``run_cli`` (what their console scripts run), or as processes where the
process matters (a memory limit, a closed stdout).
"""

from __future__ import annotations

import math
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from vpr_ros.cli import build_map, evaluate
from vpr_ros.cli.common import run_cli
from vpr_ros.config import ConfigError, config_from_dict
from vpr_ros.core.localize_config import LocalizeNodeConfig
from vpr_ros.core.paths import PACKAGE_ROOT
from vpr_ros.io.poses import read_pose_file, write_pose_csv
from vpr_ros.nodes.harness import LocalizeLaunch, NodeStartError, run_localize

REPO = Path(__file__).resolve().parents[1]
SIGPIPE_STATUS = 128 + 13  # what a shell reports for a process killed by SIGPIPE (yes | head -1)


def cli_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE_ROOT), str(REPO / "training"),
                                                         os.environ.get("PYTHONPATH", "")])}


def one_error_line(capsys: pytest.CaptureFixture[str], main: Callable[[list[str] | None], int],
                   argv: list[str]) -> str:
    """Run a CLI main as its console script does; it must exit 2 with exactly one line on stderr."""
    code = run_cli(main, argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, (code, err)
    return lines[0]


# ---- node parameters ------------------------------------------------------------------------------------------

BAD_PARAMETERS = [
    ("localizer.top_k", "abc", "localizer.top_k: expected an integer, got 'abc'"),
    ("localizer.top_k", 2.5, "localizer.top_k: expected an integer, got 2.5"),
    ("verify_map", "maybe", "verify_map: expected true or false, got 'maybe'"),
    ("localizer.topk", 3, "localizer.topk: no such parameter (did you mean localizer.top_k?)"),
]


@pytest.mark.parametrize("with_params_file", [True, False], ids=["params_file", "no_params_file"])
@pytest.mark.parametrize(("name", "value", "message"), BAD_PARAMETERS, ids=[f"{n}={v}" for n, v, _ in BAD_PARAMETERS])
def test_node_refuses_a_wrongly_typed_parameter_with_one_line(repo, tmp_path, name, value, message,
                                                             with_params_file):
    log = tmp_path / "node.log"
    launch = LocalizeLaunch({"map_path": "/nowhere", name: value}, namespace="/bad",
                            params_file=PACKAGE_ROOT / "config" / "localize.yaml" if with_params_file else None,
                            own_process=True, log_path=log)
    with pytest.raises(NodeStartError, match="exited with code 2"), run_localize(launch, ready_timeout=30):
        pass
    lines = log.read_text().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"localize: invalid parameters: {message}"), lines


def test_node_takes_an_integer_for_a_float_parameter(start_localize, corridor_map):
    """``-p diagnostics_period:=1`` is a number like 1.0 (rclpy alone refuses it: 'expecting type DOUBLE'); the
    parameter then holds the validated value, typed and read-only."""
    node = start_localize(corridor_map, "/intfloat", diagnostics_period=1, **{"localizer.top_k": 5}).node
    assert node.config.diagnostics_period == 1.0 and node.config.localizer.top_k == 5
    parameter = node.get_parameter("diagnostics_period")
    assert parameter.value == 1.0 and isinstance(parameter.value, float)
    assert node.describe_parameter("diagnostics_period").read_only


def test_config_refuses_nan_which_passes_every_bound():
    with pytest.raises(ConfigError, match="diagnostics_period: expected a number, got nan"):
        config_from_dict(LocalizeNodeConfig, {"diagnostics_period": math.nan})


# ---- build_map ------------------------------------------------------------------------------------------------

def test_build_map_refuses_a_network_size_beyond_the_bound(capsys, corridor, tmp_path):
    line = one_error_line(capsys, build_map.main, [
        "--images", str(corridor / "ref"), "--output", str(tmp_path / "map"), "-q",
        "--set", "image_height=100000", "--set", "image_width=100000"])
    assert "image_height: 100000 is above the maximum 4096" in line


def test_build_map_names_a_network_size_that_cannot_be_allocated(corridor, tmp_path):
    """Within the bound but beyond the memory there is (here a 2.5 GB address-space limit): ONNX Runtime's or
    numpy's allocation failure becomes one line naming the size."""
    limit = 2500 * 2**20

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    proc = subprocess.run(
        [sys.executable, "-m", "vpr_ros.cli.build_map", "--images", str(corridor / "ref"), "--output",
         str(tmp_path / "map"), "-q", "--set", "image_height=4096", "--set", "image_width=4096",
         "--set", "encoder.device=cpu", "--set", "encoder.threads=1", "--set", "encoder.batch_size=1"],
        cwd=REPO, env={**cli_env(), "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1"}, capture_output=True,
        text=True, timeout=300, preexec_fn=limit_memory)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: network input 4096x4096 (batch of 1) needs more memory than is available: choose a smaller "
        "input size (image_width / image_height) or encoder.batch_size"], proc.stderr
    assert not (tmp_path / "map").exists()


def test_build_map_refuses_an_output_under_a_regular_file(capsys, corridor, tmp_path):
    regular = tmp_path / "file"
    regular.write_text("not a directory")
    line = one_error_line(capsys, build_map.main, [
        "--images", str(corridor / "ref"), "--output", str(regular / "map"), "-q"])
    assert line == f"error: --output {regular / 'map'} lies under {regular}, which is a regular file, not a directory"
    assert regular.read_text() == "not a directory"


# ---- evaluate -------------------------------------------------------------------------------------------------

def evaluate_args(corridor_map: Path, corridor: Path, out: Path, *extra: str,
                  poses: Path | None = None) -> list[str]:
    return ["--map", str(corridor_map), "--queries", str(corridor / "query"), "--query-poses",
            str(poses or corridor / "query_poses.csv"), "--out", str(out), "--no-plots", "-q", *extra]


def test_evaluate_refuses_an_output_that_is_or_lies_under_a_regular_file(capsys, corridor_map, corridor, tmp_path):
    regular = tmp_path / "file"
    regular.write_text("x")
    line = one_error_line(capsys, evaluate.main, evaluate_args(corridor_map, corridor, regular / "eval"))
    assert line == f"error: --out {regular / 'eval'} lies under {regular}, which is a regular file, not a directory"
    line = one_error_line(capsys, evaluate.main, evaluate_args(corridor_map, corridor, regular))
    assert line == f"error: --out {regular} is a regular file, not a directory"


@pytest.mark.parametrize(("extra", "message"), [
    (["--top-n", "0"], "recall@N needs positive N values, got [0]"),
    (["--top-n", "1,-3"], "recall@N needs positive N values, got [1, -3]"),
    (["--dist-threshold", "-5"], "distance threshold must be positive metres, got -5.0"),
], ids=["top_n_0", "top_n_negative", "dist_threshold_negative"])
def test_evaluate_refuses_nonsense_numbers(capsys, corridor_map, corridor, tmp_path, extra, message):
    line = one_error_line(capsys, evaluate.main, evaluate_args(corridor_map, corridor, tmp_path / "eval", *extra))
    assert line == f"error: {message}"
    assert not (tmp_path / "eval").exists()


def test_evaluate_refuses_query_poses_that_are_all_unknown(capsys, corridor_map, corridor, tmp_path):
    """NaN positions (x and y; a CSV without z gets z = 0) are no ground truth: before, '0 queries, R@1 nan'."""
    table = read_pose_file(corridor / "query_poses.csv")
    table.positions[:, :2] = math.nan
    poses = tmp_path / "nan_poses.csv"
    write_pose_csv(poses, table)
    line = one_error_line(capsys, evaluate.main, evaluate_args(corridor_map, corridor, tmp_path / "eval",
                                                               poses=poses))
    assert line.startswith(f"error: the queries have no poses (none of the {len(table)} has a known position, "
                           "NaN)"), line


def test_evaluate_refuses_ground_truth_that_gives_no_query_a_correct_reference(capsys, corridor_map, corridor,
                                                                               tmp_path):
    table = read_pose_file(corridor / "query_poses.csv")
    table.positions[:, 0] += 1e6  # a kilometre-scale offset: another place, or another frame / unit
    poses = tmp_path / "far_poses.csv"
    write_pose_csv(poses, table)
    line = one_error_line(capsys, evaluate.main, evaluate_args(corridor_map, corridor, tmp_path / "eval",
                                                               poses=poses))
    assert line.startswith("error: no query has a correct reference (within 25 m)"), line


@pytest.mark.parametrize("cli", ["evaluate", "build_map"])
def test_a_closed_stdout_ends_quietly_with_the_sigpipe_status(cli, corridor_map, corridor, tmp_path):
    """``evaluate ... | head -1``: the reader is gone before the output comes (its end of a real pipe is closed
    here before the CLI writes, which ``head -1`` does only racily); no traceback, exit 141 like ``yes | head``."""
    argv = (evaluate_args(corridor_map, corridor, tmp_path / "eval") if cli == "evaluate"
            else ["--list-settings"])
    proc = subprocess.Popen([sys.executable, "-m", f"vpr_ros.cli.{cli}", *argv], cwd=REPO, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read()
    proc.wait(timeout=300)
    assert proc.returncode == SIGPIPE_STATUS and "Traceback" not in err and "BrokenPipe" not in err, err
