"""The localize node in online mode: it grows its keyframe map from the camera, closes loops against the robot's
own earlier keyframes (never the recent ones), and saves the map in the build_map format (~/save_map)."""

from __future__ import annotations

import numpy as np
import pytest
from vpr_ros_interfaces.srv import SaveMap

from vpr_ros.core.image import load_rgb
from vpr_ros.core.refmap import ReferenceMap
from vpr_ros.nodes.harness import call_service
from vpr_ros.nodes.replay import rgb_to_image_msg

pytestmark = pytest.mark.ros

WINDOW = 30.0


def test_online_map_grows_closes_loops_outside_the_window_and_saves(start_localize, corridor_map, corridor,
                                                                      corridor_ground_truth, tmp_path):
    endpoint = start_localize("", "/online", **{
        "map_mode": "online", "online_map.vocabulary_from": str(corridor_map), "online_map.min_time": 0.5,
        "online_map.min_distance": 0.0, "loop_closure.exclusion_window": WINDOW,
        "loop_closure.min_consecutive": 2, "localizer.rerank.method": "none",
        "geometry.publish_unverified": True})  # no camera_info here: closures go out unverified
    client = endpoint.client
    refs = sorted((corridor / "ref").glob("*.jpg"))[::2]
    queries = sorted((corridor / "query").glob("*.jpg"))[::2]
    # First lap: the reference images, one per second from 1 s; the second lap 1000 s later: the query images.
    for i, path in enumerate(refs):
        assert client.send_and_wait(rgb_to_image_msg(load_rgb(path), 1.0 + i), timeout=30) is not None
    answers = []
    for i, path in enumerate(queries):
        stamp = 1000.0 + i
        answer = client.send_and_wait(rgb_to_image_msg(load_rgb(path), stamp), timeout=30)
        assert answer is not None
        answers.append((int(path.stem), stamp, answer))
    d = client.wait_for_diagnostic(lambda d: int(d["frames_processed"]) == len(refs) + len(queries))
    assert d is not None and d["map_mode"] == "online"
    assert int(d["keyframes"]) == len(refs) + len(queries)  # 1 s apart > min_time: every frame is a keyframe

    # Never a keyframe of the last WINDOW seconds: the robot's own recent frames are not loops.
    for _, stamp, answer in answers:
        assert len(answer.ref_ids), f"no candidate at {stamp}"
        ref_stamps = answer.ref_stamps
        assert np.all(np.abs(ref_stamps - stamp) >= WINDOW), (stamp, ref_stamps)
    # The second lap finds the first: the keyframe at stamp s of the first lap is reference image 2 (s - 1); the
    # second lap's own keyframes older than the window are candidates too (the robot was there), so count the
    # answers that went to the first lap.
    first_lap = [(qi, answer) for qi, _, answer in answers if answer.ref_stamps[0] < 1000.0]
    correct = sum(int(2 * (round(answer.ref_stamps[0]) - 1) in corridor_ground_truth[qi]) for qi, answer in first_lap)
    assert len(first_lap) >= 0.7 * len(answers) and correct >= 0.8 * len(first_lap), (
        f"{len(first_lap)}/{len(answers)} answers in the first lap, {correct} of them right")
    closures = client.loop_closures
    assert closures and all(c.stamp >= 1000.0 and c.ref_stamp < 1000.0 for c in closures)
    assert not any(c.msg.verified for c in closures)
    assert int(client.latest_diagnostic()["closures_impossible"]) == len(closures)

    saved = tmp_path / "grown_map"
    response = call_service(client, SaveMap, "/online/localize/save_map", SaveMap.Request(path=str(saved)))
    assert response is not None and response.success, response
    assert response.keyframes == len(refs) + len(queries)
    grown = ReferenceMap.load(saved)
    assert len(grown) == len(refs) + len(queries)
    np.testing.assert_array_equal(grown.frames.stamps[:len(refs)], np.arange(1, len(refs) + 1, dtype=float))
    again = call_service(client, SaveMap, "/online/localize/save_map", SaveMap.Request(path=str(saved)))
    assert not again.success and "exists" in again.message  # never replaced without overwrite
    assert call_service(client, SaveMap, "/online/localize/save_map",
                        SaveMap.Request(path=str(saved), overwrite=True)).success


def test_save_map_is_refused_in_fixed_mode(start_localize, corridor_map, tmp_path):
    endpoint = start_localize(corridor_map, "/fixed_save")
    response = call_service(endpoint.client, SaveMap, "/fixed_save/localize/save_map",
                            SaveMap.Request(path=str(tmp_path / "m")))
    assert response is not None and not response.success and "not in online mode" in response.message
    assert not (tmp_path / "m").exists()
