"""The ament_python package: colcon installs the executables where `ros2 run` looks; launch file and manifest."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from vpr_ros.core.paths import PACKAGE_ROOT


def test_package_xml_is_format_3_with_runtime_dependencies(repo: Path):
    root = ET.parse(PACKAGE_ROOT / "package.xml").getroot()
    assert root.get("format") == "3" and root.findtext("name") == "vpr_ros"
    deps = {e.text for e in root.iter("exec_depend")}
    assert {"rclpy", "sensor_msgs", "geometry_msgs", "diagnostic_msgs", "std_srvs", "nav_msgs"} <= deps
    assert root.find("export/build_type").text == "ament_python"


def test_launch_file_is_a_launch_ros_description(repo: Path):
    tree = ast.parse((PACKAGE_ROOT / "launch" / "localize.launch.py").read_text())
    names = {n.attr if isinstance(n, ast.Attribute) else n.id for n in ast.walk(tree)
             if isinstance(n, (ast.Name, ast.Attribute))}
    assert {"generate_launch_description", "LaunchDescription", "Node"} <= names | {
        f.name for f in tree.body if isinstance(f, ast.FunctionDef)}
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "Node"]
    kwargs = {k.arg: k.value for k in calls[0].keywords}
    assert ast.literal_eval(kwargs["package"]) == "vpr_ros" and ast.literal_eval(kwargs["executable"]) == "localize"


def test_colcon_build_installs_console_scripts(repo: Path, tmp_path: Path):
    colcon = shutil.which("colcon", path=str(Path(sys.executable).parent))
    assert colcon is not None, "colcon missing beside the interpreter: requirements/dev.txt installs it"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    # Only ros/vpr_ros: with ros/vpr_ros_interfaces in the base paths colcon wants it in this install too, and it
    # is built (and installed into the venv) by `make interfaces`.
    out = subprocess.run([colcon, "--log-base", str(tmp_path / "log"), "build", "--base-paths", str(PACKAGE_ROOT),
                          "--packages-select", "vpr_ros", "--build-base", str(tmp_path / "build"),
                          "--install-base", str(tmp_path / "install")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    lib = tmp_path / "install" / "vpr_ros" / "lib" / "vpr_ros"
    assert {p.name for p in lib.iterdir()} >= {"build_map", "localize", "evaluate", "vpr_convert"}
    share = tmp_path / "install" / "vpr_ros" / "share" / "vpr_ros"
    assert (share / "launch" / "localize.launch.py").exists() and (share / "config" / "localize.yaml").exists()
    assert (share / "config" / "vpr_ros.rviz").exists()
    # The default encoder with its card and licence, and the patch-matching graphs (package data): a colcon
    # install localizes without torch or onnx (test/test_no_torch.py).
    models = PACKAGE_ROOT / "models"
    for name in ("efficientnet_lite0_b10.onnx", "efficientnet_lite0_b10.yaml", "LICENSE.efficientnet_lite0"):
        assert (share / "models" / name).read_bytes() == (models / name).read_bytes(), name
    site = tmp_path / "install" / "vpr_ros" / "lib"
    graphs = list(site.glob("python3*/site-packages/vpr_ros/core/patchnetvlad/graphs"))
    assert len(graphs) == 1 and {p.name for p in graphs[0].glob("*.onnx")} == {
        f"mutual_nn_{e}.onnx" for e in ("float32", "float16", "int8")}
    # After sourcing setup.bash, `ros2 run vpr_ros build_map` runs this file with the venv's interpreter.
    script = f". {tmp_path / 'install' / 'setup.bash'} && {lib / 'build_map'} --help"
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "Build a vpr_ros reference map" in out.stdout and "examples:" in out.stdout
