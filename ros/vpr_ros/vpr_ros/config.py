"""Typed configuration: one frozen dataclass per component, loaded from YAML, mirrored as ROS parameters.

The dataclass defaults are the single source of truth. The YAML files in ``config/`` list the same values
for people to read and edit (a test keeps them equal), and the nodes declare one ROS parameter per leaf
field, with dotted names for nested sections (``localizer.top_k``), exactly the names ROS 2 gives nested
keys of a ``--params-file``.

Field metadata understood here (all optional):

* ``help``    -- one line shown in ``--help``, in ROS parameter descriptors and in error messages;
* ``choices`` -- allowed values;
* ``min`` / ``max`` -- inclusive numeric bounds.

Example:
    >>> from vpr_ros.core.encoders import EncoderConfig
    >>> cfg = config_from_dict(EncoderConfig, {"threads": 2})
    >>> flatten_config(cfg)["threads"]
    2
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from vpr_ros.errors import ConfigError

T = TypeVar("T")


def setting(default: Any, help: str, *, choices: tuple[Any, ...] | None = None,
            min: float | None = None, max: float | None = None) -> Any:
    """A dataclass field with the metadata this module validates and documents."""
    meta: dict[str, Any] = {"help": help}
    if choices is not None:
        meta["choices"] = choices
    if min is not None:
        meta["min"] = min
    if max is not None:
        meta["max"] = max
    if isinstance(default, (list, dict, set)):
        raise TypeError("use tuples for sequence defaults so configs stay immutable")
    return dataclasses.field(default=default, metadata=meta)


def section(cls: type[T]) -> Any:
    """A nested config section with its own defaults."""
    return dataclasses.field(default_factory=cls, metadata={"help": (cls.__doc__ or "").strip().splitlines()[0]})


def _resolved_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_config(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML/ROS value to the annotated type, or raise ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: unexpected value {value!r}")
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        return tuple(_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        # NaN passes every bound check (all comparisons are false), so it is refused here; inf is left to the bounds.
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if _is_config(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} settings, got {value!r}")
        return config_from_dict(tp, value, where=where)
    raise ConfigError(f"{where}: unsupported type {tp!r}")


def _check_bounds(value: Any, meta: Mapping[str, Any], where: str) -> None:
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{where}: {value!r} is not one of {list(choices)}")
    lo, hi = meta.get("min"), meta.get("max")
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if lo is not None and v < lo:
                raise ConfigError(f"{where}: {v!r} is below the minimum {lo}")
            if hi is not None and v > hi:
                raise ConfigError(f"{where}: {v!r} is above the maximum {hi}")


def config_from_dict(cls: type[T], data: Mapping[str, Any] | None, *, where: str = "") -> T:
    """Build ``cls`` from a nested mapping; unknown keys, wrong types and out-of-range values raise.

    Args:
        cls: a dataclass whose fields were declared with :func:`setting` / :func:`section`.
        data: nested mapping (as read from YAML); missing keys keep their defaults.
        where: prefix for error messages, e.g. the file name.
    """
    data = dict(data or {})
    hints = _resolved_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown setting(s) {', '.join(prefix + u for u in unknown)}; "
            f"{cls.__name__} accepts: {', '.join(sorted(fields))}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        path = f"{where}.{name}" if where else name
        coerced = _coerce(value, hints[name], path)
        _check_bounds(coerced, fields[name].metadata, path)
        kwargs[name] = coerced
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:  # __post_init__ cross-field checks
        raise ConfigError(f"{where or cls.__name__}: {exc}") from exc


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain-Python mapping (tuples become lists) suitable for YAML."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = config_to_dict(value)
        elif isinstance(value, tuple):
            out[f.name] = list(value)
        else:
            out[f.name] = value
    return out


def flatten_config(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Leaf values keyed by dotted path, as ROS 2 names nested parameters."""
    flat: dict[str, Any] = {}
    for key, value in config_to_dict(cfg).items():
        _flatten_into(flat, f"{prefix}{key}", value)
    return flat


def _flatten_into(flat: dict[str, Any], key: str, value: Any) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten_into(flat, f"{key}.{k}", v)
    else:
        flat[key] = value


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten_config` on plain mappings."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return nested


def field_docs(cls: type, prefix: str = "") -> dict[str, tuple[Any, str, Mapping[str, Any]]]:
    """Dotted name -> (default, help, metadata) for every leaf field; used for --help and ROS descriptors."""
    docs: dict[str, tuple[Any, str, Mapping[str, Any]]] = {}
    defaults = cls()
    hints = _resolved_hints(cls)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        name = f"{prefix}{f.name}"
        if _is_config(hints[f.name]):
            docs.update(field_docs(hints[f.name], prefix=f"{name}."))
        else:
            docs[name] = (getattr(defaults, f.name), f.metadata.get("help", ""), f.metadata)
    return docs


def ros_parameters_section(data: Mapping[str, Any], node_name: str | None = None) -> Mapping[str, Any]:
    """Return the ``ros__parameters`` mapping of a ROS 2 params file, or ``data`` itself if it is plain.

    A params file looks like ``{<node or /**>: {ros__parameters: {...}}}``. The node's own section wins over
    the ``/**`` wildcard section; both are merged (node-specific keys override).
    """
    if not any(isinstance(v, Mapping) and "ros__parameters" in v for v in data.values()):
        return data
    merged: dict[str, Any] = {}
    for key in ("/**", f"/{node_name}" if node_name else None, node_name):
        if key and isinstance(data.get(key), Mapping):
            merged.update(data[key].get("ros__parameters", {}))
    if not merged:
        raise ConfigError(f"params file has no ros__parameters for node {node_name!r} or /**")
    return merged


def load_config(cls: type[T], path: str | Path | None, overrides: Mapping[str, Any] | None = None,
                node_name: str | None = None) -> T:
    """Load ``cls`` from a YAML file (plain or ROS params file) plus dotted-key ``overrides``."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(raw, Mapping):
            raise ConfigError(f"config file {path}: expected a mapping at top level")
        data = dict(ros_parameters_section(raw, node_name))
        data = unflatten(flatten_plain(data))
    if overrides:
        merged = flatten_plain(data)
        merged.update(overrides)
        data = unflatten(merged)
    return config_from_dict(cls, data, where=str(path) if path else "")


def flatten_plain(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten a nested plain mapping to dotted keys (dotted keys already present are kept)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_plain(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def render_params_yaml(cls: type, node_name: str, title: str) -> str:
    """A ROS 2 params file listing every setting of ``cls`` with its default and help as a comment.

    The files in ``config/`` are generated with this (``make config``); a test keeps them in sync with the
    dataclass defaults.
    """
    lines = [f"# {title}", "# Generated from the dataclass defaults by `make config`; edit values freely, the",
             "# node and CLIs validate them at start. Nested keys become dotted ROS parameter names.",
             f"{node_name}:", "  ros__parameters:"]

    def emit(c: type, indent: int) -> None:
        hints = _resolved_hints(c)
        defaults = c()
        for f in dataclasses.fields(c):  # type: ignore[arg-type]
            pad = " " * indent
            help_ = f.metadata.get("help", "")
            if _is_config(hints[f.name]):
                lines.append(f"{pad}# {help_}")
                lines.append(f"{pad}{f.name}:")
                emit(hints[f.name], indent + 2)
                continue
            value = getattr(defaults, f.name)
            value = list(value) if isinstance(value, tuple) else value
            rendered = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
            if rendered.endswith("\n..."):
                rendered = rendered[: -len("\n...")]
            rendered = rendered.removesuffix("...").strip()
            extra = f" (one of {', '.join(map(str, f.metadata['choices']))})" if "choices" in f.metadata else ""
            lines.append(f"{pad}{f.name}: {rendered}  # {help_}{extra}")

    emit(cls, 4)
    return "\n".join(lines) + "\n"
