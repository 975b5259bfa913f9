"""End to end, as two sessions of one robot: loop closures from real images place the second session in the first
one's frame through the pose graph (vpr_ros.core.pose_graph).

Routes (held-out segments of ``bench/splits.py``; the pipeline's defaults, the loop-closure gate's included,
were chosen on the tuning segments, and nothing here is tuned):

* corridor: session 1 = the reference lap (places 57-110, ``ref_poses.csv``), session 2 = the query lap;
* Nordland part 1: session 1 = summer, session 2 = winter (places 620-1799), seqslam over 10 frames as the
  README recommends for Nordland.

Poses: the data sets have nominal poses only, one place per unit along a straight line (corridor: x = frame
index, ``ref_poses.csv``; Nordland: x = place index, "nominal positions along the track"), heading along it.
Session 1 is the map: its keyframes enter the graph with their stored (nominal) poses as priors, position sigma
0.1, orientation unknown (what the pose-graph node does with a prior map). A second figure keeps session 1 as an
odometry chain in the same graph (its nominal poses as odometry, a prior on its first pose only, the same
odometry noise model as session 2): its far keyframes are then as loose as session 2's nodes and bend towards
them, so session 2 lands less close to the map (``pose_graph_session_1_as_odometry_chain``).
Session 2's odometry is simulated from its nominal poses with the drift model below (``DRIFT``, seeded) and
expressed in its own odometry frame (``ODOMETRY_FROM_MAP``: 40 degrees and (20, -10) from the map frame);
its stamps come after session 1's (``SESSION_GAP`` s), so the gate's exclusion window does not apply.

Loop closures: the real pipeline on session 2's images (``Localizer`` against a map of session 1's images
built by ``build_map``, default CNN encoder, then ``LoopClosureGate`` with the shipped defaults), one query at
a time in route order. Each closure the gate publishes is then verified as the localize node does it
(``vpr_ros.core.geometry.closure.check_closure`` with the shipped ``ClosureGeometryConfig()``): the query image
against the keyframe's image, read from the session-1 map's frame sources (``build_map`` maps store no local
features). Neither data set ships a calibration, so both use nominal pinhole intrinsics (``CAMERA_HFOV_DEG``:
principal point at the centre, square pixels, focal length from a horizontal field of view of 90 degrees):
the corridor's 160x120 images come from a fisheye lens whose distortion this ignores; Nordland's 64x32
thumbnails are below the verifier's ``min_image_side`` (96 px), so verification is impossible there whatever
the intrinsics. What the pose graph gets, as the pose-graph node gets it from the localize node with
``geometry.publish_unverified`` true and ``unverified_closures: place``:

* verified: a full relative-pose edge (a Pose3 between-factor), T_query_keyframe of the two optical frames turned
  into the two bodies' relative pose by ``camera_to_body`` with ``OPTICAL_IN_BODY`` (the nominal poses are
  planar body poses, camera looking along x). Without depth or a baseline the two-view translation is a unit
  direction, scale unknown (a baseline from odometry needs both ends in one odometry frame, which two sessions
  do not share): the edge keeps the verified rotation with its covariance and takes the place-level
  translation, zero within ``sigma`` (``place_covariance``); a metric translation would be kept as measured;
* failed (the geometry says no): dropped, as the node drops it;
* impossible (an image below ``min_image_side``, no intrinsics, no keyframe image): the place-level position
  measurement, session 2's node at the query stamp within ``sigma`` of the keyframe, rotation unknown
  (``place_covariance``). Too few matches between images large enough is a failure, not impossible
  (``check_closure``: unrelated places look exactly like that).

sigma = the ground truth's place tolerance (corridor 2 frames, Nordland 1 place); robust (Cauchy) kernel on
every closure.

Reported per route: loop closures published by the gate, correct (keyframe within the ground-truth tolerance
of the query) and possible (queries with a true match), precision; the verification counts (verified, failed,
impossible, the verified share of the published closures, the refusal reasons, correct closures among the
verified and among the failed ones), the verified rotation angle (the nominal relative rotation is the
identity: both sessions drive the route with one heading), verification time per candidate (``check_closure``
alone: features of both images, matching, two-view models; the keyframe image read is not counted); session
2's ATE RMSE (map units, no alignment: the estimate must already be in session 1's frame) for its odometry in
its own frame, its odometry started at the true first pose (drift only), and the pose graph, and for comparison
the pose graph with every published closure place-level (``pose_graph_geometry_off``: the localize node with
``geometry.enabled`` false); a plot of both sessions' trajectories per route.

    python -m bench two_sessions        # writes bench/results/two_sessions.json and two_sessions_<route>.png
"""

from __future__ import annotations

import re
import tempfile
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from scipy.spatial.transform import Rotation

from bench.common import RESULTS, write_result
from bench.splits import CORRIDOR, NORDLAND, RouteSplit
from vpr_ros.core.encoders import EncoderConfig, make_encoder
from vpr_ros.core.geometry.camera import CameraIntrinsics
from vpr_ros.core.geometry.closure import OPTICAL_IN_BODY, ClosureCheck, ClosureGeometryConfig, check_closure
from vpr_ros.core.localizer import Localizer, LocalizerConfig
from vpr_ros.core.loop_closure import LoopClosureConfig, LoopClosureGate
from vpr_ros.core.map_builder import BuildMapConfig, build_map
from vpr_ros.core.paths import PACKAGE_ROOT
from vpr_ros.core.pose_graph import (
    PoseGraph,
    PoseGraphConfig,
    Trajectory,
    place_covariance,
    pose_matrix,
    verified_closure_edge,
)
from vpr_ros.core.sequence import SequenceConfig
from vpr_ros.eval.ground_truth import positives_by_index
from vpr_ros.eval.trajectories import DriftModel, ate_rmse, drifted_odometry, planar_poses
from vpr_ros.io.bags import load_frame_source

CNN = EncoderConfig(model=str(PACKAGE_ROOT / "models" / "efficientnet_lite0_b10.onnx"))
DRIFT = DriftModel(scale_bias=0.01, scale_sigma=0.02, yaw_bias_deg=0.1, yaw_sigma_deg=0.2, seed=14)
ODOMETRY_FROM_MAP_YAW_DEG = 40.0
ODOMETRY_FROM_MAP_XY = (20.0, -10.0)
SESSION_GAP = 100_000.0
#: Prior of a map keyframe's pose, ROS order: position sigma 0.1 (the pose-graph node's keyframe_position_sigma);
#: orientation unknown (the maps store none).
KEYFRAME_COVARIANCE = np.diag([0.1 ** 2] * 3 + [1e12] * 3)
#: One node per frame: the nominal step is 1 unit, the drifted one 1 +- a few percent.
GRAPH = PoseGraphConfig(keyframe_distance=0.5)
#: Geometric verification as the localize node ships it.
GEOMETRY = ClosureGeometryConfig()
#: Nominal pinhole intrinsics (no calibration ships with either data set): horizontal field of view, degrees.
#: corridor: a fisheye lens, its distortion ignored; Nordland: the thumbnails are refused for their size anyway.
CAMERA_HFOV_DEG = {"corridor": 90.0, "nordland_part1": 90.0}
ROUTES: dict[str, tuple[RouteSplit, SequenceConfig]] = {
    "corridor": (CORRIDOR, SequenceConfig()),
    "nordland_part1": (NORDLAND, SequenceConfig(method="seqslam", length=10)),
}


def odometry_from_map() -> np.ndarray:
    return planar_poses(np.array([[*ODOMETRY_FROM_MAP_XY, 0.0]]), np.radians([ODOMETRY_FROM_MAP_YAW_DEG]))[0]


def run_route(name: str, split: RouteSplit, sequence: SequenceConfig, workdir: Path, segment: str = "held_out",
              graphs: dict[str, PoseGraphConfig] | None = None) -> dict[str, Any]:
    """One route: the pipeline's closures on ``segment``, then the pose graph (one per ``graphs`` entry, the
    first one reported and plotted)."""
    graphs = graphs or {"default": GRAPH}
    reference, queries = split.sources(segment)
    encoder = make_encoder(CNN)
    refmap = build_map(reference, workdir / f"{name}_map", BuildMapConfig(encoder=CNN), progress=False,
                       encoder=encoder)
    localizer = Localizer(refmap, encoder, LocalizerConfig(encoder=CNN, sequence=sequence))
    gate = LoopClosureGate(LoopClosureConfig(), refmap.frames, localizer.config.confidence_radius)
    positives = positives_by_index(len(queries), refmap.frames.ids, split.tolerance)

    # Nominal poses: one unit per place along x (the held-out rows keep their place numbers).
    places = split.segment(segment).rows.astype(np.float64)
    nominal = planar_poses(np.column_stack([places, np.zeros_like(places), np.zeros_like(places)]),
                           np.zeros_like(places))
    stamps_1 = reference.frames.stamps.astype(np.float64)
    stamps_2 = queries.frames.stamps.astype(np.float64) + SESSION_GAP
    odometry_2 = drifted_odometry(nominal, DRIFT, odometry_from_map())

    images = [queries.load_image(i) for i in range(len(queries))]
    features = [f for start in range(0, len(images), 64) for f in localizer.encode_many(images[start:start + 64])]
    # The closures of the pipeline, as the localize node would publish them (query index -> map row).
    gated = [gate.update(localizer.localize_features(f, float(stamps_2[i]))) for i, f in enumerate(features)]
    closures = [(i, c.row, float(c.ref_stamp)) for i, c in enumerate(gated) if c is not None]
    sigma = float(split.tolerance)
    height, width = images[0].shape[:2]
    camera = CameraIntrinsics.nominal(width, height, CAMERA_HFOV_DEG[name])
    checks, verify_ms = verify_closures(closures, images, refmap.frames.sources, camera)
    edges = [(i, row, ref_stamp, *edge) for (i, row, ref_stamp), check in zip(closures, checks, strict=True)
             if (edge := closure_edge(check, sigma)) is not None]
    truth = nominal[:, :3, 3]
    runs = {label: run_pose_graph(config, nominal, stamps_1, odometry_2, stamps_2, edges, "map")
            for label, config in graphs.items()}
    chain = run_pose_graph(next(iter(graphs.values())), nominal, stamps_1, odometry_2, stamps_2, edges, "chain")
    # For comparison, every published closure place-level: the localize node with geometry.enabled false and
    # geometry.publish_unverified true (this bench's figure before verification existed).
    unverified_edges = [(i, row, ref_stamp, np.eye(4), place_covariance(sigma)) for i, row, ref_stamp in closures]
    _, geometry_off, geometry_off_anchored_at, _, _ = run_pose_graph(
        next(iter(graphs.values())), nominal, stamps_1, odometry_2, stamps_2, unverified_edges, "map")
    all_span = slice(closures[0][0], closures[-1][0] + 1) if closures else slice(0, 0)
    graph, session_2, anchored_at, node_ms, closure_ms = next(iter(runs.values()))
    correct = [int(row in set(positives.positives[i].tolist())) for i, row, _ in closures]
    statuses = [check.status for check in checks]
    drift_only = nominal[0] @ np.linalg.inv(odometry_2[0]) @ odometry_2
    # Between the first and the last closure the graph uses: where the closures can correct (beyond it the drift
    # extrapolates).
    span = slice(edges[0][0], edges[-1][0] + 1) if edges else slice(0, 0)
    result = {
        "places": len(queries), "held_out_places": [split.held_out.start, split.held_out.stop - 1],
        "pipeline": {"encoder": CNN.model.split("/")[-1], "sequence": asdict(sequence),
                     "loop_closure_gate": asdict(LoopClosureConfig())},
        "closure_sigma": sigma,
        "camera": {"model": "nominal pinhole (no calibration ships with the data set)",
                   "hfov_deg": CAMERA_HFOV_DEG[name], "fx": camera.fx, "fy": camera.fy, "cx": camera.cx,
                   "cy": camera.cy, "width": camera.width, "height": camera.height,
                   "distortion": "none assumed" + (" (the corridor's fisheye distortion is ignored)"
                                                   if name == "corridor" else "")},
        "loop_closures": {"published": len(closures), "correct": int(sum(correct)),
                          "possible": int(positives.has_positive.sum()),
                          "precision": float(np.mean(correct)) if closures else float("nan"),
                          "verified": statuses.count("verified"),
                          "used_by_pose_graph": graph.closures_added},
        "verification": verification_summary(checks, correct, verify_ms),
        "pose_graph_edges": {"full_relative_pose": statuses.count("verified"),
                             "place_level_position": statuses.count("impossible"),
                             "dropped": statuses.count("failed")},
        "session_2_anchored_at_query": anchored_at,
        "closure_span_queries": [span.start, span.stop - 1] if edges else None,
        "ate_rmse_within_closure_span": {
            "odometry_from_true_start": ate_rmse(drift_only[span, :3, 3], truth[span]) if edges else None,
            "pose_graph": ate_rmse(session_2.positions[span], truth[span])
            if edges and session_2.anchored else None},
        "ate_rmse": {"odometry_own_frame": ate_rmse(odometry_2[:, :3, 3], truth),
                     "odometry_from_true_start": ate_rmse(drift_only[:, :3, 3], truth),
                     "pose_graph": ate_rmse(session_2.positions, truth) if session_2.anchored else None,
                     **{f"pose_graph_{label}": ate_rmse(run[1].positions, truth) if run[1].anchored else None
                        for label, run in list(runs.items())[1:]},
                     "pose_graph_session_1_as_odometry_chain": ate_rmse(chain[1].positions, truth)
                     if chain[1].anchored else None},
        "pose_graph_geometry_off": {
            "closures": "every published closure as a place-level position measurement (geometry.enabled false, "
                        "geometry.publish_unverified true)",
            "session_2_anchored_at_query": geometry_off_anchored_at,
            "closure_span_queries": [all_span.start, all_span.stop - 1] if closures else None,
            "ate_rmse": ate_rmse(geometry_off.positions, truth) if geometry_off.anchored else None,
            "ate_rmse_within_closure_span": ate_rmse(geometry_off.positions[all_span], truth[all_span])
            if closures and geometry_off.anchored else None},
        "pose_graph_ms": {"per_odometry_node_p50": float(np.median(node_ms)),
                          "per_loop_closure_p50": float(np.median(closure_ms)) if closure_ms else None},
    }
    if len(session_2.stamps) != len(truth):
        raise RuntimeError(f"{name}: expected one node per frame, got {len(session_2.stamps)} for {len(truth)}")
    plot(name, truth, odometry_2, session_2.positions if session_2.anchored else None,
         geometry_off.positions if geometry_off.anchored else None,
         [(i, row, status) for (i, row, _), status in zip(closures, statuses, strict=True)], result)
    return result


def verify_closures(closures: list[tuple[int, int, float]], images: list[np.ndarray], sources: list[str],
                    camera: CameraIntrinsics) -> tuple[list[ClosureCheck], list[float]]:
    """Each published closure through ``check_closure`` (query image vs the keyframe's image, one camera for
    both sessions), as the localize node verifies a closure against a ``build_map`` map; the time of each
    ``check_closure`` call (ms)."""
    checks: list[ClosureCheck] = []
    milliseconds: list[float] = []
    for i, row, _ in closures:
        keyframe = load_frame_source(sources[row])
        t0 = time.perf_counter()
        checks.append(check_closure(images[i], keyframe, camera, camera, GEOMETRY))
        milliseconds.append((time.perf_counter() - t0) * 1e3)
    return checks, milliseconds


def closure_edge(check: ClosureCheck, sigma: float) -> tuple[np.ndarray, np.ndarray] | None:
    """What the pose graph gets for a checked closure: (T_query_keyframe of the two bodies, (6, 6) ROS-order
    covariance), or None for a failed closure (dropped). See the module docstring."""
    if check.status == "failed":
        return None
    if check.status == "impossible":
        return np.eye(4), place_covariance(sigma)
    verification = check.verification
    assert verification is not None
    optical = pose_matrix(verification.translation, verification.quaternion_xyzw)
    return verified_closure_edge(optical, verification.covariance, bool(verification.metric), sigma, OPTICAL_IN_BODY)


def verification_summary(checks: list[ClosureCheck], correct: list[int], milliseconds: list[float]
                         ) -> dict[str, Any]:
    """Counts, share, refusal reasons (numbers stripped), ground-truth correctness per verdict, rotation angle of
    the verified closures (body frame; nominal: 0) and the time per candidate."""
    statuses = np.array([check.status for check in checks])
    is_correct = np.array(correct, dtype=bool)
    verified = [check.verification for check in checks if check.status == "verified" and check.verification]
    # The body rotation's angle (the same as the optical one's: a change of frame keeps the angle).
    angles = np.degrees([Rotation.from_matrix(v.rotation).magnitude() for v in verified])
    reasons = Counter(re.split(r"[:\d(]", check.reason)[0].strip() for check in checks if check.status != "verified")
    models = Counter(v.model for v in verified)
    # Descriptor matches of the pairs that got as far as matching (not refused for their size).
    matched = [check.verification.matches for check in checks
               if check.verification is not None and not check.reason.startswith("image too small")]
    published = len(checks)
    return {
        "geometry_config": "ClosureGeometryConfig() (shipped defaults)",
        "candidates": published,
        "verified": int((statuses == "verified").sum()),
        "failed": int((statuses == "failed").sum()),
        "impossible": int((statuses == "impossible").sum()),
        "verified_share": float((statuses == "verified").mean()) if published else None,
        "reasons_not_verified": dict(reasons.most_common()),
        "verified_models": dict(models.most_common()),
        "correct_among": {status: int(is_correct[statuses == status].sum()) if published else 0
                          for status in ("verified", "failed", "impossible")},
        "verified_metric": int(sum(v.metric for v in verified)),
        "descriptor_matches_p50": float(np.median(matched)) if matched else None,
        "verified_rotation_angle_deg": {"median": float(np.median(angles)), "p90": float(np.percentile(angles, 90)),
                                        "max": float(np.max(angles))} if len(angles) else None,
        "ms_per_candidate": {"p50": float(np.median(milliseconds)) if milliseconds else None,
                             "p90": float(np.percentile(milliseconds, 90)) if milliseconds else None},
    }


def run_pose_graph(config: PoseGraphConfig, nominal: np.ndarray, stamps_1: np.ndarray, odometry_2: np.ndarray,
                   stamps_2: np.ndarray, edges: list[tuple[int, int, float, np.ndarray, np.ndarray]], session_1: str
                   ) -> tuple[PoseGraph, Trajectory, int | None, list[float], list[float]]:
    """Session 2's odometry with its closures in stamp order, as a live pose-graph node would see them, against
    session 1 as ``"map"``: the map's keyframes with their stored poses (a prior each: KEYFRAME_COVARIANCE, what
    the pose-graph node does with a prior map), or ``"chain"``: session 1's odometry as a chain of its own in
    the same graph, with the same odometry noise model and a prior on its first pose only."""
    graph = PoseGraph(config)
    graph.start_session(1, anchor="closures")
    if session_1 == "chain":
        graph.start_session(0, anchor="first_pose")
        for stamp, pose in zip(stamps_1, nominal, strict=True):
            graph.add_odometry(0, float(stamp), pose)
    by_query = {i: (row, ref_stamp, relative, covariance) for i, row, ref_stamp, relative, covariance in edges}
    node_ms: list[float] = []
    closure_ms: list[float] = []
    anchored_at: int | None = None
    for i, pose in enumerate(odometry_2):
        t0 = time.perf_counter()
        graph.add_odometry(1, float(stamps_2[i]), pose)
        node_ms.append((time.perf_counter() - t0) * 1e3)
        if i not in by_query:
            continue
        row, ref_stamp, relative, covariance = by_query[i]
        t0 = time.perf_counter()
        if session_1 == "chain":
            keyframe = graph.node_at(0, ref_stamp)
            assert keyframe is not None
            key, offset = keyframe[0], keyframe[1].matrix()
        else:
            key, offset = graph.add_keyframe(row, nominal[row], KEYFRAME_COVARIANCE), np.eye(4)
        graph.add_loop_closure(1, float(stamps_2[i]), key, relative, covariance, offset)
        closure_ms.append((time.perf_counter() - t0) * 1e3)
        if anchored_at is None and graph.trajectory(1).anchored:
            anchored_at = i
    return graph, graph.trajectory(1), anchored_at, node_ms, closure_ms


def plot(name: str, truth: np.ndarray, odometry: np.ndarray, corrected: np.ndarray | None,
         geometry_off: np.ndarray | None, closures: list[tuple[int, int, str]], result: dict[str, Any]) -> Path:
    fig, ax = plt.subplots(figsize=(9, 6))
    ax.plot(truth[:, 0], truth[:, 1], "k-", lw=3, alpha=0.4, label="session 1 (map) = session 2 nominal")
    ax.plot(odometry[:, 0, 3], odometry[:, 1, 3], "r-", lw=1,
            label=f"session 2 odometry, own frame (ATE {result['ate_rmse']['odometry_own_frame']:.1f})")
    if corrected is not None:
        ax.plot(corrected[:, 0], corrected[:, 1], "b-", lw=1.5,
                label=f"session 2 pose graph (ATE {result['ate_rmse']['pose_graph']:.2f})")
    else:
        ax.plot([], [], "b-", label="session 2 pose graph: not anchored (too few closures reached the graph)")
    if geometry_off is not None:
        ax.plot(geometry_off[:, 0], geometry_off[:, 1], "c--", lw=1,
                label=f"session 2 pose graph, geometry off: all closures place-level "
                      f"(ATE {result['pose_graph_geometry_off']['ate_rmse']:.2f})")
    # Closure lines by verdict, from the estimate drawn: verified (full edge) green, impossible (place-level)
    # grey, failed (dropped) red dotted.
    drawn = corrected if corrected is not None else geometry_off
    styles = {"verified": ("g-", 0.8), "impossible": ("-", 0.5), "failed": ("r:", 0.8)}
    for i, row, status in closures if drawn is not None else []:
        style, lw = styles[status]
        ax.plot([drawn[i, 0], truth[row, 0]], [drawn[i, 1], truth[row, 1]], style, lw=lw, alpha=0.6,
                **({"color": "0.5"} if status == "impossible" else {}))
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("x (places)")
    ax.set_ylabel("y (places)")
    lc = result["loop_closures"]
    v = result["verification"]
    ax.set_title(f"{name}: {lc['published']} loop closures ({lc['correct']} correct, {lc['possible']} possible); "
                 f"verified {v['verified']}, failed {v['failed']}, impossible {v['impossible']}", fontsize=10)
    ax.legend(loc="best", fontsize=8)
    path = RESULTS / f"two_sessions_{name}.png"
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def main() -> None:
    report: dict[str, Any] = {
        "description": "two sessions of one robot: session 2 placed in session 1's frame by the pose graph from "
                       "loop closures alone (held-out segments of bench/splits.py)",
        "drift": DRIFT.describe(),
        "odometry_from_map": {"yaw_deg": ODOMETRY_FROM_MAP_YAW_DEG, "xy": list(ODOMETRY_FROM_MAP_XY)},
        "pose_graph": asdict(GRAPH),
        "closures": "each gated closure verified by check_closure (ClosureGeometryConfig() defaults, query image vs "
                    "the keyframe's image, nominal pinhole intrinsics per route: see camera); verified -> full "
                    "relative-pose edge (camera_to_body with OPTICAL_IN_BODY; verified rotation and its covariance, "
                    "translation: metric as measured, else zero within sigma since a two-view direction has no "
                    "scale); failed -> dropped (as the localize node does); impossible -> place-level position "
                    "measurement (sigma = the ground truth's place tolerance, rotation unknown), as the localize node "
                    "publishes them with geometry.publish_unverified true (its default, false, drops them)",
        "ate": "RMS position error of session 2's nodes (one per frame) vs its nominal poses, map units (places), "
               "no alignment",
        "routes": {}}
    with tempfile.TemporaryDirectory(prefix="vpr_bench_two_sessions_") as tmp:
        for name, (split, sequence) in ROUTES.items():
            report["routes"][name] = run_route(name, split, sequence, Path(tmp))
    write_result("two_sessions", report)
    for name, r in report["routes"].items():
        lc, ate = r["loop_closures"], r["ate_rmse"]
        v = r["verification"]
        print(f"{name}: closures {lc['published']} ({lc['correct']} correct of {lc['possible']} possible), "
              f"verified {v['verified']} failed {v['failed']} impossible {v['impossible']} "
              f"({v['ms_per_candidate']['p50']} ms p50), ATE odometry own frame {ate['odometry_own_frame']:.2f}, "
              f"from true start {ate['odometry_from_true_start']:.2f}, pose graph {ate['pose_graph']}")


if __name__ == "__main__":
    main()
