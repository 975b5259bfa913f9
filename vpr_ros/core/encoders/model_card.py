"""The model card: what an encoder ONNX file is (identity, input / output contract, provenance).

One schema, read by the node (:meth:`ModelCard.load`) and written by every exporter in ``training/``
(:func:`write_model_card`), so the two sides cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vpr_ros.errors import InputError

MODEL_CARD_VERSION = 1
MODEL_KINDS = ("backbone", "netvlad", "global")


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
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(
                f"model card {path} not found: every ONNX model needs its card beside it "
                "(run `make models` to build the default model)") from None
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
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"model card {path} is malformed: {exc}") from None
