"""Geometric verification of a place match with a relative pose: query image vs a map keyframe.

Pipeline (:func:`verify_pair`):

1. local features (:mod:`.features`: SIFT by default, ORB optional) of the query, and of the keyframe unless its
   stored :class:`~.features.Features` are passed; brute-force matching with Lowe's ratio test and a mutual check;
2. both two-view models with RANSAC on undistorted points -- an essential matrix (``cv2.findEssentialMat``,
   USAC when OpenCV has it) and a homography (``cv2.findHomography``) -- and the choice between them as
   ORB-SLAM does (Mur-Artal, Montiel, Tardos, "ORB-SLAM: a Versatile and Accurate Monocular SLAM System", IEEE
   T-RO 2015, section IV-B): each model is scored on all matches with the symmetric transfer error,
   S_M = sum_i rho(d^2_qk,i) + rho(d^2_kq,i), rho(d^2) = 5.99 - d^2 / sigma^2 while d^2 / sigma^2 is below the
   chi-square 95% bound of the model (5.99 for H, 2 dof; 3.84 for F/E, 1 dof), else 0; the homography wins
   when R_H = S_H / (S_H + S_F) > 0.45. Planar scenes (a wall, a facade) and near-pure rotations are
   degenerate for the essential matrix and are explained by the homography;
3. pose: ``cv2.recoverPose`` for the essential matrix (rotation and a unit translation direction);
   ``cv2.decomposeHomographyMat`` for the homography, keeping the physically valid solution: most inliers in
   front of both cameras (cheirality), then clearly more support of its essential matrix among all matches
   (points off the plane), then the plane normal most facing the camera. When the best pure
   rotation of the inliers' rays (Kabsch) leaves a median residual below ``pure_rotation_parallax_px`` and
   within ``pure_rotation_residual_ratio`` of the homography's, the pair is a pure rotation: that rotation,
   translation unknown (zero, uninformative covariance), ``metric`` false;
4. refusal (``verified`` False, ``reason`` set) for tiny images, too few matches or inliers, a low inlier
   ratio or bunched inliers (``min_spread``);
5. metric translation, once the two-view check passed: with depth at the keyframe's keypoints (or a query
   depth image) ``cv2.solvePnPRansac`` on 3D-2D matches gives R and t in metres (``model = "pnp"``); without
   depth, a ``baseline`` (the distance between the two camera centres from odometry) scales the unit
   translation (not for a pure rotation, whose direction is unknown).

Relative pose convention (ros/vpr_ros_interfaces/msg/LoopClosure.msg): the pose of the KEYFRAME's camera in the
QUERY camera frame, T_query_keyframe: X_query = R @ X_keyframe + t (optical frames, x right, y down, z forward).

Covariance (6x6, order x y z roll pitch yaw = translation then small rotations about the query camera's x, y,
z axes). For PnP: first order, sigma^2 (J^T J)^-1 from the reprojection Jacobian of the inliers (sigma^2 the
inliers' residual variance), the rotation vector mapped to a rotation applied on the left. For the two-view
models an approximation, not a full error propagation: with n inliers, residual sigma_px (pixels, at least
``pixel_sigma``), focal f and inlier spread r (rms distance of the inliers from their centroid in normalized
image units), the rotation about the x and y axes has sigma = k sigma_px / (f sqrt(n)) (an image shift) and
about the optical axis sigma = k sigma_px / (f r sqrt(n)) (a lever arm of length r); the unit translation
direction has sigma = k sigma_px / (f sqrt(n) p) across the direction, p the median rotation-compensated
parallax (radians), and ~0 along it; k = ``covariance_inflation`` covers what this ignores (the correlations
of rotation and translation, outliers that pass RANSAC). Cross terms are zero.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from vpr_ros.config import section, setting
from vpr_ros.core.geometry.camera import CameraIntrinsics
from vpr_ros.core.geometry.features import FeatureConfig, Features, extract_features, match_features
from vpr_ros.errors import InputError

#: Variances of an uninformative covariance (LoopClosure.msg UNINFORMATIVE_*_VARIANCE).
UNINFORMATIVE_VARIANCE = 1.0e12
#: ORB-SLAM's constants (Mur-Artal et al. 2015, IV-B): chi-square 95% bounds and the selection threshold.
CHI2_HOMOGRAPHY = 5.99
CHI2_FUNDAMENTAL = 3.84
ORB_SLAM_HOMOGRAPHY_RATIO = 0.45
# USAC estimators where OpenCV has them (4.5+). The essential matrix uses USAC_ACCURATE (local optimisation): on
# eight 160x120 box views (bench/bench_verification.py's scene) its median rotation error was 1.2 degrees against
# 2.9 for USAC_MAGSAC and 3.3 for RANSAC. The homography keeps USAC_MAGSAC (MAGSAC++), with which the pure-rotation
# and planar figures of bench/results/verification.json were measured.
_ESSENTIAL_METHOD = getattr(cv2, "USAC_ACCURATE", cv2.RANSAC)
_HOMOGRAPHY_METHOD = getattr(cv2, "USAC_MAGSAC", cv2.RANSAC)


@dataclass(frozen=True)
class VerificationConfig:
    """Geometric verification of a loop-closure candidate (local features, two-view geometry, PnP)."""

    features: FeatureConfig = section(FeatureConfig)
    model: str = setting("auto", "two-view model: auto = essential matrix or homography chosen as ORB-SLAM does; "
                         "essential / homography = always that one", choices=("auto", "essential", "homography"))
    homography_ratio: float = setting(ORB_SLAM_HOMOGRAPHY_RATIO, "the homography wins when S_H / (S_H + S_F) is "
                                      "above this (ORB-SLAM: 0.45)", min=0.0, max=1.0)
    ransac_threshold_px: float = setting(1.5, "RANSAC inlier threshold in pixels (epipolar distance, transfer "
                                         "error, PnP reprojection error)", min=0.1)
    ransac_confidence: float = setting(0.999, "RANSAC confidence", min=0.5, max=0.999999)
    min_image_side: int = setting(96, "refuse images whose shorter side is below this (pixels): too few features "
                                  "for a trustworthy pose", min=1)
    min_matches: int = setting(20, "refuse pairs with fewer descriptor matches", min=5)
    min_inliers: int = setting(20, "refuse pairs with fewer inliers of the chosen model", min=5)
    min_inlier_ratio: float = setting(0.3, "refuse pairs whose inliers / matches is below this", min=0.0, max=1.0)
    min_spread: float = setting(0.04, "refuse pairs whose inliers are bunched: the square root of the smaller "
                                "eigenvalue of the inliers' pixel covariance, over the image's shorter side, "
                                "must reach this (0.29 for points spread over the whole image)", min=0.0)
    pure_rotation_parallax_px: float = setting(
        1.0, "a homography pair is a pure rotation (translation unknown) when the best rotation of its inliers' "
        "rays leaves a median residual below this many pixels and below pure_rotation_residual_ratio times the "
        "homography's median transfer error", min=0.0)
    pure_rotation_residual_ratio: float = setting(
        1.5, "see pure_rotation_parallax_px (a translation in front of a plane fits a rotation 2-4x worse than "
        "the homography; a pure rotation equally well)", min=1.0)
    pixel_sigma: float = setting(0.5, "smallest pixel noise sigma used in the covariances", min=0.01)
    # 3.5: the median of (rotation error / reported rotation sigma) on the planar and box views of
    # bench/bench_verification.py was ~1.5 with 2.0; a truthful 3-D Gaussian gives ~0.9.
    covariance_inflation: float = setting(3.5, "factor k on the standard deviations of the two-view covariance "
                                          "model (see the module docstring)", min=1.0)
    planar_ambiguity: str = setting(
        "inflate", "when a plane's two homography decompositions are both valid and only the prior (normal facing "
        "the camera) chose: inflate = widen the covariance to cover the other solution; refuse = do not verify; "
        "prior = keep the prior's choice with the plain covariance", choices=("inflate", "refuse", "prior"))
    min_pnp_inliers: int = setting(12, "fewest PnP inliers for a metric pose from depth", min=4)
    baseline_sigma_fraction: float = setting(0.1, "relative standard deviation of an odometry baseline used to "
                                             "scale the translation", min=0.0)


@dataclass(frozen=True)
class Verification:
    """Outcome of :func:`verify_pair`.

    Shape:
        rotation: (3, 3), translation: (3,), covariance: (6, 6) (x y z roll pitch yaw, query camera frame)
    """

    verified: bool
    reason: str                        # why it was refused ('' when verified)
    model: str                         # 'essential', 'homography', 'pnp' or '' (refused before a model)
    rotation: np.ndarray               # R of T_query_keyframe
    translation: np.ndarray            # t of T_query_keyframe: metres if metric, else unit (or zero: unknown)
    metric: bool
    inliers: int
    matches: int
    inlier_ratio: float
    spread: float                      # see VerificationConfig.min_spread
    covariance: np.ndarray
    homography_score_ratio: float = float("nan")   # R_H of the model selection
    parallax_px: float = float("nan")              # median rotation-compensated parallax of the inliers
    # A plane seen from two views can have two homography decompositions with every point in front of both
    # cameras; when nothing in the data (points off the plane) chose between them, the prior did (normal facing
    # the camera) and this is the rotation angle to the other one (degrees; 0 when there was none). In
    # bench/results/verification.json (planar) 43 of 150 views were ambiguous and the prior chose wrong on 10;
    # with planar_ambiguity = inflate (default) the covariance covers the other solution.
    ambiguity_deg: float = 0.0
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def quaternion_xyzw(self) -> np.ndarray:
        """Orientation of T_query_keyframe as a quaternion x y z w."""
        return Rotation.from_matrix(self.rotation).as_quat()

    @property
    def translation_known(self) -> bool:
        """False for a refusal and for a pure rotation (translation zero with an uninformative covariance)."""
        return self.verified and self.covariance[0, 0] < UNINFORMATIVE_VARIANCE


def _refused(reason: str, matches: int = 0, inliers: int = 0, spread: float = float("nan"),
             timings: dict[str, float] | None = None, **extra: float) -> Verification:
    return Verification(False, reason, "", np.eye(3), np.zeros(3), False, inliers, matches,
                        inliers / matches if matches else 0.0, spread, np.eye(6) * UNINFORMATIVE_VARIANCE,
                        timings_ms=timings or {}, **extra)


def _homogeneous(points: np.ndarray) -> np.ndarray:
    return np.hstack([points, np.ones((len(points), 1))])


def _transfer_sq(h: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Squared distance between dst and h applied to src, (N,)."""
    p = _homogeneous(src) @ h.T
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.sum((p[:, :2] / p[:, 2:3] - dst) ** 2, axis=1)
    return np.where(np.isfinite(d), d, np.inf)


def _epipolar_sq(f: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Squared distance of dst to the epipolar line f @ src, (N,)."""
    lines = _homogeneous(src) @ f.T
    num = np.sum(lines * _homogeneous(dst), axis=1) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        d = num / (lines[:, 0] ** 2 + lines[:, 1] ** 2)
    return np.where(np.isfinite(d), d, np.inf)


def orb_slam_scores(homography: np.ndarray, fundamental: np.ndarray, keyframe_px: np.ndarray,
                    query_px: np.ndarray, sigma: float = 1.0) -> tuple[float, float]:
    """(S_H, S_F) of Mur-Artal et al. 2015 (IV-B) for matches keyframe_px[i] <-> query_px[i] (pixels), where
    query ~ homography @ keyframe and query^T fundamental keyframe = 0."""
    def rho(d2: np.ndarray, bound: float) -> np.ndarray:
        e = d2 / sigma**2
        return np.where(e < bound, CHI2_HOMOGRAPHY - e, 0.0)

    h_inv = np.linalg.inv(homography)
    s_h = rho(_transfer_sq(homography, keyframe_px, query_px), CHI2_HOMOGRAPHY).sum() \
        + rho(_transfer_sq(h_inv, query_px, keyframe_px), CHI2_HOMOGRAPHY).sum()
    s_f = rho(_epipolar_sq(fundamental, keyframe_px, query_px), CHI2_FUNDAMENTAL).sum() \
        + rho(_epipolar_sq(fundamental.T, query_px, keyframe_px), CHI2_FUNDAMENTAL).sum()
    return float(s_h), float(s_f)


def _spread(pixels: np.ndarray, shorter_side: int) -> float:
    if len(pixels) < 3:
        return 0.0
    eig = np.linalg.eigvalsh(np.cov(pixels.T))
    return float(math.sqrt(max(eig[0], 0.0)) / shorter_side)


def _in_front(rot: np.ndarray, t: np.ndarray, normal: np.ndarray, bearings_k: np.ndarray) -> np.ndarray:
    """Points of the plane normal . X = 1 (keyframe frame) seen along bearings_k that lie in front of both
    cameras for the homography solution (rot, t, normal): X_query = rot @ X + t."""
    dot = bearings_k @ normal
    safe = np.where(dot > 1e-12, dot, 1.0)
    z_query = (bearings_k @ rot[2]) / safe + t[2]
    return (dot > 1e-12) & (z_query > 0)


def _skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


def _pick_decomposition(rotations: tuple[np.ndarray, ...], translations: tuple[np.ndarray, ...],
                        normals: tuple[np.ndarray, ...], bearings: np.ndarray, vk: np.ndarray, vq: np.ndarray,
                        virtual: np.ndarray, threshold_px: float) -> tuple[int, int]:
    """Index of the physically valid homography decomposition (up to 4 from OpenCV, up to 2 valid), and of the
    other valid one when the data could not rule it out (rule 3 decided), else -1.

    1. most homography inliers in front of both cameras (cheirality);
    2. among those, the most support of its essential matrix [t]x R over ALL matches: points off the plane
       follow only the true motion (on the plane both solutions fit exactly), when it leads clearly (by 5% of
       the matches and at least 5);
    3. else (a truly planar scene: the two-fold ambiguity is real) the plane normal most facing the camera.
    """
    front = [int(_in_front(r, t.ravel(), n.ravel(), bearings).sum())
             for r, t, n in zip(rotations, translations, normals, strict=True)]
    candidates = [i for i, c in enumerate(front) if c == max(front)]
    if len(candidates) > 1:
        inv = np.linalg.inv(virtual)
        support = {i: int((_epipolar_sq(inv.T @ _skew(translations[i].ravel()) @ rotations[i] @ inv, vk, vq)
                           < threshold_px**2).sum()) for i in candidates}
        ranked = sorted(candidates, key=lambda i: -support[i])
        if support[ranked[0]] - support[ranked[1]] >= max(5, 0.05 * len(vk)):
            return ranked[0], -1
    by_normal = sorted(candidates, key=lambda i: -float(normals[i].ravel()[2]))
    return by_normal[0], (by_normal[1] if len(by_normal) > 1 else -1)


def _parallax_px(rot: np.ndarray, norm_q: np.ndarray, norm_k: np.ndarray, focal: float) -> float:
    """Median rotation-compensated parallax in pixels: the angle between each query ray and its keyframe ray
    rotated into the query frame, times the focal length (0 for a pure rotation, whatever the scene)."""
    if len(norm_q) == 0:
        return float("nan")
    bq = _homogeneous(norm_q)
    bk = _homogeneous(norm_k) @ rot.T
    cos = np.sum(bq * bk, axis=1) / (np.linalg.norm(bq, axis=1) * np.linalg.norm(bk, axis=1))
    return float(np.median(np.arccos(np.clip(cos, -1.0, 1.0)))) * focal


def _ray_rotation(norm_q: np.ndarray, norm_k: np.ndarray) -> np.ndarray:
    """The rotation R minimising sum |ray_q - R ray_k|^2 over unit rays (Kabsch / Wahba, scipy)."""
    if len(norm_q) < 2:
        return np.eye(3)
    rq, rk = _homogeneous(norm_q), _homogeneous(norm_k)
    rq /= np.linalg.norm(rq, axis=1, keepdims=True)
    rk /= np.linalg.norm(rk, axis=1, keepdims=True)
    return Rotation.align_vectors(rq, rk)[0].as_matrix()


def _left_jacobian_so3(phi: np.ndarray) -> np.ndarray:
    """Left Jacobian of SO(3) at rotation vector phi: d(exp(phi + d)) = exp(J_l d) exp(phi)."""
    theta = float(np.linalg.norm(phi))
    skew = np.array([[0, -phi[2], phi[1]], [phi[2], 0, -phi[0]], [-phi[1], phi[0], 0]])
    if theta < 1e-8:
        return np.eye(3) + 0.5 * skew
    return (np.eye(3) + (1 - math.cos(theta)) / theta**2 * skew
            + (theta - math.sin(theta)) / theta**3 * skew @ skew)


def _pnp(object_points: np.ndarray, image_px: np.ndarray, camera: CameraIntrinsics,
         config: VerificationConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, int] | None:
    """(R, t, covariance 6x6 [t, left rotation], inliers) of X_camera = R @ X_object + t, or None."""
    if len(object_points) < max(config.min_pnp_inliers, 6):
        return None
    dist = np.asarray(camera.distortion, dtype=np.float64) if camera.distortion else None
    ok, rvec, tvec, inl = cv2.solvePnPRansac(
        object_points.astype(np.float64), image_px.astype(np.float64), camera.matrix, dist,
        reprojectionError=config.ransac_threshold_px * 2, confidence=config.ransac_confidence,
        iterationsCount=1000, flags=cv2.SOLVEPNP_SQPNP)
    if not ok or inl is None or len(inl) < config.min_pnp_inliers:
        return None
    idx = inl.ravel()
    rvec, tvec = cv2.solvePnPRefineLM(object_points[idx], image_px[idx], camera.matrix, dist, rvec, tvec)
    projected, jac = cv2.projectPoints(object_points[idx], rvec, tvec, camera.matrix, dist)
    residual = projected.reshape(-1, 2) - image_px[idx]
    dof = max(2 * len(idx) - 6, 1)
    sigma2 = max(float(np.sum(residual**2)) / dof, config.pixel_sigma**2)
    j = jac[:, :6]                                       # columns: rvec (3), tvec (3)
    cov_params = sigma2 * np.linalg.pinv(j.T @ j)        # order rvec, tvec
    jl = _left_jacobian_so3(rvec.ravel())
    to_pose = np.zeros((6, 6))                           # (rvec, tvec) -> (t, left rotation)
    to_pose[:3, 3:] = np.eye(3)
    to_pose[3:, :3] = jl
    cov = to_pose @ cov_params @ to_pose.T
    return cv2.Rodrigues(rvec)[0], tvec.ravel(), 0.5 * (cov + cov.T), len(idx)


def _invert_pose(rot: np.ndarray, t: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """T^-1 and its covariance (first order, left perturbations, order [t, rotation]): adjoint of T^-1."""
    rot_inv = rot.T
    t_inv = -rot_inv @ t
    skew = np.array([[0, -t_inv[2], t_inv[1]], [t_inv[2], 0, -t_inv[0]], [-t_inv[1], t_inv[0], 0]])
    adjoint = np.zeros((6, 6))
    adjoint[:3, :3] = rot_inv
    adjoint[:3, 3:] = skew @ rot_inv
    adjoint[3:, 3:] = rot_inv
    cov_inv = adjoint @ cov @ adjoint.T
    return rot_inv, t_inv, 0.5 * (cov_inv + cov_inv.T)


def _camera_for(camera: CameraIntrinsics, size: tuple[int, int], what: str) -> CameraIntrinsics:
    h, w = size
    if (camera.width, camera.height) == (w, h):
        return camera
    if abs(camera.width / camera.height - w / h) > 0.02 * (w / h):
        raise InputError(f"{what} intrinsics are for {camera.width}x{camera.height} images, the image is {w}x{h} "
                         "(another aspect ratio)")
    return camera.scaled_to(w, h)


def verify_pair(query_rgb: np.ndarray, keyframe: np.ndarray | Features, query_camera: CameraIntrinsics,
                keyframe_camera: CameraIntrinsics, *, keyframe_depth: np.ndarray | None = None,
                query_depth: np.ndarray | None = None, baseline: float | None = None,
                config: VerificationConfig | None = None) -> Verification:
    """Check that the query image shows the keyframe's place and measure T_query_keyframe.

    Args:
        query_rgb: query image, uint8 (H, W, 3) RGB (or (H, W) gray).
        keyframe: the keyframe's image (same format) or its stored :class:`Features`.
        query_camera, keyframe_camera: intrinsics (scaled automatically to the image size, same aspect ratio).
        keyframe_depth: depth image (H, W) in metres aligned with the keyframe image (0 / NaN = unknown); not
            needed when ``keyframe`` features already carry depths.
        query_depth: depth image aligned with the query image (used when the keyframe has no depth).
        baseline: distance between the two camera centres (metres, e.g. from odometry); scales the unit
            translation when there is no depth.
        config: thresholds and feature settings.

    Returns:
        A :class:`Verification`; ``verified`` False with ``reason`` when refused.
    """
    config = config or VerificationConfig()
    if baseline is not None and not (baseline >= 0 and math.isfinite(baseline)):
        raise InputError(f"baseline: expected a finite distance >= 0, got {baseline}")
    timings: dict[str, float] = {}
    if query_rgb.ndim not in (2, 3):
        raise InputError(f"query image: expected (H, W, 3) or (H, W), got shape {query_rgb.shape}")
    query_size = (int(query_rgb.shape[0]), int(query_rgb.shape[1]))
    keyframe_size = keyframe.image_size if isinstance(keyframe, Features) else \
        (int(keyframe.shape[0]), int(keyframe.shape[1]))
    smallest = min(*query_size, *keyframe_size)
    if smallest < config.min_image_side:
        return _refused(f"image too small: shorter side {smallest} px < min_image_side {config.min_image_side}")
    cam_q = _camera_for(query_camera, query_size, "query camera")
    cam_k = _camera_for(keyframe_camera, keyframe_size, "keyframe camera")

    t0 = time.perf_counter()
    feats_q = extract_features(query_rgb, config.features, depth=query_depth)
    t1 = time.perf_counter()
    timings["features_query"] = (t1 - t0) * 1e3
    if isinstance(keyframe, Features):
        feats_k = keyframe.with_depth(keyframe_depth) if keyframe_depth is not None else keyframe
    else:
        feats_k = extract_features(keyframe, config.features, depth=keyframe_depth)
    t2 = time.perf_counter()
    timings["features_keyframe"] = (t2 - t1) * 1e3
    pairs = match_features(feats_q, feats_k, config.features)
    t3 = time.perf_counter()
    timings["matching"] = (t3 - t2) * 1e3
    n_matches = len(pairs)
    if n_matches < config.min_matches:
        return _refused(f"too few matches: {n_matches} < min_matches {config.min_matches}", n_matches,
                        timings=timings)
    result = _two_view(feats_q, feats_k, pairs, cam_q, cam_k, query_size, config, baseline)
    timings["geometry"] = (time.perf_counter() - t3) * 1e3
    result.timings_ms.update(timings)
    return result


def _two_view(feats_q: Features, feats_k: Features, pairs: np.ndarray, cam_q: CameraIntrinsics,
              cam_k: CameraIntrinsics, query_size: tuple[int, int], config: VerificationConfig,
              baseline: float | None) -> Verification:
    n_matches = len(pairs)
    px_q = feats_q.keypoints[pairs[:, 0]].astype(np.float64)
    px_k = feats_k.keypoints[pairs[:, 1]].astype(np.float64)
    norm_q, norm_k = cam_q.normalize(px_q), cam_k.normalize(px_k)
    # Both cameras on one virtual pinhole (focal f, principal point 0): thresholds stay in pixels and the two
    # cameras may differ (different intrinsics, distortion removed).
    f = 0.5 * (cam_q.focal + cam_k.focal)
    virtual = np.diag([f, f, 1.0])
    vq, vk = norm_q * f, norm_k * f
    thr = config.ransac_threshold_px

    essential, e_mask = cv2.findEssentialMat(vk, vq, virtual, method=_ESSENTIAL_METHOD, prob=config.ransac_confidence,
                                             threshold=thr)
    homography, _ = cv2.findHomography(vk, vq, method=_HOMOGRAPHY_METHOD, ransacReprojThreshold=thr,
                                       confidence=config.ransac_confidence)
    have_e = essential is not None and essential.shape[0] >= 3
    have_h = homography is not None and abs(np.linalg.det(homography)) > 1e-12
    if not have_e and not have_h:
        return _refused("no two-view model fits the matches", n_matches)
    essential = essential[:3] if have_e else None
    r_h = float("nan")
    if have_e and have_h:
        fundamental = np.linalg.inv(virtual).T @ essential @ np.linalg.inv(virtual)
        s_h, s_f = orb_slam_scores(homography, fundamental, vk, vq)
        r_h = s_h / (s_h + s_f) if s_h + s_f > 0 else float("nan")
    if config.model == "essential" or (config.model == "auto" and have_e and not (r_h > config.homography_ratio)):
        if not have_e:
            return _refused("essential matrix could not be estimated", n_matches)
        model = "essential"
        ambiguity_deg = ambiguity_dir = 0.0
        _, rot, t, pose_mask = cv2.recoverPose(essential, vk, vq, virtual, mask=e_mask.copy())
        inlier = pose_mask.ravel() > 0
        t = t.ravel()
        fundamental = np.linalg.inv(virtual).T @ essential @ np.linalg.inv(virtual)
        residual2 = _epipolar_sq(fundamental, vk[inlier], vq[inlier])
    else:
        if not have_h:
            return _refused("homography could not be estimated", n_matches)
        model = "homography"
        h_norm = np.linalg.inv(virtual) @ homography @ virtual
        ambiguity_deg = ambiguity_dir = 0.0
        _, rotations, translations, normals = cv2.decomposeHomographyMat(h_norm, np.eye(3))
        transfer = np.maximum(_transfer_sq(homography, vk, vq), _transfer_sq(np.linalg.inv(homography), vq, vk))
        h_inlier = transfer < thr**2
        bearings = _homogeneous(norm_k[h_inlier])
        # Near-pure rotation first: the least-squares rotation between the inliers' rays (Kabsch, scipy). When it
        # explains the inliers as well as the homography does (3 parameters instead of 8) the decomposition is
        # not used: it splits a noisy H into R + t n^T, leaking rotation into a spurious t with an arbitrary
        # plane normal (whose cheirality then says nothing). The test is relative, not only a pixel bound: a
        # sideways translation in front of a plane looks like a rotation up to a fraction of a pixel at 160x120.
        rot_only = _ray_rotation(norm_q[h_inlier], norm_k[h_inlier])
        rotation_residual = _parallax_px(rot_only, norm_q[h_inlier], norm_k[h_inlier], f)
        homography_residual = float(np.median(np.sqrt(transfer[h_inlier]))) if h_inlier.any() else 0.0
        # (0.1 px: keypoint localisation is no better, so an exact homography, e.g. of the same image twice,
        # does not make the relative test impossible to pass.)
        if rotation_residual < min(config.pure_rotation_parallax_px,
                                   config.pure_rotation_residual_ratio * max(homography_residual, 0.1)):
            rot, t = rot_only, np.zeros(3)
            front_ok = (bearings @ rot.T)[:, 2] > 0
        else:
            best, other = _pick_decomposition(rotations, translations, normals, bearings, vk, vq, virtual, thr)
            rot, t, normal = rotations[best], translations[best].ravel(), normals[best].ravel()
            if other >= 0:
                ambiguity_deg = float(np.degrees(Rotation.from_matrix(rot.T @ rotations[other]).magnitude()))
                other_t = translations[other].ravel()
                ambiguity_dir = float(np.arccos(np.clip(other_t @ t / max(np.linalg.norm(other_t)
                                                                          * np.linalg.norm(t), 1e-300), -1, 1)))
            front_ok = _in_front(rot, t, normal, bearings) if np.linalg.norm(t) > 1e-9 \
                else (bearings @ rot.T)[:, 2] > 0
        inlier = np.zeros(n_matches, dtype=bool)
        inlier[np.flatnonzero(h_inlier)] = front_ok
        residual2 = _transfer_sq(homography, vk[inlier], vq[inlier])
        norm_t = float(np.linalg.norm(t))
        t = t / norm_t if norm_t > 1e-12 else np.zeros(3)
    n_inliers = int(inlier.sum())
    spread = _spread(px_q[inlier], min(query_size))
    extra = {"homography_score_ratio": r_h, "ambiguity_deg": ambiguity_deg}
    if n_inliers < config.min_inliers:
        return _refused(f"too few inliers: {n_inliers} < min_inliers {config.min_inliers} ({model})",
                        n_matches, n_inliers, spread, **extra)
    if n_inliers / n_matches < config.min_inlier_ratio:
        return _refused(f"inlier ratio {n_inliers / n_matches:.2f} < min_inlier_ratio {config.min_inlier_ratio} "
                        f"({model})", n_matches, n_inliers, spread, **extra)
    if spread < config.min_spread:
        return _refused(f"inliers bunched: spread {spread:.3f} < min_spread {config.min_spread} ({model})",
                        n_matches, n_inliers, spread, **extra)
    if ambiguity_deg > 0 and config.planar_ambiguity == "refuse":
        return _refused(f"planar ambiguity: two homography decompositions {ambiguity_deg:.1f} degrees apart fit",
                        n_matches, n_inliers, spread, **extra)

    parallax_px = _parallax_px(rot, norm_q[inlier], norm_k[inlier], f)
    parallax = parallax_px / f
    pure_rotation = model == "homography" and not t.any()   # Kabsch branch above, or a zero decomposition t

    k = config.covariance_inflation
    sigma_px = max(math.sqrt(float(np.mean(residual2))) if len(residual2) else 0.0, config.pixel_sigma)
    centred = norm_q[inlier] - norm_q[inlier].mean(axis=0)
    lever = max(math.sqrt(float(np.mean(np.sum(centred**2, axis=1)))), 1e-3)
    sigma_tilt = k * sigma_px / (f * math.sqrt(n_inliers))
    cov = np.zeros((6, 6))
    cov[3:, 3:] = np.diag([sigma_tilt**2, sigma_tilt**2, (sigma_tilt / lever) ** 2])
    metric = False
    if pure_rotation:
        t = np.zeros(3)
        cov[:3, :3] = np.eye(3) * UNINFORMATIVE_VARIANCE
    else:
        sigma_dir = min(k * sigma_px / (f * math.sqrt(n_inliers) * max(parallax, 1e-9)), math.pi)
        cov[:3, :3] = sigma_dir**2 * (np.eye(3) - np.outer(t, t)) + 1e-12 * np.outer(t, t)
    if ambiguity_deg > 0 and config.planar_ambiguity == "inflate":
        # The other solution lies ambiguity_deg away (rotation) and ambiguity_dir (translation direction):
        # a standard deviation of that size in every direction makes it a one-sigma alternative.
        cov[3:, 3:] += np.eye(3) * math.radians(ambiguity_deg) ** 2
        if not pure_rotation:
            cov[:3, :3] += ambiguity_dir**2 * (np.eye(3) - np.outer(t, t))

    pnp = None
    if feats_k.depths is not None:
        depth = feats_k.depths[pairs[:, 1]]
        ok = np.isfinite(depth)
        pnp = _pnp(_homogeneous(norm_k[ok]) * depth[ok, None], px_q[ok], cam_q, config)
    if pnp is None and feats_q.depths is not None:
        depth = feats_q.depths[pairs[:, 0]]
        ok = np.isfinite(depth)
        found = _pnp(_homogeneous(norm_q[ok]) * depth[ok, None], px_k[ok], cam_k, config)
        if found is not None:
            pnp = (*_invert_pose(found[0], found[1], found[2]), found[3])
    if pnp is not None:
        rot, t, cov, n_pnp = pnp
        return Verification(True, "", "pnp", rot, t, True, n_pnp, n_matches, n_pnp / n_matches, spread, cov,
                            r_h, parallax_px)  # PnP on depth has no planar two-fold ambiguity
    if baseline is not None and not pure_rotation:
        sigma_b = config.baseline_sigma_fraction * baseline
        cov[:3, :3] = baseline**2 * cov[:3, :3] + sigma_b**2 * np.outer(t, t)
        t = t * baseline
        metric = True
    return Verification(True, "", model, rot, t, metric, n_inliers, n_matches, n_inliers / n_matches, spread,
                        cov, r_h, parallax_px, ambiguity_deg)
