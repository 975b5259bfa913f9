"""The ONNX graphs that ship as vpr_ros package data (``vpr_ros/core/patchnetvlad/graphs/``): checking them against
what their builder makes, rewriting them, and the command line both builders share.

vpr_ros only reads these files (it needs ONNX Runtime, not the ``onnx`` package); the modules that build them
(:mod:`vpr_training.export.matching_graphs`, :mod:`vpr_training.export.patch_graphs`) pass their graphs here as
``{file name: builder}``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import onnx

from vpr_ros.core.files import atomic_write_bytes

Builders = Mapping[str, Callable[[], onnx.ModelProto]]


def stale_graphs(directory: Path, graphs: Builders) -> list[str]:
    """The graph files in ``directory`` that are missing or differ from what their builder makes.

    Compared as parsed models (protobuf equality, field by field), so a byte-level difference in how another
    protobuf version orders or packs the same fields is not reported; the files are written byte-stable anyway.
    """
    return [name for name, build in graphs.items()
            if not (directory / name).is_file() or onnx.load_model_from_string((directory / name).read_bytes())
            != build()]


def write_package_graphs(directory: Path, graphs: Builders) -> list[Path]:
    """Write every graph to ``directory`` (atomically; unchanged files are left alone); the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, build in graphs.items():
        path = directory / name
        data = build().SerializeToString()
        if path.is_file() and path.read_bytes() == data:
            continue
        atomic_write_bytes(path, data)
        path.chmod(0o644)  # package data: readable by everyone (the atomic writer's temp file is 0600)
        written.append(path)
    return written


def graphs_main(argv: Sequence[str] | None, module: str, description: str, graphs: Builders,
                shipped: Path) -> int:
    """``python -m <module> [--out-dir DIR] [--check]``: rewrite (or verify) ``graphs``; the exit status."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    parser.add_argument("--out-dir", type=Path, default=shipped,
                        help=f"output folder (default: the package data folder, {shipped})")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is missing or differs")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_graphs(args.out_dir, graphs)
        for name in stale:
            print(f"{args.out_dir / name}: missing or not what this module builds (run python -m {module})",
                  file=sys.stderr)
        return 1 if stale else 0
    written = write_package_graphs(args.out_dir, graphs)
    print(f"{len(written)} of {len(graphs)} graphs rewritten in {args.out_dir}"
          + "".join(f"\n  {p.name}" for p in written))
    return 0
