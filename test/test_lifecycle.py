"""The localize node's lifecycle, driven through its real lifecycle services (``~/change_state``, ``~/get_state``)
from a client node on a real rclpy graph, with the corridor map and corridor query images."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from vpr_ros.core.image import load_rgb
from vpr_ros.nodes.harness import change_lifecycle_state, get_lifecycle_state
from vpr_ros.nodes.replay import LocalizeClient, rgb_to_image_msg

pytestmark = pytest.mark.ros

NODE = "/lc/localize"


def diagnostic_when(client: LocalizeClient, **expected: str) -> dict[str, str]:
    """The node's next /diagnostics values that have every ``key=value`` of ``expected``."""
    d = client.wait_for_diagnostic(lambda d: all(d.get(k) == v for k, v in expected.items()))
    assert d is not None, (expected, client.latest_diagnostic())
    return d


def test_lifecycle_transitions(start_localize, corridor_map, corridor, tmp_path):
    map_copy = tmp_path / "corridor_map"
    shutil.copytree(corridor_map, map_copy)
    endpoint = start_localize(map_copy, "/lc", require_map=False, autostart=False)
    client, node = endpoint.client, endpoint.node
    query = load_rgb(corridor / "query" / "0000030.jpg")

    # autostart false: unconfigured, waiting for a lifecycle manager; no map, no subscription.
    assert get_lifecycle_state(client, NODE) == "unconfigured"
    d = diagnostic_when(client, lifecycle_state="unconfigured")
    assert d["level"] == "0" and d["map_loads"] == "0" and "waiting for configure" in d["message"]
    assert node.localizer is None and client.image_pub.get_subscription_count() == 0

    # configure on a damaged map: FAILURE, still unconfigured, the reason on /diagnostics (ERROR).
    frames = map_copy / "frames.npz"
    intact = frames.read_bytes()
    frames.write_bytes(intact.replace(b"0", b"1", 1))
    assert not change_lifecycle_state(client, NODE, "configure")
    assert get_lifecycle_state(client, NODE) == "unconfigured"
    d = diagnostic_when(client, level="2")
    assert "no map loaded" in d["message"] and "frames.npz: sha256 mismatch" in d["message"], d
    assert d["lifecycle_state"] == "unconfigured" and d["map_loads"] == "0"

    # configure on the repaired map: inactive, map loaded once; images are not answered.
    frames.write_bytes(intact)
    assert change_lifecycle_state(client, NODE, "configure")
    assert get_lifecycle_state(client, NODE) == "inactive"
    d = diagnostic_when(client, lifecycle_state="inactive")
    assert d["level"] == "0" and d["map_loads"] == "1" and d["map_error"] == "", d
    assert node.localizer is not None and client.image_pub.get_subscription_count() == 0
    unanswered = client.publish(rgb_to_image_msg(query, 1.0))

    # activate: answered.
    assert change_lifecycle_state(client, NODE, "activate")
    assert get_lifecycle_state(client, NODE) == "active"
    assert client.wait_until_ready(30)
    answer = client.send_and_wait(rgb_to_image_msg(query, 2.0), timeout=30)
    assert answer is not None and abs(int(answer.ref_ids[0]) - 30) <= 2
    d = diagnostic_when(client, lifecycle_state="active", frames_processed="1")
    assert d["frames_received"] == "1" and d["message"] == "localizing"
    assert unanswered not in client.answers

    # deactivate: no subscription, nothing answered, the map stays loaded.
    assert change_lifecycle_state(client, NODE, "deactivate")
    assert get_lifecycle_state(client, NODE) == "inactive"
    assert node.localizer is not None and client.image_pub.get_subscription_count() == 0
    unanswered = client.publish(rgb_to_image_msg(query, 3.0))

    # activate again: answered without loading the map again.
    assert change_lifecycle_state(client, NODE, "activate")
    assert client.wait_until_ready(30)
    assert client.send_and_wait(rgb_to_image_msg(query, 4.0), timeout=30) is not None
    d = diagnostic_when(client, lifecycle_state="active", frames_processed="2")
    assert d["map_loads"] == "1" and d["frames_received"] == "2", d
    assert unanswered not in client.answers

    # ~/reload_map while configured loads it again.
    response = client.trigger("reload_map", timeout=60)
    assert response is not None and response.success, response
    diagnostic_when(client, map_loads="2")

    # deactivate + cleanup: the map is dropped; shutdown: finalized, the worker thread stops.
    assert change_lifecycle_state(client, NODE, "deactivate")
    assert change_lifecycle_state(client, NODE, "cleanup")
    assert get_lifecycle_state(client, NODE) == "unconfigured" and node.localizer is None
    d = diagnostic_when(client, lifecycle_state="unconfigured")
    assert d["level"] == "0", d
    refused = client.trigger("reload_map", timeout=30)
    assert refused is not None and not refused.success and "unconfigured" in refused.message
    assert change_lifecycle_state(client, NODE, "shutdown")
    assert get_lifecycle_state(client, NODE) == "finalized"
    assert not node._worker.is_alive()
    assert not change_lifecycle_state(client, NODE, "configure")  # finalized is final


def test_shutdown_from_active_stops_everything(start_localize, corridor_map, corridor):
    """With autostart (the default) the node is active at once; shutdown from active unsubscribes, drops the map
    and stops the worker."""
    endpoint = start_localize(corridor_map, "/lc_down")
    client, node = endpoint.client, endpoint.node
    assert get_lifecycle_state(client, "/lc_down/localize") == "active"
    assert client.send_and_wait(rgb_to_image_msg(load_rgb(corridor / "query" / "0000010.jpg"), 1.0), 30) is not None
    assert change_lifecycle_state(client, "/lc_down/localize", "shutdown")
    assert get_lifecycle_state(client, "/lc_down/localize") == "finalized"
    assert node.localizer is None and client.image_pub.get_subscription_count() == 0
    assert not node._worker.is_alive()
    diagnostic_when(client, lifecycle_state="finalized")


def install_prefix(root: Path, repo: Path) -> Path:
    """A minimal install prefix for vpr_ros (ament index entry, share/vpr_ros, lib/vpr_ros/localize) made of
    links into this checkout, as colcon would install it; the node is the console script beside python."""
    package = repo / "ros" / "vpr_ros"
    index = root / "share" / "ament_index" / "resource_index" / "packages"
    index.mkdir(parents=True)
    (index / "vpr_ros").write_text("")
    share = root / "share" / "vpr_ros"
    share.mkdir()
    for name in ("launch", "config"):  # copied: ros2 launch does not follow links when it looks for launch files
        shutil.copytree(package / name, share / name)
    (share / "models").symlink_to(package / "models")
    shutil.copy(package / "package.xml", share)
    lib = root / "lib" / "vpr_ros"
    lib.mkdir(parents=True)
    script = Path(sys.executable).with_name("localize")
    if script.exists():
        (lib / "localize").symlink_to(script)
    else:
        (lib / "localize").write_text(f"#!/bin/sh\nexec {sys.executable} -m vpr_ros.nodes.localize \"$@\"\n")
        (lib / "localize").chmod(0o755)
    return root


#: Runs a command with SIGINT at its default action. pytest started in the background by a shell (``nohup make
#: test &``) has SIGINT ignored; every child inherits that through exec, and ``ros2 launch`` keeps it, so the
#: SIGINT meant to end the launch would be lost (as test_ros2_launch.sourced does, with coreutils env).
WITH_SIGINT = ["env", "--default-signal=INT"]


def test_launch_file_autostart_false_leaves_the_node_to_a_lifecycle_manager(graph, repo, corridor_map, corridor,
                                                                             default_model, tmp_path):
    """``ros2 launch vpr_ros localize.launch.py autostart:=false``: the node comes up unconfigured; configure and
    activate through its lifecycle services bring it up; SIGINT ends the launch cleanly."""
    beside = Path(sys.executable).with_name("ros2")  # the ros2launch wheels in this environment, else a system ROS 2
    ros2 = str(beside) if beside.exists() else shutil.which("ros2")
    assert ros2 is not None, "no ros2 command: install the ros2launch wheels (../shared/ros_wheels) or ROS 2"
    prefix = install_prefix(tmp_path / "install", repo)
    env = {**os.environ, "AMENT_PREFIX_PATH": f"{prefix}:{os.environ.get('AMENT_PREFIX_PATH', '')}".rstrip(":"),
           "PYTHONPATH": f"{repo / 'ros' / 'vpr_ros'}:{os.environ.get('PYTHONPATH', '')}".rstrip(":"),
           "ROS_LOG_DIR": str(tmp_path / "ros_log")}
    log = tmp_path / "launch.log"
    client = graph.add(LocalizeClient(node_namespace="/localize", image_topic="/camera/image_raw",
                                      name="launch_client", context=graph.context))
    with open(log, "wb") as out:
        launch = subprocess.Popen(
            [*WITH_SIGINT, ros2, "launch", "vpr_ros", "localize.launch.py", f"map_path:={corridor_map}",
             f"model:={default_model}", "autostart:=false"], env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            assert get_lifecycle_state(client, "/localize", timeout=60) == "unconfigured", log.read_text()
            assert client.image_pub.get_subscription_count() == 0
            assert change_lifecycle_state(client, "/localize", "configure"), log.read_text()
            assert change_lifecycle_state(client, "/localize", "activate"), log.read_text()
            assert client.wait_until_ready(30), log.read_text()
            answer = client.send_and_wait(rgb_to_image_msg(load_rgb(corridor / "query" / "0000080.jpg"), 1.0), 30)
            assert answer is not None and abs(int(answer.ref_ids[0]) - 80) <= 2
        finally:
            launch.send_signal(signal.SIGINT)
            code = launch.wait(30)
    assert code == 0, log.read_text()
