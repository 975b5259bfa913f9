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

Devices (:func:`providers`): ``cpu``, ``cuda`` (ONNX Runtime's CUDA provider), ``tensorrt`` (its TensorRT provider
with an engine cache, then CUDA for what TensorRT does not take) and ``auto`` (CUDA when this ONNX Runtime offers
it, else CPU). The GPU providers come with the ``onnxruntime-gpu`` build (requirements/gpu.txt, ``make
gpu-venv``); asking for one that this ONNX Runtime lacks, or whose libraries fail to load, is one
:class:`ProviderUnavailableError` line naming the setting. :class:`BoundRunner` runs a session with IO binding, so
that a chain of graphs on the GPU passes its tensors on without copying them to the host.
"""

from __future__ import annotations

import hashlib
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

TELEMETRY_SWITCH = "ORT_DISABLE_TELEMETRY"

if "onnxruntime" in sys.modules and os.environ.get(TELEMETRY_SWITCH) != "1":
    warnings.warn(f"onnxruntime was imported before vpr_ros.core.ort without {TELEMETRY_SWITCH}=1: its "
                  "telemetry uploader is running (set the variable before anything imports onnxruntime)",
                  RuntimeWarning, stacklevel=2)
os.environ[TELEMETRY_SWITCH] = "1"

import onnxruntime  # noqa: E402  (after the switch above, which ONNX Runtime reads when it is imported)

from vpr_ros.errors import InputError  # noqa: E402

__all__ = ["CPU", "CUDA", "DEVICES", "TELEMETRY_SWITCH", "TENSORRT", "BoundRunner", "ProviderUnavailableError",
           "TensorrtSettings", "check_providers", "model_digest", "onnxruntime", "providers", "session",
           "tensorrt_cache_dir"]

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
#: What a ``device`` setting may say (module docstring).
DEVICES = ("auto", "cpu", "cuda", "tensorrt")
#: A provider name, or (name, options) as ``InferenceSession(providers=...)`` takes them.
Provider = str | tuple[str, dict[str, str]]
#: CUDA provider options. TF32 off: with it, convolutions and GEMMs round their inputs to 10-bit mantissas and the
#: descriptors drift from the CPU's far beyond float32 summation order, enough to swap near-tied candidates; at
#: the encoder's few GFLOP per frame full float32 costs little on a datacenter GPU (``tensorrt`` with fp16 is the
#: fast path).
CUDA_OPTIONS: dict[str, str] = {"device_id": "0", "cudnn_conv_algo_search": "EXHAUSTIVE",
                                "do_copy_in_default_stream": "1", "use_tf32": "0"}
GPU_BUILD_HINT = ("install the GPU build of ONNX Runtime (make gpu-venv; requirements/gpu.txt) or set {what} to cpu "
                  "or auto")


class ProviderUnavailableError(InputError):
    """A device was asked for whose ONNX Runtime execution provider this installation lacks or cannot load."""


def _provider_name(provider: Provider) -> str:
    return provider if isinstance(provider, str) else provider[0]


class TensorrtSettings:
    """What keys a TensorRT engine: the model, the input shape it is built for and the precision.

    TensorRT compiles an engine per model and input shape (minutes for a backbone), so engines are cached on
    disk: one directory per (model hash, input shape, precision, ONNX Runtime version) under ``cache_root``
    (:func:`tensorrt_cache_dir`), built for exactly that shape (min = opt = max profile, batch 1 to ``batch``).
    """

    def __init__(self, cache_root: str | Path, model_sha256: str, input_name: str, batch: int, channels: int,
                 height: int, width: int, fp16: bool) -> None:
        self.cache_root = Path(cache_root).expanduser()
        self.model_sha256 = model_sha256
        self.input_name = input_name
        self.batch, self.channels, self.height, self.width = batch, channels, height, width
        self.fp16 = fp16

    @property
    def cache_dir(self) -> Path:
        return tensorrt_cache_dir(self.cache_root, self.model_sha256, (self.batch, self.channels, self.height,
                                                                        self.width), self.fp16)

    def options(self) -> dict[str, str]:
        """TensorRT provider options (ONNX Runtime's names; values as strings, as the C API takes them)."""
        shape = f"{self.channels}x{self.height}x{self.width}"
        path = str(self.cache_dir)
        return {"device_id": "0", "trt_fp16_enable": "1" if self.fp16 else "0",
                "trt_engine_cache_enable": "1", "trt_engine_cache_path": path,
                "trt_timing_cache_enable": "1", "trt_timing_cache_path": path,
                "trt_profile_min_shapes": f"{self.input_name}:1x{shape}",
                "trt_profile_opt_shapes": f"{self.input_name}:{self.batch}x{shape}",
                "trt_profile_max_shapes": f"{self.input_name}:{self.batch}x{shape}"}


def model_digest(model: str | Path | bytes) -> str:
    """sha256 (hex) of an ONNX file or of serialized model bytes."""
    if isinstance(model, bytes):
        return hashlib.sha256(model).hexdigest()
    from vpr_ros.core.files import sha256_file

    return sha256_file(Path(model))


def tensorrt_cache_dir(root: str | Path, model_sha256: str, input_shape: Sequence[int], fp16: bool) -> Path:
    """The engine cache directory of one model at one input shape and precision.

    An engine is only valid for the model, shape range, precision and TensorRT build it was compiled with; one
    directory per key means a changed model or camera size never picks up a stale engine, and a cache can be
    cleared per model. The ONNX Runtime version stands in for its TensorRT build (its provider embeds its own).
    """
    if len(model_sha256) < 16 or any(c not in "0123456789abcdef" for c in model_sha256.lower()):
        raise ValueError(f"model_sha256 must be a hex sha256, got {model_sha256!r}")
    shape = "x".join(str(int(d)) for d in input_shape)
    precision = "fp16" if fp16 else "fp32"
    return Path(root).expanduser() / f"{model_sha256.lower()[:16]}_{shape}_{precision}_ort{onnxruntime.__version__}"


def providers(device: str, *, what: str = "device", available: Sequence[str] | None = None,
              tensorrt: TensorrtSettings | None = None) -> list[Provider]:
    """Execution providers, in order of preference, for a ``device`` setting (one of :data:`DEVICES`).

    Args:
        device: ``cpu``, ``cuda``, ``tensorrt`` or ``auto`` (CUDA when offered, else CPU).
        what: the setting's name, for the error line (e.g. ``encoder.device``).
        available: the providers to choose from (default: what this ONNX Runtime offers).
        tensorrt: engine cache and shape for ``tensorrt`` (without it, TensorRT's defaults: no cache).

    Raises:
        ProviderUnavailableError: ``cuda`` / ``tensorrt`` asked for and not offered by this ONNX Runtime.
    """
    offered = list(onnxruntime.get_available_providers() if available is None else available)
    if device not in DEVICES:
        raise ProviderUnavailableError(f"{what}: {device!r} is not one of {list(DEVICES)}")
    cuda: Provider = (CUDA, dict(CUDA_OPTIONS))
    if device == "cpu" or (device == "auto" and CUDA not in offered):
        return [CPU]
    if device == "auto":
        return [cuda, CPU]
    needed = [CUDA] if device == "cuda" else [TENSORRT, CUDA]
    missing = [p for p in needed if p not in offered]
    if missing:
        raise ProviderUnavailableError(
            f"{what} {device!r} needs ONNX Runtime's {' and '.join(missing)}, but onnxruntime "
            f"{onnxruntime.__version__} here offers only {', '.join(offered)}: "
            + GPU_BUILD_HINT.format(what=what))
    if device == "cuda":
        return [cuda, CPU]
    return [(TENSORRT, tensorrt.options() if tensorrt is not None else {"device_id": "0"}), cuda, CPU]


def check_providers(requested: Sequence[Provider], running: Sequence[str], *, what: str = "device") -> None:
    """Raise :class:`ProviderUnavailableError` unless a session runs the first provider it was asked for.

    ONNX Runtime falls back to the next provider with only a log line when one is offered but cannot load (the
    CUDA or cuDNN libraries missing, a driver too old): a node configured for the GPU would then quietly run on
    the CPU, ten times slower. CPU as the first choice is always running.
    """
    first = _provider_name(requested[0]) if requested else CPU
    if first not in running:
        raise ProviderUnavailableError(
            f"{what}: ONNX Runtime offers {first} but could not start it (the session runs on "
            f"{', '.join(running)}): its CUDA / cuDNN{' / TensorRT' if first == TENSORRT else ''} libraries are "
            f"missing or do not match the driver (see ONNX Runtime's log line above); " + GPU_BUILD_HINT.format(
                what=what))


def session(model: str | Path | bytes, providers: Sequence[Provider] = (CPU,),
            threads: int = 0, *, what: str | None = None) -> onnxruntime.InferenceSession:
    """An inference session on ``model`` (a file, or a serialized model) with the package's settings.

    Args:
        model: ONNX file path or serialized ``ModelProto`` bytes.
        providers: execution providers in order of preference: names or (name, options) pairs, e.g. from
            :func:`providers` (``ort.session(model, ort.providers("cuda"))``).
        threads: intra-op threads (0 = ONNX Runtime's default, one per core).
        what: the device setting's name: when given, a session that does not run its first provider (the GPU
            libraries failed to load) raises :class:`ProviderUnavailableError` naming it (:func:`check_providers`).
    """
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    # No busy-waiting between operators: spinning ONNX Runtime threads starve the BLAS threads of the
    # VLAD / re-ranking stages on small machines and raise the latency.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if any(_provider_name(p) != CPU for p in providers) and hasattr(onnxruntime, "preload_dlls"):
        # onnxruntime-gpu finds the CUDA / cuDNN libraries of the nvidia-* wheels (requirements/gpu.txt) only
        # once they are loaded; without this it looks in the system library path alone.
        onnxruntime.preload_dlls()
    made = onnxruntime.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                        providers=list(providers))
    if what is not None:
        check_providers(list(providers), made.get_providers(), what=what)
    return made


def device_of(running: Sequence[str]) -> str:
    """The ONNX Runtime device type (``cuda`` or ``cpu``) a session running ``running`` keeps its tensors on."""
    return "cuda" if running and running[0] in (CUDA, TENSORRT) else "cpu"


class BoundRunner:
    """Runs a session with IO binding: inputs and outputs stay on the session's device.

    With the CUDA or TensorRT provider, ``session.run`` copies every output back to the host. Here outputs are
    left in device memory (``OrtValue``), so one graph's output can feed the next (``run(..., {"x": value})``
    binds it without a copy), and only what the caller asks for with :meth:`to_numpy` -- the descriptors at the
    end -- crosses to the host. On the CPU provider the same calls work, with no copies at all.

    Example (on the CPU, where device memory is host memory):
        >>> import numpy as np
        >>> from vpr_ros.core.patchnetvlad.matching import GRAPH_DIRECTORY, graph_file_name
        >>> import importlib.resources
        >>> graph = importlib.resources.files("vpr_ros.core.patchnetvlad").joinpath(
        ...     GRAPH_DIRECTORY, graph_file_name("float32")).read_bytes()
        >>> runner = BoundRunner(session(graph))
        >>> refs, query_t = np.eye(3, dtype=np.float32)[None], np.eye(3, dtype=np.float32)
        >>> [v.shape() for v in runner.run({"refs": refs, "query_t": query_t})]
        [[1, 3], [1, 3]]
    """

    def __init__(self, session: onnxruntime.InferenceSession, device_id: int = 0) -> None:
        self.session = session
        self.device = device_of(session.get_providers())
        self.device_id = device_id
        self.output_names = [o.name for o in session.get_outputs()]
        self.run_options = onnxruntime.RunOptions()
        self.run_options.log_severity_level = 4  # a failed run raises with the whole message

    def upload(self, array: Any) -> Any:
        """An ``OrtValue`` on this runner's device holding a copy of ``array``."""
        import numpy as np

        return onnxruntime.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, self.device_id)

    def run(self, feeds: Mapping[str, Any], outputs: Sequence[str] | None = None) -> list[Any]:
        """Run once; ``feeds`` values are numpy arrays (copied to the device) or ``OrtValue`` s (bound as they
        are). Returns the outputs (``outputs``, default all) as ``OrtValue`` s on the device."""
        binding = self.session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, onnxruntime.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_ortvalue_input(name, self.upload(value))
        for name in outputs or self.output_names:
            binding.bind_output(name, self.device, self.device_id)
        self.session.run_with_iobinding(binding, self.run_options)
        return binding.get_outputs()

    @staticmethod
    def to_numpy(values: Sequence[Any]) -> list[Any]:
        """Host copies of device ``OrtValue`` s (the one device-to-host transfer of a chain)."""
        return [v.numpy() for v in values]
