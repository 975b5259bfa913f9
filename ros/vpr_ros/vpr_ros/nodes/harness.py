"""One harness to run the localize node from Python: its ROS context, the node, a client, a spin thread, clean stop.

``make demo``, the live bag player and the node tests all need the same thing: start the localize node (in
this process, or as its own process the way ``ros2 run vpr_ros localize`` starts it), start a
:class:`~vpr_ros.nodes.replay.LocalizeClient` that talks to it over real topics, spin both in a background
thread, wait until the node answers, and on the way out stop everything in an order that leaves no thread
spinning on a dead context. This module is that code, once.

* :class:`LocalizeLaunch` says how to start one node: its namespace, parameters, params file, and whether it
  runs in-process or as its own process.
* :class:`RosGraph` owns an rclpy context of its own (init on enter, shutdown on exit), an executor spinning
  in a background thread, and every node and process started through it.
* :func:`run_localize` is the common case: one node and its client, as a context manager.
* :class:`NodeProcess` is the node as its own process, also usable alone (e.g. to check how it exits).
* :func:`change_lifecycle_state`, :func:`get_lifecycle_state` and :func:`call_service` drive the node's
  lifecycle (``~/change_state``, ``~/get_state``) and services from a client node on the graph.

The node is a lifecycle node that configures and activates itself at start unless ``autostart`` is false;
:meth:`RosGraph.start_localize` returns once it answers images, or once it reports that it stays
unconfigured or inactive (``autostart:=false``, or a map it could not load).

Typical use (test/test_localize_node.py runs it on the corridor map)::

    launch = LocalizeLaunch({"map_path": "out/demo/corridor_map"}, namespace="/demo")
    with run_localize(launch) as localize:
        answer = localize.client.send_and_wait(rgb_to_image_msg(rgb, stamp=1.0))

Shutdown order (as in ros2/demos): stop the node processes (SIGINT, the node's own clean exit), shut the
executor down and join its thread, stop each in-process node's worker and destroy the nodes (newest first),
then shut the context down. The context is private to the graph, so graphs never share global rclpy state
and a failure in one test cannot leave the next with an initialised default context.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, TypeVar

import rclpy
import yaml
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.context import Context
from rclpy.executors import Executor, ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter

from vpr_ros.nodes.localize import LocalizeNode
from vpr_ros.nodes.replay import LocalizeClient, call_service

ParameterValue = bool | int | float | str | list[bool] | list[int] | list[float] | list[str]
NodeT = TypeVar("NodeT", bound=Node)


def change_lifecycle_state(node: Node, target: str, transition: str, timeout: float = 60.0) -> bool:
    """Ask lifecycle node ``target`` (fully qualified name) for ``transition`` (``configure``, ``activate``,
    ``deactivate``, ``cleanup``, ``shutdown``) through its ``~/change_state`` service; whether it succeeded.

    Raises:
        TimeoutError: the service did not answer within ``timeout`` s.
    """
    # By label, as `ros2 lifecycle set` does: "shutdown" resolves to the shutdown transition of the current state.
    request = ChangeState.Request(transition=Transition(label=transition))
    response = call_service(node, ChangeState, f"{target}/change_state", request, timeout)
    if response is None:
        raise TimeoutError(f"{target}/change_state did not answer {transition!r} within {timeout:.0f} s")
    return bool(response.success)  # type: ignore[attr-defined]


def get_lifecycle_state(node: Node, target: str, timeout: float = 30.0) -> str:
    """The primary state (``unconfigured``, ``inactive``, ``active``, ``finalized``) of lifecycle node ``target``.

    Raises:
        TimeoutError: its ``~/get_state`` service did not answer within ``timeout`` s.
    """
    response = call_service(node, GetState, f"{target}/get_state", GetState.Request(), timeout)
    if response is None:
        raise TimeoutError(f"{target}/get_state did not answer within {timeout:.0f} s")
    return str(response.current_state.label)  # type: ignore[attr-defined]


class NodeStartError(RuntimeError):
    """The localize node did not come up, or came up without its map."""


def ros_argument_value(value: ParameterValue) -> str:
    """``value`` as the text after ``-p name:=`` that the node parses back to the same typed value.

    Strings stay plain where YAML reads them back unchanged and are quoted otherwise (``"5"``, ``"true"``,
    ``""``), so a string parameter never turns into a number or a bool on the way.
    """
    if isinstance(value, str):
        try:
            plain = yaml.safe_load(value) == value
        except yaml.YAMLError:
            plain = False
        return value if plain else json.dumps(value)
    if isinstance(value, (bool, int, float)) or (
            isinstance(value, list) and all(isinstance(v, (bool, int, float, str)) for v in value)):
        return json.dumps(value)
    raise TypeError(f"a ROS parameter value is a bool, int, float, str or a list of those, not {value!r}")


def parse_parameter_assignments(items: Iterable[str]) -> dict[str, ParameterValue]:
    """``name:=value`` strings (as after ``ros2 run ... -p``) -> {name: value}, each value read as YAML."""
    parameters: dict[str, ParameterValue] = {}
    for item in items:
        name, sep, text = item.partition(":=")
        if not sep or not name.strip():
            raise ValueError(f"a parameter assignment is name:=value, got {item!r}")
        parameters[name.strip()] = yaml.safe_load(text)
    return parameters


@dataclass(frozen=True)
class LocalizeLaunch:
    """How to start one localize node, and where its client finds it.

    Args:
        parameters: node parameters by dotted name (``map_path``, ``localizer.encoder.model``, ...); they
            override ``params_file``. The image transport the client publishes on follows
            ``parameters["image_transport"]`` (raw when absent), so give it here, not only in the file.
        namespace: the node's namespace: it subscribes to ``<namespace>/image`` (or ``/image/compressed``)
            and publishes ``<namespace>/localize/...``. ``""`` is the root namespace.
        params_file: a ``--params-file`` YAML such as ``config/localize.yaml``.
        own_process: start the node as its own process (the console script, as ``ros2 run`` would) instead
            of in this process on the harness's executor.
        log_path: where the node process writes its stdout and stderr (own process only; discarded if None).
    """

    parameters: Mapping[str, ParameterValue] = field(default_factory=dict)
    namespace: str = ""
    params_file: Path | None = None
    own_process: bool = False
    log_path: Path | None = None

    def __post_init__(self) -> None:
        if self.namespace and not self.namespace.startswith("/"):
            raise ValueError(f"namespace must be absolute ('/name') or empty, got {self.namespace!r}")
        if self.log_path is not None and not self.own_process:
            raise ValueError("log_path is the node process's output: it needs own_process=True")

    @property
    def compressed(self) -> bool:
        """Whether the node subscribes to sensor_msgs/CompressedImage."""
        return self.parameters.get("image_transport") == "compressed"

    @property
    def image_topic(self) -> str:
        return f"{self.namespace}/image" + ("/compressed" if self.compressed else "")

    @property
    def node_name(self) -> str:
        """Fully qualified name of the node; its own topics and services live under it."""
        return f"{self.namespace}/localize"

    def ros_arguments(self) -> list[str]:
        """The ``--ros-args`` of the node process (without ``--ros-args`` itself)."""
        args = ["--params-file", str(self.params_file)] if self.params_file is not None else []
        if self.namespace:
            args += ["-r", f"__ns:={self.namespace}"]
        for name, value in self.parameters.items():
            args += ["-p", f"{name}:={ros_argument_value(value)}"]
        return args

    def create_node(self, context: Context) -> LocalizeNode:
        """The node in this process, in ``context`` (raises ConfigError on invalid parameters)."""
        cli_args = ["--ros-args", "--params-file", str(self.params_file)] if self.params_file is not None else None
        return LocalizeNode(namespace=self.namespace or None, context=context, cli_args=cli_args,
                            parameter_overrides=[Parameter(name, value=value)
                                                 for name, value in self.parameters.items()])


class NodeProcess:
    """The localize node as its own process, as ``ros2 run vpr_ros localize --ros-args ...`` would start it.

    Runs the ``localize`` console script beside this interpreter, or ``python -m vpr_ros.nodes.localize``
    where it is not installed. The process inherits the environment (``ROS_DOMAIN_ID``) with DDS discovery on
    loopback unless the caller chose otherwise.

    Typical use::

        with NodeProcess(["--params-file", "config/localize.yaml", "-p", "map_path:=m"]) as proc:
            code = proc.wait(60)
    """

    def __init__(self, ros_args: Sequence[str], executable: str | None = None, log_path: Path | None = None) -> None:
        exe = Path(executable) if executable else Path(sys.executable).with_name("localize")
        command = [str(exe)] if exe.exists() else [sys.executable, "-m", "vpr_ros.nodes.localize"]
        self.cmd = [*command, "--ros-args", *ros_args]
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def __enter__(self) -> NodeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> NodeProcess:
        env = dict(os.environ)
        env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop(), after the process exits
        self.proc = subprocess.Popen(self.cmd, env=env, stdout=self._log or subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        return self

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("the node process has not been started")
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit code once the process has exited; None before it started and while it runs."""
        return self.proc.poll() if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit on its own; its exit code (subprocess.TimeoutExpired if it does not)."""
        if self.proc is None:
            raise RuntimeError("the node process has not been started")
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGINT (the node's clean shutdown), then SIGKILL if it has not exited after ``timeout`` s; exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode


@dataclass
class LocalizeEndpoint:
    """One started localize node and the client that talks to it."""

    launch: LocalizeLaunch
    client: LocalizeClient
    node: LocalizeNode | None = None       # the node object, when it runs in this process
    process: NodeProcess | None = None     # the node process, when it runs as its own process

    def alive(self) -> bool:
        """False once the node process has exited (an in-process node is alive as long as its graph)."""
        return self.process.alive() if self.process is not None else True


class RosGraph:
    """An rclpy context of its own, and an executor spinning its nodes in a background thread.

    Use as a context manager: the context is initialised on enter; on exit, node processes are stopped,
    the executor is shut down and its thread joined, nodes are closed and destroyed newest first, and the
    context is shut down. An exception raised in a callback stops the spin thread; it is raised again on exit
    (as the cause of a RuntimeError) so that it cannot pass unnoticed.

    Args:
        threads: executor threads; 1 = a SingleThreadedExecutor (the lightest, enough for a client), more =
            a MultiThreadedExecutor (several in-process nodes whose services may block).
    """

    def __init__(self, threads: int = 1) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.threads = threads
        self.context = Context()
        self._executor: Executor | None = None
        self._thread: threading.Thread | None = None
        self._nodes: list[tuple[Node, Callable[[], None] | None]] = []
        self._processes: list[NodeProcess] = []
        self._spin_error: BaseException | None = None

    def __enter__(self) -> RosGraph:
        rclpy.init(context=self.context)
        self._executor = (SingleThreadedExecutor(context=self.context) if self.threads == 1
                          else MultiThreadedExecutor(num_threads=self.threads, context=self.context))
        self._thread = threading.Thread(target=self._spin, name="ros_graph_spin", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
        if exc is None and self._spin_error is not None:
            raise RuntimeError("a callback failed in the ROS executor thread") from self._spin_error

    def _spin(self) -> None:
        assert self._executor is not None
        try:
            self._executor.spin()
        except ExternalShutdownException:
            pass  # the context was shut down from outside: nothing more to spin
        except BaseException as exc:  # re-raised in __exit__, after the thread is joined
            self._spin_error = exc

    def add(self, node: NodeT, on_close: Callable[[], None] | None = None) -> NodeT:
        """Spin ``node`` (created with ``context=graph.context``); ``on_close`` runs before it is destroyed."""
        if self._executor is None:
            raise RuntimeError("enter the graph (with RosGraph() as graph) before adding nodes")
        if node.context is not self.context:
            raise ValueError(f"node {node.get_name()} was created in another context: pass context=graph.context")
        self._nodes.append((node, on_close))
        self._executor.add_node(node)
        return node

    def start_localize(self, launch: LocalizeLaunch, *, client_name: str = "vpr_localize_client",
                       ready_timeout: float = 60.0, require_map: bool = True) -> LocalizeEndpoint:
        """Start the node ``launch`` describes and a client for it; return once the node answers.

        Ready means: the node has published /diagnostics, and it subscribes to the client's image topic (it is
        active) or it reports a lifecycle state other than active (it stays unconfigured or inactive: no
        ``autostart``, or a map it could not load).

        Raises:
            NodeStartError: not ready within ``ready_timeout`` s, its process exited, or (``require_map``)
                it reported that it has no map.
            ConfigError: invalid parameters of an in-process node.
        """
        client = self.add(LocalizeClient(node_namespace=launch.node_name, image_topic=launch.image_topic,
                                         compressed=launch.compressed, name=client_name, context=self.context))
        endpoint = LocalizeEndpoint(launch, client)
        if launch.own_process:
            endpoint.process = NodeProcess(launch.ros_arguments(), log_path=launch.log_path)
            self._processes.append(endpoint.process)
            endpoint.process.start()
        else:
            node = launch.create_node(self.context)
            endpoint.node = self.add(node, on_close=node.shutdown)
        see_log = f"; see {launch.log_path}" if launch.log_path is not None else ""
        deadline = time.monotonic() + ready_timeout
        while not (client.ready() or client.latest_diagnostic().get("lifecycle_state", "active") != "active"):
            if endpoint.process is not None and not endpoint.process.alive():
                raise NodeStartError(f"the localize node {launch.node_name} exited with code "
                                     f"{endpoint.process.returncode}{see_log}")
            if time.monotonic() > deadline:
                raise NodeStartError(f"the localize node {launch.node_name} did not come up within "
                                     f"{ready_timeout:.0f} s{see_log}")
            time.sleep(0.05)
        message = client.latest_diagnostic().get("message", "")
        if require_map and message.startswith("no map"):
            raise NodeStartError(f"the localize node {launch.node_name} could not load the map: {message}")
        return endpoint

    def close(self) -> None:
        """Stop everything in order (see the class docstring); safe to call twice."""
        for process in reversed(self._processes):
            process.stop()
        self._processes.clear()
        if self._executor is not None:
            self._executor.shutdown()
            if self._thread is not None:
                self._thread.join(timeout=10.0)  # spin must have returned before the context goes
            self._executor = None
        try:
            while self._nodes:
                node, on_close = self._nodes.pop()
                try:
                    if on_close is not None:
                        on_close()
                finally:
                    node.destroy_node()
        finally:
            rclpy.try_shutdown(context=self.context)


@contextmanager
def run_localize(launch: LocalizeLaunch, *, threads: int = 1, client_name: str = "vpr_localize_client",
                 ready_timeout: float = 60.0, require_map: bool = True) -> Iterator[LocalizeEndpoint]:
    """One localize node and its client on a graph of their own; everything stops when the block ends.

    The arguments are those of :class:`RosGraph` and :meth:`RosGraph.start_localize`.
    """
    with RosGraph(threads) as graph:
        yield graph.start_localize(launch, client_name=client_name, ready_timeout=ready_timeout,
                                   require_map=require_map)
