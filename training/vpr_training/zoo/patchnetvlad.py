"""The official Patch-NetVLAD checkpoints as the ``patchnetvlad`` format: backbone ONNX + NetVLAD/WPCA head.

Delegates to :mod:`vpr_training.export.patchnetvlad_checkpoint` (``vpr-import-patchnetvlad``, the layout and
parity notes are there): unlike the ``global`` formats, the export is ``kind: netvlad`` (VGG16 conv5_3 feature
maps out, the head in ``<id>_head.npz``), so maps keep the local features that Patch-NetVLAD re-ranking needs.
The key layout is checked first with the ``netvlad_vgg16`` builder (the same VGG16 + NetVLAD + WPCA keys).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vpr_ros.core.image import resize_rgb
from vpr_training.export import patchnetvlad_checkpoint as official
from vpr_training.zoo import netvlad_vgg16
from vpr_training.zoo.registry import IMAGENET, ImportFormat, register_format

#: Random checkpoints' variant -> (clusters, WPCA dimension), as the released models (plus a small one).
VARIANTS = {"k64_wpca4096": (64, 4096), "k64_wpca512": (64, 512), "k16_wpca512": (16, 512)}


def write_random(path: Path, *, seed: int = 0, shallow: bool = False, variant: str | None = None) -> Path:
    """The official package's own model with seeded random weights (``shallow``: 16 clusters, WPCA 128; the
    backbone stays VGG16, which the package builds)."""
    clusters, pcs = (16, 128) if shallow else VARIANTS[variant or next(iter(VARIANTS))]
    return official.random_checkpoint(path, clusters, pcs, seed)


def convert(checkpoint: Path, out_dir: Path, model_id: str, check_images: Sequence[np.ndarray]) -> Path:
    """Check the layout (one line naming the first bad key), then ``vpr-import-patchnetvlad``'s conversion with
    its backbone parity measured on ``check_images`` at 640x480."""
    from vpr_training.zoo.convert import build_checked

    build_checked(FORMAT, checkpoint)
    images = [resize_rgb(im, *official.DEFAULT_SIZE) for im in check_images[:2]]
    return official.convert(checkpoint, out_dir, model_id, check_images=images, check_size=official.DEFAULT_SIZE)


FORMAT = register_format(ImportFormat(
    name="patchnetvlad",
    description="Patch-NetVLAD, VGG16 + NetVLAD + WPCA, exported as backbone + head for patch re-ranking",
    weights="https://github.com/QVPR/Patch-NetVLAD (download_models.py: {pitts,mapillary}_WPCA{128,512,4096}"
            ".pth.tar)",
    paper="Hausler et al., Patch-NetVLAD: Multi-Scale Fusion of Locally-Global Descriptors for Place "
          "Recognition, CVPR 2021, https://arxiv.org/abs/2103.01486",
    reference="github.com/QVPR/Patch-NetVLAD patchnetvlad/models/models_generic.py (get_model, WPCA)",
    dimension_rule="WPCA dimension P (WPCA.0.weight: 4096, 512 or 128)",
    size_rule="any size; multiples of 16, 640x480 as the authors evaluate",
    normalisation=IMAGENET,
    build=netvlad_vgg16.build,
    write_random=write_random,
    variants=tuple(VARIANTS),
    read_state=official.load_state_dict,
    kind="netvlad",
    convert=convert,
))
