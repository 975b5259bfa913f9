"""Build the ROS 2 interface package ``vpr_ros_interfaces`` with colcon and install it into this venv.

Run with the venv's python from anywhere (``.venv/bin/python tools/build_interfaces.py``; ``make interfaces``
does it). Steps:

1. ``tools/patch_rosidl_wheels.py``: point the message wheels' CMake exports at this interpreter's headers.
2. ``colcon build`` of ``ros/vpr_ros_interfaces/`` into ``build/interfaces/{build,install}`` (incremental: CMake
   regenerates and recompiles only what changed in the .msg/.srv files).
3. Pack the install tree into a wheel (``build/interfaces/dist/``) and ``pip install`` it into the venv.

Why a wheel: the test suite and the demo run nodes in-process with ``.venv/bin/python``, which must import
``vpr_ros_interfaces.msg`` without sourcing a colcon setup file. The ``ros-kilted-*`` message wheels already
lay interface packages out that way (Python package in site-packages, C libraries in ``<venv>/lib``, which
``ros_wheels_bootstrapper.pth`` puts on LD_LIBRARY_PATH, CMake config and ament index under ``<venv>/share``),
so a wheel of our install tree lands exactly beside them. Unlike installing the tree straight into the venv
prefix (``cmake --install --prefix`` or ``colcon --install-base .venv``), pip records every file: a rebuild
replaces the previous version file by file (a removed message disappears), ``pip uninstall
vpr-ros-interfaces`` removes it all, and no colcon setup scripts are written into the venv's root. It is also
how ``../shared/ros_wheels/ros_composition_interfaces-*.whl`` was made.

On a machine with ROS 2 from apt none of this is needed: build the package in the ROS workspace with
``colcon build`` and ``source install/setup.bash``.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import shutil
import subprocess
import sys
import sysconfig
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

from patch_rosidl_wheels import main as patch_rosidl_wheels

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "vpr_ros_interfaces"
SOURCE = REPO / "ros" / PACKAGE
WORK = REPO / "build" / "interfaces"


class BuildError(Exception):
    """A missing build tool or a failed build: one line for the user."""


def check_build_tools() -> None:
    """Fail early, with the package to install, on what CMake would report as a long error."""
    prefix_bin = Path(sys.prefix) / "bin"
    for tool, how in (("colcon", "pip install -r requirements/dev.txt"),
                      ("cmake", "pip install -r requirements/ros_build.txt")):
        if shutil.which(tool, path=f"{prefix_bin}{os.pathsep}{os.environ.get('PATH', '')}") is None:
            raise BuildError(f"{tool} not found: {how}")
    if shutil.which("cc") is None or shutil.which("c++") is None:
        raise BuildError("no C/C++ compiler (cc, c++): sudo apt-get install build-essential")
    python_h = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not python_h.exists():
        raise BuildError(f"{python_h} missing (Python headers): sudo apt-get install python3-dev")


def build_environment() -> dict[str, str]:
    """The venv first on PATH (its cmake, colcon, python) and as an ament / CMake prefix (the message wheels)."""
    env = dict(os.environ)

    def prepend(name: str, value: str) -> None:
        env[name] = os.pathsep.join(p for p in (value, env.get(name, "")) if p)

    prepend("PATH", str(Path(sys.prefix) / "bin"))
    # CMake's ament_index lookups (rosidl finds its generators and type supports there) read AMENT_PREFIX_PATH;
    # colcon warns that the venv has no local_setup.* file, which is true and harmless.
    prepend("AMENT_PREFIX_PATH", sys.prefix)
    prepend("CMAKE_PREFIX_PATH", sys.prefix)
    return env


def forget_build_of_another_venv() -> None:
    """Start from a clean build directory when it was configured for another venv (a recreated or a second
    one): CMake caches the paths of the interpreter and of every package it found there."""
    marker = WORK / "venv"
    if marker.exists() and marker.read_text() != sys.prefix:
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True, exist_ok=True)
    marker.write_text(sys.prefix)


def colcon_build() -> Path:
    """colcon-build the package; returns the (merged) install tree."""
    install = WORK / "install"
    command = [str(Path(sys.prefix) / "bin" / "colcon"), "--log-base", str(WORK / "log"), "build",
               "--base-paths", str(SOURCE), "--build-base", str(WORK / "build"), "--install-base", str(install),
               "--merge-install", "--cmake-args", "-DBUILD_TESTING=OFF", "-DCMAKE_BUILD_TYPE=Release",
               f"-DPython3_EXECUTABLE={sys.executable}"]
    result = subprocess.run(command, env=build_environment(), cwd=REPO, check=False)
    if result.returncode != 0:
        raise BuildError(f"colcon build of {PACKAGE} failed (exit {result.returncode}); "
                         f"log: {WORK / 'log' / 'latest_build'}")
    return install


def package_version() -> str:
    version = ET.parse(SOURCE / "package.xml").getroot().findtext("version")
    if not version:
        raise BuildError(f"{SOURCE / 'package.xml'} has no <version>")
    return version.strip()


def wheel_entries(install: Path, data_dir: str) -> list[tuple[str, Path]]:
    """(path in the wheel, file) for every file of the install tree that belongs in the venv.

    The Python package goes to the wheel's root (site-packages); lib/, include/ and share/ go to the data
    scheme (the venv prefix). colcon's own files (setup scripts at the top, share/colcon-core) and the
    egg-info (the wheel has its dist-info) stay out.
    """
    site_packages = Path(sysconfig.get_path("platlib")).relative_to(sys.prefix)
    entries: list[tuple[str, Path]] = []
    for path in sorted(install.rglob("*")):
        rel = path.relative_to(install)
        if not path.is_file() or len(rel.parts) == 1 or "__pycache__" in rel.parts:
            continue
        if rel.is_relative_to(site_packages):
            inside = rel.relative_to(site_packages)
            if inside.parts[0] == PACKAGE:
                entries.append((inside.as_posix(), path))
        elif rel.parts[:2] != ("share", "colcon-core"):
            entries.append((f"{data_dir}/{rel.as_posix()}", path))
    return entries


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def pack_wheel(install: Path, version: str, out_dir: Path) -> Path:
    """A wheel (PEP 427) of the install tree for this interpreter and platform."""
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    dist = f"{PACKAGE}-{version}"
    wheel_path = out_dir / f"{dist}-{tag}-{tag}-{platform}.whl"
    metadata = {
        f"{dist}.dist-info/METADATA": (f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: {version}\n"
                                       "Summary: vpr_ros messages and services (colcon build of "
                                       f"{PACKAGE}/, packed by tools/build_interfaces.py)\n"),
        f"{dist}.dist-info/WHEEL": (f"Wheel-Version: 1.0\nGenerator: vpr_ros tools/build_interfaces.py\n"
                                    f"Root-Is-Purelib: false\nTag: {tag}-{tag}-{platform}\n"),
        f"{dist}.dist-info/top_level.txt": f"{PACKAGE}\n",
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob(f"{PACKAGE}-*.whl"):
        old.unlink()
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    with zipfile.ZipFile(wheel_path, "w", compression=zipfile.ZIP_DEFLATED) as wheel:
        for arcname, path in wheel_entries(install, f"{dist}.data/data"):
            data = path.read_bytes()
            info = zipfile.ZipInfo(arcname, date_time=(1980, 1, 1, 0, 0, 0))  # reproducible bytes
            info.external_attr = (path.stat().st_mode & 0o777 | 0o100000) << 16  # keeps the exec bit of .so
            info.compress_type = zipfile.ZIP_DEFLATED
            wheel.writestr(info, data)
            writer.writerow((arcname, _record_hash(data), len(data)))
        for arcname, text in metadata.items():
            data = text.encode()
            wheel.writestr(zipfile.ZipInfo(arcname, date_time=(1980, 1, 1, 0, 0, 0)), data)
            writer.writerow((arcname, _record_hash(data), len(data)))
        record_name = f"{dist}.dist-info/RECORD"
        writer.writerow((record_name, "", ""))
        wheel.writestr(zipfile.ZipInfo(record_name, date_time=(1980, 1, 1, 0, 0, 0)), record.getvalue())
    return wheel_path


def pip_install(wheel: Path) -> None:
    # --force-reinstall: the version in package.xml does not change with every edit of a .msg file.
    # --no-deps: the dependencies (ros-kilted-*-msgs) are pinned in requirements/runtime.txt.
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall",
                    str(wheel)], check=True)


def main() -> int:
    if sys.prefix == sys.base_prefix:
        print("build_interfaces: run it with the venv's python (.venv/bin/python), not the system's",
              file=sys.stderr)
        return 2
    try:
        check_build_tools()
        patch_rosidl_wheels()
        forget_build_of_another_venv()
        install = colcon_build()
        wheel = pack_wheel(install, package_version(), WORK / "dist")
    except BuildError as error:
        print(f"build_interfaces: {error}", file=sys.stderr)
        return 1
    pip_install(wheel)
    print(f"build_interfaces: installed {wheel.relative_to(REPO)} into {sys.prefix}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
