"""Checkpoint files, read without running their code: the one loader for every checkpoint vpr_training opens.

A checkpoint is a pickle, and ``torch.load(weights_only=False)`` calls whatever a crafted file names
(``os.system``...). :func:`load_checkpoint` always loads with ``weights_only=True``, which builds only tensors,
numbers, strings, bytes, lists, tuples, sets and dicts, plus the classes a caller allows for that one call. So the
trainer stores plain data only (:func:`plain_data` when saving: configs as dicts, numpy arrays as tensors, numpy
scalars as Python numbers), and reading one of its checkpoints needs no allow-list.

Importers of checkpoints published by others pass an explicit allow-list for what those files carry beyond plain
data, and nothing more: :data:`NUMPY_SCALARS` for files whose metrics are numpy floats (the official
Patch-NetVLAD training code saves ``recalls`` and ``best_score`` so), ``argparse.Namespace`` for files that keep
their command-line options. Each entry is a class or function that builds inert data from data; a global that is
not in the list is refused with :class:`CheckpointError` naming it, before anything is called. Allow-lists are
applied with ``torch.serialization.safe_globals`` for the one load, never added process-wide.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vpr_ros.errors import InputError

#: An allow-list entry: a class or function, or (it, "module.name") for a name it was pickled under elsewhere.
SafeGlobal = Callable[..., Any] | tuple[Callable[..., Any], str]

# numpy's scalar constructor, reached through the public pickle protocol rather than the private numpy._core.
_NUMPY_SCALAR = np.float64(0).__reduce__()[0]

#: numpy scalars (``np.float64(0.93)``...): the scalar constructor (as numpy 2 and numpy 1 name it), ``np.dtype``,
#: and the dtype classes of booleans, integers and floats (torch checks the class of each dtype it builds).
NUMPY_SCALARS: tuple[SafeGlobal, ...] = (
    _NUMPY_SCALAR, (_NUMPY_SCALAR, "numpy.core.multiarray.scalar"), np.dtype,
    *dict.fromkeys(type(np.dtype(code)) for code in "?" + np.typecodes["AllInteger"] + np.typecodes["Float"]))

# torch's messages name a refused global ("GLOBAL os.system") or a refused class it was asked to build.
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)|but got <class '([\w.]+)'>")


class CheckpointError(InputError):
    """A checkpoint file is missing, unreadable, of another kind, or holds more than its allow-list admits."""


def load_checkpoint(path: str | Path, allow: Sequence[SafeGlobal] = ()) -> Any:
    """The content of the torch checkpoint at ``path``, loaded on the CPU with ``weights_only=True``.

    ``allow``: classes and functions, beyond plain data and tensors, that this file may use (see the module
    docstring); anything else it names is refused with :class:`CheckpointError`, and nothing it names is called.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = _REFUSED_GLOBAL.search(str(exc))
        if refused is None:
            raise CheckpointError(f"{path}: not a readable checkpoint ({str(exc).strip().splitlines()[0]})") from None
        name = refused.group(1) or refused.group(2)
        raise CheckpointError(f"{path}: refused to load: it uses {name}, which is not plain data (a crafted "
                              "checkpoint runs code this way); only tensors, numbers, strings, lists and dicts"
                              f"{' and ' + allowed_names(allow) if allow else ''} are loaded") from None
    # What a damaged or foreign file raises depends on where torch's reader gives up (zip, magic number, opcodes).
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, KeyError, IndexError, TypeError) as exc:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[0] if str(exc).strip() else 'empty'})") from None


def allowed_names(allow: Sequence[SafeGlobal]) -> str:
    """The allow-list as the names a pickle refers to them by, for messages (numpy's dtype classes as one)."""
    names = {entry[1] if isinstance(entry, tuple) else f"{entry.__module__}.{entry.__qualname__}" for entry in allow}
    return ", ".join(sorted({"numpy.dtypes.*" if n.startswith("numpy.dtypes.") else n for n in names}))


def plain_data(value: Any) -> Any:
    """``value`` with nothing :func:`load_checkpoint` would refuse: numpy arrays become tensors, numpy scalars
    Python numbers, paths strings; dicts, lists and tuples are converted item by item.

    Any other object (a dataclass, a custom class) raises TypeError here, when saving, rather than making a
    checkpoint that cannot be read back.
    """
    if value is None or isinstance(value, bool | int | float | str | bytes | torch.Tensor | torch.Size):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value).copy())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {plain_data(k): plain_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(plain_data(v) for v in value)
    raise TypeError(f"checkpoint value of type {type(value).__name__} is not plain data: convert it to "
                    "dicts, lists, numbers or tensors before saving")
