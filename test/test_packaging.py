"""The ament_python package: colcon installs the executables where `ros2 run` looks; launch file and manifest."""

from __future__ import annotations

import ast
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
