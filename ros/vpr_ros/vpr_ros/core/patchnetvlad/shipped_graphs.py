"""The ONNX graphs vpr_ros ships as package data (``graphs/``: mutual-NN matching, query patches, VLAD head) and
the ONNX Runtime sessions that run them, one per (graph, threads, device), shared by everyone who asks.

The files are read, not built here: building them needs the ``onnx`` package, which the node does not depend on
(no rosdep key). ``vpr_training.export.matching_graphs`` and ``.patch_graphs`` generate them, and tests check that
the shipped files are what those build.
"""

from __future__ import annotations

import importlib.resources
import threading
from typing import Any

#: Package data folder (beside this module) of the shipped graphs.
GRAPH_DIRECTORY = "graphs"
_sessions: dict[tuple[str, int, str], Any] = {}
_lock = threading.Lock()


def graph_bytes(name: str, what: str, directory: str = GRAPH_DIRECTORY) -> bytes:
    """The serialized graph ``name`` from the package data; a missing file is named as ``what`` (e.g.
    "Patch-NetVLAD matching graph") with the fix."""
    resource = importlib.resources.files(__package__).joinpath(directory, name)
    try:
        return resource.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {resource} missing: it ships with vpr_ros (package data of {__package__}); "
                                "reinstall the package") from None


def graph_session(name: str, what: str, threads: int, device: str, setting: str) -> Any:
    """The session running graph ``name`` with ``threads`` intra-op threads on ``device`` (made on first use;
    ``setting`` names the device setting in the one-line error when its provider is missing)."""
    from vpr_ros.core import ort

    key = (name, threads, device)
    with _lock:
        if key not in _sessions:
            _sessions[key] = ort.session(graph_bytes(name, what), ort.providers(device, what=setting), threads,
                                         what=setting)
        return _sessions[key]

