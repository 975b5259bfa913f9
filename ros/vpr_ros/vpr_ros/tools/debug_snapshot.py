"""Save one ``~/debug_image`` of a running localize node as a PNG: what RViz's Image display would show.

Starts the real ``localize`` node as its own process (as ``ros2 run`` does) on ``--map``, subscribes to
``<namespace>/localize/debug_image``, publishes ``--query`` on the node's image topic until a debug image comes
back, and writes it to ``--out``. The README's picture of the debug image is made this way::

    python -m vpr_ros.tools.debug_snapshot --map maps/corridor_speed --query data/corridor/query/0000063.jpg \\
        --out docs/debug_image.png
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
from sensor_msgs.msg import Image

from vpr_ros.core.files import atomic_write_bytes
from vpr_ros.core.image import load_rgb
from vpr_ros.nodes.harness import LocalizeLaunch, NodeStartError, run_localize
from vpr_ros.nodes.replay import LocalizeClient, rgb_to_image_msg


def capture_debug_image(client: LocalizeClient, node_namespace: str, rgb: np.ndarray,
                        timeout: float = 60.0) -> np.ndarray | None:
    """Publish ``rgb`` through ``client`` until the node's ``~/debug_image`` answers it; the image, or None.

    The node renders the debug image only while someone subscribes, so the subscription must be matched
    before the frame arrives: frames are re-sent (with new stamps) until an image comes back.
    """
    received: list[Image] = []
    arrived = threading.Event()

    def on_image(msg: Image) -> None:
        received.append(msg)
        arrived.set()

    subscription = client.create_subscription(Image, f"{node_namespace}/debug_image", on_image, 2)
    try:
        deadline = time.monotonic() + timeout
        stamp = 1.0
        while not arrived.is_set() and time.monotonic() < deadline:
            client.send_and_wait(rgb_to_image_msg(rgb, stamp), timeout=10.0)
            arrived.wait(1.0)
            stamp += 1.0
    finally:
        client.destroy_subscription(subscription)
    if not received:
        return None
    msg = received[-1]
    return np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, 3).copy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--map", type=Path, required=True, help="map directory (with a patch store, to see matches)")
    parser.add_argument("--query", type=Path, required=True, help="query image file")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--params-file", type=Path, default=None, help="node parameters (default: the node's own)")
    args = parser.parse_args(argv)
    launch = LocalizeLaunch({"map_path": str(args.map)}, namespace="/snapshot", params_file=args.params_file,
                            own_process=True, log_path=args.out.with_suffix(".node.log"))
    try:
        with run_localize(launch, ready_timeout=120) as localize:
            canvas = capture_debug_image(localize.client, "/snapshot/localize", load_rgb(args.query))
    except NodeStartError as exc:
        print(f"debug_snapshot: {exc}", file=sys.stderr)
        return 1
    if canvas is None:
        print("debug_snapshot: no image on /snapshot/localize/debug_image within 60 s", file=sys.stderr)
        return 1
    encoded, png = cv2.imencode(".png", cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    if not encoded:
        print(f"debug_snapshot: could not encode a {canvas.shape} image as PNG", file=sys.stderr)
        return 1
    atomic_write_bytes(args.out, png.tobytes())
    print(f"wrote {args.out} ({canvas.shape[1]}x{canvas.shape[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
