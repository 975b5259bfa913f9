"""Model registry: ``ModelConfig.name`` -> a :class:`VprModel`; NetVLAD is the first entry.

A model is an ``nn.Module`` whose ``forward(images)`` returns a dict of named outputs with at least
``"global"`` (B, P), the L2-normalised descriptor the loss, the miner and the validation use. It also says how
it is exported (:attr:`VprModel.kind`):

* ``netvlad`` -- the ONNX graph is the backbone (``features``); aggregation and PCA run in vpr_ros' numpy
  head from :meth:`VprModel.head_arrays` (one implementation for global and Patch-NetVLAD descriptors);
* ``global``  -- the ONNX graph outputs the global descriptor (models whose head numpy does not implement).

Adding a model is one ``@register_model("name")`` factory plus, if needed, fields in :class:`ModelConfig`;
APPSVR (``models/appsvr.py``) and StructVPR (``models/structvpr.py``) are registered on import of
:mod:`vpr_training.models`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from vpr_ros.core.vlad import fit_pca_whitening, kmeans_vocabulary
from vpr_training.config import ModelConfig
from vpr_training.models.backbones import Backbone, build_backbone
from vpr_training.models.netvlad import NetVLAD, Projection


class VprModel(nn.Module):
    """Base class of registered models (module docstring)."""

    kind: str = "global"
    config: ModelConfig
    #: What the model reads: ``rgb`` images, or ``label_maps`` (one-hot semantic classes, StructVPR's seg-branch).
    input_kind: str = "rgb"
    #: :meth:`initialise` receives ``(images, label ids)`` batches when the training data has label maps.
    init_needs_labels: bool = False

    def loss_terms(self, places: Any) -> list[tuple[float, str, Any]]:
        """Extra ``(weight, name, term)`` loss terms the trainer adds to the main loss (see ``losses``)."""
        return []

    def card_notes(self) -> list[str]:
        """Lines for the model card: provenance of the method, where the implementation departs or guesses."""
        return []

    def initialise(self, batches: Iterable[torch.Tensor], seed: int = 0) -> dict[str, Any]:
        """Data-driven initialisation before training (e.g. k-means centroids); returns facts for the card."""
        return {}

    def fit_projection(self, descriptors: np.ndarray) -> dict[str, Any]:
        """Fit the post-training projection on pre-projection descriptors; returns facts for the card."""
        return {}

    def projection_arrays(self) -> dict[str, np.ndarray]:
        return {}

    def load_projection(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`fit_projection` fitted (from a checkpoint)."""

    def head_arrays(self) -> dict[str, np.ndarray]:
        raise NotImplementedError(f"{type(self).__name__} exports as kind {self.kind!r}, without a numpy head")

    def export_module(self) -> nn.Module:
        """The module traced to ONNX: features for ``netvlad`` models, the global descriptor for ``global``."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {}


ModelFactory = Callable[[ModelConfig], VprModel]
MODELS: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    def add(fn: ModelFactory) -> ModelFactory:
        MODELS[name] = fn
        return fn

    return add


def build_model(config: ModelConfig) -> VprModel:
    if config.name not in MODELS:
        raise ValueError(f"model {config.name!r} is not one of {sorted(MODELS)}")
    model = MODELS[config.name](config)
    model.config = config
    return model


class NetVLADModel(VprModel):
    """Backbone -> NetVLAD -> (after training) PCA-whitening.

    Outputs of ``forward``: ``features`` (B, D, h, w), ``vlad`` (B, K*D) and ``global`` (vlad projected when a
    projection has been fitted, else vlad).
    """

    kind = "netvlad"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone: Backbone = build_backbone(config.backbone, weights=config.backbone_weights,
                                                 train_layers=config.train_layers, block=config.block,
                                                 freeze_batchnorm=config.freeze_batchnorm)
        self.netvlad = NetVLAD(config.num_clusters, self.backbone.out_channels, config.normalize_input)
        self.projection: Projection | None = None

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(images)
        vlad = self.netvlad(features)
        out = {"features": features, "vlad": vlad}
        out["global"] = self.projection(vlad) if self.projection is not None else vlad
        return out

    @torch.no_grad()
    def initialise(self, batches: Iterable[torch.Tensor], seed: int = 0) -> dict[str, Any]:
        """k-means on ``kmeans_features_per_image`` random local features per image (APPSVR supp. sec. 4)."""
        cfg = self.config
        gen = torch.Generator().manual_seed(seed)
        samples, images = [], 0
        for batch in batches:
            x = self.netvlad.local_descriptors(self.backbone(batch)).cpu()  # (b, N, D), normalised
            per = min(cfg.kmeans_features_per_image, x.shape[1])
            picks = torch.stack([torch.randperm(x.shape[1], generator=gen)[:per] for _ in range(len(x))])
            samples.append(torch.gather(x, 1, picks.unsqueeze(-1).expand(-1, -1, x.shape[2])).reshape(-1, x.shape[2]))
            images += len(x)
        data = torch.cat(samples).numpy().astype(np.float32)
        centroids = kmeans_vocabulary(data, cfg.num_clusters, cfg.kmeans_iterations, seed)
        self.netvlad.init_from_kmeans(centroids, data, cfg.assignment_ratio)
        return {"images": images, "local_features": len(data), "clusters": cfg.num_clusters}

    def fit_projection(self, descriptors: np.ndarray) -> dict[str, Any]:
        cfg = self.config
        if cfg.pca_dim <= 0:
            self.projection = None
            return {"pca_dim": 0}
        weight, bias = fit_pca_whitening(descriptors, cfg.pca_dim, cfg.whiten, cfg.whiten_regularisation)
        self.load_projection({"projection": weight, "projection_bias": bias})
        return {"pca_dim": int(weight.shape[0]), "fitted_on": len(descriptors), "whiten": cfg.whiten,
                "whiten_regularisation": cfg.whiten_regularisation}

    def projection_arrays(self) -> dict[str, np.ndarray]:
        if self.projection is None:
            return {}
        return {"projection": self.projection.weight.cpu().numpy().copy(),
                "projection_bias": self.projection.bias.cpu().numpy().copy()}

    def load_projection(self, arrays: dict[str, np.ndarray]) -> None:
        if "projection" in arrays:
            device = self.netvlad.centroids.device
            self.projection = Projection(arrays["projection"], arrays["projection_bias"]).to(device)

    def head_arrays(self) -> dict[str, np.ndarray]:
        return {**self.netvlad.head_arrays(), **self.projection_arrays()}

    def export_module(self) -> nn.Module:
        return self.backbone.export_module()

    def describe(self) -> dict[str, Any]:
        return {"backbone": self.config.backbone, "feature_channels": self.backbone.out_channels,
                "stride": self.backbone.stride, "clusters": self.config.num_clusters,
                "projection_dim": int(self.projection.weight.shape[0]) if self.projection is not None else 0}


@register_model("netvlad")
def _netvlad(config: ModelConfig) -> VprModel:
    return NetVLADModel(config)
