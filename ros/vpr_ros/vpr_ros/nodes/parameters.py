"""ROS parameters of the vpr_ros nodes, declared from a typed config (the one that validates them at start and at
run time) and checked on the command line, where rcl would silently drop a mistyped ``-p``."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import yaml
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.parameter import Parameter

from vpr_ros.config import ConfigError, config_from_dict, field_docs, flatten_config, unflatten

RUNTIME_NOTE = " Can be changed at run time (ros2 param set); applies from the next frame."
READ_ONLY_NOTE = (" Read-only while the node runs (the map, the encoder, the subscriptions and timers are set up "
                  "from it): start the node with the new value.")



def command_line_parameters(args: Sequence[str], node_name: str) -> dict[str, Any]:
    """The ``-p name:=value`` (``--param``) assignments of a ROS command line that apply to ``node_name``.

    Values are read as YAML, as rcl reads them. rcl itself drops an assignment whose type differs from the
    value a ``--params-file`` gives the same parameter, without a word (``-p localizer.top_k:=abc`` with
    ``config/localize.yaml``), so the node checks the command line's assignments itself.

    Example:
        >>> command_line_parameters(["x", "--ros-args", "-p", "localizer.top_k:=abc", "-p", "other:a:=1",
        ...                          "--param", "localize:verify_map:=maybe", "--", "-p", "b:=2"], "localize")
        {'localizer.top_k': 'abc', 'verify_map': 'maybe'}
    """
    assignments: dict[str, Any] = {}
    in_ros_args = False
    items = iter(args)
    for arg in items:
        if arg == "--ros-args":
            in_ros_args = True
        elif arg == "--":
            in_ros_args = False
        elif in_ros_args and arg in ("-p", "--param"):
            name, _, text = next(items, "").partition(":=")
            target, prefixed, leaf = name.rpartition(":")
            if prefixed and target.lstrip("/") != node_name:
                continue
            try:
                assignments[leaf.strip()] = yaml.safe_load(text)
            except yaml.YAMLError:
                assignments[leaf.strip()] = text
    return assignments


def declare_config_parameters(node: Node, cls: type, command_line: Mapping[str, Any] | None = None,
                              changeable: Callable[[str], bool] | None = None) -> Any:
    """Declare one ROS parameter per config leaf and build the validated config from them.

    The parameters are declared with dynamic typing first, so a value of the wrong type (from a params file,
    a ``-p`` or ``parameter_overrides``) reaches the typed config's validation, which names the parameter,
    the value and what it expects (rclpy would raise InvalidParameterTypeException with a traceback, and
    refuse an integer for a float parameter). ``command_line`` (see :func:`command_line_parameters`) wins
    over what rcl passed on. Once valid, each parameter holds its validated value, typed, and read-only
    unless ``changeable(name)`` (the node then validates changes itself, see ``add_on_set_parameters_callback``).

    Raises:
        ConfigError: a parameter is of the wrong type or out of range, or a ``-p`` names no parameter.
    """
    command_line = dict(command_line or {})
    docs = field_docs(cls)
    descriptions: dict[str, str] = {}
    values: dict[str, Any] = {}
    for name, (default, help_, meta) in docs.items():
        extra = f" One of {list(meta['choices'])}." if "choices" in meta else ""
        bounds = "".join(f" {k} {meta[k]}." for k in ("min", "max") if k in meta)
        descriptions[name] = f"{help_}.{extra}{bounds}"
        value = list(default) if isinstance(default, tuple) else default
        declared = node.declare_parameter(name, value, ParameterDescriptor(
            description=descriptions[name], dynamic_typing=True)).value
        if declared is None and isinstance(default, tuple):
            declared = []  # a params file's `[]`: rcl has no type for an empty array and leaves it unset
        values[name] = command_line.pop(name) if name in command_line else declared
    unknown = sorted(name for name in command_line if not node.has_parameter(name))
    if unknown:
        close = difflib.get_close_matches(unknown[0], docs, n=1)
        raise ConfigError(f"{unknown[0]}: no such parameter" + (f" (did you mean {close[0]}?)" if close else "")
                          + f"; {node.get_name()} has {len(docs)}, see config/{node.get_name()}.yaml")
    config = config_from_dict(cls, unflatten(values))
    parameters = [Parameter(name, value=list(value) if isinstance(value, tuple) else value)
                  for name, value in flatten_config(config).items()]
    node.set_parameters(parameters)
    for parameter in parameters:
        runtime = changeable is not None and changeable(parameter.name)
        note = (RUNTIME_NOTE if runtime else READ_ONLY_NOTE) if changeable is not None else ""
        node.set_descriptor(parameter.name, ParameterDescriptor(description=descriptions[parameter.name] + note,
                                                                read_only=not runtime, type=parameter.type_.value))
    return config
