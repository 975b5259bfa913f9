"""VLAD / NetVLAD aggregation and PCA-whitening in numpy.

One head type covers both uses:

* off-the-shelf backbones: the vocabulary (k-means centroids) and the PCA-whitening are fitted on the
  reference images when a map is built (:func:`fit_vlad_head`);
* trained NetVLAD models (and imported Patch-NetVLAD checkpoints): the same arrays come from the model.

Maths (Arandjelovic et al., NetVLAD, CVPR 2016; Patch-NetVLAD eq. 1-2). For L2-normalised local features
x_i in R^D and clusters k = 1..K,

    a_k(x_i) = softmax_k( w_k . x_i + b_k )                       soft assignment
    V(k, :)  = sum_i a_k(x_i) (x_i - c_k)                         residual aggregation
    V        = L2( [ L2(V(1,:)), ..., L2(V(K,:)) ] )              intra- then global normalisation

For a k-means vocabulary the assignment is softmax(-alpha ||x - c_k||^2), i.e. w_k = 2 alpha c_k and
b_k = -alpha ||c_k||^2 (the ||x||^2 term cancels in the softmax). The global descriptor is
L2(P V + q) where (P, q) is the (whitened) PCA projection.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vpr_ros.config import setting

_EPS = 1e-12


@dataclass(frozen=True)
class VladConfig:
    """VLAD vocabulary and PCA-whitening fitted on the reference images at map build time."""

    # num_clusters, whiten and whiten_regularisation were chosen on the tuning split (bench/bench_defaults.py,
    # bench/results/defaults.json; test/test_defaults_provenance.py keeps them in step).
    num_clusters: int = setting(32, "VLAD clusters K (k-means on sampled local features)", min=2)
    fit_images: int = setting(1000, "reference images sampled to fit the vocabulary and the PCA-whitening",
                              min=2)
    kmeans_features_per_image: int = setting(200, "local features sampled per image for k-means", min=1)
    kmeans_iterations: int = setting(30, "k-means iterations", min=1)
    assignment_ratio: float = setting(
        100.0, "soft-assignment sharpness: mean weight ratio between a feature's nearest and second "
        "nearest cluster (sets alpha as in NetVLAD's initialisation)", min=1.0)
    pca_dim: int = setting(256, "output dimension after PCA (0 = keep the K*D VLAD); clamped to the number "
                           "of reference images - 1", min=0)
    whiten: bool = setting(True, "scale PCA components by 1/sqrt(eigenvalue + regularisation)")
    whiten_regularisation: float = setting(
        0.1, "added to each eigenvalue, as a fraction of the largest one, before whitening: 0 = full "
        "whitening, large = plain PCA. Full whitening amplifies the noise of small components when the map "
        "has few images: try 1.0 for maps of a few dozen images", min=0.0)
    seed: int = setting(0, "random seed for sampling and k-means", min=0)


def local_descriptors(features: np.ndarray, normalize: bool = True) -> np.ndarray:
    """(B, D, h, w) feature maps -> (B, h*w, D) float32 descriptors, L2-normalised per location if asked."""
    b, d, h, w = features.shape
    x = np.ascontiguousarray(features.reshape(b, d, h * w).transpose(0, 2, 1), dtype=np.float32)
    if normalize:
        x /= np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), _EPS)
    return x


@dataclass
class VladHead:
    """NetVLAD aggregation + projection parameters (all float32).

    Shape:
        centroids: (K, D); assign_weight: (K, D); assign_bias: (K,);
        projection: (P, K*D) or None; projection_bias: (P,) or None.
    """

    centroids: np.ndarray
    assign_weight: np.ndarray
    assign_bias: np.ndarray
    projection: np.ndarray | None = None
    projection_bias: np.ndarray | None = None
    normalize_input: bool = True

    def __post_init__(self) -> None:
        k, d = self.centroids.shape
        if self.assign_weight.shape != (k, d) or self.assign_bias.shape != (k,):
            raise ValueError(f"assignment must be ({k}, {d}) weights and ({k},) bias, got "
                             f"{self.assign_weight.shape} and {self.assign_bias.shape}")
        if self.projection is not None:
            if self.projection.ndim != 2 or self.projection.shape[1] != k * d:
                raise ValueError(f"projection must be (P, {k * d}), got {self.projection.shape}")
            if self.projection_bias is None or self.projection_bias.shape != (self.projection.shape[0],):
                raise ValueError("projection_bias must be (P,) beside a (P, K*D) projection")

    @property
    def num_clusters(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def feature_dim(self) -> int:
        return int(self.centroids.shape[1])

    @property
    def output_dim(self) -> int:
        return int(self.projection.shape[0]) if self.projection is not None else self.num_clusters * self.feature_dim

    # ---- building blocks -------------------------------------------------------------------------
    def local_descriptors(self, features: np.ndarray) -> np.ndarray:
        """(B, D, h, w) feature maps -> (B, h*w, D) descriptors, L2-normalised if the head expects it."""
        if features.ndim != 4 or features.shape[1] != self.feature_dim:
            raise ValueError(f"expected features (B, {self.feature_dim}, h, w), got {features.shape}")
        return local_descriptors(features, self.normalize_input)

    def soft_assign(self, x: np.ndarray) -> np.ndarray:
        """(..., D) descriptors -> (..., K) soft-assignment weights (rows sum to 1)."""
        logits = x @ self.assign_weight.T + self.assign_bias
        logits -= logits.max(axis=-1, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=-1, keepdims=True)
        return logits

    def aggregate(self, x: np.ndarray, assignment: np.ndarray | None = None) -> np.ndarray:
        """Unnormalised VLAD residual sums.

        Shape:
            x: (B, N, D) local descriptors; assignment: (B, N, K) or None (computed);
            returns: (B, K, D) with V[b, k] = sum_n a[b, n, k] (x[b, n] - c_k).
        """
        a = self.soft_assign(x) if assignment is None else assignment
        v = np.matmul(a.transpose(0, 2, 1), x)
        v -= a.sum(axis=1)[:, :, None] * self.centroids[None]
        return v

    @staticmethod
    def normalize_vlad(v: np.ndarray) -> np.ndarray:
        """Intra-normalise each cluster block, flatten, L2-normalise. (..., K, D) -> (..., K*D)."""
        v = v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), _EPS)
        v = v.reshape(*v.shape[:-2], -1)
        return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), _EPS)

    def project(self, vlad: np.ndarray) -> np.ndarray:
        """Apply the (whitened) PCA and L2-normalise; identity when the head has no projection."""
        if self.projection is None:
            return vlad.astype(np.float32, copy=False)
        y = vlad @ self.projection.T + self.projection_bias
        return (y / np.maximum(np.linalg.norm(y, axis=-1, keepdims=True), _EPS)).astype(np.float32, copy=False)

    # ---- end to end ------------------------------------------------------------------------------
    def vlad(self, features: np.ndarray) -> np.ndarray:
        """(B, D, h, w) -> normalised VLAD (B, K*D) before projection."""
        return self.normalize_vlad(self.aggregate(self.local_descriptors(features)))

    def global_descriptors(self, features: np.ndarray) -> np.ndarray:
        """(B, D, h, w) -> global descriptors (B, output_dim), L2-normalised float32."""
        return self.project(self.vlad(features))

    # ---- storage ---------------------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {"centroids": self.centroids, "assign_weight": self.assign_weight,
                  "assign_bias": self.assign_bias,
                  "normalize_input": np.array(self.normalize_input)}
        if self.projection is not None:
            arrays["projection"] = self.projection
            arrays["projection_bias"] = self.projection_bias  # type: ignore[assignment]
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> VladHead:
        def f32(name: str) -> np.ndarray | None:
            return np.asarray(arrays[name], dtype=np.float32) if name in arrays else None

        return cls(centroids=f32("centroids"), assign_weight=f32("assign_weight"),  # type: ignore[arg-type]
                   assign_bias=f32("assign_bias"), projection=f32("projection"),  # type: ignore[arg-type]
                   projection_bias=f32("projection_bias"),
                   normalize_input=bool(arrays.get("normalize_input", True)))


def global_descriptors(features: np.ndarray, head: VladHead | None) -> np.ndarray:
    """Encoder output -> L2-normalised global descriptors (B, P).

    With a head, ``features`` are local feature maps (B, D, h, w) aggregated by NetVLAD + projection;
    without one (``global`` encoders), ``features`` already are descriptors (B, P) and are only normalised.
    """
    if head is not None:
        return head.global_descriptors(features)
    if features.ndim != 2:
        raise ValueError(f"an encoder without a VLAD head must output (B, P) descriptors, got {features.shape}")
    x = features.astype(np.float32, copy=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), _EPS)


# ---- fitting -------------------------------------------------------------------------------------
def kmeans_vocabulary(samples: np.ndarray, num_clusters: int, iterations: int, seed: int,
                      restarts: int = 3) -> np.ndarray:
    """k-means centroids (K, D) of local descriptors with FAISS; the best of ``restarts`` random inits."""
    import faiss

    samples = np.ascontiguousarray(samples, dtype=np.float32)
    if samples.shape[0] < num_clusters:
        raise ValueError(f"k-means needs at least {num_clusters} local features, got {samples.shape[0]}")
    km = faiss.Kmeans(samples.shape[1], num_clusters, niter=iterations, seed=seed, verbose=False, nredo=restarts,
                      max_points_per_centroid=100000)
    km.train(samples)
    return np.asarray(km.centroids, dtype=np.float32)


def assignment_from_centroids(centroids: np.ndarray, samples: np.ndarray,
                              ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Soft-assignment weights for softmax(-alpha ||x - c||^2).

    alpha is chosen so that, on average over ``samples``, a feature's nearest cluster weighs ``ratio`` times
    its second nearest (NetVLAD's initialisation uses ratio 100).
    """
    d2 = (samples ** 2).sum(1, keepdims=True) - 2.0 * samples @ centroids.T + (centroids ** 2).sum(1)[None]
    two = np.partition(d2, 1, axis=1)[:, :2]
    gap = float(np.mean(two[:, 1] - two[:, 0]))
    alpha = np.log(ratio) / max(gap, _EPS)
    weight = (2.0 * alpha * centroids).astype(np.float32)
    bias = (-alpha * (centroids ** 2).sum(1)).astype(np.float32)
    return weight, bias


def fit_pca_whitening(vlads: np.ndarray, dim: int, whiten: bool,
                      regularisation: float) -> tuple[np.ndarray, np.ndarray]:
    """Projection (P, Din) and bias (P,) such that y = P v + q is the (whitened) PCA of ``vlads``.

    ``dim`` is clamped to rank(vlads) <= N - 1. Whitening divides component i by
    sqrt(lambda_i + regularisation * lambda_1).
    """
    x = np.asarray(vlads, dtype=np.float64)
    n = x.shape[0]
    if n < 2:
        raise ValueError("PCA needs at least 2 reference descriptors")
    mean = x.mean(axis=0)
    x = x - mean
    dim = min(dim, n - 1, x.shape[1])
    # Economy SVD on whichever side is smaller keeps this cheap for few images or small K*D.
    if n <= x.shape[1]:
        _, s, vt = np.linalg.svd(x, full_matrices=False)
        eig = s ** 2 / (n - 1)
    else:
        cov = x.T @ x / (n - 1)
        eig, vec = np.linalg.eigh(cov)
        order = np.argsort(eig)[::-1]
        eig, vt = eig[order], vec[:, order].T
    components = vt[:dim]
    if whiten:
        components = components / np.sqrt(eig[:dim] + regularisation * eig[0])[:, None]
    projection = components.astype(np.float32)
    bias = (-(components @ mean)).astype(np.float32)
    return projection, bias
