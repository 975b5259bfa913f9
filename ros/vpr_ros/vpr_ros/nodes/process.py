"""``main()`` of a vpr_ros node executable: init rclpy, build the node, spin, and exit the way ROS users expect."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node

from vpr_ros.config import ConfigError


def run_node(name: str, make_node: Callable[[Sequence[str]], Node], args: Sequence[str] | None = None) -> None:
    """Run the node ``make_node(args)`` builds until SIGINT / shutdown.

    Invalid ROS arguments (rcl refuses them) and invalid parameters (:class:`ConfigError` from the node's typed
    config) end the process with one line on stderr naming ``name`` and exit code 2; Ctrl-C ends it quietly.
    The node's ``shutdown()`` (if it has one) runs before it is destroyed, then the context is shut down.
    """
    args = list(sys.argv if args is None else args)
    try:
        rclpy.init(args=args)
    except RuntimeError as exc:  # rcl refuses the --ros-args (e.g. "-p name" without ":=value", a missing params file)
        reason = str(exc).split(". Error:")[0].split(", at /")[0]
        print(f"{name}: invalid ROS arguments: {reason}", file=sys.stderr)
        sys.exit(2)
    node = None
    try:
        node = make_node(args)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except ConfigError as exc:
        print(f"{name}: invalid parameters: {exc}", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            getattr(node, "shutdown", lambda: None)()
            node.destroy_node()
        rclpy.try_shutdown()
