"""Shared export plumbing: ONNX tracing with dynamic axes, ONNX Runtime sessions, parity statistics.

Used by every exporter in this package (the default backbone, trained NetVLAD models, and the models of
later issues), so parity checks read the same everywhere. Model cards are built and written by
:mod:`vpr_ros.core.encoders.model_card`, the module the node reads them with.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


def export_graph(
    module: nn.Module,
    path: Path,
    *,
    outputs: Mapping[str, dict[int, str]],
    example_hw: tuple[int, int],
    opset: int = 17,
    doc_string: str = "",
) -> None:
    """Trace ``module`` (RGB ``image`` (B, 3, H, W) in) to ONNX and validate it with ``onnx.checker``.

    Args:
        module: put in eval mode; must return one tensor per entry of ``outputs`` (a tuple when several).
        path: ONNX file to write (parent folders are created).
        outputs: output name -> its dynamic axes, e.g. ``{"features": {0: "batch", 2: "fh", 3: "fw"}}``.
        example_hw: (height, width) of the tracing example; batch, height and width stay dynamic.
        opset: ONNX opset.
        doc_string: stored in the graph (provenance for people who open the file).
    """
    import onnx

    module = module.eval()
    example = torch.zeros(1, 3, *example_hw)
    path.parent.mkdir(parents=True, exist_ok=True)
    dynamic_axes: dict[str, dict[int, str]] = {"image": {0: "batch", 2: "height", 3: "width"}, **outputs}
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript-based exporter on purpose: deterministic, no onnxscript dependency, and these models
        # have no data-dependent control flow, so tracing is exact. Silence its deprecation notices.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            input_names=["image"],
            output_names=list(outputs),
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
        )
    model_proto = onnx.load(str(path))
    model_proto.doc_string = doc_string
    onnx.save(model_proto, str(path))
    onnx.checker.check_model(str(path), full_check=True)


def ort_session(path: Path, threads: int = 0) -> Any:
    """CPU ONNX Runtime session (``threads = 0``: ORT's default thread count), with the node's settings and
    ONNX Runtime's telemetry off (:mod:`vpr_ros.core.ort`)."""
    from vpr_ros.core import ort

    return ort.session(path, threads=threads)


def run_torch(module: nn.Module, images: np.ndarray, chunk: int = 4) -> np.ndarray:
    """Run ``module`` on an ``(N, 3, H, W)`` float32 batch in chunks (bounds peak memory at 480x640)."""
    with torch.inference_mode():
        return np.concatenate(
            [module(torch.from_numpy(images[i : i + chunk])).numpy() for i in range(0, len(images), chunk)]
        )


def run_onnx(session: Any, images: np.ndarray, chunk: int = 4, output: str | None = None) -> np.ndarray:
    """Run a single-input ONNX Runtime session on an ``(N, 3, H, W)`` float32 batch in chunks.

    Returns the output named ``output`` (default: the first one).
    """
    name = session.get_inputs()[0].name
    outputs = [output] if output else None
    return np.concatenate(
        [session.run(outputs, {name: images[i : i + chunk]})[0] for i in range(0, len(images), chunk)]
    )


def parity(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Max / mean absolute difference, with the reference's largest magnitude for scale."""
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    return {
        "max_abs_diff": float(f"{diff.max():.3g}"),
        "mean_abs_diff": float(f"{diff.mean():.3g}"),
        "max_abs_value": float(f"{np.abs(reference).max():.4g}"),
    }


def spread(items: Sequence[Any], n: int) -> list[Any]:
    """At most ``n`` items evenly spread over ``items`` (deterministic; keeps parity checks fast)."""
    if n <= 0 or len(items) <= n:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]
