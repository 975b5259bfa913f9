"""ONNX Runtime for the whole package, imported with its telemetry uploader off; every session is made here.

Since 1.29, the ONNX Runtime wheels for Linux start a 1DS telemetry uploader when ``onnxruntime`` is imported:
it writes a device id and an offline event cache under ``~/.cache/Microsoft/DeveloperTools/.onnxruntime`` and
about 9 s later resolves ``mobile.events.data.microsoft.com`` (then retries) to upload them. A robot's node
must not reach out, nor stall on a resolver that never answers. ``onnxruntime.disable_telemetry_events()``
comes too late: the uploader already runs (seen with strace on 1.31.1, test/test_no_network.py). The one full
opt-out is the environment variable ``ORT_DISABLE_TELEMETRY`` set to exactly ``1`` (``true`` is ignored)
before the import: ONNX Runtime reads it once, when the module initialises, and then creates no uploader,
device id or cache. So this module sets it before importing ``onnxruntime``, for this process and the
processes it starts, overriding any other value (the project's network rule: nothing leaves the machine).

The rest of the package imports ONNX Runtime only from here (``from vpr_ros.core.ort import onnxruntime``).
A process that imported ``onnxruntime`` before vpr_ros gets a warning: its uploader is already running.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

TELEMETRY_SWITCH = "ORT_DISABLE_TELEMETRY"

if "onnxruntime" in sys.modules and os.environ.get(TELEMETRY_SWITCH) != "1":
    warnings.warn(f"onnxruntime was imported before vpr_ros.core.ort without {TELEMETRY_SWITCH}=1: its "
                  "telemetry uploader is running (set the variable before anything imports onnxruntime)",
                  RuntimeWarning, stacklevel=2)
os.environ[TELEMETRY_SWITCH] = "1"

import onnxruntime  # noqa: E402  (after the switch above, which ONNX Runtime reads when it is imported)

__all__ = ["TELEMETRY_SWITCH", "onnxruntime", "session"]


def session(model: str | Path | bytes, providers: Sequence[str] = ("CPUExecutionProvider",),
            threads: int = 0) -> onnxruntime.InferenceSession:
    """An inference session on ``model`` (a file, or a serialized model) with the package's settings.

    Args:
        model: ONNX file path or serialized ``ModelProto`` bytes.
        providers: execution providers in order of preference.
        threads: intra-op threads (0 = ONNX Runtime's default, one per core).
    """
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    # No busy-waiting between operators: spinning ONNX Runtime threads starve the BLAS threads of the
    # VLAD / re-ranking stages on small machines and raise the latency.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                        providers=list(providers))
