"""Geometric verification with a relative pose (vpr_ros.core.geometry) on real images, ground truth by construction.

Real Tokyo 24/7 street images (shipped with the reference ``patchnetvlad`` package, 640x480, nominal pinhole
60 degrees) and real corridor frames (data/corridor/ref, 160x120, nominal pinhole 90 degrees) are warped by
the homography of a known camera motion (vpr_ros.eval.synthetic_views): a pure rotation, or a motion in front
of a plane (with the plane's depth map for PnP). bench/bench_verification.py measures the same at scale.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import cv2
import numpy as np
import pytest

from vpr_ros.config import config_from_dict
from vpr_ros.core.geometry import (
    CameraIntrinsics,
    FeatureConfig,
    Features,
    IntrinsicsError,
    VerificationConfig,
    extract_features,
    match_features,
    verify_pair,
)
from vpr_ros.core.image import load_rgb, resize_rgb
from vpr_ros.errors import ConfigError, InputError
from vpr_ros.eval.synthetic_views import (
    direction_error_deg,
    rotated_view,
    rotation_error_deg,
    sample_box_views,
    sample_planar_views,
    sample_rotated_views,
)

REPO = Path(__file__).resolve().parents[1]
TOKYO = CameraIntrinsics.nominal(640, 480, 60.0)
CORRIDOR = CameraIntrinsics.nominal(160, 120, 90.0)
VIEWS = 8


@pytest.fixture(scope="module")
def tokyo() -> np.ndarray:
    import patchnetvlad

    return resize_rgb(load_rgb(Path(patchnetvlad.__file__).parent / "example_images" / "tokyo_db.png"), 480, 640)


@pytest.fixture(scope="module")
def corridor_ref() -> list[np.ndarray]:
    return [load_rgb(p) for p in sorted((REPO / "data" / "corridor" / "ref").glob("*.jpg"))]


def real_images(tokyo: np.ndarray, corridor_ref: list[np.ndarray]) -> list[tuple[np.ndarray, CameraIntrinsics]]:
    return [(tokyo, TOKYO), (corridor_ref[40], CORRIDOR)]


class TestPureRotation:
    def test_rotation_error_under_one_degree_median(self, tokyo: np.ndarray, corridor_ref: list[np.ndarray]) -> None:
        for image, camera in real_images(tokyo, corridor_ref):
            errors = []
            for view in sample_rotated_views(image, camera, np.random.default_rng(0), VIEWS, max_deg=30.0):
                v = verify_pair(view.query, image, camera, camera)
                assert v.verified, v.reason
                assert v.model == "homography"
                # A pure rotation: translation unknown, not a made-up direction.
                assert not v.metric and not v.translation.any() and not v.translation_known
                assert v.ambiguity_deg == 0.0
                errors.append(rotation_error_deg(v.rotation, view.rotation))
            print(f"\n{image.shape[1]}x{image.shape[0]} pure rotation errors (deg): {np.round(errors, 3)}")
            assert np.median(errors) < 1.0

    def test_covariance_is_symmetric_positive_and_rotation_small(self, tokyo: np.ndarray) -> None:
        view = next(sample_rotated_views(tokyo, TOKYO, np.random.default_rng(3), 1, max_deg=10.0))
        v = verify_pair(view.query, tokyo, TOKYO, TOKYO)
        assert np.allclose(v.covariance, v.covariance.T)
        assert np.all(np.linalg.eigvalsh(v.covariance) > 0)
        assert np.all(np.sqrt(np.diag(v.covariance)[3:]) < np.radians(1.0))
        assert np.all(np.diag(v.covariance)[:3] >= 1e12)  # translation uninformative


class TestPlanar:
    def test_model_selection_rotation_and_direction(self, tokyo: np.ndarray, corridor_ref: list[np.ndarray]) -> None:
        for image, camera in real_images(tokyo, corridor_ref):
            rot, direction, ambiguities = [], [], []
            for view in sample_planar_views(image, camera, np.random.default_rng(1), VIEWS):
                v = verify_pair(view.query, image, camera, camera)
                assert v.verified, v.reason
                ambiguities.append(v.ambiguity_deg)
                assert v.model == "homography"  # ORB-SLAM's rule picks the homography for a plane
                assert not v.metric and np.isclose(np.linalg.norm(v.translation), 1.0)
                rot.append(rotation_error_deg(v.rotation, view.rotation))
                direction.append(direction_error_deg(v.translation, view.translation))
            print(f"\n{image.shape[1]}x{image.shape[0]} planar: rotation {np.round(rot, 3)} "
                  f"direction {np.round(direction, 2)}")
            assert np.median(rot) < 1.0
            assert np.median(direction) < 5.0
            # Some views of a plane have two decompositions in front of both cameras: the result says so.
            assert max(ambiguities) > 1.0

    def test_planar_ambiguity_policies(self, tokyo: np.ndarray) -> None:
        """Two valid decompositions that only the prior separates: inflate covers the other, refuse refuses."""
        for view in sample_planar_views(tokyo, TOKYO, np.random.default_rng(1), VIEWS):
            inflated = verify_pair(view.query, tokyo, TOKYO, TOKYO)
            if inflated.ambiguity_deg > 1.0:
                break
        else:
            pytest.fail("no ambiguous planar view among the samples")
        plain = verify_pair(view.query, tokyo, TOKYO, TOKYO, config=VerificationConfig(planar_ambiguity="prior"))
        refused = verify_pair(view.query, tokyo, TOKYO, TOKYO, config=VerificationConfig(planar_ambiguity="refuse"))
        other = np.radians(inflated.ambiguity_deg)
        assert np.all(np.sqrt(np.diag(inflated.covariance)[3:]) >= other)
        assert np.all(np.sqrt(np.diag(plain.covariance)[3:]) < other / 5)
        assert np.allclose(plain.rotation, inflated.rotation)
        assert not refused.verified and refused.reason.startswith("planar ambiguity")

    def test_pnp_with_planar_depth_is_metric(self, tokyo: np.ndarray) -> None:
        errors = []
        for view in sample_planar_views(tokyo, TOKYO, np.random.default_rng(2), 4):
            v = verify_pair(view.query, tokyo, TOKYO, TOKYO, keyframe_depth=view.keyframe_depth)
            assert v.verified and v.metric and v.model == "pnp", v.reason
            errors.append(float(np.linalg.norm(v.translation - view.translation)))
            assert rotation_error_deg(v.rotation, view.rotation) < 0.5
            sigma = np.sqrt(np.diag(v.covariance))
            assert np.all(sigma > 0) and np.all(sigma[:3] < 0.1)
        print(f"\nPnP translation errors (m, |t| 0.2-0.6 m): {np.round(errors, 4)}")
        assert np.median(errors) < 0.02

    def test_query_depth_gives_the_same_pose(self, tokyo: np.ndarray) -> None:
        """Depth of the query instead of the keyframe: PnP the other way, inverted to T_query_keyframe."""
        view = next(sample_planar_views(tokyo, TOKYO, np.random.default_rng(4), 1))
        # The plane n . X = d of the keyframe frame is (R n) . X = d + (R n) . t in the query frame.
        h, w = tokyo.shape[:2]
        u, v_ = np.meshgrid(np.arange(w, dtype=float), np.arange(h, dtype=float))
        rays = np.c_[TOKYO.normalize(np.stack([u.ravel(), v_.ravel()], axis=1)), np.ones(u.size)]
        normal_q = view.rotation @ view.normal
        with np.errstate(divide="ignore"):
            z = (view.distance + normal_q @ view.translation) / (rays @ normal_q)
        query_depth = np.where(z > 0, z, 0.0).reshape(h, w).astype(np.float32)
        result = verify_pair(view.query, tokyo, TOKYO, TOKYO, query_depth=query_depth)
        assert result.verified and result.metric and result.model == "pnp", result.reason
        assert np.linalg.norm(result.translation - view.translation) < 0.03
        assert rotation_error_deg(result.rotation, view.rotation) < 0.5

    def test_odometry_baseline_scales_the_direction(self, tokyo: np.ndarray) -> None:
        view = next(sample_planar_views(tokyo, TOKYO, np.random.default_rng(5), 1))
        baseline = float(np.linalg.norm(view.translation))
        v = verify_pair(view.query, tokyo, TOKYO, TOKYO, baseline=baseline)
        assert v.verified and v.metric
        assert np.isclose(np.linalg.norm(v.translation), baseline)
        assert np.linalg.norm(v.translation - view.translation) < 0.05 * baseline

    def test_plain_essential_fit_is_worse_on_planes(self, tokyo: np.ndarray) -> None:
        """The reason for the model selection: the essential matrix is degenerate for a plane."""
        auto, essential = [], []
        forced = VerificationConfig(model="essential")
        for view in sample_planar_views(tokyo, TOKYO, np.random.default_rng(1), VIEWS):
            for out, cfg in ((auto, VerificationConfig()), (essential, forced)):
                v = verify_pair(view.query, tokyo, TOKYO, TOKYO, config=cfg)
                out.append(rotation_error_deg(v.rotation, view.rotation) if v.verified else 180.0)
        print(f"\nplanar rotation errors: auto {np.round(auto, 3)} essential {np.round(essential, 3)}")
        assert np.max(auto) < np.max(essential)


class TestGeneralScene:
    """The image painted on the walls of a box (a corridor) and seen from a moved camera: not a plane, not a
    pure rotation, so the essential matrix is the right model."""

    def test_essential_matrix_is_chosen_and_accurate(self, tokyo: np.ndarray) -> None:
        # 640x480 only: at 160x120 (f = 80 px, ~40 inliers) the essential matrix is several degrees off on some
        # views (bench/results/verification.json, box); the acceptance bound is for the planar and rotation cases.
        for image, camera in [(tokyo, TOKYO)]:
            rot, direction, models = [], [], []
            for view in sample_box_views(image, camera, np.random.default_rng(3), VIEWS):
                v = verify_pair(view.query, image, camera, camera)
                assert v.verified, v.reason
                models.append(v.model)
                assert v.ambiguity_deg == 0.0 or v.model == "homography"
                rot.append(rotation_error_deg(v.rotation, view.rotation))
                direction.append(direction_error_deg(v.translation, view.translation))
            print(f"\n{image.shape[1]}x{image.shape[0]} box: models {models} rotation {np.round(rot, 3)} "
                  f"direction {np.round(direction, 2)}")
            assert models.count("essential") >= VIEWS - 1
            assert np.median(rot) < 1.0
            assert np.median(direction) < 5.0

    def test_pnp_in_the_box(self, tokyo: np.ndarray) -> None:
        for view in sample_box_views(tokyo, TOKYO, np.random.default_rng(8), 3):
            v = verify_pair(view.query, tokyo, TOKYO, TOKYO, keyframe_depth=view.keyframe_depth)
            assert v.verified and v.model == "pnp", v.reason
            assert np.linalg.norm(v.translation - view.translation) < 0.02


class TestRefusal:
    def test_unrelated_pairs_are_refused(self, tokyo: np.ndarray, corridor_ref: list[np.ndarray]) -> None:
        # min_matches lowered so that the geometric tests, not only the match count, refuse.
        for config in (VerificationConfig(), VerificationConfig(min_matches=8)):
            for i, j in ((0, 50), (10, 80), (30, 100), (60, 5), (90, 20)):
                v = verify_pair(corridor_ref[i], corridor_ref[j], CORRIDOR, CORRIDOR, config=config)
                assert not v.verified, (i, j, v)
                assert v.reason and np.all(np.diag(v.covariance) >= 1e12)
            for i in (0, 40, 80):
                v = verify_pair(tokyo, corridor_ref[i], TOKYO, CORRIDOR, config=config)
                assert not v.verified, (i, v)

    def test_tiny_images_are_refused(self, corridor_ref: list[np.ndarray]) -> None:
        summer = load_rgb(REPO / "data" / "nordland_part1" / "summer" / "images-00010.png")
        camera = CameraIntrinsics.nominal(64, 32, 90.0)
        v = verify_pair(summer, summer, camera, camera)
        assert not v.verified and v.reason.startswith("image too small")

    def test_identical_image_is_verified_identity(self, corridor_ref: list[np.ndarray]) -> None:
        view = rotated_view(corridor_ref[40], CORRIDOR, np.eye(3))
        v = verify_pair(view.query, corridor_ref[40], CORRIDOR, CORRIDOR)
        assert v.verified and rotation_error_deg(v.rotation, np.eye(3)) < 0.1


class TestFeatures:
    @pytest.mark.parametrize("detector, width", [("sift", 128), ("orb", 32)])
    def test_npz_round_trip_without_pickle(self, tokyo: np.ndarray, detector: str, width: int) -> None:
        depth = np.full(tokyo.shape[:2], 3.0, np.float32)
        feats = extract_features(tokyo, FeatureConfig(detector=detector), depth=depth)
        assert feats.descriptors.shape == (len(feats), width) and feats.descriptors.dtype == np.uint8
        assert 100 < len(feats) <= FeatureConfig().max_features
        buffer = io.BytesIO()
        np.savez(buffer, **feats.to_arrays())
        buffer.seek(0)
        with np.load(buffer, allow_pickle=False) as data:
            loaded = Features.from_arrays(data)
        assert loaded.kind == detector and loaded.image_size == (480, 640)
        assert np.array_equal(loaded.keypoints, feats.keypoints)
        assert np.array_equal(loaded.descriptors, feats.descriptors)
        assert np.array_equal(loaded.depths, feats.depths)
        assert feats.nbytes == len(feats) * (width + 8 + 4)

    def test_stored_keyframe_features_give_the_same_result(self, tokyo: np.ndarray) -> None:
        view = next(sample_rotated_views(tokyo, TOKYO, np.random.default_rng(6), 1))
        stored = extract_features(tokyo)
        a = verify_pair(view.query, tokyo, TOKYO, TOKYO)
        b = verify_pair(view.query, stored, TOKYO, TOKYO)
        assert a.verified and b.verified and np.allclose(a.rotation, b.rotation)

    @pytest.mark.parametrize("detector", ["sift", "orb"])
    def test_matching_equals_opencv_brute_force(self, tokyo: np.ndarray, corridor_ref: list[np.ndarray],
                                                detector: str) -> None:
        """The vectorised ratio test + mutual check against OpenCV's BFMatcher, loop by loop."""
        config = FeatureConfig(detector=detector)
        view = next(sample_rotated_views(tokyo, TOKYO, np.random.default_rng(7), 1, max_deg=10.0))
        q, k = extract_features(view.query, config), extract_features(tokyo, config)
        norm = cv2.NORM_L2 if detector == "sift" else cv2.NORM_HAMMING
        qd, kd = (q.descriptors.astype(np.float32), k.descriptors.astype(np.float32)) if detector == "sift" \
            else (q.descriptors, k.descriptors)
        matcher = cv2.BFMatcher(norm)
        forward = matcher.knnMatch(qd, kd, k=2)
        backward = {m[0].queryIdx: m[0].trainIdx for m in matcher.knnMatch(kd, qd, k=1)}
        expected = {(m[0].queryIdx, m[0].trainIdx) for m in forward
                    if m[0].distance < config.ratio * m[1].distance and backward[m[0].trainIdx] == m[0].queryIdx}
        got = {tuple(p) for p in match_features(q, k, config).tolist()}
        # Ties in float distances may order differently; the sets must agree almost exactly.
        assert len(got ^ expected) <= 0.01 * len(expected) + 1
        assert len(expected) > 50


class TestIntrinsicsAndConfig:
    def test_from_camera_info_fields(self) -> None:
        cam = CameraIntrinsics.from_camera_info_fields([500.0, 0, 320, 0, 510.0, 240, 0, 0, 1], [0.1, -0.05, 0, 0, 0],
                                                       640, 480)
        assert (cam.fx, cam.fy, cam.cx, cam.cy, cam.width, cam.height) == (500, 510, 320, 240, 640, 480)
        assert cam.distortion == (0.1, -0.05, 0.0, 0.0, 0.0)
        assert CameraIntrinsics.from_camera_info_fields([500.0, 0, 320, 0, 500, 240, 0, 0, 1], [0.0] * 5, 640,
                                                        480).distortion == ()
        with pytest.raises(IntrinsicsError, match="uncalibrated"):
            CameraIntrinsics.from_camera_info_fields([0.0] * 9, [], 640, 480)
        with pytest.raises(IntrinsicsError, match="9 numbers"):
            CameraIntrinsics.from_camera_info_fields([1.0] * 4, [], 640, 480)

    def test_nominal_and_scaling(self) -> None:
        cam = CameraIntrinsics.nominal(640, 480, 90.0)
        assert np.isclose(cam.fx, 320.0) and (cam.cx, cam.cy) == (319.5, 239.5)
        small = cam.scaled_to(160, 120)
        assert np.isclose(small.fx, 80.0) and np.isclose(small.cx, 79.5)
        with pytest.raises(IntrinsicsError):
            CameraIntrinsics.nominal(640, 480, 180.0)

    def test_distortion_is_removed(self) -> None:
        cam = CameraIntrinsics(300.0, 300.0, 320.0, 240.0, 640, 480, (-0.2, 0.05, 0.0, 0.0, 0.0))
        normalized = np.array([[0.3, -0.2], [-0.5, 0.4], [0.0, 0.0]])
        pixels, _ = cv2.projectPoints(np.c_[normalized, np.ones(3)], np.zeros(3), np.zeros(3), cam.matrix,
                                      np.array(cam.distortion))
        assert np.allclose(cam.normalize(pixels.reshape(-1, 2)), normalized, atol=1e-4)

    def test_intrinsics_of_another_aspect_ratio_are_refused(self, tokyo: np.ndarray) -> None:
        with pytest.raises(InputError, match="aspect ratio"):
            verify_pair(tokyo, tokyo, CameraIntrinsics.nominal(640, 640, 60.0), TOKYO)

    def test_config_from_dict_validates(self) -> None:
        cfg = config_from_dict(VerificationConfig, {"model": "essential", "features": {"detector": "orb"}})
        assert cfg.model == "essential" and cfg.features.detector == "orb"
        assert dataclasses.replace(cfg, min_inliers=30).min_inliers == 30
        with pytest.raises(ConfigError):
            config_from_dict(VerificationConfig, {"features": {"detector": "surf"}})
        with pytest.raises(ConfigError):
            config_from_dict(VerificationConfig, {"homography_ratio": 1.5})
