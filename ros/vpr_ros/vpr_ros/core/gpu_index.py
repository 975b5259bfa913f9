"""FAISS search on the GPU for maps that fit: a GPU copy of a map's index, searched instead of the CPU one.

A map's index stays what it is on disk and in RAM (the CPU index: saved, appended to, memory-mapped). With
``search_device`` ``cuda`` or ``auto``, :func:`place_index` clones it to GPU memory (``faiss.index_cpu_to_gpu``)
when this FAISS has GPU support (the ``faiss-gpu-cuvs`` wheel of requirements/gpu.txt, ``make gpu-venv``) and a
GPU is visible; every other case keeps the CPU index and says why in one log line: ``faiss-cpu`` (the default
install) or no GPU, an index type FAISS cannot run on the GPU (HNSW), or a map that does not fit in GPU memory
(the copy fails with FAISS's allocation error). ``auto`` falls back quietly (info); ``cuda`` with a warning.

:meth:`IndexPlacement.index_for` hands out the GPU copy only while it still mirrors the CPU index: after frames
were appended (online maps grow keyframe by keyframe) or the index was rebuilt, searches go back to the CPU index
(logged once) rather than miss the new frames; and a k beyond FAISS's GPU selection limit (:data:`GPU_MAX_K`) is
searched on the CPU. The GPU copy answers exactly as the CPU index does up to float rounding (the same inner
products summed in another order): test/test_gpu.py compares them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from vpr_ros.errors import ConfigError

log = logging.getLogger(__name__)

#: What ``search_device`` may say: cpu, cuda (GPU, warn when it cannot be), auto (GPU when possible).
SEARCH_DEVICES = ("auto", "cpu", "cuda")
#: FAISS's GPU k-selection handles k up to 2048 (``GPU_MAX_SELECTION_K``); larger k is searched on the CPU.
GPU_MAX_K = 2048


def faiss_gpus() -> int:
    """GPUs this FAISS can use: 0 for the CPU build (faiss-cpu has no GPU code) or when none is visible."""
    import faiss

    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None and hasattr(faiss, "StandardGpuResources") else 0


@dataclass
class IndexPlacement:
    """Where a map's searches run: its CPU index and, when placed on a GPU, a copy of it there."""

    cpu_index: Any
    device: str                      # "cpu" or "cuda:<n>"
    reason: str                      # why it runs there (logged when placed)
    gpu_index: Any = None
    _resources: Any = field(default=None, repr=False)  # StandardGpuResources: must outlive gpu_index
    _mirrored: int = 0               # cpu_index.ntotal when copied
    _stale_logged: bool = False

    @property
    def on_gpu(self) -> bool:
        return self.gpu_index is not None

    def index_for(self, cpu_index: Any, k: int) -> Any:
        """The index to search ``k`` neighbours in: the GPU copy while it mirrors ``cpu_index`` and k fits the GPU's
        selection, else ``cpu_index``."""
        if self.gpu_index is None:
            return cpu_index
        if cpu_index is not self.cpu_index or cpu_index.ntotal != self._mirrored:
            if not self._stale_logged:
                log.info("the map's index changed since it was copied to %s (now %d frames, copied %d): searching it "
                         "on the CPU", self.device, cpu_index.ntotal, self._mirrored)
                self._stale_logged = True
            return cpu_index
        return self.gpu_index if k <= GPU_MAX_K else cpu_index


def place_index(index: Any, device: str, gpu: int = 0) -> IndexPlacement:
    """Place ``index`` (a CPU FAISS index) for searching on ``device`` (one of :data:`SEARCH_DEVICES`).

    Returns the placement; on anything but ``cpu`` the outcome is logged in one line (module docstring).

    Example (this machine's FAISS decides; ``cpu`` always keeps the CPU index):
        >>> import faiss
        >>> place_index(faiss.IndexFlatIP(8), "cpu").device
        'cpu'
    """
    if device not in SEARCH_DEVICES:
        raise ConfigError(f"search_device: {device!r} is not one of {list(SEARCH_DEVICES)}")
    if device == "cpu":
        return IndexPlacement(index, "cpu", "search_device cpu")
    fallback = log.warning if device == "cuda" else log.info
    if faiss_gpus() <= gpu:
        import faiss

        build = "has no GPU support (faiss-cpu; requirements/gpu.txt has the GPU build: make gpu-venv)" \
            if not hasattr(faiss, "StandardGpuResources") else f"sees {faiss_gpus()} GPU(s), not GPU {gpu}"
        reason = f"search_device {device}: FAISS {faiss.__version__} {build}; searching the map on the CPU"
        fallback(reason)
        return IndexPlacement(index, "cpu", reason)
    import faiss

    try:
        resources = faiss.StandardGpuResources()
        options = faiss.GpuClonerOptions()
        options.useFloat16 = False  # exact float32 inner products, as on the CPU
        gpu_index = faiss.index_cpu_to_gpu(resources, gpu, index, options)
    except (RuntimeError, MemoryError) as exc:
        # FAISS raises RuntimeError both for index types without a GPU version and for a failed cudaMalloc.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        reason = (f"search_device {device}: the map's index ({index.ntotal} x {index.d}, "
                  f"{type(index).__name__}) cannot run on GPU {gpu} (unsupported index type or not enough GPU "
                  f"memory: {first}); searching it on the CPU")
        fallback(reason)
        return IndexPlacement(index, "cpu", reason)
    reason = f"search_device {device}: the map's index ({index.ntotal} x {index.d}) is searched on GPU {gpu}"
    log.info(reason)
    return IndexPlacement(index, f"cuda:{gpu}", reason, gpu_index, resources, _mirrored=index.ntotal)
