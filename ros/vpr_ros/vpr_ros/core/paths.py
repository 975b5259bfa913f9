"""Locate package resources (models, configs) whether run from a checkout, a pip install or a colcon install."""

from __future__ import annotations

from pathlib import Path

#: The ament package directory of a source checkout (``vpr_ros/`` in the repository: package.xml, config/, models/).
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def share_directory() -> Path | None:
    """The colcon/ament share directory of vpr_ros, if the package was installed that way."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:
        return None
    try:
        return Path(get_package_share_directory("vpr_ros"))
    except (PackageNotFoundError, LookupError, ValueError, OSError):  # OSError: no AMENT_PREFIX_PATH
        return None


def resolve_path(path: str | Path, what: str = "file") -> Path:
    """Resolve ``path``: as given, else relative to the source checkout, else to the ament share dir.

    Raises FileNotFoundError naming ``what`` and every place looked at.
    """
    path = Path(path).expanduser()
    candidates = [path]
    if not path.is_absolute():
        candidates.append(PACKAGE_ROOT / path)
    for candidate in candidates:
        if candidate.exists():
            return candidate.resolve()
    share = share_directory() if not path.is_absolute() else None
    if share is not None:
        candidates.append(share / path)
        if (share / path).exists():
            return (share / path).resolve()
    looked = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"{what} {path} not found (looked in: {looked})")
