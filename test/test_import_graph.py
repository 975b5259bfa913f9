"""The package layout holds: no import cycle in vpr_ros, a ROS-free core / io / eval / cli, torch and onnx only in
training.

The graph is read from the source (``ast``), every ``import`` at any depth, so an import hidden inside a
function to dodge a cycle still counts as an edge.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ros" / "vpr_ros" / "vpr_ros"
ROS_MODULES = ("rclpy", "sensor_msgs", "geometry_msgs", "std_msgs", "nav_msgs", "std_srvs", "diagnostic_msgs",
               "rcl_interfaces", "builtin_interfaces", "visualization_msgs", "lifecycle_msgs", "launch", "launch_ros")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at top level) for every import statement in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(node) for node in tree.body}
    found: list[tuple[str, bool]] = []
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((base, id(node) in top))
            # ``from pkg import module`` imports the submodule
            found += [(f"{base}.{alias.name}", id(node) in top) for alias in node.names]
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges[name] = {target for target, _ in imports_of(path) if target in modules and target != name}
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle (as a path that returns to its start), or None. Package ``__init__`` re-exports of their own
    submodules are not cycles: Python finishes a package's ``__init__`` before a submodule's import returns."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt.startswith(node + "."):
                continue  # a package importing its own submodule
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if state.get(nxt) is None and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_graph_is_read_from_every_module(graph: dict[str, set[str]]) -> None:
    """Guards the walker itself: known edges are found, including the nested ``from x import y`` forms."""
    assert "vpr_ros.core.refmap" in graph["vpr_ros.core.localizer"]
    assert "vpr_ros.core.encoders.base" in graph["vpr_ros.core.encoders.thumbnail"]
    assert len(graph) > 60


def test_no_import_cycle(graph: dict[str, set[str]]) -> None:
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_cycle_finder_finds_a_planted_cycle(graph: dict[str, set[str]]) -> None:
    planted = {k: set(v) for k, v in graph.items()}
    planted["vpr_ros.core.vlad"].add("vpr_ros.core.localizer")
    assert find_cycle(planted) is not None


@pytest.mark.parametrize("layer", ["core", "io", "eval", "cli"])
def test_ros_free_layers_import_no_ros(layer: str) -> None:
    """core, io, eval and cli run without ROS; only nodes/ and tools/ may import rclpy and messages.

    The one exception: ``evaluate --live`` starts the node, so cli/evaluate.py imports the live adapter from
    nodes/ inside that branch only.
    """
    offenders = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for target, top_level in imports_of(path):
            root = target.split(".")[0]
            if root in ROS_MODULES or (target.startswith("vpr_ros.nodes") and top_level):
                offenders.append(f"{module_name(path)} imports {target}")
    assert not offenders, "\n".join(offenders)


#: Never imported by vpr_ros: torch is for training only, and ``onnx`` has no rosdep key (the node runs ONNX
#: files with ONNX Runtime; the graphs it needs ship as files, written by vpr_training.export.matching_graphs).
TRAINING_ONLY = ("torch", "torchvision", "onnx")


def test_only_training_imports_torch_or_onnx() -> None:
    offenders = [f"{module_name(p)} imports {t}" for p in sorted(PACKAGE.rglob("*.py"))
                 for t, _ in imports_of(p) if t.split(".")[0] in TRAINING_ONLY]
    assert not offenders, "\n".join(offenders)


def test_the_node_and_the_clis_load_neither_torch_nor_onnx() -> None:
    """What the node and the command-line tools import at start, and the patch matcher once it has run."""
    code = ("import sys, numpy as np\n"
            "import vpr_ros.nodes.localize, vpr_ros.nodes.harness, vpr_ros.cli.build_map, vpr_ros.cli.evaluate\n"
            "import vpr_ros.cli.convert\n"
            "from vpr_ros.core.patchnetvlad.matching import nearest_patches\n"
            "for encoding, dtype in (('float32', np.float32), ('float16', np.float16), ('int8', np.uint8)):\n"
            "    nearest_patches(np.eye(4, 8, dtype=np.float32), np.ones((2, 3, 8), dtype), encoding)\n"
            f"print(','.join(m for m in {TRAINING_ONLY!r} if m in sys.modules))")
    path = [str(PACKAGE.parent), *filter(None, [os.environ.get("PYTHONPATH")])]  # this checkout's vpr_ros
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env=env).stdout.strip()
    assert loaded == "", f"the node's modules loaded {loaded}"


def test_reading_frames_loads_no_engine() -> None:
    """Reading an image folder or a bag imports neither the map builder, FAISS, ONNX Runtime, torch nor rclpy."""
    heavy = ("vpr_ros.core.map_builder", "faiss", "onnxruntime", "torch", "rclpy")
    code = ("import sys, vpr_ros.io.images, vpr_ros.io.bags; "
            f"print(','.join(m for m in {heavy!r} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "", f"importing the frame readers loaded {loaded}"
