"""Export a trained checkpoint to the model the localize node loads: ONNX + numpy head + model card.

For ``netvlad`` models (the NetVLAD family; Patch-NetVLAD uses the same weights) the ONNX graph is the
backbone: input ``image`` (B, 3, H, W) RGB float32 0..255 with the normalisation inside, dynamic B/H/W;
output ``features`` (B, D, h, w). The NetVLAD head and the PCA-whitening go to ``<id>_head.npz``, which
``vpr_ros.core.vlad.VladHead`` loads; the numpy head computes the global descriptor, the residuals
(``VladHead.aggregate``: soft assignment x (features - centroids)) and the Patch-NetVLAD patch descriptors
from those features, so there is one implementation of each. ``global`` models export the descriptor itself.

The export checks itself: the PyTorch model's global descriptor (backbone + NetVLAD + PCA in torch) against
ONNX Runtime's features aggregated by the numpy head, on real images, and refuses (exit 3) beyond the
tolerance. The card records the training data, configuration, metrics and that parity.

Examples::

    vpr-export-onnx --checkpoint runs/nordland/best.pt --out-dir models --name netvlad_lite0_nordland
    vpr-export-onnx --checkpoint runs/msls/best.pt --out-dir models --check-images 'data/corridor/ref/*.jpg'
"""

from __future__ import annotations

import argparse
import glob
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vpr_ros.config import config_from_dict
from vpr_ros.core.encoders.model_card import ModelCard, write_model_card
from vpr_ros.core.files import atomic_savez, sha256_file
from vpr_training.config import TrainConfig
from vpr_training.data.images import ImageLoader
from vpr_training.export.common import export_graph, ort_session, parity, run_onnx, spread
from vpr_training.trainer import load_checkpoint, model_from_checkpoint

log = logging.getLogger("vpr_training.export")

#: Global descriptors are L2-normalised (entries well below 1); float32 torch vs ONNX Runtime + numpy differ by
#: float32 rounding only, far below 1e-3, so it only trips on a real mismatch (wrong head, wrong normalisation,
#: wrong weights).
GLOBAL_TOLERANCE = 1e-3


class GlobalDescriptor(nn.Module):
    """Wraps a model so the traced graph outputs its ``global`` descriptor (``global`` kind export)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["global"]


@dataclass
class ExportResult:
    onnx_path: Path
    card_path: Path
    head_path: Path | None
    card: ModelCard


def _default_check_images(cfg: TrainConfig, n: int) -> list[str]:
    """Real images for the parity check: the validation database of the run, else its training database."""
    from vpr_training.data.readers import load_places

    for split in (cfg.val, cfg.train):
        try:
            return spread(load_places(split).db_images, n)
        except (OSError, ValueError) as exc:
            log.warning("parity images: cannot read %s data (%s)", split.kind, exc)
    return []


def _summary(ckpt: dict[str, Any]) -> dict[str, Any]:
    """Training metrics for the card: initial (k-means) and best validation recall, final after PCA, loss."""
    history = ckpt.get("history", [])
    return {
        "initial_kmeans": ckpt.get("initial", {}),
        "best": ckpt.get("best", {}),
        "after_pca": {k: v for k, v in ckpt.get("final", {}).items() if k.startswith("recall@")},
        "epochs": [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()} for r in history],
    }


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, name: str | None = None,
                      check_images: Sequence[str] | None = None, max_check_images: int = 8,
                      opset: int = 17, tolerance: float = GLOBAL_TOLERANCE) -> ExportResult:
    """Write ``<out_dir>/<id>.onnx`` (+ ``<id>_head.npz``) and ``<id>.yaml``; raise ValueError on parity failure."""
    from vpr_ros.core.vlad import VladHead

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    ckpt = load_checkpoint(checkpoint)
    cfg = config_from_dict(TrainConfig, ckpt["config"])
    model = model_from_checkpoint(ckpt)
    desc = model.describe()
    model_id = name or f"{cfg.model.name}_{cfg.model.backbone}_k{cfg.model.num_clusters}"
    onnx_path = out_dir / f"{model_id}.onnx"
    size = (cfg.image_height, cfg.image_width)
    stride = int(desc.get("stride", 1))

    head_path: Path | None = None
    if model.kind == "netvlad":
        export_graph(model.export_module(), onnx_path, outputs={"features": {0: "batch", 2: "fh", 3: "fw"}},
                     example_hw=size, opset=opset, doc_string=f"vpr_ros {model_id}: backbone features")
        head_path = atomic_savez(out_dir / f"{model_id}_head.npz", model.head_arrays())
        output = {"name": "features", "channels": int(desc["feature_channels"]), "stride": stride}
    else:
        export_graph(GlobalDescriptor(model), onnx_path, outputs={"global": {0: "batch"}}, example_hw=size,
                     opset=opset, doc_string=f"vpr_ros {model_id}: global descriptor")
        with torch.no_grad():
            dim = int(model(torch.zeros(1, 3, *size))["global"].shape[1])
        output = {"name": "global", "channels": dim, "stride": 1}

    paths = list(check_images) if check_images else _default_check_images(cfg, max_check_images)
    paths = spread(paths, max_check_images)
    stats: dict[str, Any] = {"images": len(paths), "size": list(size), "tolerance": tolerance}
    if paths:
        images = ImageLoader(size).load(paths)
        with torch.inference_mode():
            expected = model(torch.from_numpy(images))["global"].numpy()
        session = ort_session(onnx_path)
        got_out = run_onnx(session, images, output=output["name"])
        if head_path is not None:
            with np.load(head_path) as npz:
                head = VladHead.from_arrays(dict(npz))
            with torch.inference_mode():
                ref_features = model.export_module()(torch.from_numpy(images)).numpy()
            stats["features"] = parity(ref_features, got_out)
            got = head.global_descriptors(got_out)
        else:
            got = got_out
        stats["global"] = parity(expected, got)
        if not stats["global"]["max_abs_diff"] <= tolerance:
            raise ValueError(f"parity check failed: global descriptors differ by {stats['global']['max_abs_diff']} "
                             f"(> {tolerance}) between PyTorch and ONNX Runtime + numpy head")
    else:
        log.warning("parity check skipped: no images")

    sections: dict[str, Any] = {}
    if head_path:
        sections["head"] = {"clusters": cfg.model.num_clusters, "feature_dim": output["channels"],
                            "projection_dim": int(desc.get("projection_dim", 0)),
                            "normalize_input": cfg.model.normalize_input}
    sections["parity"] = stats
    sections["training"] = {
        "data": {"train": ckpt.get("train_data"), "val": ckpt.get("val_data")},
        "metrics": _summary(ckpt),
        "init": ckpt.get("init", {}),
        "checkpoint": {"file": checkpoint.name, "sha256": sha256_file(checkpoint),
                       "epoch": ckpt.get("best", {}).get("epoch")},
        "config": ckpt["config"],
    }
    sections["preprocessing_notes"] = ("Feed RGB float32 in 0..255, NCHW; the normalisation is inside the graph. "
                                       f"Trained at {size[0]}x{size[1]} with OpenCV resizing (vpr_ros.core.image).")
    card = ModelCard.build(
        id=model_id,
        kind=model.kind,
        description=(f"{cfg.model.name} on {cfg.model.backbone} (K={cfg.model.num_clusters}), trained with "
                     "sub-caching triplet mining by vpr_training"
                     + ("; ONNX = backbone features, NetVLAD + PCA-whitening in the head file (global and "
                        "Patch-NetVLAD descriptors share these weights)" if head_path else "")),
        about={**({"variant": desc["variant"]} if "variant" in desc else {}),
               **({"notes": " ".join(model.card_notes())} if model.card_notes() else {})},
        onnx_file=onnx_path.name,
        onnx_sha256=sha256_file(onnx_path),
        opset=opset,
        head_file=head_path.name if head_path else None,
        head_sha256=sha256_file(head_path) if head_path else None,
        output_name=output["name"],
        channels=output["channels"],
        stride=output["stride"],
        default_size=size,
        size_multiple=stride,
        sections=sections,
    )
    card_path = write_model_card(out_dir / f"{model_id}.yaml", card)
    return ExportResult(onnx_path, card_path, head_path, card)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="vpr-export-onnx", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("Examples::")[1])
    parser.add_argument("--checkpoint", required=True, type=Path, help="best.pt (or any checkpoint) of vpr-train")
    parser.add_argument("--out-dir", type=Path, default=Path("models"), help="output folder (default: models)")
    parser.add_argument("--name", default=None, help="model id and file stem (default: <model>_<backbone>_k<K>)")
    parser.add_argument("--check-images", default=None,
                        help="glob of real images for the parity check (default: the run's validation database)")
    parser.add_argument("--max-check-images", type=int, default=8, help="at most this many, evenly spread")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    parser.add_argument("--tolerance", type=float, default=GLOBAL_TOLERANCE,
                        help=f"max |diff| of global descriptors (default: {GLOBAL_TOLERANCE:g})")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; exit 0 ok, 2 bad input, 3 parity failure."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[export] %(message)s")
    start = time.perf_counter()
    images = sorted(glob.glob(args.check_images)) if args.check_images else None  # noqa: PTH207 (user globs)
    if args.check_images and not images:
        print(f"error: --check-images {args.check_images!r} matches no file", file=sys.stderr)
        return 2
    try:
        result = export_checkpoint(args.checkpoint, args.out_dir, args.name, images, args.max_check_images,
                                   args.opset, args.tolerance)
    except (FileNotFoundError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3 if "parity" in str(exc) else 2
    p = result.card.raw["parity"]
    if "global" in p:
        log.info("parity on %d images: global max |diff| %.3g", p["images"], p["global"]["max_abs_diff"])
    log.info("wrote %s, %s%s in %.1f s", result.onnx_path, result.card_path.name,
             f", {result.head_path.name}" if result.head_path else "", time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
