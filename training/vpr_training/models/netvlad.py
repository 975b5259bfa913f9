"""NetVLAD layer and PCA-whitening projection in torch, numerically the twins of ``vpr_ros.core.vlad``.

NetVLAD (Arandjelovic et al., CVPR 2016; Patch-NetVLAD eqs. 1-2): for L2-normalised local features x_i and
clusters k,

    a_k(x_i) = softmax_k(w_k . x_i + b_k),   V(k, :) = sum_i a_k(x_i) (x_i - c_k),
    V = L2(flatten(intra_L2(V))).

The arrays ``centroids`` (K, D), ``assign_weight`` (K, D), ``assign_bias`` (K,) are exactly what
``vpr_ros.core.vlad.VladHead.from_arrays`` loads, so the numpy head (global *and* Patch-NetVLAD patch
descriptors via IntegralVLAD) uses the trained weights as they are. Initialisation follows NetVLAD: k-means
centroids, and w_k = 2 alpha c_k, b_k = -alpha ||c_k||^2 (``vpr_ros.core.vlad.assignment_from_centroids``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from vpr_ros.core.vlad import assignment_from_centroids

#: Same floor as vpr_ros.core.vlad._EPS, so torch and numpy normalise identically.
EPS = 1e-12


def l2_normalise(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``x / max(||x||, EPS)`` along ``dim`` (as the numpy head does)."""
    return x / x.norm(dim=dim, keepdim=True).clamp_min(EPS)


def local_descriptors(features: torch.Tensor, dim: int, normalize: bool) -> torch.Tensor:
    """(B, D, h, w) feature map -> (B, h*w, D) local descriptors, L2-normalised per location if ``normalize``."""
    if not torch.jit.is_tracing() and (features.ndim != 4 or features.shape[1] != dim):
        raise ValueError(f"expected features (B, {dim}, h, w), got {tuple(features.shape)}")
    x = features.float().flatten(2).transpose(1, 2)
    return l2_normalise(x) if normalize else x


class NetVLAD(nn.Module):
    """Trainable NetVLAD aggregation.

    Args:
        num_clusters: K.
        dim: local feature dimension D.
        normalize_input: L2-normalise each local feature first (NetVLAD does).

    Shape:
        - Input: ``(B, D, h, w)`` feature maps.
        - Output of :meth:`forward`: ``(B, K*D)``, intra- then L2-normalised.
    """

    def __init__(self, num_clusters: int, dim: int, normalize_input: bool = True) -> None:
        super().__init__()
        self.num_clusters, self.dim, self.normalize_input = num_clusters, dim, normalize_input
        self.centroids = nn.Parameter(torch.randn(num_clusters, dim) * 0.1)
        self.assign_weight = nn.Parameter(torch.randn(num_clusters, dim) * 0.1)
        self.assign_bias = nn.Parameter(torch.zeros(num_clusters))

    def init_from_kmeans(self, centroids: np.ndarray, samples: np.ndarray, ratio: float = 100.0) -> None:
        """Centroids from k-means and the soft assignment NetVLAD initialises them with.

        Shape:
            centroids: (K, D); samples: (S, D) the L2-normalised local features k-means ran on.
        """
        if centroids.shape != (self.num_clusters, self.dim):
            raise ValueError(f"expected centroids ({self.num_clusters}, {self.dim}), got {centroids.shape}")
        weight, bias = assignment_from_centroids(centroids, samples, ratio)
        with torch.no_grad():
            self.centroids.copy_(torch.from_numpy(centroids))
            self.assign_weight.copy_(torch.from_numpy(weight))
            self.assign_bias.copy_(torch.from_numpy(bias))

    def local_descriptors(self, features: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) -> (B, h*w, D), L2-normalised per location if ``normalize_input``."""
        return local_descriptors(features, self.dim, self.normalize_input)

    def soft_assign(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, N, K) soft-assignment weights."""
        return F.softmax(x @ self.assign_weight.t() + self.assign_bias, dim=-1)

    def residuals(self, features: torch.Tensor) -> torch.Tensor:
        """Unnormalised residual sums V (B, K, D): V[b, k] = sum_n a[b, n, k] (x[b, n] - c_k)."""
        with torch.autocast(device_type=features.device.type, enabled=False):  # keep the sums in float32
            x = self.local_descriptors(features)
            a = self.soft_assign(x)
            return a.transpose(1, 2) @ x - a.sum(1).unsqueeze(-1) * self.centroids.unsqueeze(0)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        v = l2_normalise(self.residuals(features))  # intra-normalisation
        return l2_normalise(v.flatten(1))

    def head_arrays(self) -> dict[str, np.ndarray]:
        """The arrays ``VladHead.from_arrays`` loads (float32)."""
        def arr(t: torch.Tensor) -> np.ndarray:
            return t.detach().float().cpu().numpy().copy()

        return {"centroids": arr(self.centroids), "assign_weight": arr(self.assign_weight),
                "assign_bias": arr(self.assign_bias), "normalize_input": np.array(self.normalize_input)}


class Projection(nn.Module):
    """PCA(-whitening) projection y = L2(W v + b), fitted after training (``fit_pca_whitening``).

    Shape:
        - Input: ``(B, Din)``; Output: ``(B, P)``.
    """

    def __init__(self, weight: np.ndarray, bias: np.ndarray) -> None:
        super().__init__()
        if weight.ndim != 2 or bias.shape != (weight.shape[0],):
            raise ValueError(f"projection must be (P, Din) and (P,), got {weight.shape} and {bias.shape}")
        self.register_buffer("weight", torch.from_numpy(np.asarray(weight, np.float32)).clone())
        self.register_buffer("bias", torch.from_numpy(np.asarray(bias, np.float32)).clone())

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return l2_normalise(v.float() @ self.weight.t() + self.bias)
