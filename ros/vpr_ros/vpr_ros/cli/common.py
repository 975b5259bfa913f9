"""Shared command-line plumbing: config files, ``--set`` overrides, logging, clean exits."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from vpr_ros.config import ConfigError, field_docs, load_config
from vpr_ros.core.paths import resolve_path
from vpr_ros.errors import InputError

T = TypeVar("T")
log = logging.getLogger("vpr_ros")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults and keep the hand-formatted examples in descriptions."""


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, default_file: str | None) -> None:
    """``--config FILE`` and repeatable ``--set key=value`` (value parsed as YAML)."""
    group = parser.add_argument_group("configuration")
    group.add_argument("--config", default=default_file, metavar="YAML",
                       help="settings file (plain YAML or a ROS 2 params file)")
    group.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override one setting, e.g. --set vlad.num_clusters=64 (repeatable); "
                            "see --list-settings")
    group.add_argument("--list-settings", action="store_true", help="print every setting with its default and exit")
    parser.set_defaults(_config_cls=cls)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def config_from_args(args: argparse.Namespace, node_name: str | None = None) -> Any:
    """Load the config class registered by :func:`add_config_arguments` from --config plus --set."""
    path = None
    if args.config:
        path = resolve_path(args.config, what="config file")
    return load_config(args._config_cls, path, parse_overrides(args.set), node_name=node_name)


def print_settings(cls: type) -> None:
    for name, (default, help_, meta) in field_docs(cls).items():
        extra = f" (one of {list(meta['choices'])})" if "choices" in meta else ""
        print(f"{name} = {default!r}\n    {help_}{extra}")


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="[%(levelname)s] %(name)s: %(message)s")
    for noisy in ("faiss", "matplotlib"):  # library start-up chatter is not the user's business
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def check_output_directory(path: Path, option: str) -> None:
    """Refuse an output directory that cannot be made: ``path`` is a regular file, or lies under one."""
    for place in (path, *path.parents):
        if place.exists() or place.is_symlink():
            if not place.is_dir():
                where = "is" if place == path else f"lies under {place}, which is"
                raise InputError(f"{option} {path} {where} a regular file, not a directory")
            return


#: Exit status of a command whose reader went away (``evaluate ... | head -1``): what a process killed by
#: SIGPIPE reports in a shell (128 + 13), as ``yes | head -1`` does.
BROKEN_PIPE_EXIT = 141


def path_error_line(exc: OSError) -> str:
    """``[Errno 20] Not a directory: 'x/y'`` -> ``x/y: not a directory``."""
    if exc.filename is None or not exc.strerror:
        return str(exc)
    target = f" -> {exc.filename2}" if exc.filename2 is not None else ""
    return f"{exc.filename}{target}: {exc.strerror[0].lower()}{exc.strerror[1:]}"


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None,
            interrupted_hint: str = "") -> int:
    """Run a CLI main: the project's input errors (:class:`vpr_ros.errors.InputError`, a missing or existing
    path, a path under a regular file, a path the user may not write) print one clear line and exit 2,
    argparse's exits keep their status, Ctrl-C exits 130 (printing ``interrupted_hint``, e.g. how to resume),
    and a closed stdout (``| head -1``) exits 141 quietly. Any other exception is a bug and keeps its traceback.
    """
    try:
        code = main(argv)
        sys.stdout.flush()  # here, not at interpreter exit, where a closed pipe prints "Exception ignored"
        return code
    except BrokenPipeError:
        # The reader has gone: nothing more can be shown. Point stdout at /dev/null so the interpreter's final
        # flush of what is still buffered does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE_EXIT
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError) as exc:
        print(f"error: {path_error_line(exc)}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # argparse: usage errors (2) and --help (0), as an exit status like the rest
        return exc.code if isinstance(exc.code, int) else 1
    except KeyboardInterrupt:
        print(f"interrupted{'; ' + interrupted_hint if interrupted_hint else ''}", file=sys.stderr)
        return 130
