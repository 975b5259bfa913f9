"""Every dependency of every package.xml under ros/ resolves with rosdep for kilted on Ubuntu noble and Debian
bookworm, against the dated snapshot of the rosdep database in ../shared/rosdep (see its README).

Two checks: the keys are looked up in the snapshot's YAML files with rosdep's own rule lookup (REP 111
precedence, per platform), and the real ``rosdep`` command (requirements/dev.txt) runs offline against the same
files through a sources list and a rosdistro index of our own: ``rosdep update``, then the command a ROS user
runs, ``rosdep install --from-paths ros --ignore-src --rosdistro kilted``, simulated.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from catkin_pkg.package import Package, parse_package
from rosdep2.lookup import ResolutionError, RosdepDefinition

# catkin_pkg (rosdep's package.xml parser) still calls pyparsing's camelCase names.
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning:catkin_pkg"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning:pyparsing")]

REPO = Path(__file__).resolve().parents[1]
#: Where the project's machines keep the snapshot: beside the checkout (never copied into the repository).
SNAPSHOT = REPO.parent / "shared" / "rosdep"
KEY_FILES = ("base.yaml", "python.yaml")
DISTRIBUTION_FILE = "kilted_distribution.yaml"
ROSDISTRO = "kilted"
PLATFORMS = (("ubuntu", "noble"), ("debian", "bookworm"))
#: The installers rosdep offers on Debian and Ubuntu (its platform plugins), the first being the default.
INSTALLERS = ("apt", "pip", "source")
#: ``package.xml`` conditions (REP 149) as a kilted workspace evaluates them.
CONDITIONS = {"ROS_VERSION": "2", "ROS_DISTRO": ROSDISTRO, "ROS_PYTHON_VERSION": "3"}


@dataclass(frozen=True)
class Database:
    """The rosdep keys (key -> rule per OS) and the ROS packages released for kilted, with its platforms."""

    keys: dict[str, dict]
    released: frozenset[str]
    release_platforms: dict[str, list[str]]


def package_xmls(root: Path) -> list[Path]:
    """Every package.xml below ``root`` (a colcon build/install/log tree inside it is not a package)."""
    return sorted(p for p in root.rglob("package.xml")
                  if not {"build", "install", "log"} & set(p.relative_to(root).parts[:-1]))


def dependencies(package: Package) -> set[str]:
    """The names in every ``<*depend>`` of ``package`` whose condition holds for kilted (what rosdep installs)."""
    package.evaluate_conditions(CONDITIONS)
    deps = (package.build_depends + package.buildtool_depends + package.build_export_depends
            + package.buildtool_export_depends + package.exec_depends + package.test_depends + package.doc_depends)
    return {d.name for d in deps if d.evaluated_condition is not False}


def load_database(snapshot: Path) -> Database:
    keys: dict[str, dict] = {}
    for name in KEY_FILES:
        keys.update(yaml.safe_load((snapshot / name).read_text()))
    distribution = yaml.safe_load((snapshot / DISTRIBUTION_FILE).read_text())
    released = set()
    for repo_name, repo in distribution["repositories"].items():
        if "release" in repo:  # a release without a package list releases the repository's one package
            released.update(repo["release"].get("packages", [repo_name]))
    return Database(keys, frozenset(released), distribution["release_platforms"])


def resolve(key: str, database: Database, own_packages: set[str], os_name: str, os_version: str) -> str:
    """How ``key`` is installed on the platform (``source``, ``ros-kilted-...`` or ``installer: packages``);
    raises LookupError saying why it does not resolve."""
    if key in own_packages:
        return "source (this repository)"
    if key in database.released:
        if os_version not in database.release_platforms.get(os_name, []):
            raise LookupError(f"{key}: kilted is not released for {os_name} {os_version}")
        return f"apt: ros-{ROSDISTRO}-{key.replace('_', '-')}"
    if key not in database.keys:
        raise LookupError(f"{key}: neither a rosdep key ({', '.join(KEY_FILES)}) nor a ROS package released for "
                          f"{ROSDISTRO}")
    try:
        installer, rule = RosdepDefinition(key, database.keys[key], "snapshot").get_rule_for_platform(
            os_name, os_version, list(INSTALLERS), INSTALLERS[0])
    except ResolutionError as exc:
        raise LookupError(f"{key}: {exc.args[-1] if exc.args else exc}") from None
    packages = rule.get("packages", []) if isinstance(rule, dict) else rule
    packages = packages.split() if isinstance(packages, str) else list(packages or [])
    if not packages:
        raise LookupError(f"{key}: the {installer} rule for {os_name} {os_version} installs nothing")
    return f"{installer}: {' '.join(packages)}"


def unresolved(root: Path, database: Database) -> dict[str, list[str]]:
    """Per platform (``os:version``), why each dependency of the packages under ``root`` does not resolve."""
    packages = {p: parse_package(p) for p in package_xmls(root)}
    own = {pkg.name for pkg in packages.values()}
    faults: dict[str, list[str]] = {}
    for os_name, os_version in PLATFORMS:
        for path, package in packages.items():
            for key in sorted(dependencies(package)):
                try:
                    resolve(key, database, own, os_name, os_version)
                except LookupError as exc:
                    faults.setdefault(f"{os_name}:{os_version}", []).append(f"{path.relative_to(root)}: {exc}")
    return faults


@pytest.fixture(scope="module")
def snapshot() -> Path:
    missing = [name for name in (*KEY_FILES, DISTRIBUTION_FILE) if not (SNAPSHOT / name).is_file()]
    if missing:
        pytest.fail(f"rosdep database snapshot missing: {', '.join(missing)} not in {SNAPSHOT}. The project's "
                    "machines keep it beside the checkout in ../shared/rosdep (base.yaml, python.yaml, "
                    "kilted_distribution.yaml from ros/rosdistro); put a copy there to run this test.")
    return SNAPSHOT


@pytest.fixture(scope="module")
def database(snapshot: Path) -> Database:
    return load_database(snapshot)


def test_every_key_of_every_package_resolves_for_kilted(database: Database):
    packages = package_xmls(REPO / "ros")
    assert REPO / "ros" / "vpr_ros" / "package.xml" in packages
    vpr_ros = dependencies(parse_package(REPO / "ros" / "vpr_ros" / "package.xml"))
    assert {"rclpy", "python3-faiss", "python3-onnxruntime-pip", "python3-pytest"} <= vpr_ros  # the parser reads
    assert unresolved(REPO / "ros", database) == {}


def test_resolutions_follow_the_platform_rules(database: Database):
    """The rules the README states: faiss is a pip package on both platforms, ROS packages come from apt."""
    for os_name, os_version in PLATFORMS:
        assert resolve("python3-faiss", database, set(), os_name, os_version) == "pip: faiss-cpu"
        assert resolve("python3-onnxruntime-pip", database, set(), os_name, os_version) == "pip: onnxruntime"
        assert resolve("rclpy", database, set(), os_name, os_version) == "apt: ros-kilted-rclpy"
        assert resolve("python3-numpy", database, set(), os_name, os_version) == "apt: python3-numpy"


PLANTED = """<?xml version="1.0"?>
<package format="3">
  <name>{name}</name><version>0.0.0</version><description>planted</description>
  <maintainer email="planted@example.org">planted</maintainer><license>Apache-2.0</license>
  <buildtool_depend>ament_cmake</buildtool_depend>
  <exec_depend>{sibling}</exec_depend>
  <exec_depend>python3-faiss</exec_depend>
  <exec_depend>python3-faiss-pip</exec_depend>
  <depend>python3-onnx-pip</depend>
  <exec_depend condition="$ROS_VERSION == 1">roscpp</exec_depend>
  <export><build_type>ament_cmake</build_type></export>
</package>
"""


@pytest.fixture
def planted_workspace(tmp_path: Path) -> Path:
    """Two packages: one depends on the other, on a good key, on two keys that do not exist (one of them through
    ``<depend>``), and on a ROS 1 package under a condition that is false for kilted."""
    for name, sibling in (("planted_a", "planted_b"), ("planted_b", "rclpy")):
        (tmp_path / "src" / name).mkdir(parents=True)
        (tmp_path / "src" / name / "package.xml").write_text(PLANTED.format(name=name, sibling=sibling))
    return tmp_path / "src"


def test_missing_keys_are_reported_per_platform(database: Database, planted_workspace: Path):
    faults = unresolved(planted_workspace, database)
    assert set(faults) == {"ubuntu:noble", "debian:bookworm"}
    for lines in faults.values():
        assert len(lines) == 4 and all("neither a rosdep key" in line for line in lines)
        assert {line.split(": ")[1] for line in lines} == {"python3-faiss-pip", "python3-onnx-pip"}


# ---- The real rosdep, offline ---------------------------------------------------------------------------------

def rosdep_command() -> str:
    """``rosdep`` beside this interpreter (requirements/dev.txt), else the one on PATH (a ROS install)."""
    beside = Path(sys.executable).with_name("rosdep")
    found = str(beside) if beside.exists() else shutil.which("rosdep")
    assert found is not None, "rosdep missing: requirements/dev.txt installs it (pip install rosdep)"
    return found


@pytest.fixture(scope="module")
def rosdep_env(snapshot: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment in which ``rosdep`` reads only the snapshot: a sources list of its two YAML files, a
    rosdistro index naming its kilted distribution file, and a cache of its own (``rosdep update`` done)."""
    root = tmp_path_factory.mktemp("rosdep")
    sources = root / "sources.list.d"
    sources.mkdir()
    (sources / "20-default.list").write_text("".join(f"yaml {(snapshot / n).as_uri()}\n" for n in KEY_FILES))
    index = root / "index-v4.yaml"
    index.write_text(yaml.safe_dump({
        "type": "index", "version": 4,
        "distributions": {ROSDISTRO: {"distribution": [(snapshot / DISTRIBUTION_FILE).as_uri()],
                                      "distribution_status": "active", "distribution_type": "ros2",
                                      "python_version": 3}}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROS_OS_OVERRIDE", "ROSDEP_", "ROSDISTRO_"))}
    env.update(ROSDEP_SOURCE_PATH=str(sources), ROSDISTRO_INDEX_URL=index.as_uri(), ROS_HOME=str(root / "home"),
               ROS_DISTRO=ROSDISTRO, ROS_PYTHON_VERSION="3")
    out = subprocess.run([rosdep_command(), "update", "--rosdistro", ROSDISTRO], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"Add distro \"{ROSDISTRO}\"" in out.stdout and "updated cache" in out.stdout, out.stdout
    return env


def simulate_install(env: dict[str, str], paths: Path, os_name: str, os_version: str) -> subprocess.CompletedProcess:
    """``rosdep install --simulate`` as a user runs it (``--reinstall``: list every package, installed or not,
    so the answer does not depend on this machine)."""
    return subprocess.run([rosdep_command(), "install", "--simulate", "--reinstall", "--default-yes", "--from-paths",
                           str(paths), "--ignore-src", "--rosdistro", ROSDISTRO, f"--os={os_name}:{os_version}"],
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(("os_name", "os_version"), PLATFORMS)
def test_rosdep_install_resolves_every_key(rosdep_env: dict[str, str], database: Database, os_name: str,
                                           os_version: str):
    out = simulate_install(rosdep_env, REPO / "ros", os_name, os_version)
    assert out.returncode == 0, out.stdout + out.stderr
    commands = out.stdout
    # Every package the YAML lookup above installs is in rosdep's commands, by the same installer.
    own = {parse_package(p).name for p in package_xmls(REPO / "ros")}
    keys = set().union(*(dependencies(parse_package(p)) for p in package_xmls(REPO / "ros"))) - own
    for key in sorted(keys):
        installer, packages = resolve(key, database, own, os_name, os_version).split(": ")
        command = {"apt": r"apt-get install -y", "pip": r"pip3? install -U -I"}[installer]
        for package in packages.split():
            assert re.search(rf"^\s*{command} {re.escape(package)}$", commands, re.M), f"{key}: {package}\n{commands}"


def test_rosdep_install_names_the_missing_keys(rosdep_env: dict[str, str], planted_workspace: Path):
    out = simulate_install(rosdep_env, planted_workspace, "ubuntu", "noble")
    assert out.returncode != 0
    # rosdep names the first key it cannot resolve per package (the YAML check above names them all).
    for package in ("planted_a", "planted_b"):
        assert re.search(rf"^{package}: Cannot locate rosdep definition for \[python3-(faiss|onnx)-pip\]$",
                         out.stderr, re.M), out.stdout + out.stderr
