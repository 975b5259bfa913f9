"""Write config/*.yaml from the typed config defaults (``make config``); ``--check`` fails if they differ."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vpr_ros.config import render_params_yaml
from vpr_ros.core.localize_config import LocalizeNodeConfig
from vpr_ros.core.map_builder import BuildMapConfig
from vpr_ros.core.paths import PACKAGE_ROOT
from vpr_ros.core.pose_graph_config import PoseGraphNodeConfig

CONFIG_FILES = {
    "localize.yaml": (LocalizeNodeConfig, "/**", "vpr_ros localize node parameters"),
    "build_map.yaml": (BuildMapConfig, "/**", "vpr_ros build_map settings"),
    "pose_graph.yaml": (PoseGraphNodeConfig, "/**", "vpr_ros pose_graph node parameters"),
}


def rendered() -> dict[str, str]:
    return {name: render_params_yaml(cls, node, title) for name, (cls, node, title) in CONFIG_FILES.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, default=PACKAGE_ROOT / "config")
    parser.add_argument("--check", action="store_true", help="only compare, exit 1 on difference")
    args = parser.parse_args(argv)
    stale = []
    for name, text in rendered().items():
        path = args.dir / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"out of date (run `make config`): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
