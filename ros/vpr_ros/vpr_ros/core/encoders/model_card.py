"""The model card: what an encoder ONNX file is (identity, input / output contract, provenance).

One schema, read by the node (:meth:`ModelCard.load`) and written by every exporter in ``training/``
(:meth:`ModelCard.build` then :func:`write_model_card`), so the two sides cannot drift apart.

A card is the YAML file beside its ONNX file (``<stem>.onnx`` -> ``<stem>.yaml``). Its keys, in the order
they are written::

    id, format_version, kind, description      identity (kind: one of MODEL_KINDS)
    <about>                                     exporter's descriptive keys, e.g. variant, notes
    onnx_file, onnx_sha256, onnx_opset          the graph (file name beside the card)
    head_file, head_sha256                      'netvlad' models: the trained head (.npz beside the card)
    input                                       name, layout, colour, range, dtype, default_size, size_multiple;
                                                optional: fixed_size (the graph takes default_size only, e.g.
                                                MixVPR, thumbnails), size_multiple_required (sizes must be
                                                multiples of size_multiple, e.g. ViT/14 imports)
    output                                      name, channels, stride
    <sections>                                  exporter's sections, e.g. head, source, parity, training
    created                                     UTC time of the export

Example:
    >>> card = ModelCard.build(id="m", kind="global", description="demo", onnx_file="m.onnx",
    ...                        onnx_sha256="0" * 64, opset=17, output_name="global", channels=12, stride=1,
    ...                        default_size=(120, 160), created="2026-01-01T00:00:00+00:00")
    >>> card.to_dict()["input"]["default_size"], card.channels
    ([120, 160], 12)
"""

from __future__ import annotations

import copy
import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vpr_ros.core.files import atomic_write_text
from vpr_ros.errors import InputError

MODEL_CARD_VERSION = 1
MODEL_KINDS = ("backbone", "netvlad", "global")
#: Keys :meth:`ModelCard.build` lays out itself; an exporter's ``about`` / ``sections`` may not use them.
CARD_KEYS = ("id", "format_version", "kind", "description", "onnx_file", "onnx_sha256", "onnx_opset", "head_file",
             "head_sha256", "input", "output", "created")


@dataclass(frozen=True)
class ModelCard:
    """What an encoder ONNX file is: identity, input and output contract, provenance."""

    id: str
    kind: str                    # one of MODEL_KINDS (module docstring)
    onnx_file: str
    onnx_sha256: str
    input_name: str
    output_name: str
    channels: int
    stride: int
    default_size: tuple[int, int]  # (height, width)
    raw: dict[str, Any]

    @classmethod
    def load(cls, path: str | Path) -> ModelCard:
        """Read and check the card at ``path``; raises FileNotFoundError or ValueError naming the file."""
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(
                f"model card {path} not found: every ONNX model needs its card beside it "
                "(the default model ships with vpr_ros; `make models` rebuilds it)") from None
        return cls.from_dict(raw, where=str(path))

    @classmethod
    def from_dict(cls, raw: Any, *, where: str = "<dict>") -> ModelCard:
        """Check a card's content (as YAML loads it); raises ValueError naming ``where`` and the fault."""
        try:
            version = int(raw.get("format_version", 0))
            if version != MODEL_CARD_VERSION:
                raise InputError(f"format_version {version}, this vpr_ros reads {MODEL_CARD_VERSION}")
            kind = str(raw.get("kind", "backbone"))
            if kind not in MODEL_KINDS:
                raise InputError(f"kind {kind!r} is not one of {list(MODEL_KINDS)}")
            if kind == "netvlad" and "head_file" not in raw:
                raise InputError("a 'netvlad' model needs 'head_file' (the .npz with its trained head)")
            return cls(
                id=str(raw["id"]), kind=kind, onnx_file=str(raw["onnx_file"]),
                onnx_sha256=str(raw["onnx_sha256"]), input_name=str(raw["input"]["name"]),
                output_name=str(raw["output"]["name"]), channels=int(raw["output"]["channels"]),
                stride=int(raw["output"]["stride"]),
                default_size=(int(raw["input"]["default_size"][0]), int(raw["input"]["default_size"][1])),
                raw=raw)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise InputError(f"model card {where} is malformed: {exc}") from None

    @classmethod
    def build(
        cls,
        *,
        id: str,
        kind: str,
        description: str,
        onnx_file: str,
        onnx_sha256: str,
        opset: int,
        output_name: str,
        channels: int,
        stride: int,
        default_size: tuple[int, int],
        size_multiple: int | None = None,
        head_file: str | None = None,
        head_sha256: str | None = None,
        about: Mapping[str, Any] | None = None,
        sections: Mapping[str, Any] | None = None,
        created: str | None = None,
    ) -> ModelCard:
        """A card laid out in the written key order (module docstring), checked as the reader checks it.

        Args:
            id: model id (also the file stem by convention).
            kind: one of :data:`MODEL_KINDS`; ``netvlad`` needs ``head_file``.
            description: one paragraph for people.
            onnx_file, onnx_sha256: the ONNX graph's file name (beside the card) and its hex sha256.
            opset: ONNX opset of the graph.
            output_name, channels, stride: the graph output read by the node and its channel count and stride
                (``global`` models: the descriptor dimension and 1).
            default_size: (height, width) the model runs at by default.
            size_multiple: input sizes should be multiples of this (default: ``stride``).
            head_file, head_sha256: the trained head (.npz beside the card) of a ``netvlad`` model.
            about: descriptive keys written after ``description`` (e.g. variant, notes).
            sections: further keys written after ``output`` (e.g. head, source, parity, training).
            created: ISO time stamp (default: now, UTC, seconds).

        Raises:
            ValueError: ``about`` or ``sections`` reuse a key of the schema, or the reader would refuse the card.
        """
        about, sections = dict(about or {}), dict(sections or {})
        taken = sorted((set(about) | set(sections)) & set(CARD_KEYS))
        if taken:
            raise ValueError(f"model card {id}: extra keys {taken} are schema keys (module docstring)")
        both = sorted(set(about) & set(sections))
        if both:
            raise ValueError(f"model card {id}: keys {both} are given both in 'about' and in 'sections'")
        if (head_file is None) != (head_sha256 is None):
            raise ValueError(f"model card {id}: give head_file and head_sha256 together")
        if Path(onnx_file).name != onnx_file:
            raise ValueError(f"model card {id}: onnx_file {onnx_file!r} must be a file name (beside the card)")
        raw: dict[str, Any] = {"id": id, "format_version": MODEL_CARD_VERSION, "kind": kind,
                               "description": description, **about,
                               "onnx_file": onnx_file, "onnx_sha256": onnx_sha256, "onnx_opset": opset}
        if head_file is not None:
            raw.update(head_file=head_file, head_sha256=head_sha256)
        raw["input"] = {"name": "image", "layout": "NCHW", "colour": "RGB", "range": [0, 255], "dtype": "float32",
                        "default_size": [int(default_size[0]), int(default_size[1])],
                        "size_multiple": stride if size_multiple is None else size_multiple}
        raw["output"] = {"name": output_name, "channels": channels, "stride": stride}
        raw.update(sections)
        raw["created"] = created or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        return cls.from_dict(raw, where=id)

    def to_dict(self) -> dict[str, Any]:
        """The card's content in written key order (a copy: changing it leaves the card as it is)."""
        return copy.deepcopy(self.raw)


class _CardDumper(yaml.SafeDumper):
    """Mappings in block style, lists of scalars on one line (``default_size: [480, 640]``)."""


def _represent_sequence(dumper: yaml.SafeDumper, data: list[Any] | tuple[Any, ...]) -> yaml.Node:
    flow = all(not isinstance(item, (dict, list)) for item in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", list(data), flow_style=flow)


_CardDumper.add_representer(list, _represent_sequence)
_CardDumper.add_representer(tuple, _represent_sequence)


def render_model_card(card: ModelCard) -> str:
    """The card as YAML text (keys in written order; plain YAML types only)."""
    try:
        return yaml.dump(card.raw, Dumper=_CardDumper, sort_keys=False, default_flow_style=False, width=110)
    except yaml.representer.RepresenterError as exc:
        raise ValueError(f"model card {card.id}: a value is not plain YAML ({exc}); convert numpy scalars and "
                         "arrays to int / float / list") from None


def write_model_card(path: str | Path, card: ModelCard) -> Path:
    """Write ``card`` to ``path`` atomically, after checking the reader will accept what is written.

    ``path`` must be where the node looks for it: the ONNX file's name with ``.yaml`` (the card names the
    ONNX file, the node finds the card from the ONNX path).
    """
    path = Path(path)
    expected = Path(card.onnx_file).with_suffix(".yaml").name
    if path.name != expected:
        raise ValueError(f"model card {path}: the card of {card.onnx_file} must be named {expected}")
    text = render_model_card(card)
    ModelCard.from_dict(yaml.safe_load(text), where=str(path))
    return atomic_write_text(path, text)
