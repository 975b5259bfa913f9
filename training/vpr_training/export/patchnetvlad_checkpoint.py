"""Import official Patch-NetVLAD checkpoints: VGG16 + NetVLAD (+ WPCA) -> ONNX backbone + head .npz + model card.

The official package (PyPI ``patchnetvlad``, ``models/models_generic.py``) builds its model as a module with
three children and loads ``*_WPCA<N>.pth.tar`` files whose ``state_dict`` has these keys:

================================  ==========================  ===============================================
key                               shape                       what
================================  ==========================  ===============================================
``encoder.<i>.weight / .bias``    VGG16 ``features[:-2]``     conv1_1 .. conv5_3 (the last ReLU and max-pool
                                                              are dropped: features are conv5_3 pre-ReLU)
``pool.centroids``                (K, 512)                    NetVLAD cluster centres, K = 16 or 64
``pool.conv.weight``              (K, 512, 1, 1)              soft-assignment 1x1 conv (vladv1: no bias)
``pool.conv.bias``                (K,) (vladv2 only)
``WPCA.0.weight / .bias``         (P, K*512, 1, 1) / (P,)     whitened PCA as a 1x1 conv, P = 4096/512/128
================================  ==========================  ===============================================

Its images go through ``Resize`` + ``ToTensor`` + ``Normalize(ImageNet mean, std)``. We export the backbone
with that normalisation inside the graph (input: RGB float32 in 0..255), and write the head in
:class:`vpr_ros.core.vlad.VladHead` layout, so ``kind: netvlad`` maps and the localize node run the
checkpoint with ONNX Runtime and numpy only.

No checkpoint can be downloaded here; ``--random`` builds one with the package's own model code and seeded
random weights (the VGG16 backbone constructed exactly like its ``get_backend`` but without ImageNet weights)
and saves it in the official layout, for parity tests and benchmarks.

Usage::

    vpr-import-patchnetvlad --random --clusters 16 --pcs 4096 --checkpoint out/random_WPCA4096.pth.tar
    vpr-import-patchnetvlad --checkpoint pretrained_models/mapillary_WPCA512.pth.tar --out-dir models \\
        --id patchnetvlad_mapillary_512
"""

from __future__ import annotations

import argparse
import configparser
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vpr_ros.core.encoders.model_card import ModelCard, write_model_card
from vpr_ros.core.files import atomic_savez, sha256_file
from vpr_training.checkpoints import NUMPY_SCALARS, CheckpointError, SafeGlobal, load_checkpoint
from vpr_training.export.common import ort_session, parity, run_onnx, run_torch

#: torchvision's ImageNet normalisation, which the official ``input_transform`` applies to 0..1 images.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VGG_DIM = 512
VGG_STRIDE = 16
DEFAULT_SIZE = (480, 640)

#: What official checkpoints carry beyond tensors and plain data, the only extra globals their import admits:
#: numpy scalars (its training code saves ``recalls`` and ``best_score`` as numpy floats) and an argparse
#: Namespace (checkpoints of NetVLAD code it derives from keep their command-line options as one).
OFFICIAL_CHECKPOINT_GLOBALS: tuple[SafeGlobal, ...] = (*NUMPY_SCALARS, argparse.Namespace)


def vgg16_backbone() -> nn.Sequential:
    """VGG16 ``features`` without the last ReLU and max-pool, as the official ``get_backend`` builds it
    (weights left at torchvision's random initialisation: nothing is downloaded)."""
    import torchvision

    return nn.Sequential(*list(torchvision.models.vgg16(weights=None).features.children())[:-2])


def official_model(num_clusters: int, num_pcs: int, patch_sizes: str = "2,5,8", strides: str = "1,1,1",
                   vladv2: bool = False) -> nn.Module:
    """The official Patch-NetVLAD model (package code) around a weight-less VGG16 backbone."""
    from patchnetvlad.models.models_generic import get_model

    config = configparser.ConfigParser()
    config.read_dict({"global_params": {"pooling": "patchnetvlad", "num_clusters": str(num_clusters),
                                        "num_pcs": str(num_pcs), "vladv2": str(vladv2),
                                        "patch_sizes": patch_sizes, "strides": strides}})
    return get_model(vgg16_backbone(), VGG_DIM, config["global_params"], append_pca_layer=num_pcs > 0).eval()


def random_checkpoint(path: Path, num_clusters: int, num_pcs: int, seed: int = 0) -> Path:
    """Save an official-layout checkpoint with seeded random weights; returns ``path``.

    The soft-assignment conv gets ``alpha * normalised centroids`` like NetVLAD's initialisation (alpha 30)
    so the assignment is as peaked as a trained model's rather than uniform.
    """
    torch.manual_seed(seed)
    model = official_model(num_clusters, num_pcs)
    with torch.no_grad():
        centroids = torch.nn.functional.normalize(torch.randn(num_clusters, VGG_DIM), dim=1)
        model.pool.centroids.copy_(centroids)
        model.pool.conv.weight.copy_(30.0 * centroids[:, :, None, None])
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 0, "best_score": 0.0, "state_dict": model.state_dict(),
                "note": f"random weights (seed {seed}) in the official Patch-NetVLAD layout"}, path)
    return path


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The model weights of an official checkpoint, read by :func:`vpr_training.checkpoints.load_checkpoint` with
    :data:`OFFICIAL_CHECKPOINT_GLOBALS` allowed and nothing else (a crafted file is refused, not run)."""
    checkpoint = load_checkpoint(path, allow=OFFICIAL_CHECKPOINT_GLOBALS)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or "pool.centroids" not in state:
        raise CheckpointError(f"{path}: not a Patch-NetVLAD checkpoint (no state_dict with pool.centroids)")
    # Checkpoints saved from nn.DataParallel prefix the sub-module names with "module.".
    return {k.replace(".module.", "."): v for k, v in state.items()}


class NormalisedBackbone(nn.Module):
    """RGB 0..255 -> ImageNet normalisation (as ToTensor + Normalize) -> VGG16 conv5_3 features."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0))
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone((x - self.mean) * self.inv_std)


def head_arrays(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The NetVLAD + WPCA head in :class:`vpr_ros.core.vlad.VladHead` array layout."""
    centroids = state["pool.centroids"].float().numpy()
    k = centroids.shape[0]
    arrays = {"centroids": centroids,
              "assign_weight": state["pool.conv.weight"].float().numpy()[:, :, 0, 0],
              "assign_bias": (state["pool.conv.bias"].float().numpy() if "pool.conv.bias" in state
                              else np.zeros(k, np.float32)),
              "normalize_input": np.array(True)}
    if "WPCA.0.weight" in state:
        arrays["projection"] = state["WPCA.0.weight"].float().numpy()[:, :, 0, 0]
        arrays["projection_bias"] = state["WPCA.0.bias"].float().numpy()
    return {name: np.ascontiguousarray(a) for name, a in arrays.items()}


def backbone_from_state(state: dict[str, torch.Tensor]) -> nn.Module:
    backbone = vgg16_backbone()
    backbone.load_state_dict({k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")})
    return NormalisedBackbone(backbone).eval()


def export_onnx(module: nn.Module, path: Path, opset: int = 17) -> None:
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(module, (torch.zeros(1, 3, 64, 64),), str(path), dynamo=False, input_names=["image"],
                          output_names=["features"], opset_version=opset, do_constant_folding=True,
                          dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                                        "features": {0: "batch", 2: "feat_height", 3: "feat_width"}})
    onnx.checker.check_model(str(path))


def convert(checkpoint: Path, out_dir: Path, model_id: str, check_images: Sequence[np.ndarray] = (),
            check_size: tuple[int, int] = DEFAULT_SIZE, opset: int = 17) -> Path:
    """Convert an official checkpoint to ``<out_dir>/<model_id>.{onnx,yaml}`` + ``_head.npz``; returns the ONNX
    path. ``check_images`` (RGB uint8, already ``check_size``) measure the torch / ONNX Runtime parity."""
    state = load_state_dict(checkpoint)
    backbone = backbone_from_state(state)
    onnx_path = out_dir / f"{model_id}.onnx"
    head_path = out_dir / f"{model_id}_head.npz"
    export_onnx(backbone, onnx_path, opset)
    head = head_arrays(state)
    atomic_savez(head_path, head)
    stats: dict[str, Any] = {"images": len(check_images), "size": list(check_size)}
    if len(check_images):
        batch = np.stack([im.transpose(2, 0, 1) for im in check_images]).astype(np.float32)
        stats.update(parity(run_torch(backbone, batch, chunk=1), run_onnx(ort_session(onnx_path), batch, chunk=1)))
    card = ModelCard.build(
        id=model_id, kind="netvlad",
        description="Official Patch-NetVLAD checkpoint (VGG16 conv5_3 + NetVLAD + WPCA) converted by "
                    "vpr_training.export.patchnetvlad_checkpoint",
        onnx_file=onnx_path.name, onnx_sha256=sha256_file(onnx_path), opset=opset,
        head_file=head_path.name, head_sha256=sha256_file(head_path),
        output_name="features", channels=VGG_DIM, stride=VGG_STRIDE, default_size=DEFAULT_SIZE,
        sections={
            "head": {"num_clusters": int(head["centroids"].shape[0]),
                     "projection_dim": int(head["projection"].shape[0]) if "projection" in head else 0},
            "source": {"checkpoint": checkpoint.name, "checkpoint_sha256": sha256_file(checkpoint),
                       "layout": "patchnetvlad 0.1.8 (models_generic.get_model, WPCA 1x1 conv)"},
            "parity": stats,
            "preprocessing_notes": "RGB float32 0..255, NCHW; ImageNet mean/std normalisation inside the graph "
                                   "(equals the official ToTensor + Normalize). Resize frames yourself (the "
                                   "official pipeline uses 640x480).",
        })
    write_model_card(onnx_path.with_suffix(".yaml"), card)
    return onnx_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vpr-import-patchnetvlad", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n")[0],
        epilog="examples:\n  vpr-import-patchnetvlad --checkpoint pretrained_models/pitts_WPCA4096.pth.tar "
               "--out-dir models --id patchnetvlad_pitts_4096\n  vpr-import-patchnetvlad --random --clusters 16 "
               "--pcs 512 --checkpoint /tmp/random_WPCA512.pth.tar --out-dir /tmp/models --id random512")
    parser.add_argument("--checkpoint", type=Path, required=True, help="official *.pth.tar (read, or written "
                        "with --random)")
    parser.add_argument("--out-dir", type=Path, help="where to write <id>.onnx, <id>.yaml, <id>_head.npz")
    parser.add_argument("--id", default=None, help="model id (default: checkpoint file stem)")
    parser.add_argument("--random", action="store_true", help="first write a seeded random checkpoint in the "
                        "official layout (no download)")
    parser.add_argument("--clusters", type=int, default=16, help="with --random: NetVLAD clusters")
    parser.add_argument("--pcs", type=int, default=4096, help="with --random: WPCA dimension")
    parser.add_argument("--seed", type=int, default=0, help="with --random: torch seed")
    args = parser.parse_args(argv)
    try:
        if args.random:
            random_checkpoint(args.checkpoint, args.clusters, args.pcs, args.seed)
            print(f"wrote {args.checkpoint}")
        if args.out_dir is not None:
            path = convert(args.checkpoint, args.out_dir, args.id or args.checkpoint.name.split(".")[0])
            print(f"wrote {path} (+ card and head)")
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
