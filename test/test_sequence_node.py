"""Real rclpy graph: winter Nordland frames + odometry in, loop closures against a summer map out.

The map holds the first 1000 summer frames of Nordland part 1 (thumbnail encoder, nominal poses x = frame
index, stamps 0..999 s). A winter stretch inside the mapped part must close loops with the right summer
frames (within +-1 frame); after ``~/reset``, a winter stretch beyond the map must close none.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from nav_msgs.msg import Odometry

from vpr_ros.core.encoders import EncoderConfig, make_encoder
from vpr_ros.core.image import load_rgb
from vpr_ros.core.map_builder import BuildMapConfig, build_map
from vpr_ros.io.images import folder_source
from vpr_ros.nodes.messages import stamp_to_msg
from vpr_ros.nodes.replay import rgb_to_image_msg

pytestmark = pytest.mark.ros

THUMBNAIL = "thumbnail:64x32,patch=8"
MAPPED = 1000
IN_MAP = range(800, 870)       # winter frames whose places the map holds
OUT_OF_MAP = range(1300, 1370)  # winter frames of a stretch the map does not cover


@pytest.fixture(scope="module")
def nordland_half_map(tmp_path_factory: pytest.TempPathFactory, repo: Path) -> Path:
    summer = repo / "data" / "nordland_part1" / "summer"
    names = sorted(p.name for p in summer.glob("*.png"))[:MAPPED]
    poses = tmp_path_factory.mktemp("poses") / "summer_poses.csv"
    poses.write_text("name,x,y,yaw,stamp\n" + "".join(f"{n},{i}.0,0.0,0.0,{i}.0\n" for i, n in enumerate(names)))
    out = tmp_path_factory.mktemp("maps") / "nordland_thumb"
    config = BuildMapConfig(encoder=EncoderConfig(model=THUMBNAIL))
    build_map(folder_source(summer, poses), out, config, progress=False, encoder=make_encoder(config.encoder))
    return out


def odometry(stamp: float, x: float) -> Odometry:
    msg = Odometry()
    msg.header.stamp = stamp_to_msg(stamp)
    msg.header.frame_id = "odom"
    msg.pose.pose.position.x = x
    msg.pose.pose.orientation.w = 1.0
    return msg


def test_winter_sequence_closes_loops_with_the_right_summer_frames(start_localize, nordland_half_map, repo):
    seq = start_localize(nordland_half_map, "/seq", model=THUMBNAIL, **{
        "localizer.sequence.method": "seqslam", "localizer.sequence.length": 10,
        "localizer.sequence.min_distance_spacing": 1.0, "loop_closure.score": "score",
        "loop_closure.min_score": 0.18, "loop_closure.min_consecutive": 3, "loop_closure.exclusion_window": 30.0,
        # 64x32 frames cannot be verified geometrically: publish the gated closures, flagged verified false.
        "geometry.publish_unverified": True})
    node, client = seq.node, seq.client
    odom_pub = client.create_publisher(Odometry, "/seq/odom", 50)
    deadline = time.monotonic() + 10
    while odom_pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.02)  # the node must see the odometry publisher before the first message, or loses it
    assert odom_pub.get_subscription_count() > 0, "the node never subscribed to /seq/odom"
    winter = repo / "data" / "nordland_part1" / "winter"
    images = sorted(winter.glob("*.png"))
    clock = {"stamp": 50_000.0, "travelled": 0.0}

    def drive(index: int, moved: float = 1.0) -> float:
        """Odometry for the frame first (1 m per place, 0 when standing), then the frame itself."""
        clock["stamp"] += 0.5
        clock["travelled"] += moved
        stamp = clock["stamp"]
        odom_pub.publish(odometry(stamp, clock["travelled"]))
        deadline = time.monotonic() + 10
        while (node.odometry.latest_stamp or 0.0) < stamp and time.monotonic() < deadline:
            time.sleep(0.005)
        answer = client.send_and_wait(rgb_to_image_msg(load_rgb(images[index]), stamp), timeout=30)
        assert answer is not None, f"no answer for winter frame {index}"
        return stamp

    stamps_in = {}
    for i in IN_MAP:
        stamps_in[drive(i)] = i
        if i == 830:  # the train waits at a station: frames keep coming, the place does not change
            buffered = len(node.localizer.sequence.buffer)
            for _ in range(4):
                stamps_in[drive(i, moved=0.0)] = i
            assert len(node.localizer.sequence.buffer) == buffered, "a standing robot must not fill the buffer"

    def settled_closures() -> list:
        deadline = time.monotonic() + 10
        while len(client.loop_closures) < node.loop_closures and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(client.loop_closures)

    closures = settled_closures()
    assert len(closures) >= 20, f"only {len(closures)} loop closures over {len(IN_MAP)} mapped winter frames"
    for c in closures:
        query = stamps_in[c.stamp]
        assert abs(c.ref_id - query) <= 1, f"winter frame {query} closed a loop with summer frame {c.ref_id}"
        assert c.position[0] == float(c.ref_id) and c.ref_stamp == float(c.ref_id) and c.score >= 0.18

    response = client.trigger("reset", timeout=10)
    assert response is not None and response.success and len(node.localizer.sequence.buffer) == 0

    stamps_out = {drive(i) for i in OUT_OF_MAP}
    after = settled_closures()
    assert not [c for c in after if c.stamp in stamps_out], "loop closures for places the map does not hold"
    d = client.wait_for_diagnostic(lambda d: int(d["frames_processed"]) >= len(stamps_in) + len(stamps_out))
    assert d is not None, client.latest_diagnostic()
    assert d["sequence_method"] == "seqslam" and d["odometry"] == "yes" and int(d["loop_closures"]) == len(after)
    assert int(d["errors_total"]) == 0
