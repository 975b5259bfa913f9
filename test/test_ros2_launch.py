"""`ros2 launch` and `ros2 run` of the colcon-installed package, as a ROS user starts them.

A session fixture colcon-builds every ROS package under ``ros/`` (vpr_ros and vpr_ros_interfaces) into a
temporary workspace; each command then runs through ``bash -c "source <install>/setup.bash && ..."``, so it sees
what that ``setup.bash`` sets on top of the ROS 2 installation. Which installation: a system ROS 2 where one is
on PATH (a sourced ``/opt/ros/<distro>/setup.bash``; this interpreter's directory is then appended to PATH, last);
otherwise this interpreter's environment, which the ros-kilted-* wheels and the launch/CLI wheels of
requirements/ros_launch.txt (``make venv``) make one (see ``ros2_environment``). Nothing here names a venv path,
so the same file runs unchanged on a machine with ROS 2 from apt::

    source /opt/ros/kilted/setup.bash
    rosdep install --from-paths ros --ignore-src -y   # the packages' keys, pytest and psutil included
    sudo apt-get install python3-colcon-common-extensions
    python3 -m pytest test/test_ros2_launch.py

with the default encoder in ros/vpr_ros/models/ (``make models`` builds it). The test runs ``colcon build``
itself, into a temporary workspace (the equivalent of ``colcon build --base-paths ros``); a workspace of your own
is neither used nor touched. Checked by hand: colcon, ``ros2 launch`` and ``ros2 run`` need nothing beyond what
``setup.bash`` sets (PATH, AMENT_PREFIX_PATH, PYTHONPATH, LD_LIBRARY_PATH) on top of the ROS 2 installation: the
test passes under ``env -i HOME=$HOME PATH=/usr/bin:/bin ROS_DOMAIN_ID=<n> <venv>/bin/python -m pytest ...``, with
the venv activated, and with a stand-in for a sourced system ROS 2 (a ``ros2`` outside the venv first on PATH,
AMENT_PREFIX_PATH and CMAKE_PREFIX_PATH set, the interpreter's directory last).

The localization test only relies on the node's topics (image in, ``/localize/pose`` out): the launch file may
start the node as a plain node or as a lifecycle node that it autostarts (configure + activate).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest
from geometry_msgs.msg import PoseWithCovarianceStamped
from rclpy.context import Context
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

from vpr_ros.core.image import load_rgb
from vpr_ros.core.paths import PACKAGE_ROOT
from vpr_ros.core.refmap import ReferenceMap
from vpr_ros.io.poses import read_pose_file
from vpr_ros.nodes.harness import RosGraph
from vpr_ros.nodes.messages import stamp_from_msg
from vpr_ros.nodes.replay import rgb_to_image_msg

pytestmark = pytest.mark.ros

IMAGE_TOPIC = "/launch_test/camera/image"   # remapped through the launch argument image:=
POSE_TOPIC = "/localize/pose"               # ~/pose of the node the launch file names "localize"
# Liveness bounds (never timing assertions): a loaded 2-core machine starts the node in ~10 s.
FIRST_ANSWER_TIMEOUT = 180.0
ANSWER_TIMEOUT = 60.0
RESEND_PERIOD = 3.0      # a frame sent before discovery completed is lost (best-effort QoS): send it again
SHUTDOWN_TIMEOUT = 60.0  # ros2 launch itself escalates SIGINT -> SIGTERM -> SIGKILL to its nodes within ~10 s


def ros2_environment(log_dir: Path) -> dict[str, str]:
    """This process's environment (ROS_DOMAIN_ID and loopback discovery from conftest, a sourced system ROS 2 if
    any) for colcon, ``ros2 launch`` and ``ros2 run``, with ROS logs under ``log_dir``.

    With a ROS 2 on PATH (a sourced /opt/ros/<distro>/setup.bash) its tools win and this interpreter's directory
    only comes last. Without one, this interpreter's environment is the ROS 2 install: the ros-kilted-* wheels lay
    its prefix out as an ament prefix (share/ament_index, share/<pkg>/cmake) and requirements/ros_launch.txt adds
    ``ros2``; so its bin/ goes first (colcon then builds the interface package with its python3 and cmake, as
    tools/build_interfaces.py does) and its prefix on AMENT_PREFIX_PATH and CMAKE_PREFIX_PATH.
    """
    env = dict(os.environ)
    interpreter_bin = str(Path(sys.executable).parent)
    ros2 = shutil.which("ros2", path=env.get("PATH", ""))
    if ros2 is not None and Path(ros2).parent != Path(interpreter_bin):  # not the one of an activated venv
        env["PATH"] = os.pathsep.join([env.get("PATH", ""), interpreter_bin])
    else:
        env["PATH"] = os.pathsep.join([interpreter_bin, env.get("PATH", "")])
        for name in ("AMENT_PREFIX_PATH", "CMAKE_PREFIX_PATH"):
            env[name] = os.pathsep.join(p for p in (sys.prefix, env.get(name, "")) if p)
    env["ROS_LOG_DIR"] = str(log_dir)
    return env


def sourced(install: Path, command: list[str]) -> list[str]:
    """``command`` run by bash after sourcing the workspace's setup.bash, with SIGINT restored: a shell started
    in the background ignores SIGINT, and so would ``ros2 launch`` (so it could not be stopped cleanly)."""
    script = f"source {shlex.quote(str(install / 'setup.bash'))} && exec env --default-signal=INT {shlex.join(command)}"
    return ["bash", "-c", script]


def process_group(pgid: int) -> list[psutil.Process]:
    """The live processes of process group ``pgid`` (zombies are not left-overs: they have exited)."""
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return members


@pytest.fixture(scope="session")
def ros_workspace(tmp_path_factory: pytest.TempPathFactory, repo: Path, default_model: Path) -> Path:
    """A colcon install of every ROS package in ``ros/`` (the default model is installed with vpr_ros, hence
    ``default_model``); returns the install directory."""
    base = tmp_path_factory.mktemp("colcon")
    env = ros2_environment(base / "ros_log")
    command = ["colcon", "--log-base", str(base / "log"), "build", "--base-paths", str(repo / "ros"),
               "--build-base", str(base / "build"), "--install-base", str(base / "install"),
               # CMake packages (vpr_ros_interfaces): for the interpreter that runs the tests; no linter tests
               "--cmake-args", f"-DPython3_EXECUTABLE={sys.executable}", "-DBUILD_TESTING=OFF"]
    out = subprocess.run(command, cwd=base, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"colcon build failed:\n{out.stdout}\n{out.stderr}"
    return base / "install"


class PoseProbe(Node):
    """Publishes camera images and keeps every PoseWithCovarianceStamped the node answers, by stamp."""

    def __init__(self, context: Context) -> None:
        super().__init__("ros2_launch_probe", context=context)
        self.image_pub = self.create_publisher(Image, IMAGE_TOPIC, qos_profile_sensor_data)
        self.create_subscription(PoseWithCovarianceStamped, POSE_TOPIC, self._on_pose, 50)
        self._poses: dict[float, PoseWithCovarianceStamped] = {}
        self._arrived = threading.Condition()

    def _on_pose(self, msg: PoseWithCovarianceStamped) -> None:
        with self._arrived:
            self._poses[round(stamp_from_msg(msg.header.stamp), 6)] = msg
            self._arrived.notify_all()

    def localize(self, image: Image, timeout: float, alive: Callable[[], bool]) -> PoseWithCovarianceStamped | None:
        """Publish ``image`` (again every RESEND_PERIOD s) until its pose arrives, ``timeout`` passes or
        ``alive()`` turns False."""
        stamp = round(stamp_from_msg(image.header.stamp), 6)
        deadline = time.monotonic() + timeout
        with self._arrived:
            while stamp not in self._poses and time.monotonic() < deadline and alive():
                self.image_pub.publish(image)
                self._arrived.wait(min(RESEND_PERIOD, max(deadline - time.monotonic(), 0.0)))
            return self._poses.get(stamp)


@dataclass
class Launched:
    """A running ``ros2 launch`` in a process group of its own, and its output file."""

    process: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def launch_localize(ros_workspace: Path, tmp_path: Path) -> Iterator[Callable[..., Launched]]:
    """Start ``ros2 launch vpr_ros localize.launch.py <arguments>``; at the end of the test, one still running
    gets SIGINT and any process of its group left after that is killed (the test itself checks that none is)."""
    started: list[Launched] = []

    def start(*arguments: str) -> Launched:
        log = tmp_path / f"launch{len(started)}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                sourced(ros_workspace, ["ros2", "launch", "vpr_ros", "localize.launch.py", *arguments]),
                env=ros2_environment(tmp_path / "ros_log"), cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        started.append(Launched(process, log))
        return started[-1]

    yield start
    for launched in started:  # after a failed test: SIGINT as a user would, then kill whatever is left
        if launched.process.poll() is None:
            launched.process.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                launched.process.wait(SHUTDOWN_TIMEOUT)
        for proc in process_group(launched.process.pid):
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        launched.process.kill()
        launched.process.wait()


def test_ros2_launch_localizes_corridor_queries_and_stops_on_sigint(
        launch_localize, graph: RosGraph, ros_workspace: Path, corridor_map: Path, corridor: Path,
        corridor_ground_truth: list[np.ndarray]):
    launched = launch_localize(f"map_path:={corridor_map}", f"image:={IMAGE_TOPIC}")
    launch = launched.process
    ref_positions = read_pose_file(corridor / "ref_poses.csv").positions
    queries = sorted((corridor / "query").glob("*.jpg"))[::4]

    probe = graph.add(PoseProbe(graph.context))
    correct = 0
    for n, path in enumerate(queries):
        qi = int(path.stem)
        pose = probe.localize(rgb_to_image_msg(load_rgb(path), 100.0 + qi),
                              FIRST_ANSWER_TIMEOUT if n == 0 else ANSWER_TIMEOUT, lambda: launch.poll() is None)
        assert launch.poll() is None, f"ros2 launch exited ({launch.returncode}):\n{launched.output()}"
        assert pose is not None, f"no pose on {POSE_TOPIC} for query {path.name}:\n{launched.output()}"
        assert pose.header.frame_id == "map"
        p = pose.pose.pose.position
        # The pose is the position of a map frame: which one, and is it a positive of this query?
        distances = np.linalg.norm(ref_positions - [p.x, p.y, p.z], axis=1)
        assert distances.min() < 1e-6, f"pose ({p.x}, {p.y}, {p.z}) is no reference frame's position"
        correct += int(np.argmin(distances) in corridor_ground_truth[qi])
    assert correct / len(queries) >= 0.85, f"pose at a true positive for {correct}/{len(queries)} queries"

    # The node runs from the colcon install, as a child of ros2 launch, in the group started above.
    group = process_group(launch.pid)
    node_exe = str(ros_workspace / "vpr_ros" / "lib" / "vpr_ros" / "localize")
    nodes = [p for p in group if node_exe in p.cmdline()]
    assert len(nodes) == 1, [p.cmdline() for p in group]
    assert nodes[0].ppid() == launch.pid

    launch.send_signal(signal.SIGINT)
    try:
        code = launch.wait(SHUTDOWN_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"ros2 launch still running {SHUTDOWN_TIMEOUT:.0f} s after SIGINT:\n{launched.output()}")
    assert code == 0, launched.output()
    left = process_group(launch.pid)
    assert not left, f"left running after ros2 launch exited: {[p.cmdline() for p in left]}"
    assert not nodes[0].is_running() or nodes[0].status() == psutil.STATUS_ZOMBIE
    assert "process has finished cleanly" in launched.output()


def test_colcon_install_holds_executables_launch_file_configs_and_interfaces(ros_workspace: Path, tmp_path: Path):
    lib = ros_workspace / "vpr_ros" / "lib" / "vpr_ros"
    assert {p.name for p in lib.iterdir()} >= {"build_map", "localize", "evaluate", "vpr_convert"}
    share = ros_workspace / "vpr_ros" / "share" / "vpr_ros"
    for name in ("launch/localize.launch.py", "config/localize.yaml", "config/build_map.yaml", "config/vpr_ros.rviz"):
        assert (share / name).is_file(), f"{name} not installed"
    # The default encoder with its card and licence, and the shipped ONNX graphs (patch matching, query patches,
    # VLAD head; package data): a colcon install localizes without torch or onnx (test/test_no_torch.py).
    for name in ("efficientnet_lite0_b10.onnx", "efficientnet_lite0_b10.yaml", "LICENSE.efficientnet_lite0"):
        assert (share / "models" / name).read_bytes() == (PACKAGE_ROOT / "models" / name).read_bytes(), name
    graphs = list((ros_workspace / "vpr_ros" / "lib").glob("python3*/site-packages/vpr_ros/core/patchnetvlad/graphs"))
    shipped = {f"mutual_nn_{e}.onnx" for e in ("float32", "float16", "int8")} | {"query_patches.onnx", "vlad_head.onnx"}
    assert len(graphs) == 1 and {p.name for p in graphs[0].glob("*.onnx")} == shipped
    for name in shipped:
        source = PACKAGE_ROOT / "vpr_ros" / "core" / "patchnetvlad" / "graphs" / name
        assert (graphs[0] / name).read_bytes() == source.read_bytes(), name
    interfaces = ros_workspace / "vpr_ros_interfaces" / "share" / "vpr_ros_interfaces"
    assert {p.name for p in (interfaces / "msg").glob("*.msg")} >= {"PlaceCandidate.msg", "PlaceCandidates.msg",
                                                                    "LoopClosure.msg"}
    assert (interfaces / "srv" / "Localize.srv").is_file()
    # After sourcing setup.bash, `ros2 run vpr_ros build_map` runs this file with the interpreter colcon used.
    out = subprocess.run(sourced(ros_workspace, [str(lib / "build_map"), "--help"]),
                         env=ros2_environment(tmp_path / "ros_log"), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Build a vpr_ros reference map" in out.stdout and "examples:" in out.stdout


def test_ros2_run_build_map(ros_workspace: Path, corridor: Path, encoder, tmp_path: Path):
    env = ros2_environment(tmp_path / "ros_log")
    out_map = tmp_path / "maps" / "corridor"
    out = subprocess.run(sourced(ros_workspace, [
        "ros2", "run", "vpr_ros", "build_map", "--images", str(corridor / "ref"),
        "--poses", str(corridor / "ref_poses.csv"), "--output", str(out_map)]),
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    refmap = ReferenceMap.load(out_map)  # verifies every file's sha256
    poses = read_pose_file(corridor / "ref_poses.csv")
    assert refmap.frames.names == poses.names
    np.testing.assert_array_equal(refmap.frames.positions, poses.positions)
    refmap.check_encoder(encoder.describe())  # the installed default model is the one of the source tree

    missing = tmp_path / "no_such_images"
    out = subprocess.run(sourced(ros_workspace, [
        "ros2", "run", "vpr_ros", "build_map", "--images", str(missing), "--output", str(tmp_path / "m2")]),
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.splitlines() == [f"error: image folder {missing} does not exist"], out.stderr
    assert not (tmp_path / "m2").exists()
