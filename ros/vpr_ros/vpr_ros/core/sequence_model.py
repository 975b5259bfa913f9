"""Learned sequence descriptors, run with ONNX Runtime (no torch): one descriptor for a window of frames.

A sequence model (SeqNet, Garg & Milford, "SeqNet: Learning Descriptors for Sequence-Based Hierarchical Place
Recognition", RA-L 2021; the learned seq2seq descriptor of the MSLS thesis, section 4.2.1) maps the global
descriptors of ``L`` consecutive frames, oldest first, to one L2-normalised descriptor: a temporal 1-D
convolution over the frame descriptors, averaged over time. The map side is the same model on every window of
consecutive map frames ending at a row (:func:`window_rows`; the first rows repeat row 0),
so a query sequence is compared with "the last L places before map frame j" by one inner product.

The model is trained on descriptors of one frame encoder (``vpr_training.sequence``, run by ``vpr-adapt``) and
means nothing on another's: its card records the encoder's ONNX sha256 and descriptor dimension, and
:meth:`SequenceDescriptorModel.check_map` refuses a map built with a different encoder.

The card is ``<stem>.yaml`` beside ``<stem>.onnx``::

    format: vpr_ros.sequence_model
    format_version: 1
    id, description
    onnx_file, onnx_sha256, onnx_opset
    input:  {name: sequence, layout: NLD, length: L (trained), dim: D}
    output: {name: descriptor, dim: P}
    frame_encoder: {id, onnx_sha256 or spec_sha256, descriptor_dim}   (frame_encoder_identity)
    <sections>            training data, metrics, parity
    created

Example (a card is checked like the encoder's model card)::

    model = SequenceDescriptorModel("models/adapted_seqnet.onnx")
    model.describe(frame_descriptors[None])       # (1, L, D) -> (1, P)
"""

from __future__ import annotations

import copy
import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from vpr_ros.core.files import atomic_write_text, sha256_file
from vpr_ros.errors import InputError

SEQUENCE_CARD_FORMAT = "vpr_ros.sequence_model"
SEQUENCE_CARD_VERSION = 1
_EPS = 1e-12


#: What identifies the frame encoder a sequence model was trained on, most specific first: the ONNX file's
#: sha256, a weights-free encoder's spec sha256 (thumbnails), else its id.
IDENTITY_KEYS = ("onnx_sha256", "spec_sha256", "id")


def frame_encoder_identity(encoder: Mapping[str, Any], descriptor_dim: int) -> dict[str, Any]:
    """The ``frame_encoder`` entry of a sequence-model card for a map's (or encoder's) identity dict."""
    return {"id": encoder.get("id"), **{k: encoder[k] for k in IDENTITY_KEYS[:2] if k in encoder},
            "descriptor_dim": int(descriptor_dim)}


class SequenceModelError(InputError):
    """A sequence model or its card is missing, malformed, changed, or does not fit the map."""


@dataclass(frozen=True)
class SequenceModelCard:
    """What a sequence-model ONNX file is: its input window, output dimension and the frame encoder it needs."""

    id: str
    onnx_file: str
    onnx_sha256: str
    length: int
    input_dim: int
    output_dim: int
    frame_encoder: dict[str, Any]
    raw: dict[str, Any]

    @classmethod
    def build(cls, *, id: str, description: str, onnx_file: str, onnx_sha256: str, opset: int, length: int,
              input_dim: int, output_dim: int, frame_encoder: Mapping[str, Any],
              sections: Mapping[str, Any] | None = None) -> SequenceModelCard:
        """A card in written key order (module docstring), checked as :meth:`from_dict` checks it."""
        raw: dict[str, Any] = {
            "format": SEQUENCE_CARD_FORMAT, "format_version": SEQUENCE_CARD_VERSION, "id": id,
            "description": description, "onnx_file": onnx_file, "onnx_sha256": onnx_sha256, "onnx_opset": opset,
            "input": {"name": "sequence", "layout": "NLD", "length": int(length), "dim": int(input_dim)},
            "output": {"name": "descriptor", "dim": int(output_dim)},
            "frame_encoder": dict(frame_encoder), **dict(sections or {}),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        return cls.from_dict(raw, where=id)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str) -> SequenceModelCard:
        """Check and read a card; :class:`SequenceModelError` names ``where`` and the first bad key."""
        if not isinstance(raw, Mapping):
            raise SequenceModelError(f"{where}: expected a sequence-model card (a mapping), got {type(raw).__name__}")
        if raw.get("format") != SEQUENCE_CARD_FORMAT:
            raise SequenceModelError(f"{where}: not a sequence-model card (format {raw.get('format')!r}, expected "
                                     f"{SEQUENCE_CARD_FORMAT!r}); an image encoder goes in 'encoder.model'")
        if raw.get("format_version") != SEQUENCE_CARD_VERSION:
            raise SequenceModelError(f"{where}: format_version {raw.get('format_version')!r} is not supported "
                                     f"(this vpr_ros reads {SEQUENCE_CARD_VERSION})")
        try:
            inp, out, enc = raw["input"], raw["output"], raw["frame_encoder"]
            card = cls(id=str(raw["id"]), onnx_file=str(raw["onnx_file"]), onnx_sha256=str(raw["onnx_sha256"]),
                       length=int(inp["length"]), input_dim=int(inp["dim"]), output_dim=int(out["dim"]),
                       frame_encoder=dict(enc), raw=copy.deepcopy(dict(raw)))
        except (KeyError, TypeError, ValueError) as exc:
            raise SequenceModelError(f"{where}: missing or malformed key {exc} in the sequence-model card") from None
        if Path(card.onnx_file).name != card.onnx_file:
            raise SequenceModelError(f"{where}: onnx_file {card.onnx_file!r} must be a file name beside the card")
        if min(card.length, card.input_dim, card.output_dim) < 1:
            raise SequenceModelError(f"{where}: input length / dim and output dim must be >= 1")
        if "descriptor_dim" not in card.frame_encoder or not (set(IDENTITY_KEYS) & set(card.frame_encoder)):
            raise SequenceModelError(f"{where}: frame_encoder needs descriptor_dim and one of {list(IDENTITY_KEYS)}")
        return card

    @classmethod
    def load(cls, path: str | Path) -> SequenceModelCard:
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise SequenceModelError(f"{path}: sequence-model card not found (expected beside the .onnx file)") \
                from None
        except yaml.YAMLError as exc:
            raise SequenceModelError(f"{path}: not valid YAML ({exc})") from None
        return cls.from_dict(raw, where=str(path))


def write_sequence_card(path: str | Path, card: SequenceModelCard) -> Path:
    """Write ``card`` atomically to ``path`` (``<onnx stem>.yaml``), after checking it reads back."""
    path = Path(path)
    if path.name != Path(card.onnx_file).with_suffix(".yaml").name:
        raise ValueError(f"{path}: the card of {card.onnx_file} must be named "
                         f"{Path(card.onnx_file).with_suffix('.yaml').name}")
    text = yaml.safe_dump(card.raw, sort_keys=False, default_flow_style=False, width=110)
    SequenceModelCard.from_dict(yaml.safe_load(text), where=str(path))
    return atomic_write_text(path, text)


def window_rows(num_rows: int, length: int) -> np.ndarray:
    """Rows of the window of ``length`` consecutive map frames ending at each row (start clamped to row 0).

    Shape:
        returns (num_rows, length) int64, oldest first.
    """
    return np.clip(np.arange(num_rows)[:, None] - np.arange(length - 1, -1, -1)[None, :], 0, None)


def _l2(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), _EPS)).astype(np.float32)


class SequenceDescriptorModel:
    """A sequence model (ONNX + card) run by ONNX Runtime on windows of frame descriptors."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        from vpr_ros.core import ort

        path = Path(path)
        onnx_path = path if path.suffix == ".onnx" else path.with_suffix(".onnx")
        self.card = SequenceModelCard.load(onnx_path.with_suffix(".yaml"))
        onnx_path = onnx_path.with_name(self.card.onnx_file)
        if not onnx_path.is_file():
            raise SequenceModelError(f"{onnx_path}: sequence model not found (named by its card)")
        if sha256_file(onnx_path) != self.card.onnx_sha256:
            raise SequenceModelError(f"{onnx_path}: sha256 does not match its card (file changed or card stale)")
        self.path = onnx_path
        self.session = ort.session(onnx_path, threads=threads)

    @property
    def length(self) -> int:
        """Frames per window the model was trained on."""
        return self.card.length

    @property
    def dim(self) -> int:
        return self.card.output_dim

    def check_map(self, encoder: Mapping[str, Any], descriptor_dim: int, where: str = "map") -> None:
        """Refuse a map whose frame descriptors come from another encoder than the one the model was trained on.

        Args:
            encoder: the map manifest's ``encoder`` identity (``onnx_sha256``, ``id``).
            descriptor_dim: the map's global descriptor dimension.
        """
        want = self.card.frame_encoder
        key = next(k for k in IDENTITY_KEYS if k in want)
        if int(want["descriptor_dim"]) != int(descriptor_dim) or encoder.get(key) != want[key]:
            raise SequenceModelError(
                f"sequence model {self.path.name} was trained on descriptors of encoder "
                f"{want.get('id', '?')} ({str(want.get(key))[:12]}..., {want['descriptor_dim']}-d); the {where} "
                f"is built with {encoder.get('id', '?')} ({str(encoder.get(key, ''))[:12]}..., "
                f"{descriptor_dim}-d): build the map with that encoder, or train a sequence model for this one")

    def describe(self, windows: np.ndarray, chunk: int = 4096) -> np.ndarray:
        """L2-normalised sequence descriptors of windows of frame descriptors.

        Shape:
            windows: (B, L, D) oldest frame first; returns (B, P) float32.
        """
        windows = np.asarray(windows, dtype=np.float32)
        if windows.ndim != 3 or windows.shape[2] != self.card.input_dim:
            raise ValueError(f"sequence model {self.card.id}: expected (B, L, {self.card.input_dim}) windows, "
                             f"got {windows.shape}")
        out = [self.session.run(None, {"sequence": np.ascontiguousarray(windows[i:i + chunk])})[0]
               for i in range(0, len(windows), chunk)]
        return _l2(np.concatenate(out)) if out else np.zeros((0, self.dim), np.float32)

    def describe_map(self, descriptors: np.ndarray, length: int, chunk: int = 4096) -> np.ndarray:
        """The descriptor of the window of ``length`` map frames ending at every row (first rows repeat row 0).

        Shape:
            descriptors: (N, D); returns (N, P) float32 (memory: one chunk of windows at a time).
        """
        desc = np.asarray(descriptors, dtype=np.float32)
        rows = window_rows(len(desc), length)
        out = [self.describe(desc[rows[i:i + chunk]]) for i in range(0, len(rows), chunk)]
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)
