"""AnyLoc-style training-free place recognition (Keetha et al., RA-L 2023): DINOv2 local features + a VLAD fitted
on the map.

AnyLoc (AnyLoc/AnyLoc ``demo/utilities.py``: ``DinoV2ExtractFeatures``; ``demo/anyloc_vlad_generate.py``: its
settings) takes the *value* facet of one intermediate block of an off-the-shelf DINOv2: a forward hook on
``blocks[31].attn.qkv`` of the hub ViT-g/14 (0-based block 31 of 40), the last third of the qkv output channels,
class token dropped, each patch descriptor L2-normalised; then a VLAD of 32 clusters whose vocabulary is fitted
(k-means) on the database images. The checkpoint is therefore the plain DINOv2 hub file
(``dinov2_vitg14_pretrain.pth``, or any other ``dinov2_vit*14_pretrain.pth``; layout in :mod:`.dinov2`).

This format exports those local features as a ``kind: backbone`` encoder: the graph outputs the value facet as a
(B, D, H/14, W/14) map (only blocks 0..L-1 plus block L's ``norm1`` and the value rows of its ``qkv`` are in the
graph), and the map builder fits the VLAD vocabulary and PCA-whitening on the map's own images, as it does for the
default encoder (:func:`vpr_ros.core.map_builder.fit_head`, :mod:`vpr_ros.core.vlad`: k-means vocabulary of
``vlad.num_clusters`` = 32 words, like AnyLoc, on L2-normalised local features). Two differences from AnyLoc's
own VLAD, both from that shared path: the assignment is soft (``vlad.assignment_ratio`` 100 between the nearest
and second-nearest word, near AnyLoc's hard assignment) and the K*D VLAD is PCA-whitened to ``vlad.pca_dim``.

Layer rule: block L = round(31/40 x depth), at most depth - 1: 31 for ViT-g (AnyLoc's choice), 9 for ViT-S/B,
19 for ViT-L (the same relative depth; AnyLoc publishes its setting for ViT-g only).

Size limit: the graph is one ONNX file (its sha256 is in the model card), and ONNX files hold at most 2 GB of
weights. AnyLoc's own ViT-g/14 up to block 31 has 0.88 billion parameters (3.5 GB), so its import is refused with a
clear error; ViT-L/14 (block 19: 0.24 billion, 0.97 GB) is the largest that converts. ``--random`` writes ViT-B/14 by
default (what a CPU can run).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vpr_ros.core.encoders.model_card import ModelCard, write_model_card
from vpr_ros.core.files import sha256_file
from vpr_ros.core.image import resize_rgb
from vpr_ros.errors import InputError
from vpr_training.export.common import export_graph, ort_session, parity, run_onnx, run_torch
from vpr_training.zoo.convert import ParityError, build_checked
from vpr_training.zoo.dinov2 import (
    HUB_SPECS,
    PATCH_SIZE,
    SHALLOW_SPEC,
    SIZE_RULE,
    DinoV2,
    ViTSpec,
    random_vit_state,
    require_size_multiple,
    vit_details,
    vit_name,
)
from vpr_training.zoo.registry import (
    IMAGENET,
    BuiltModel,
    ImportFormat,
    NormalisedInput,
    load_official_state,
    register_format,
)

#: AnyLoc's block for ViT-g/14 (40 blocks); other depths keep the same relative depth (module docstring).
ANYLOC_LAYER, ANYLOC_DEPTH = 31, 40
FACET = "value"
#: 4:3 at the 322-pixel height SALAD and BoQ evaluate at (AnyLoc itself runs near full resolution).
DEFAULT_SIZE = (322, 434)
OUTPUT_NAME = "features"
#: What one ONNX file can hold (protobuf's 2 GB limit; larger graphs need external data files).
ONNX_FILE_LIMIT = 2_000_000_000


def facet_layer(depth: int) -> int:
    """The 0-based block whose value facet is exported (module docstring)."""
    return min(depth - 1, round(ANYLOC_LAYER * depth / ANYLOC_DEPTH))


class ValueFacet(nn.Module):
    """DINOv2 -> value facet of block ``layer`` as a (B, D, h, w) map (ImageNet-normalised input)."""

    def __init__(self, spec: ViTSpec, layer: int) -> None:
        super().__init__()
        self.vit = DinoV2(spec)
        self.layer = layer

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        tokens = self.vit.run_blocks(self.vit.prepare_tokens(image), stop=self.layer)
        block = self.vit.blocks[self.layer]
        d = self.vit.spec.embed_dim
        # Only the value rows of the fused qkv projection: the q and k thirds are never used.
        value = nn.functional.linear(block.norm1(tokens), block.attn.qkv.weight[2 * d:], block.attn.qkv.bias[2 * d:])
        return self.vit.split(value, image.shape[2], image.shape[3]).patches


def exported_parameters(model: ValueFacet) -> int:
    """Parameters the graph holds: embeddings, blocks 0..L-1, block L's ``norm1`` and the value third of its qkv."""
    vit, d = model.vit, model.vit.spec.embed_dim
    block = vit.blocks[model.layer]
    used = [vit.patch_embed, *vit.blocks[:model.layer], block.norm1]
    return (sum(p.numel() for m in used for p in m.parameters()) + vit.cls_token.numel() + vit.pos_embed.numel()
            + d * d + d)


def build(state: Mapping[str, torch.Tensor]) -> BuiltModel:
    """The hub DINOv2 truncated at its value facet; ``dimension`` = the facet's channels D."""
    spec = ViTSpec.from_state_dict(state)
    layer = facet_layer(spec.depth)
    model = ValueFacet(spec, layer)
    load_official_state(model.vit, state)
    return BuiltModel(NormalisedInput(model, IMAGENET), spec.embed_dim, DEFAULT_SIZE, PATCH_SIZE,
                      f"{vit_name(spec)}, block {layer} {FACET} facet, {spec.embed_dim}-D local features",
                      details={**vit_details(spec), "layer": layer, "facet": FACET})


def convert(checkpoint: Path, out_dir: Path, model_id: str, check_images: Sequence[np.ndarray]) -> Path:
    """ONNX local-feature backbone + ``kind: backbone`` card (the map fits the VLAD); torch vs ONNX Runtime checked
    on ``check_images`` at the default size before the file is moved into place."""
    _, built = build_checked(FORMAT, checkpoint)
    weight_bytes = 4 * exported_parameters(built.module.model)
    if weight_bytes > ONNX_FILE_LIMIT:
        raise InputError(f"{checkpoint}: {built.variant}: the exported blocks hold {weight_bytes / 1e9:.1f} GB of "
                         f"float32 weights, beyond the {ONNX_FILE_LIMIT / 1e9:.0f} GB an ONNX file can hold; use "
                         "dinov2_vitl14 or a smaller DINOv2")
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / f"{model_id}.onnx"
    partial = out_dir / f".{model_id}.onnx.partial"
    try:
        export_graph(built.module, partial, outputs={OUTPUT_NAME: {0: "batch", 2: "feat_height", 3: "feat_width"}},
                     example_hw=built.default_size, doc_string=f"anyloc ({built.variant}) imported from "
                                                               f"{checkpoint.name} by vpr-import")
        batch = np.stack([resize_rgb(im, *built.default_size).transpose(2, 0, 1) for im in check_images])
        stats: dict[str, Any] = {"images": len(check_images), "size": list(built.default_size),
                                 **parity(run_torch(built.module, batch.astype(np.float32), chunk=2),
                                          run_onnx(ort_session(partial), batch.astype(np.float32), chunk=2))}
        # Features are unit-normalised per location before the VLAD, so compare at that scale: the bar is the
        # shared convert's 1e-4 relative to the largest feature magnitude.
        if stats["max_abs_diff"] > 1e-4 * max(1.0, stats["max_abs_value"]):
            raise ParityError(f"ONNX Runtime and PyTorch features differ (max |diff| {stats['max_abs_diff']:.3g} "
                              f"at values up to {stats['max_abs_value']:.3g})")
        partial.replace(onnx_path)
    finally:
        partial.unlink(missing_ok=True)
    card = ModelCard.build(
        id=model_id, kind="backbone",
        description=f"AnyLoc-style DINOv2 local features ({built.variant}); the VLAD vocabulary and PCA-whitening "
                    "are fitted on each map's images (vlad.* settings), imported by vpr-import --format anyloc",
        about={"format": FORMAT.name, "variant": built.variant},
        onnx_file=onnx_path.name, onnx_sha256=sha256_file(onnx_path), opset=17, output_name=OUTPUT_NAME,
        channels=built.dimension, stride=PATCH_SIZE, default_size=built.default_size, size_multiple=PATCH_SIZE,
        sections={
            "normalisation": {"mean": list(IMAGENET.mean), "std": list(IMAGENET.std),
                              "note": IMAGENET.describe()},
            "input_size_rule": FORMAT.size_rule,
            "source": {"format": FORMAT.name, "checkpoint": checkpoint.name,
                       "checkpoint_sha256": sha256_file(checkpoint), "weights": FORMAT.weights,
                       "paper": FORMAT.paper, "reference_code": FORMAT.reference, **dict(built.details)},
            "parity": stats,
        })
    write_model_card(onnx_path.with_suffix(".yaml"), card)
    require_size_multiple(onnx_path.with_suffix(".yaml"))
    return onnx_path


#: ``--random`` variants (hub models; AnyLoc's ViT-g/14 cannot be exported, see the module docstring).
VARIANTS = ("vitb14", "vits14", "vitl14", "vitg14")


def write_random(path: Path, *, seed: int = 0, shallow: bool = False, variant: str | None = None) -> Path:
    """A hub-like ``dinov2_<variant>_pretrain.pth`` (plain state dict) with seeded random weights (``shallow``:
    2 blocks x 128 channels)."""
    spec = SHALLOW_SPEC if shallow else HUB_SPECS[variant or VARIANTS[0]]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(random_vit_state(spec, torch.Generator().manual_seed(seed)), path)
    return path


FORMAT = register_format(ImportFormat(
    name="anyloc",
    description="AnyLoc-style DINOv2 value-facet local features; VLAD vocabulary fitted on the map (training-free)",
    weights="https://dl.fbaipublicfiles.com/dinov2/dinov2_vitg14/dinov2_vitg14_pretrain.pth (facebookresearch/"
            "dinov2 README; AnyLoc uses ViT-g/14, the other dinov2_vit*14_pretrain.pth files load too)",
    paper="Keetha et al., AnyLoc: Towards Universal Visual Place Recognition, IEEE RA-L 2023, "
          "https://arxiv.org/abs/2308.00688",
    reference="github.com/AnyLoc/AnyLoc demo/utilities.py (DinoV2ExtractFeatures) + demo/anyloc_vlad_generate.py; "
              "github.com/facebookresearch/dinov2 dinov2/models/vision_transformer.py",
    dimension_rule="local features of D channels (1536 for ViT-g); the map's VLAD gives vlad.pca_dim (256) after "
                   "PCA-whitening of K x D (32 x 1536)",
    size_rule=f"{SIZE_RULE}; 322x434 by default",
    normalisation=IMAGENET,
    build=build,
    write_random=write_random,
    variants=VARIANTS,
    kind="backbone",
    convert=convert,
))
