"""APPSVR: attentional pyramid pooling of salient visual residuals (Peng et al., ICCV 2021).

Only the supplement is available here (``appsvr_supplementary.txt``). It gives the centroid initialisation
(sec. 4: k-means on 1k images x 200 features; informative centroids from static classes; M candidates per
dynamic / task-irrelevant class; each cluster's L nearest candidates become its shadow centroids) and the tuple
mining (:mod:`vpr_training.mining`, ``negative_strategy: half_cached``). Where it is silent, the modules follow
the issue's description, with these choices of ours:

* **Local weighting** (semantic-reinforced local weighting): ``w_i = sigmoid(conv1x1(relu(conv3x3(f))))_i``
  in (0, 1) per location, from the backbone features; it multiplies location i's soft assignment before
  aggregation, so suppressed locations contribute no residual. Learned from the place-recognition loss only
  (no auxiliary semantic supervision).
* **Shadow centroids**: the soft assignment runs over the K informative and K*S shadow centroids
  (GhostVLAD-like); only the informative clusters' residuals are aggregated, so features closest to a shadow
  centroid (dynamic content) are absorbed.
* **Attentional pyramid pooling**: for levels l = 1..Lp the feature grid is split into l x l regions (row r
  of h belongs to region floor(r*l/h)); each region r gets its own VLAD V_r (K, D), normalised per cluster,
  and a learned saliency ``s_r = sigmoid(u . flat(V_r) + b_l)``; the image descriptor is
  ``L2(flatten(sum_r s_r V_r))``. With one level this is NetVLAD (a scalar saliency cancels in the L2 norm).
  u starts at 0 and b_l at logit(0.95 / l^2), so each level starts with about the weight of the whole image.
* **Parametric normalisation**: ``V_k <- g_k V_k / ||V_k||`` with a learned per-cluster contribution
  ``g_k = exp(log_g_k)`` (initialised to 1 = plain intra-normalisation).

With everything switched off (S = 0, Lp = 1, no weighting, no PN) the descriptor equals NetVLAD's.
The whole model (backbone, head, PCA-whitening) is exported as one ONNX graph of kind ``global``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from vpr_ros.core.vlad import assignment_from_centroids, kmeans_vocabulary
from vpr_training.config import AppsvrConfig, ModelConfig
from vpr_training.models.backbones import Backbone, build_backbone
from vpr_training.models.netvlad import l2_normalise, local_descriptors
from vpr_training.models.registry import NetVLADModel, VprModel, register_model

log = logging.getLogger(__name__)

#: Label id of local features without a class (see vpr_training.data.label_maps.IGNORE).
IGNORE = 255


class LocalWeighting(nn.Module):
    """Per-location weight in (0, 1): ``sigmoid(conv1x1(relu(conv3x3(f))))``.

    Shape:
        - Input: ``(B, D, h, w)`` features; Output: ``(B, 1, h, w)`` weights.
    """

    def __init__(self, dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.context = nn.Conv2d(dim, hidden, 3, padding=1)
        self.score = nn.Conv2d(hidden, 1, 1)
        nn.init.normal_(self.score.weight, std=0.01)
        nn.init.constant_(self.score.bias, 3.0)  # start near 1 everywhere: the initial model is NetVLAD-like

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.score(F.relu(self.context(features))))


def pyramid_masks(reference: torch.Tensor, levels: int) -> torch.Tensor:
    """Region membership of every location for pyramid levels 1..``levels`` (trace-safe for dynamic h, w).

    Location (row i, column j) of an h x w grid is in region (floor(i*l/h), floor(j*l/w)) of level l.

    Shape:
        - reference: ``(B, C, h, w)`` (only its shape is used).
        - Output: ``(B, R, h*w)`` with R = sum_l l^2 regions, level-major, row-major within a level.
    """
    ones = torch.ones_like(reference[:, :1])                          # (B, 1, h, w)
    rows = ones.cumsum(2) - 1.0                                       # row index of every location
    cols = ones.cumsum(3) - 1.0
    h, w = ones.sum(2, keepdim=True), ones.sum(3, keepdim=True)        # broadcastable grid sizes
    masks = []
    for level in range(1, levels + 1):
        bins = torch.arange(level, dtype=reference.dtype, device=reference.device).view(1, level, 1, 1)
        row_bin = (torch.floor(rows * level / h) == bins).to(reference.dtype)   # (B, l, h, w)
        col_bin = (torch.floor(cols * level / w) == bins).to(reference.dtype)   # (B, l, h, w)
        region = row_bin.unsqueeze(2) * col_bin.unsqueeze(1)                    # (B, l, l, h, w)
        masks.append(region.flatten(1, 2).flatten(2))
    return torch.cat(masks, dim=1)


class AppsvrHead(nn.Module):
    """APPSVR aggregation of local features (module docstring; each module switchable by ``config``).

    Args:
        num_clusters: K informative clusters.
        dim: local feature dimension D.
        config: which modules are on, S shadows per cluster, pyramid levels.
        normalize_input: L2-normalise local features first (as NetVLAD).

    Shape:
        - Input: ``(B, D, h, w)`` features.
        - Output of :meth:`forward`: dict with ``vlad`` ``(B, K*D)`` L2-normalised, ``weights`` ``(B, 1, h, w)``
          (ones without local weighting) and ``saliency`` ``(B, R)`` (regional saliencies).
    """

    def __init__(self, num_clusters: int, dim: int, config: AppsvrConfig, normalize_input: bool = True) -> None:
        super().__init__()
        self.num_clusters, self.dim, self.config, self.normalize_input = num_clusters, dim, config, normalize_input
        k, s = num_clusters, config.shadows_per_cluster
        self.centroids = nn.Parameter(torch.randn(k, dim) * 0.1)
        # Shadow centroids only shape the soft assignment (their residuals are discarded); kept for inspection.
        self.register_buffer("shadow_centroids", torch.zeros(k * s, dim))
        self.assign_weight = nn.Parameter(torch.randn(k * (1 + s), dim) * 0.1)
        self.assign_bias = nn.Parameter(torch.zeros(k * (1 + s)))
        self.weighting = LocalWeighting(dim, config.weighting_hidden) if config.local_weighting else None
        self.log_contribution = nn.Parameter(torch.zeros(k)) if config.parametric_norm else None
        self.num_regions = sum(level * level for level in range(1, config.pyramid_levels + 1))
        if config.pyramid_levels > 1:
            self.saliency = nn.Parameter(torch.zeros(k * dim))
            # Initial saliency 0.95 / l^2 at level l: every level weighs about as much as the whole image, so the
            # initial descriptor stays close to NetVLAD's and training decides how much the regions matter.
            target = torch.tensor([0.95 / lv ** 2 for lv in range(1, config.pyramid_levels + 1)])
            self.level_bias = nn.Parameter(torch.log(target / (1 - target)))
            level_of = [lv for lv in range(1, config.pyramid_levels + 1) for _ in range(lv * lv)]
            self.register_buffer("region_level", torch.tensor(level_of, dtype=torch.long) - 1, persistent=False)

    # ---- initialisation -------------------------------------------------------------------------
    def init_from_centroids(self, centroids: np.ndarray, shadows: np.ndarray, samples: np.ndarray,
                            ratio: float = 100.0) -> None:
        """Informative centroids (K, D), shadow centroids (K*S, D) (cluster-major) and the NetVLAD soft
        assignment of all of them (w = 2 alpha c, b = -alpha ||c||^2, alpha from ``samples`` (S, D))."""
        k, s = self.num_clusters, self.config.shadows_per_cluster
        if centroids.shape != (k, self.dim) or shadows.shape != (k * s, self.dim):
            raise ValueError(f"expected centroids ({k}, {self.dim}) and shadows ({k * s}, {self.dim}), got "
                             f"{centroids.shape} and {shadows.shape}")
        weight, bias = assignment_from_centroids(np.concatenate([centroids, shadows]), samples, ratio)
        with torch.no_grad():
            self.centroids.copy_(torch.from_numpy(centroids))
            self.shadow_centroids.copy_(torch.from_numpy(shadows))
            self.assign_weight.copy_(torch.from_numpy(weight))
            self.assign_bias.copy_(torch.from_numpy(bias))

    # ---- the modules ----------------------------------------------------------------------------
    def local_descriptors(self, features: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) -> (B, h*w, D), L2-normalised per location if ``normalize_input``."""
        return local_descriptors(features, self.dim, self.normalize_input)

    def soft_assign(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, N, K) weights of the informative clusters (softmax over informative + shadow)."""
        a = F.softmax(x @ self.assign_weight.t() + self.assign_bias, dim=-1)
        return a[..., : self.num_clusters]

    def regional_residuals(self, x: torch.Tensor, a: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """V[b, r, k] = sum_{i in r} a[b, i, k] (x[b, i] - c_k).

        Shape:
            x: (B, N, D); a: (B, N, K) (already multiplied by the local weights); masks: (B, R, N);
            returns (B, R, K, D).
        """
        ra = masks.unsqueeze(-1) * a.unsqueeze(1)                             # (B, R, N, K)
        return ra.transpose(2, 3) @ x.unsqueeze(1) - ra.sum(2).unsqueeze(-1) * self.centroids

    def normalise_clusters(self, v: torch.Tensor) -> torch.Tensor:
        """Intra-normalisation, or with PN ``g_k V_k / ||V_k||``. Shape: (..., K, D) -> (..., K, D)."""
        v = l2_normalise(v)
        if self.log_contribution is not None:
            v = v * self.log_contribution.exp().unsqueeze(-1)
        return v

    def regional_saliency(self, v: torch.Tensor) -> torch.Tensor:
        """s_r = sigmoid(u . flat(V_r) + b_level(r)); ones with a single level. Shape: (B, R, K, D) -> (B, R)."""
        if self.config.pyramid_levels == 1:
            return torch.ones_like(v[:, :, 0, 0])
        return torch.sigmoid(v.flatten(2) @ self.saliency + self.level_bias[self.region_level])

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.autocast(device_type=features.device.type, enabled=False):  # sums in float32
            features = features.float()
            x = self.local_descriptors(features)
            a = self.soft_assign(x)
            if self.weighting is not None:
                weights = self.weighting(features)
            else:
                weights = torch.ones_like(features[:, :1])
            a = a * weights.flatten(2).transpose(1, 2)
            masks = pyramid_masks(features, self.config.pyramid_levels)
            v = self.normalise_clusters(self.regional_residuals(x, a, masks))       # (B, R, K, D)
            saliency = self.regional_saliency(v)
            pooled = (saliency.unsqueeze(-1).unsqueeze(-1) * v).sum(1)                # (B, K, D)
            return {"vlad": l2_normalise(pooled.flatten(1)), "weights": weights, "saliency": saliency}


def semantic_constrained_centroids(samples: np.ndarray, labels: np.ndarray, num_clusters: int, shadows: int,
                                   candidates_per_class: int, irrelevant: Iterable[int], iterations: int = 30,
                                   seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """APPSVR's semantic-constrained initialisation (supplement sec. 4, "Centroid generation").

    k-means on the features of static classes gives the K informative centroids (on all features when
    ``shadows`` is 0: without shadow centroids the initialisation is NetVLAD's); for each irrelevant class,
    k-means on its features gives up to M candidates; each informative centroid gets its ``shadows`` nearest
    candidates (Euclidean) as shadow centroids. Features labelled IGNORE are used for neither.

    Shape:
        samples: (S, D) L2-normalised local features; labels: (S,) class ids.
        returns: centroids (K, D), shadow centroids (K * shadows, D) cluster-major, and facts for the card.
    """
    irrelevant = sorted({int(c) for c in irrelevant})
    if shadows == 0:  # no shadow centroids: plain k-means on every feature, as NetVLAD
        centroids = kmeans_vocabulary(samples, num_clusters, iterations, seed)
        return centroids, np.zeros((0, samples.shape[1]), np.float32), {"static_features": len(samples),
                                                                         "irrelevant_classes": [], "candidates": {}}
    static = ~np.isin(labels, [*irrelevant, IGNORE])
    if static.sum() < num_clusters:
        raise ValueError(f"semantic-constrained init: only {int(static.sum())} static local features for "
                         f"{num_clusters} clusters (irrelevant classes {irrelevant})")
    centroids = kmeans_vocabulary(samples[static], num_clusters, iterations, seed)
    info: dict[str, Any] = {"static_features": int(static.sum()), "irrelevant_classes": irrelevant,
                            "candidates": {}}
    candidates = []
    for c in irrelevant:
        feats = samples[labels == c]
        m = min(candidates_per_class, len(feats))
        info["candidates"][c] = m
        if m == 0:
            continue
        candidates.append(feats[:m] if m == len(feats) else kmeans_vocabulary(feats, m, iterations, seed))
    if not candidates:
        raise ValueError(f"semantic-constrained init: no local feature carries an irrelevant class {irrelevant}; "
                         "check the label maps / label_mapping, or set model.appsvr.shadows_per_cluster: 0")
    pool = np.concatenate(candidates).astype(np.float32)
    d2 = ((centroids[:, None, :] - pool[None]) ** 2).sum(-1)                     # (K, candidates)
    nearest = np.argsort(d2, axis=1, kind="stable")[:, :shadows]
    if pool.shape[0] < shadows:  # fewer candidates than shadows: repeat the nearest ones
        nearest = np.resize(nearest, (num_clusters, shadows))
    return centroids, pool[nearest.reshape(-1)], info


class AppsvrModel(NetVLADModel):
    """Backbone -> APPSVR head -> (after training) PCA-whitening; exported whole as a ``global`` model.

    Outputs of ``forward``: ``features``, ``vlad`` (B, K*D), ``global`` (projected when fitted), ``weights``
    (local attention) and ``saliency`` (regional saliency).
    """

    kind = "global"
    #: The trainer passes label maps to :meth:`initialise` (semantic-constrained centroids).
    init_needs_labels = True

    def __init__(self, config: ModelConfig) -> None:
        VprModel.__init__(self)
        self.config = config
        self.backbone: Backbone = build_backbone(config.backbone, weights=config.backbone_weights,
                                                 train_layers=config.train_layers, block=config.block,
                                                 freeze_batchnorm=config.freeze_batchnorm)
        self.head = AppsvrHead(config.num_clusters, self.backbone.out_channels, config.appsvr,
                               config.normalize_input)
        self.projection = None

    @property
    def netvlad(self) -> AppsvrHead:  # NetVLADModel's helpers look the head up by this name
        return self.head

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(images)
        out = {"features": features, **self.head(features)}
        out["global"] = self.projection(out["vlad"]) if self.projection is not None else out["vlad"]
        return out

    @torch.no_grad()
    def initialise(self, batches: Iterable[Any], seed: int = 0) -> dict[str, Any]:
        """Semantic-constrained centroids from sampled local features and their label-map classes.

        ``batches`` yields images (B, 3, H, W), or (images, label ids (B, H, W)) when the data has label maps.
        """
        cfg, app = self.config, self.config.appsvr
        gen = torch.Generator().manual_seed(seed)
        feats, labels, images, has_labels = [], [], 0, False
        for batch in batches:
            imgs, ids = batch if isinstance(batch, (tuple, list)) else (batch, None)
            f = self.backbone(imgs)
            x = self.head.local_descriptors(f).cpu()                                # (b, N, D)
            if ids is None:
                lab = torch.zeros(x.shape[:2], dtype=torch.long)
            else:  # class of each feature cell: nearest label pixel at the cell (label maps at input size)
                ids = torch.as_tensor(np.asarray(ids)).float().unsqueeze(1)
                lab = F.interpolate(ids, size=f.shape[2:], mode="nearest").flatten(1).long()
            per = min(cfg.kmeans_features_per_image, x.shape[1])
            picks = torch.stack([torch.randperm(x.shape[1], generator=gen)[:per] for _ in range(len(x))])
            feats.append(torch.gather(x, 1, picks.unsqueeze(-1).expand(-1, -1, x.shape[2])).reshape(-1, x.shape[2]))
            labels.append(torch.gather(lab, 1, picks).reshape(-1))
            images += len(x)
            has_labels = ids is not None
        if not feats:
            raise ValueError("APPSVR initialisation got no images")
        data = torch.cat(feats).numpy().astype(np.float32)
        classes = torch.cat(labels).numpy()
        if app.shadows_per_cluster and not has_labels:
            raise ValueError("APPSVR's semantic-constrained initialisation needs label maps: set train.labels (a "
                             "folder of label maps parallel to the images), or model.appsvr.shadows_per_cluster: 0")
        irrelevant = app.irrelevant_classes if has_labels else ()
        centroids, shadows, info = semantic_constrained_centroids(
            data, classes, cfg.num_clusters, app.shadows_per_cluster, app.candidates_per_class, irrelevant,
            cfg.kmeans_iterations, seed)
        self.head.init_from_centroids(centroids, shadows, data, cfg.assignment_ratio)
        class_counts = np.bincount(classes[classes != IGNORE], minlength=1)
        return {"images": images, "local_features": len(data), "clusters": cfg.num_clusters,
                "shadow_centroids": len(shadows), "feature_classes": class_counts.tolist(), **info}

    def head_arrays(self) -> dict[str, np.ndarray]:
        raise NotImplementedError("APPSVR exports as kind 'global' (the whole model in ONNX), without a numpy head")

    def describe(self) -> dict[str, Any]:
        app = self.config.appsvr
        variant = "APPSVR" + ("-SC" if app.shadows_per_cluster else "") + ("-PN" if app.parametric_norm else "") \
            + f"-L{app.pyramid_levels}" + ("" if app.local_weighting else "-noLW")
        return {**super().describe(), "variant": variant}

    def card_notes(self) -> list[str]:
        return [
            "APPSVR (Peng et al., ICCV 2021). The main paper is not available here: the centroid initialisation "
            "with shadow centroids and the tuple mining follow its supplement (sec. 4); the local weighting, "
            "attentional pyramid pooling and parametric normalisation follow the description of vpr_ros issue 7 "
            "with the concrete forms documented in vpr_training.models.appsvr (our choices, not the paper's "
            "equations).",
            "Semantic labels for the initialisation come from label maps supplied with the data; see "
            "training.data.train.labels in this card for which ones (rule-based label maps are colour/position "
            "rules, not a segmenter).",
        ]


@register_model("appsvr")
def _appsvr(config: ModelConfig) -> VprModel:
    return AppsvrModel(config)
