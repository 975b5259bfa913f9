"""Convert an official checkpoint of any registered format into ``<id>.onnx`` + model card, parity-checked first.

Steps (:func:`convert`): read the checkpoint without running its code; build the format's module from its state
dict (key layout checked: a wrong file is refused naming the first missing / unexpected key); export ONNX with
dynamic batch, height and width (:func:`vpr_training.export.common.export_graph`); run ONNX Runtime and PyTorch on
real images (the corridor frames shipped in ``data/``, and ``../shared/data`` where present) and refuse to write
unless the descriptors agree (max |diff| <= 1e-4 or cosine >= 0.99999); then move the ONNX file into place and
write the card (``kind: global``: dimension, normalisation, input-size rule, source sha256, parity) atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vpr_ros.core.encoders.model_card import ModelCard, write_model_card
from vpr_ros.core.files import sha256_file
from vpr_ros.core.image import load_rgb, resize_rgb
from vpr_ros.errors import InputError
from vpr_training.export.common import export_graph, ort_session, run_onnx, run_torch
from vpr_training.zoo.registry import BuiltModel, ImportFormat, LayoutError, get_format

OUTPUT_NAME = "descriptor"
#: Export parity bar (float32 descriptors, unit length): either is enough, as in the issue's acceptance.
MAX_ABS_DIFF = 1e-4
MIN_COSINE = 0.99999
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class ParityError(RuntimeError):
    """ONNX Runtime's descriptors differ from PyTorch's beyond the bar: nothing was written."""


def repository_root() -> Path:
    """The source checkout holding ``training/`` (data/ ships there)."""
    return Path(__file__).resolve().parents[3]


def default_image_folders() -> list[Path]:
    """Real image folders to check parity on: the shipped corridor data, and ``../shared/data`` beside the
    checkout where it exists (more scenes: corridor, Nordland)."""
    root = repository_root()
    candidates = [root / "data" / "corridor" / "query", root / "data" / "corridor" / "ref",
                  root / "data" / "nordland_part1", root.parent / "shared" / "data"]
    return [c for c in candidates if c.is_dir()]


def real_images(folders: Sequence[Path], count: int) -> list[np.ndarray]:
    """``count`` RGB images spread over the image files below ``folders`` (deterministic: sorted, evenly spaced),
    so scenes differ. InputError if there are none."""
    files = sorted(p for folder in folders for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"no images (.jpg/.png) under {', '.join(map(str, folders)) or 'any folder'} to check "
                         "the export's parity on: pass --check-images DIR")
    picks = np.linspace(0, len(files) - 1, min(count, len(files))).round().astype(int)
    return [load_rgb(files[i]) for i in dict.fromkeys(picks.tolist())]


def descriptor_parity(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Max |diff| and the lowest cosine similarity between matching rows of two descriptor sets."""
    ref, cand = reference.astype(np.float64), candidate.astype(np.float64)
    cosine = (ref * cand).sum(1) / np.maximum(np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1), 1e-30)
    return {"max_abs_diff": float(f"{np.abs(ref - cand).max():.3g}"), "min_cosine": float(f"{cosine.min():.9f}")}


def check_sizes(built: BuiltModel) -> list[tuple[int, int]]:
    """Input sizes the parity check runs at: the default, and (unless the size is fixed) a smaller one of
    another aspect ratio, which exercises the dynamic height and width."""
    if built.fixed_size:
        return [built.default_size]
    m = built.size_multiple
    h, w = built.default_size
    return [built.default_size, (max(m, (h // 2) // m * m), max(m, (w * 3 // 8) // m * m))]


def build_checked(fmt: ImportFormat, checkpoint: Path) -> tuple[dict[str, torch.Tensor], BuiltModel]:
    """The checkpoint's state dict and the module built from it; a wrong layout is one InputError line naming the
    file, the format and the first missing / unexpected key."""
    state = fmt.state_dict(checkpoint)
    try:
        built = fmt.build(state)
    except LayoutError as exc:
        raise LayoutError(f"{checkpoint}: not a {fmt.name} checkpoint: {exc}") from None
    built.module.eval()
    return state, built


def export_parity(built: BuiltModel, onnx_path: Path, images: Sequence[np.ndarray]) -> dict[str, Any]:
    """Run PyTorch and ONNX Runtime on ``images`` at every :func:`check_sizes` size; ParityError if they differ."""
    session = ort_session(onnx_path)
    stats: dict[str, Any] = {"images": len(images), "sizes": [], "max_abs_diff": 0.0, "min_cosine": 1.0}
    for h, w in check_sizes(built):
        batch = np.stack([resize_rgb(im, h, w).transpose(2, 0, 1) for im in images]).astype(np.float32)
        reference, candidate = run_torch(built.module, batch, chunk=2), run_onnx(session, batch, chunk=2)
        if candidate.shape != (len(images), built.dimension):
            raise ParityError(f"ONNX output has shape {candidate.shape}, expected {(len(images), built.dimension)}")
        p = descriptor_parity(reference, candidate)
        stats["sizes"].append([h, w])
        stats["max_abs_diff"] = max(stats["max_abs_diff"], p["max_abs_diff"])
        stats["min_cosine"] = min(stats["min_cosine"], p["min_cosine"])
    if stats["max_abs_diff"] > MAX_ABS_DIFF and stats["min_cosine"] < MIN_COSINE:
        raise ParityError(f"ONNX Runtime and PyTorch descriptors differ (max |diff| {stats['max_abs_diff']:.3g}, "
                          f"min cosine {stats['min_cosine']:.9f}; the bar is {MAX_ABS_DIFF} or {MIN_COSINE})")
    return stats


def convert(fmt: str | ImportFormat, checkpoint: Path, out_dir: Path, model_id: str, *,
            check_images: Sequence[np.ndarray] | None = None, check_count: int = 4, opset: int = 17) -> Path:
    """Convert ``checkpoint`` (official layout of ``fmt``) to ``<out_dir>/<model_id>.onnx`` + ``.yaml``.

    Args:
        fmt: a registered format or its name.
        checkpoint: the official checkpoint file (read with ``weights_only``: nothing in it is run).
        out_dir: where the ONNX file and its card go (created).
        model_id: the model id and file stem.
        check_images: RGB uint8 images to check ONNX Runtime against PyTorch on (any size; resized to the
            check sizes); default: ``check_count`` real images from :func:`default_image_folders`.
        opset: ONNX opset.

    Returns:
        the ONNX path. Nothing is written when the layout is wrong or the parity check fails.
    """
    fmt = get_format(fmt) if isinstance(fmt, str) else fmt
    checkpoint = Path(checkpoint)
    images = list(check_images) if check_images is not None else real_images(default_image_folders(), check_count)
    if fmt.convert is not None:
        return fmt.convert(checkpoint, out_dir, model_id, images)
    _, built = build_checked(fmt, checkpoint)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / f"{model_id}.onnx"
    partial = out_dir / f".{model_id}.onnx.partial"
    try:
        export_graph(built.module, partial, outputs={OUTPUT_NAME: {0: "batch"}}, example_hw=built.default_size,
                     opset=opset, doc_string=f"{fmt.name} ({built.variant}) imported from {checkpoint.name} by "
                                             "vpr-import")
        parity = export_parity(built, partial, images)
        partial.replace(onnx_path)
    finally:
        partial.unlink(missing_ok=True)
    card = ModelCard.build(
        id=model_id, kind=fmt.kind, description=f"{fmt.description} ({built.variant}), imported from the official "
                                                f"checkpoint by vpr-import --format {fmt.name}",
        about={"format": fmt.name, "variant": built.variant},
        onnx_file=onnx_path.name, onnx_sha256=sha256_file(onnx_path), opset=opset, output_name=OUTPUT_NAME,
        channels=built.dimension, stride=1, default_size=built.default_size, size_multiple=built.size_multiple,
        sections={
            "descriptor": {"dimension": built.dimension, "rule": fmt.dimension_rule, "l2_normalised": True},
            "normalisation": {"mean": list(fmt.normalisation.mean), "std": list(fmt.normalisation.std),
                              "note": fmt.normalisation.describe()},
            "input_size_rule": fmt.size_rule,
            "source": {"format": fmt.name, "checkpoint": checkpoint.name,
                       "checkpoint_sha256": sha256_file(checkpoint), "weights": fmt.weights, "paper": fmt.paper,
                       "reference_code": fmt.reference, **dict(built.details)},
            "parity": parity,
        })
    if built.fixed_size:
        raw = card.to_dict()
        raw["input"]["fixed_size"] = True  # map_builder.input_size then always uses default_size
        card = ModelCard.from_dict(raw, where=model_id)
    write_model_card(onnx_path.with_suffix(".yaml"), card)
    return onnx_path
