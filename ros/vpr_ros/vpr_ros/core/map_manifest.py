"""What a reference map's ``manifest.yaml`` may say: its schema, its own checksum and the file names it may list.

A manifest is input like any other file a user is handed, so nothing in it is trusted before it is checked:

* **its own content** -- ``manifest_sha256`` is the sha256 of the manifest without that key, as JSON with sorted
  keys, compact separators and UTF-8 (:func:`manifest_sha256`); one flipped bit anywhere (a value, a file's
  checksum, a key) is refused. It detects corruption and careless edits, not a deliberate forgery: whoever
  rewrites a manifest can recompute its hash.
* **every value** -- types, ranges and the relations between fields (:func:`validate_manifest`), each
  failure a :class:`~vpr_ros.errors.MapError` naming the field and what was expected; the values a map's
  data can confirm (frame count, descriptor and head shapes, index size) are compared with the data once it is
  read (:func:`check_map_data`).
* **file names** -- only the fixed top-level names and ``arrays/<name>.npy`` with a plain ``<name>``
  (:func:`check_file_name`); on disk no symbolic link on the way and a regular file at the end
  (:func:`map_file`), so a manifest can never make the loader read or memory-map a file outside the map.

Maps written before ``manifest_sha256`` existed (format version 1, same layout) carry no hash: they keep opening,
and their values are still checked against the schema.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from vpr_ros.config import config_from_dict
from vpr_ros.core.patchnetvlad.store import SECTION as PATCH_SECTION
from vpr_ros.core.patchnetvlad.store import check_section as check_patch_section
from vpr_ros.core.vlad import VladHead
from vpr_ros.errors import ConfigError, MapError

HASH_KEY = "manifest_sha256"
#: Files a map may hold at its top level; everything else lives in ``arrays/``.
TOP_LEVEL_FILES = ("frames.npz", "frames.csv", "descriptors.npy", "global.faiss", "head.npz")
REQUIRED_FILES = ("descriptors.npy", "global.faiss")
#: The frame table by format version: a binary column table from version 2 on, text before.
FRAME_TABLE_FILE = {1: "frames.csv", 2: "frames.npz"}
ARRAYS_DIR = "arrays"
#: A plain array name: no dots (so neither ``..`` nor hidden files), no separators.
ARRAY_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,127}")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
#: Upper bound of any number inside an index factory string: IVF lists are allocated when the index is made, and
#: 2^20 lists (enough for a billion vectors) cost ~50 MB; ``IVF100000000`` would allocate gigabytes.
MAX_FACTORY_NUMBER = 1 << 20
MAX_DIM = 1 << 20

_KEYS = ("format", "format_version", "created", "created_by", "frame_count", "frame_id", "encoder", "input_size",
         "head", "descriptor", "index", "sections", "provenance", "files")


def _field(help: str, **meta: Any) -> Any:
    """A required record field with the metadata :func:`vpr_ros.config.config_from_dict` checks (min, max,
    choices)."""
    return dataclasses.field(metadata={"help": help, **meta})


@dataclass(frozen=True)
class Summary:
    """Top-level scalar values of a manifest."""

    created: str = _field("UTC time the map was written (ISO 8601)")
    created_by: str = _field("vpr_ros version that wrote the map")
    frame_count: int = _field("number of frames (rows of the frame table)", min=1, max=1 << 31)
    frame_id: str = _field("coordinate frame of the poses")
    # 8 px: the smallest thumbnail side in use is 16; 8192 px: beyond any camera the encoders are run at, and a
    # corrupt larger value would spend minutes per frame.
    input_size: tuple[int, ...] = _field("network input (height, width) in pixels", min=8, max=8192)


@dataclass(frozen=True)
class HeadEntry:
    """The aggregation head of the map (``none`` for global encoders)."""

    type: str = _field("head type", choices=("vlad", "none"))
    num_clusters: int = dataclasses.field(default=0, metadata={"help": "VLAD clusters", "min": 1, "max": 1 << 16})
    feature_dim: int = dataclasses.field(default=0, metadata={"help": "local feature channels", "min": 1,
                                                              "max": 1 << 16})
    output_dim: int = dataclasses.field(default=0, metadata={"help": "descriptor dimension", "min": 1,
                                                             "max": MAX_DIM})


@dataclass(frozen=True)
class DescriptorEntry:
    """The global descriptors in descriptors.npy."""

    dim: int = _field("descriptor dimension", min=1, max=MAX_DIM)
    dtype: str = _field("descriptor dtype", choices=("float32",))
    metric: str = _field("search metric", choices=("inner_product",))


@dataclass(frozen=True)
class IndexEntry:
    """The FAISS index in global.faiss."""

    factory: str = _field("FAISS index_factory string")
    nprobe: int = _field("IVF lists visited per query", min=1, max=MAX_FACTORY_NUMBER)
    # Format version 2 (absent from version 1 maps: the defaults).
    ef_search: int = dataclasses.field(default=0, metadata={"help": "HNSW efSearch (0 = FAISS's)", "min": 0,
                                                            "max": MAX_FACTORY_NUMBER})
    refine: int = dataclasses.field(default=1, metadata={"help": "exact re-scoring factor (1 = off)", "min": 1,
                                                         "max": 1024})
    requested: str = dataclasses.field(default="", metadata={"help": "index.factory the map was built with"})
    reason: str = dataclasses.field(default="", metadata={"help": "why auto chose the index"})
    trained_on: int = dataclasses.field(default=0, metadata={"help": "frames the index was trained on (0 = needs "
                                                             "no training)", "min": 0, "max": 1 << 40})
    trained_at: str = dataclasses.field(default="", metadata={"help": "UTC time of the training (ISO 8601)"})


@dataclass(frozen=True)
class FileEntry:
    """Checksum and size of one map file."""

    sha256: str = _field("sha256 of the file, 64 lowercase hex digits")
    bytes: int = _field("file size in bytes", min=0, max=1 << 50)

    def __post_init__(self) -> None:
        if not SHA256_HEX.fullmatch(self.sha256):
            raise ValueError(f"sha256: expected 64 hexadecimal digits, got {self.sha256!r}")


@dataclass(frozen=True)
class MapManifest:
    """A manifest whose checksum, values and file names were checked; ``raw`` is the mapping as read."""

    summary: Summary
    encoder: dict[str, Any]
    head: HeadEntry
    descriptor: DescriptorEntry
    index: IndexEntry
    sections: dict[str, Any]
    provenance: dict[str, Any]
    files: dict[str, FileEntry]
    raw: dict[str, Any]

    @property
    def arrays(self) -> dict[str, str]:
        """Array name -> file entry (``arrays/<name>.npy``) of the extra arrays the map lists."""
        return {name: rel for rel in self.files if (name := array_name(rel)) is not None}


# ---- the manifest's own checksum ---------------------------------------------------------------------------------

def manifest_sha256(manifest: Mapping[str, Any], where: str = "manifest") -> str:
    """sha256 of ``manifest`` without :data:`HASH_KEY`: JSON, sorted keys, compact separators, UTF-8."""
    body = {k: v for k, v in manifest.items() if k != HASH_KEY}
    try:
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise MapError(f"{where}: holds something other than plain data ({exc})") from None
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sealed_manifest_text(manifest: Mapping[str, Any]) -> str:
    """YAML text of ``manifest`` with its :data:`HASH_KEY` appended (hashed as a reader will parse it back)."""
    text = yaml.safe_dump(dict(manifest), sort_keys=False)
    return yaml.safe_dump({**manifest, HASH_KEY: manifest_sha256(yaml.safe_load(text))}, sort_keys=False)


def verify_manifest_sha256(manifest: Mapping[str, Any], where: str) -> None:
    """Refuse a manifest whose content does not match its :data:`HASH_KEY` (a missing key is accepted: maps of
    format version 1 written before the key existed)."""
    if HASH_KEY not in manifest:
        return
    stored = manifest[HASH_KEY]
    if not isinstance(stored, str) or not SHA256_HEX.fullmatch(stored):
        raise MapError(f"{where}: {HASH_KEY}: expected 64 hexadecimal digits, got {stored!r}")
    if manifest_sha256(manifest, where) != stored:
        raise MapError(f"{where}: {HASH_KEY} mismatch: the manifest was edited or corrupted after the map was "
                       "built; rebuild the map")


# ---- file names ----------------------------------------------------------------------------------------------

def array_name(rel: str) -> str | None:
    """``<name>`` of an ``arrays/<name>.npy`` entry with a plain name, else None."""
    folder, _, file = rel.partition("/")
    if folder != ARRAYS_DIR or not file.endswith(".npy"):
        return None
    name = file[: -len(".npy")]
    return name if ARRAY_NAME.fullmatch(name) else None


def check_file_name(rel: Any, where: str) -> str:
    """``rel`` if it is a file name a map may list (see the module doc), else MapError naming the entry."""
    if not isinstance(rel, str) or (rel not in TOP_LEVEL_FILES and array_name(rel) is None):
        raise MapError(f"{where}: files entry '{rel}' is not a map file name (expected one of "
                       f"{', '.join(TOP_LEVEL_FILES)} or {ARRAYS_DIR}/<name>.npy with a name of letters, digits, "
                       "_ and -)")
    return rel


def map_file(root: Path, rel: str, where: str) -> Path:
    """The path of the checked entry ``rel`` under ``root``: no symbolic link on the way (checked with lstat, the
    map directory itself may be one), a regular file at the end."""
    path = root
    info = None
    for part in rel.split("/"):
        path = path / part
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            raise MapError(f"{path}: missing (listed in the manifest)") from None
        if stat.S_ISLNK(info.st_mode):
            inside = path.relative_to(root)
            raise MapError(f"{where}: files entry '{rel}': {inside} is a symbolic link; a map's files must be "
                           "regular files inside its directory")
    assert info is not None
    if not stat.S_ISREG(info.st_mode):
        raise MapError(f"{where}: files entry '{rel}': {path} is not a regular file")
    return path


# ---- values ----------------------------------------------------------------------------------------------------

def _record(cls: type, value: Any, where: str, section: str = "", required: tuple[str, ...] | None = None) -> Any:
    """``cls`` from the mapping ``value`` (manifest ``section``, "" for the top level); every key of ``required``
    (default: the fields without a default) must be there, no other key may be."""
    at = f"{where}: {section}" if section else where
    if not isinstance(value, Mapping):
        raise MapError(f"{at}: expected a mapping, got {value!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if required is None:
        required = tuple(n for n, f in fields.items() if f.default is dataclasses.MISSING)
    for key in required:
        if key not in value:
            raise MapError(f"{at}: missing key '{key}'")
    unknown = sorted(str(k) for k in value if k not in fields)
    if unknown:
        raise MapError(f"{at}: unknown key(s) {', '.join(unknown)} (expected {', '.join(fields)})")
    try:
        return config_from_dict(cls, value, where=section)
    except ConfigError as exc:
        raise MapError(f"{where}: {exc}") from None


def _encoder(value: Any, where: str) -> dict[str, Any]:
    """The encoder identity: ``id`` and plain values; every ``*sha256`` value 64 hex digits."""
    if not isinstance(value, Mapping):
        raise MapError(f"{where}: expected a mapping (id, kind, sha256 of the model, ...), got {value!r}")
    if "id" not in value:
        raise MapError(f"{where}.id: missing")
    for key, v in value.items():
        if not isinstance(key, str):
            raise MapError(f"{where}: key {key!r} is not a string")
        if key == "id" and not (isinstance(v, str) and v):
            raise MapError(f"{where}.id: expected a non-empty string, got {v!r}")
        if key.endswith("sha256") and not (isinstance(v, str) and SHA256_HEX.fullmatch(v)):
            raise MapError(f"{where}.{key}: expected 64 hexadecimal digits, got {v!r}")
        if key in ("channels", "stride") and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_DIM):
            raise MapError(f"{where}.{key}: expected an integer in [1, {MAX_DIM}], got {v!r}")
        if not isinstance(v, (str, int, float, bool)):
            raise MapError(f"{where}.{key}: expected a plain value, got {v!r}")
    return dict(value)


def _check_factory(factory: str, dim: int, where: str) -> None:
    import faiss

    numbers = [int(n) for n in re.findall(r"\d+", factory)]
    if len(factory) > 200 or any(n > MAX_FACTORY_NUMBER for n in numbers):
        raise MapError(f"{where}: {factory[:60]!r} is too large (at most 200 characters and numbers up to "
                       f"{MAX_FACTORY_NUMBER})")
    try:
        faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise MapError(f"{where}: FAISS does not accept {factory!r} for {dim}-d descriptors ({reason})") from None


def validate_manifest(raw: Any, where: str) -> MapManifest:
    """Check a parsed manifest (format name and version already checked): its hash, every value, every file
    name; MapError naming ``where`` (the manifest file), the field and what was expected."""
    if not isinstance(raw, dict):
        raise MapError(f"{where}: expected a mapping")
    verify_manifest_sha256(raw, where)
    for key in _KEYS:
        if key not in raw:
            raise MapError(f"{where}: missing key '{key}'")
    unknown = sorted(str(k) for k in raw if k not in (*_KEYS, HASH_KEY))
    if unknown:
        raise MapError(f"{where}: unknown key(s) {', '.join(unknown)}")
    summary = _record(Summary, {k: raw[k] for k in ("created", "created_by", "frame_count", "frame_id",
                                                    "input_size")}, where)
    if len(summary.input_size) != 2:
        raise MapError(f"{where}: input_size: expected 2 values (height, width), got {list(summary.input_size)}")
    if not summary.frame_id:
        raise MapError(f"{where}: frame_id: expected a non-empty string")
    raw_head = raw["head"]
    head_type = raw_head.get("type") if isinstance(raw_head, Mapping) else None
    head = _record(HeadEntry, raw_head, where, "head",
                   ("type", "num_clusters", "feature_dim", "output_dim") if head_type == "vlad" else ("type",))
    descriptor = _record(DescriptorEntry, raw["descriptor"], where, "descriptor")
    index = _record(IndexEntry, raw["index"], where, "index")
    encoder = _encoder(raw["encoder"], f"{where}: encoder")
    for key in ("sections", "provenance"):
        if not isinstance(raw[key], dict):
            raise MapError(f"{where}: {key}: expected a mapping, got {raw[key]!r}")
    if not isinstance(raw["files"], dict):
        raise MapError(f"{where}: files: expected a mapping of file name -> sha256 and bytes")
    files = {check_file_name(rel, where): _record(FileEntry, meta, where, f"files.{rel}")
             for rel, meta in raw["files"].items()}

    frame_table = FRAME_TABLE_FILE.get(raw.get("format_version"), FRAME_TABLE_FILE[2])
    for rel in (frame_table, *REQUIRED_FILES):
        if rel not in files:
            raise MapError(f"{where}: lists no {rel}")
    other_table = next(f for f in FRAME_TABLE_FILE.values() if f != frame_table)
    if other_table in files:
        raise MapError(f"{where}: lists {other_table}, which maps of format version {raw.get('format_version')} do "
                       f"not have (their frame table is {frame_table})")
    if head.type == "vlad" and "head.npz" not in files:
        raise MapError(f"{where}: head.type: vlad but the files list no head.npz")
    if head.type == "none" and "head.npz" in files:
        raise MapError(f"{where}: head.type: none but the files list head.npz")
    if head.type == "none" and set(raw_head) != {"type"}:
        raise MapError(f"{where}: head: a head of type none has no other keys, got {sorted(raw_head)}")
    if head.type == "vlad" and head.output_dim != descriptor.dim:
        raise MapError(f"{where}: descriptor.dim: {descriptor.dim} but head.output_dim is {head.output_dim}")
    _check_factory(index.factory, descriptor.dim, f"{where}: index.factory")
    if PATCH_SECTION in raw["sections"]:
        check_patch_section(raw["sections"][PATCH_SECTION], (summary.input_size[0], summary.input_size[1]), where)
    return MapManifest(summary, encoder, head, descriptor, index, dict(raw["sections"]), dict(raw["provenance"]),
                       files, raw)


def check_map_data(manifest: MapManifest, frame_count: int, descriptors: np.ndarray, head: VladHead | None,
                   index: Any, where: str) -> None:
    """Compare what the manifest says with the data read from the map; MapError naming the field."""
    if manifest.summary.frame_count != frame_count:
        table = "frames.npz" if "frames.npz" in manifest.files else "frames.csv"
        raise MapError(f"{where}: frame_count: {manifest.summary.frame_count} but {table} holds {frame_count} frames")
    expected = (frame_count, manifest.descriptor.dim)
    if tuple(descriptors.shape) != expected or descriptors.dtype != np.float32:
        raise MapError(f"{where}: descriptor.dim: descriptors.npy is {descriptors.dtype}{tuple(descriptors.shape)}, "
                       f"the manifest says float32{expected}")
    if head is not None:
        for key in ("num_clusters", "feature_dim", "output_dim"):
            if getattr(manifest.head, key) != getattr(head, key):
                raise MapError(f"{where}: head.{key}: {getattr(manifest.head, key)} but head.npz holds "
                               f"{getattr(head, key)}")
    if index.d != manifest.descriptor.dim or index.ntotal != frame_count:
        raise MapError(f"{where}: global.faiss holds {index.ntotal} vectors of dimension {index.d}, the manifest "
                       f"says {frame_count} of dimension {manifest.descriptor.dim}")
