"""Geometric verification (vpr_ros.core.geometry.verify_pair) on real images with ground truth by construction.

Writes ``bench/results/verification.json``. Images: the two real Tokyo 24/7 street images shipped with the
official ``patchnetvlad`` package, resized to 640x480 (no calibration: nominal pinhole, 60 degrees horizontal
field of view), and four real corridor frames (``data/corridor/ref``, 160x120; the lens is a fisheye of
unknown calibration: nominal pinhole, 90 degrees, distortion ignored -- the warps below use the same pinhole,
so their ground truth is exact). Seeded (numpy default_rng, seeds below); ``vpr_ros.eval.synthetic_views``
makes the second views:

* ``pure_rotation``: H = K R K^-1, R by 0-30 degrees about random axes: rotation error median / p90, success;
* ``planar``: the image on a plane 2 m away tilted by up to 40 degrees, motion R up to 15 degrees and t of
  0.2-0.6 m: rotation and translation-direction errors with the model selection (auto, ORB-SLAM's rule) vs a
  plain essential-matrix fit;
* ``pnp``: the same planar views with the keyframe's depth map: metric translation error;
* ``box``: a 3D scene -- the image painted on the walls, floor, ceiling and end of a 3 x 2.4 x 8 m box (a
  corridor) around the keyframe camera, rendered by ray casting after a motion R up to 15 degrees and t of
  0.3-0.8 m: the essential matrix's case; auto vs a forced homography, and PnP with the box's depth map;
* ``unrelated``: corridor frames >= 30 places apart and Tokyo vs corridor: false accept rate (also with
  min_matches lowered to 8 so the geometric tests, not the match count, do the refusing); and real same-place
  pairs without pose ground truth (corridor query vs reference lap, Tokyo day vs night) for the share verified;
* ``timing_ms``: per candidate, feature extraction (query; a stored keyframe costs none) vs matching vs
  two-view geometry, medians over the planar runs;
* ``bytes_per_keyframe``: stored features (keypoints + uint8 descriptors) for SIFT and ORB at 640x480 and
  160x120.

    python -m bench verification
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import write_result
from vpr_ros.core.geometry import CameraIntrinsics, FeatureConfig, VerificationConfig, extract_features, verify_pair
from vpr_ros.core.image import load_rgb, resize_rgb
from vpr_ros.eval.synthetic_views import (
    direction_error_deg,
    rotation_error_deg,
    sample_box_views,
    sample_planar_views,
    sample_rotated_views,
)

REPO = Path(__file__).resolve().parents[1]
CORRIDOR_FRAMES = (10, 40, 70, 100)
TOKYO_HFOV_DEG = 60.0
CORRIDOR_HFOV_DEG = 90.0
VIEWS_PER_IMAGE = 25


def tokyo_images() -> dict[str, np.ndarray]:
    import patchnetvlad

    folder = Path(patchnetvlad.__file__).parent / "example_images"
    return {name: resize_rgb(load_rgb(folder / file), 480, 640)
            for name, file in (("tokyo_db", "tokyo_db.png"), ("tokyo_query", "tokyo_query.jpg"))}


def corridor(lap: str) -> list[np.ndarray]:
    return [load_rgb(p) for p in sorted((REPO / "data" / "corridor" / lap).glob("*.jpg"))]


def test_images() -> list[tuple[str, np.ndarray, CameraIntrinsics]]:
    """(name, image, assumed intrinsics) of the real images the warps start from."""
    out = [(name, img, CameraIntrinsics.nominal(640, 480, TOKYO_HFOV_DEG)) for name, img in tokyo_images().items()]
    ref = corridor("ref")
    out += [(f"corridor_ref_{i}", ref[i], CameraIntrinsics.nominal(160, 120, CORRIDOR_HFOV_DEG))
            for i in CORRIDOR_FRAMES]
    return out


def stats(values: list[float]) -> dict[str, float | int | None]:
    x = np.asarray([v for v in values if np.isfinite(v)], float)
    if not len(x):
        return {"median": None, "p90": None, "max": None, "n": 0}
    return {"median": float(np.median(x)), "p90": float(np.percentile(x, 90)), "max": float(x.max()), "n": len(x)}


def rotation_error_over_sigma(v: Any, true_rotation: np.ndarray) -> float:
    """Rotation error over the reported rotation standard deviation (root of the trace of the rotation block):
    a check of the covariance model, ~1 or below when the covariance is honest."""
    if not v.verified:
        return float("nan")
    return float(np.radians(rotation_error_deg(v.rotation, true_rotation)) / np.sqrt(np.trace(v.covariance[3:, 3:])))


def pure_rotation(images: list[tuple[str, np.ndarray, CameraIntrinsics]], config: VerificationConfig,
                  seed: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, img, cam in images:
        rng = np.random.default_rng(seed)
        errors, models, translation_zero, over_sigma = [], [], [], []
        views = list(sample_rotated_views(img, cam, rng, VIEWS_PER_IMAGE, max_deg=30.0))
        for view in views:
            v = verify_pair(view.query, img, cam, cam, config=config)
            over_sigma.append(rotation_error_over_sigma(v, view.rotation))
            errors.append(rotation_error_deg(v.rotation, view.rotation) if v.verified else float("nan"))
            models.append(v.model if v.verified else v.reason)
            translation_zero.append(v.verified and not v.translation.any())
        out[name] = {"rotation_error_deg": stats(errors), "rotation_error_over_sigma": stats(over_sigma),
                     "success_rate": float(np.isfinite(errors).mean()),
                     "models": {m: models.count(m) for m in sorted(set(models))},
                     "reported_pure_rotation": int(sum(translation_zero)), "views": len(views)}
    return out


def planar(images: list[tuple[str, np.ndarray, CameraIntrinsics]], config: VerificationConfig,
           seed: int = 1) -> tuple[dict[str, Any], dict[str, list[float]]]:
    out: dict[str, Any] = {}
    timings: dict[str, list[float]] = {}
    for name, img, cam in images:
        rng = np.random.default_rng(seed)
        views = list(sample_planar_views(img, cam, rng, VIEWS_PER_IMAGE))
        per_image: dict[str, Any] = {}
        for mode in ("auto", "essential"):
            cfg = dataclasses.replace(config, model=mode)
            rot, direction, models, over_sigma = [], [], [], []
            ambiguous = wrong_side = 0
            for view in views:
                v = verify_pair(view.query, img, cam, cam, config=cfg)
                over_sigma.append(rotation_error_over_sigma(v, view.rotation))
                rot.append(rotation_error_deg(v.rotation, view.rotation) if v.verified else float("nan"))
                if v.verified and v.ambiguity_deg > 1.0:
                    ambiguous += 1
                    wrong_side += rot[-1] > v.ambiguity_deg / 2
                direction.append(direction_error_deg(v.translation, view.translation) if v.verified
                                 else float("nan"))
                models.append(v.model if v.verified else "refused")
                if mode == "auto" and img.shape[1] == 640:
                    for key, ms in v.timings_ms.items():
                        timings.setdefault(key, []).append(ms)
            per_image[mode] = {"rotation_error_deg": stats(rot), "translation_direction_error_deg": stats(direction),
                               "rotation_error_over_sigma": stats(over_sigma),
                               "success_rate": float(np.isfinite(rot).mean()),
                               "models": {m: models.count(m) for m in sorted(set(models))},
                               # planar_ambiguity = inflate (default): these views carry the widened covariance
                               "two_valid_decompositions": ambiguous,
                               "wrong_decomposition_chosen": int(wrong_side)}
        metric_err, rel_err, rot_pnp, within_3_sigma = [], [], [], []
        for view in views:
            v = verify_pair(view.query, img, cam, cam, keyframe_depth=view.keyframe_depth, config=config)
            if v.verified and v.metric:
                err = v.translation - view.translation
                metric_err.append(float(np.linalg.norm(err)))
                rel_err.append(float(np.linalg.norm(err) / np.linalg.norm(view.translation)))
                rot_pnp.append(rotation_error_deg(v.rotation, view.rotation))
                sigma = np.sqrt(np.diag(v.covariance)[:3])
                within_3_sigma.append(bool(np.all(np.abs(err) <= 3 * sigma)))
        per_image["pnp"] = {"translation_error_m": stats(metric_err), "relative_translation_error": stats(rel_err),
                            "rotation_error_deg": stats(rot_pnp), "metric_rate": len(metric_err) / len(views),
                            "error_within_3_sigma_per_axis": float(np.mean(within_3_sigma)) if within_3_sigma
                            else None}
        out[name] = per_image
    return out, timings


def box(images: list[tuple[str, np.ndarray, CameraIntrinsics]], config: VerificationConfig,
        seed: int = 3) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, img, cam in images:
        views = list(sample_box_views(img, cam, np.random.default_rng(seed), VIEWS_PER_IMAGE))
        per_image: dict[str, Any] = {}
        for mode in ("auto", "essential", "homography"):
            rot, direction, models, over_sigma = [], [], [], []
            for view in views:
                v = verify_pair(view.query, img, cam, cam, config=dataclasses.replace(config, model=mode))
                over_sigma.append(rotation_error_over_sigma(v, view.rotation))
                rot.append(rotation_error_deg(v.rotation, view.rotation) if v.verified else float("nan"))
                direction.append(direction_error_deg(v.translation, view.translation) if v.verified
                                 else float("nan"))
                models.append(v.model if v.verified else "refused")
            per_image[mode] = {"rotation_error_deg": stats(rot), "translation_direction_error_deg": stats(direction),
                               "rotation_error_over_sigma": stats(over_sigma),
                               "success_rate": float(np.isfinite(rot).mean()),
                               "models": {m: models.count(m) for m in sorted(set(models))}}
        metric_err = []
        for view in views:
            v = verify_pair(view.query, img, cam, cam, keyframe_depth=view.keyframe_depth, config=config)
            metric_err.append(float(np.linalg.norm(v.translation - view.translation)) if v.metric else float("nan"))
        per_image["pnp"] = {"translation_error_m": stats(metric_err),
                            "metric_rate": float(np.isfinite(metric_err).mean())}
        out[name] = per_image
    return out


def unrelated(config: VerificationConfig, seed: int = 2) -> dict[str, Any]:
    ref, query = corridor("ref"), corridor("query")
    tokyo = tokyo_images()
    cam_c = CameraIntrinsics.nominal(160, 120, CORRIDOR_HFOV_DEG)
    cam_t = CameraIntrinsics.nominal(640, 480, TOKYO_HFOV_DEG)
    rng = np.random.default_rng(seed)
    pairs: list[tuple[np.ndarray, CameraIntrinsics, np.ndarray, CameraIntrinsics]] = []
    while len(pairs) < 40:
        i, j = rng.choice(len(ref), 2, replace=False)
        if abs(int(i) - int(j)) >= 30:
            pairs.append((ref[i], cam_c, ref[j], cam_c))
    pairs += [(t, cam_t, ref[i], cam_c) for t in tokyo.values() for i in range(0, len(ref), 10)]
    out: dict[str, Any] = {"pairs": len(pairs), "corridor_pairs_30_or_more_places_apart": 40,
                           "tokyo_vs_corridor_pairs": len(pairs) - 40}
    for label, cfg in (("defaults", config),
                       ("min_matches_8", dataclasses.replace(config, min_matches=8))):
        reasons: list[str] = []
        accepted = 0
        for a, ca, b, cb in pairs:
            v = verify_pair(a, b, ca, cb, config=cfg)
            accepted += v.verified
            reasons.append(v.reason.split(":")[0] if not v.verified else "verified")
        out[label] = {"false_accept_rate": accepted / len(pairs),
                      "outcomes": {r: reasons.count(r) for r in sorted(set(reasons))}}
    same = [verify_pair(query[i], ref[i], cam_c, cam_c, config=config) for i in range(0, len(ref), 5)]
    out["same_place_corridor_query_vs_ref"] = {
        "pairs": len(same), "verified": int(sum(v.verified for v in same)),
        "median_matches": float(np.median([v.matches for v in same])),
        "note": "second traversal of the route, no pose ground truth; 160x120 frames give few SIFT matches"}
    v = verify_pair(tokyo["tokyo_query"], tokyo["tokyo_db"], cam_t, cam_t, config=config)
    out["same_place_tokyo_query_vs_db"] = {"verified": v.verified, "reason": v.reason, "matches": v.matches,
                                           "inliers": v.inliers}
    return out


def bytes_per_keyframe() -> dict[str, Any]:
    out: dict[str, Any] = {}
    tokyo = tokyo_images()["tokyo_db"]
    sizes = {"640x480 (tokyo_db)": tokyo, "160x120 (tokyo_db shrunk)": resize_rgb(tokyo, 120, 160),
             "160x120 (corridor ref 40)": corridor("ref")[40]}
    for detector in ("sift", "orb"):
        for label, img in sizes.items():
            feats = extract_features(img, FeatureConfig(detector=detector))
            buffer = io.BytesIO()
            np.savez(buffer, **feats.to_arrays())
            out[f"{detector} {label}"] = {"keypoints": len(feats), "array_bytes": feats.nbytes,
                                          "npz_bytes": buffer.getbuffer().nbytes,
                                          "bytes_per_keypoint": feats.nbytes / max(len(feats), 1)}
    out["max_features"] = FeatureConfig().max_features
    return out


def main() -> None:
    config = VerificationConfig()
    images = test_images()
    rotation = pure_rotation(images, config)
    planar_result, timings = planar(images, config)
    orb = dataclasses.replace(config, features=FeatureConfig(detector="orb"))
    result = {
        "config": {"detector": config.features.detector, "max_features": config.features.max_features,
                   "ransac_threshold_px": config.ransac_threshold_px, "min_inliers": config.min_inliers,
                   "min_inlier_ratio": config.min_inlier_ratio},
        "intrinsics_assumed": {"tokyo 640x480": f"nominal pinhole, hfov {TOKYO_HFOV_DEG} deg",
                               "corridor 160x120": f"nominal pinhole, hfov {CORRIDOR_HFOV_DEG} deg (fisheye "
                               "distortion unknown, ignored)"},
        "views_per_image": VIEWS_PER_IMAGE,
        "pure_rotation": rotation,
        "pure_rotation_orb": pure_rotation(images, orb),
        "planar": planar_result,
        "box": box(images, config),
        "unrelated": unrelated(config),
        "timing_ms_640x480_sift": {key: stats(ms) for key, ms in timings.items()},
        "bytes_per_keyframe": bytes_per_keyframe(),
    }
    write_result("verification", result)


if __name__ == "__main__":
    main()
