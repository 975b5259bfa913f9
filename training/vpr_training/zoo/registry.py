"""The registry of import formats: published VPR models whose official checkpoints ``vpr-import`` converts.

A format is one :class:`ImportFormat`: what the model is, where users get its official weights, how its
descriptor dimension and input size follow from the checkpoint, its input normalisation, and two functions:

* ``build(state_dict) -> BuiltModel``: the torch module, built from an official state dict (key layout of the
  authors' checkpoint, checked key by key with :func:`load_official_state`), with the module contract every
  format shares: RGB float32 (B, 3, H, W) in 0..255 in, L2-normalised global descriptor (B, D) out, the input
  normalisation inside the graph (:class:`NormalisedInput`), so the node's ONNX Runtime encoder runs it as a
  ``kind: global`` model;
* ``write_random(path, seed=, shallow=, variant=)``: a checkpoint in the official layout with seeded random
  weights (``shallow``: fewer / narrower layers under the same key names, for fast tests), because no official
  weights can be downloaded here.

Formats register themselves at import (:func:`register_format`); :mod:`vpr_training.zoo` imports the built-in
ones. :func:`vpr_training.zoo.convert.convert` turns any of them into ONNX + model card.

Example:
    >>> from vpr_training.zoo import format_names, get_format
    >>> "cosplace" in format_names() and get_format("mixvpr").normalisation.mean == IMAGENET.mean
    True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from vpr_ros.errors import InputError
from vpr_training.checkpoints import CheckpointError, SafeGlobal, load_checkpoint


class LayoutError(InputError):
    """A checkpoint's state dict does not have the key layout of the format it was given as."""


@dataclass(frozen=True)
class Normalisation:
    """Per-channel ``(x / 255 - mean) / std`` of RGB input, as the authors' ``transforms.Normalize``."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    name: str

    def describe(self) -> str:
        return f"{self.name}: (RGB/255 - mean {list(self.mean)}) / std {list(self.std)}, inside the graph"


#: torchvision's ImageNet statistics, used by every CNN format here (and by DINOv2).
IMAGENET = Normalisation((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "ImageNet mean/std")


class NormalisedInput(nn.Module):
    """RGB 0..255 -> ``(x / 255 - mean) / std`` -> ``model``: the normalisation lives in the exported graph."""

    def __init__(self, model: nn.Module, normalisation: Normalisation) -> None:
        super().__init__()
        self.register_buffer("offset", torch.tensor(normalisation.mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("scale", 1.0 / (torch.tensor(normalisation.std).view(1, 3, 1, 1) * 255.0))
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model((image - self.offset) * self.scale)


@dataclass(frozen=True)
class BuiltModel:
    """A format's module built from one checkpoint, with what that checkpoint fixes about it.

    ``module`` obeys the module contract (module docstring) and is in eval mode. ``default_size`` (height,
    width) is the size the authors evaluate at; ``size_multiple`` the granularity of other sizes; ``fixed_size``:
    only ``default_size`` works (e.g. MixVPR's mixer is sized for one feature map). ``variant`` says which member
    of the family it is (e.g. "ResNet50, 2048-D"), ``details`` go into the model card's ``source`` section.
    """

    module: nn.Module
    dimension: int
    default_size: tuple[int, int]
    size_multiple: int
    variant: str
    fixed_size: bool = False
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.module.eval()  # always: BatchNorm in training mode would use (and overwrite) batch statistics


class RandomWriter(Protocol):
    def __call__(self, path: Path, *, seed: int = 0, shallow: bool = False, variant: str | None = None) -> Path:
        """Write a seeded random-weight checkpoint in the official layout to ``path``; returns ``path``."""
        ...


@dataclass(frozen=True)
class ImportFormat:
    """One importable published model family (module docstring).

    Attributes:
        name: the ``--format`` value.
        description: one line for ``--list-formats``.
        weights: where users download the official weights (URL).
        paper: the paper (title, venue, URL).
        reference: the authors' code this key layout and architecture follow (repository + file).
        dimension_rule: how the descriptor dimension follows from the checkpoint (for people).
        size_rule: the input size rule (for people; the numbers come with :class:`BuiltModel`).
        normalisation: the input normalisation the authors use (inside the exported graph).
        build: official state dict -> :class:`BuiltModel`; raises :class:`LayoutError` naming the first
            missing, unexpected or mis-shaped key.
        write_random: the random official-layout checkpoint writer (:class:`RandomWriter`).
        variants: names ``write_random`` accepts as ``variant`` (the first is its default).
        read_state: checkpoint file -> state dict (default :func:`read_state_dict`: the file's ``state_dict``
            entry or the file itself, ``module.`` prefixes removed).
        kind: the model card kind the export has (``global``: descriptors out, no head).
        convert: a conversion of its own instead of the shared ONNX + card one (``patchnetvlad``: backbone ONNX
            + head .npz), called as ``convert(checkpoint, out_dir, model_id, check_images)`` (real RGB images).
    """

    name: str
    description: str
    weights: str
    paper: str
    reference: str
    dimension_rule: str
    size_rule: str
    normalisation: Normalisation
    build: Callable[[Mapping[str, torch.Tensor]], BuiltModel]
    write_random: RandomWriter
    variants: tuple[str, ...] = ()
    read_state: Callable[[Path], dict[str, torch.Tensor]] | None = None
    kind: str = "global"
    convert: Callable[[Path, Path, str, Sequence[np.ndarray]], Path] | None = None

    def state_dict(self, path: Path) -> dict[str, torch.Tensor]:
        """The checkpoint's state dict, read without running its code (:mod:`vpr_training.checkpoints`)."""
        return (self.read_state or read_state_dict)(path)


_FORMATS: dict[str, ImportFormat] = {}


def register_format(fmt: ImportFormat) -> ImportFormat:
    """Add ``fmt`` to the registry (its name must be new); returns it, so modules can keep a reference."""
    if fmt.name in _FORMATS and _FORMATS[fmt.name] is not fmt:
        raise ValueError(f"import format {fmt.name!r} is registered twice")
    _FORMATS[fmt.name] = fmt
    return fmt


def get_format(name: str) -> ImportFormat:
    """The registered format ``name``; InputError listing the known ones otherwise."""
    if name not in _FORMATS:
        raise InputError(f"unknown import format {name!r}; known formats: {', '.join(sorted(_FORMATS))}")
    return _FORMATS[name]


def format_names() -> list[str]:
    """Names of every registered format, sorted."""
    return sorted(_FORMATS)


# ---- reading official checkpoints ----------------------------------------------------------------------------

#: What published checkpoints carry beyond tensors and plain data: numpy scalars (recalls saved as numpy floats)
#: and an argparse Namespace (training options). Nothing else is admitted (:mod:`vpr_training.checkpoints`).
def _official_globals() -> tuple[SafeGlobal, ...]:
    import argparse

    from vpr_training.checkpoints import NUMPY_SCALARS

    return (*NUMPY_SCALARS, argparse.Namespace)


def read_state_dict(path: Path, entries: tuple[str, ...] = ("state_dict", "model_state_dict"),
                    ) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: its first ``entries`` item that is a dict, else the file itself when it is a
    plain state dict; DataParallel / DDP ``module.`` prefixes removed. CheckpointError if there are none."""
    content = load_checkpoint(path, allow=_official_globals())
    if not isinstance(content, dict):
        raise CheckpointError(f"{path}: holds a {type(content).__name__}, not a state dict")
    state = next((content[e] for e in entries if isinstance(content.get(e), dict)), content)
    tensors = {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: no tensors found (expected a state dict, or a dict with one of "
                              f"{list(entries)})")
    return {k.replace("module.", "", 1) if k.startswith("module.") else k.replace(".module.", ".", 1): v
            for k, v in tensors.items()}


def require(state: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    """``state[key]``, or LayoutError naming the missing key (for builders that read shapes before building)."""
    if key not in state:
        raise LayoutError(f"missing key {key!r}")
    return state[key]


def load_official_state(module: nn.Module, state: Mapping[str, torch.Tensor], prefix: str = "") -> None:
    """Load ``state`` into ``module`` after checking its layout key by key.

    ``prefix`` is stripped from ``state``'s keys first (keys without it are unexpected). BatchNorm's
    ``num_batches_tracked`` may be absent (checkpoints of older torch versions lack it; it is unused in eval).

    Raises:
        LayoutError: naming the first key the module expects but ``state`` lacks, the first key ``state`` has but
            the module lacks, or the first key whose shape differs (with both shapes).
    """
    expected = module.state_dict()
    given = {k[len(prefix):] if k.startswith(prefix) else "\0" + k: v for k, v in state.items()}
    missing = [k for k in expected if k not in given and not k.endswith("num_batches_tracked")]
    if missing:
        raise LayoutError(f"missing key {prefix + missing[0]!r}" + (f" (and {len(missing) - 1} more)"
                                                                     if len(missing) > 1 else ""))
    unexpected = [k.lstrip("\0") if k.startswith("\0") else prefix + k for k in given if k not in expected]
    if unexpected:
        raise LayoutError(f"unexpected key {unexpected[0]!r}" + (f" (and {len(unexpected) - 1} more)"
                                                                   if len(unexpected) > 1 else ""))
    for k, v in expected.items():
        if k in given and tuple(given[k].shape) != tuple(v.shape):
            raise LayoutError(f"key {prefix + k!r} has shape {tuple(given[k].shape)}, expected {tuple(v.shape)}")
    module.load_state_dict(given, strict=False)
