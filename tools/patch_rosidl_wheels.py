"""Make the ``ros-kilted-*`` message wheels of a venv usable for building ROS 2 interface packages.

The wheels' ``share/<pkg>/cmake/export_<pkg>__rosidl_generator_pyExport.cmake`` files were generated on the
wheel builder and name its Python and NumPy include directories (``/opt/python/cp311-cp311/...``). A package
whose messages depend on them (``vpr_ros_interfaces`` uses std_msgs, geometry_msgs, ...) inherits those
include directories, and CMake stops because they do not exist. This script replaces them with the running
interpreter's (``sysconfig`` include dir and ``numpy.get_include()``).

Run it with the venv's python (``.venv/bin/python tools/patch_rosidl_wheels.py``): the prefix to patch is
``sys.prefix``. It is idempotent (a patched file is left alone) and a no-op where nothing names the builder's
paths, e.g. on a machine with ROS 2 from apt, whose files are right as installed. It prints what it changed.
"""

from __future__ import annotations

import re
import sys
import sysconfig
from pathlib import Path

import numpy as np

#: The wheel builder's interpreter prefix (manylinux images keep their Pythons under /opt/python/<tag>).
BUILDER_PREFIX = re.compile(r"/opt/python/cp\d+-cp\d+[^;\"]*")
EXPORT_GLOB = "share/*/cmake/*__rosidl_generator_pyExport.cmake"


def replacement_include_dirs() -> str:
    """The ``;``-separated include directories that the generated Python extensions need on this interpreter."""
    return f"{sysconfig.get_paths()['include']};{np.get_include()}"


def patch_export_file(path: Path, include_dirs: str) -> bool:
    """Replace the builder's include directories in ``path``'s INTERFACE_INCLUDE_DIRECTORIES; True if changed.

    The line reads ``INTERFACE_INCLUDE_DIRECTORIES "<python include>;<numpy include>"`` on the wheels; every
    builder path in it is dropped and this interpreter's two directories take its place (once).
    """
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if "INTERFACE_INCLUDE_DIRECTORIES" not in line or not BUILDER_PREFIX.search(line):
            continue
        head, quoted, _ = line.split('"', 2)
        kept = [d for d in quoted.split(";") if d and not BUILDER_PREFIX.fullmatch(d)]
        kept += [d for d in include_dirs.split(";") if d not in kept]
        lines[i] = f'{head}"{";".join(kept)}"\n'
    patched = "".join(lines)
    if patched == text:
        return False
    path.write_text(patched)
    return True


def main() -> int:
    prefix = Path(sys.prefix)
    include_dirs = replacement_include_dirs()
    changed = [path for path in sorted(prefix.glob(EXPORT_GLOB)) if patch_export_file(path, include_dirs)]
    for path in changed:
        print(f"patched {path.relative_to(prefix)}: Python include dirs -> {include_dirs}")
    print(f"patch_rosidl_wheels: {len(changed)} file(s) changed under {prefix}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
