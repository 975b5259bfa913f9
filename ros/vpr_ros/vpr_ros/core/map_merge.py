"""Join reference maps built apart (other machines, other days) with the same encoder and vocabulary into one map.

``build_map --merge A B ... -o C``. The maps must agree on everything that makes their descriptors comparable and
their extra arrays joinable (:func:`check_mergeable`): encoder identity (id and every sha256 its record holds:
model file, model card, trained head), descriptor dimension, VLAD head (vocabulary, soft assignment and
PCA-whitening, array for array), network input size, frame id and stored per-frame arrays with their manifest
sections (e.g. the Patch-NetVLAD patch configuration). Anything else is refused with one line naming the two maps
and what differs.

The frames of the first map come first and keep their ids; each further map's frames follow, without the ones
whose source is already in the merged map (merging a map with itself adds nothing, as ``--append`` does), and
with their ids shifted past the largest id so far when any of them is taken. The index is the first map's (a
trained IVF index is not trained again: the other maps' descriptors are added to it, as an append does) unless
``retrain`` builds it afresh (``auto`` then chooses for the merged size). The output is written like any map
(atomically, under its lock, :meth:`ReferenceMap.save`); the input maps are only read.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vpr_ros.core.frames import FrameTable
from vpr_ros.core.refmap import ReferenceMap, check_overwritable, map_lock, recover_interrupted_swap
from vpr_ros.errors import InputError

log = logging.getLogger(__name__)


class IncompatibleMapsError(InputError):
    """Two maps cannot be merged: their descriptors or stored arrays are not comparable."""


def _encoder_identity(encoder: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in encoder.items() if k == "id" or k.endswith("sha256")}


def _head_arrays(refmap: ReferenceMap) -> dict[str, np.ndarray]:
    return {} if refmap.head is None else refmap.head.to_arrays()


def mismatch(a: ReferenceMap, b: ReferenceMap) -> str | None:
    """What keeps ``b`` from being merged into ``a`` (one phrase), or None when they can be merged."""
    if a.dim != b.dim:
        return f"descriptor dimension differs ({a.dim} vs {b.dim})"
    ida, idb = _encoder_identity(a.encoder), _encoder_identity(b.encoder)
    if ida != idb:
        keys = [k for k in sorted(set(ida) | set(idb)) if ida.get(k) != idb.get(k)]
        shown = ", ".join(f"{k} {str(ida.get(k))[:12]} vs {str(idb.get(k))[:12]}" for k in keys)
        return f"encoder differs ({shown})"
    ha, hb = _head_arrays(a), _head_arrays(b)
    if sorted(ha) != sorted(hb) or any(ha[k].shape != hb[k].shape or not np.array_equal(ha[k], hb[k]) for k in ha):
        return ("VLAD vocabulary / PCA-whitening differs (each map fitted its own; build the maps with the same "
                "vocabulary, e.g. grow one with --append)")
    if tuple(a.input_size) != tuple(b.input_size):
        return f"network input size differs ({a.input_size[1]}x{a.input_size[0]} vs {b.input_size[1]}x" \
               f"{b.input_size[0]})"
    if a.frame_id != b.frame_id:
        return f"frame_id differs ({a.frame_id!r} vs {b.frame_id!r})"
    if sorted(a.arrays) != sorted(b.arrays):
        return f"stored arrays differ ({sorted(a.arrays)} vs {sorted(b.arrays)})"
    if a.sections != b.sections:
        keys = sorted(k for k in set(a.sections) | set(b.sections) if a.sections.get(k) != b.sections.get(k))
        return f"manifest sections differ ({', '.join(keys)})"
    return None


def check_mergeable(paths: Sequence[Path], maps: Sequence[ReferenceMap]) -> None:
    """Refuse maps that cannot be merged with the first: IncompatibleMapsError naming both maps and the mismatch."""
    for path, refmap in zip(paths[1:], maps[1:], strict=True):
        reason = mismatch(maps[0], refmap)
        if reason is not None:
            raise IncompatibleMapsError(f"cannot merge {paths[0]} and {path}: {reason}")


def merge_maps(inputs: Sequence[str | Path], output: str | Path, overwrite: bool = False, retrain: bool = False,
               verify: bool = True, provenance: dict[str, Any] | None = None) -> ReferenceMap:
    """Merge the maps at ``inputs`` (in that order) into a new map at ``output`` (see the module doc).

    Raises:
        IncompatibleMapsError: two maps differ in encoder, vocabulary, dimension, input size, frame id or arrays.
        FileExistsError: ``output`` exists and ``overwrite`` is off.
        InputError: no input, or ``output`` is (inside) an input.
    """
    from vpr_ros.core.map_builder import check_output_apart_from_inputs

    paths = [Path(p) for p in inputs]
    output = Path(output)
    if not paths:
        raise InputError("--merge needs at least one map")
    check_output_apart_from_inputs(output, {f"map {p}": p for p in paths})
    with map_lock(output):
        recover_interrupted_swap(output)
        if output.exists():
            if not overwrite:
                raise FileExistsError(f"{output} already exists (use --overwrite to replace it)")
            check_overwritable(output)
        maps = [ReferenceMap.load(p, verify=verify) for p in paths]
        check_mergeable(paths, maps)
        base = maps[0]
        tables, descriptors = [base.frames], [base.descriptors]
        arrays: dict[str, list[np.ndarray]] = {name: [np.asarray(a)] for name, a in base.arrays.items()}
        known = set(base.frames.sources)
        next_id = int(base.frames.ids.max()) + 1
        used_ids = set(base.frames.ids.tolist())
        record = [{"map": str(paths[0]), "frames": len(base), "id_offset": 0}]
        for path, refmap in zip(paths[1:], maps[1:], strict=True):
            rows = np.flatnonzero([s not in known for s in refmap.frames.sources])
            if len(rows) < len(refmap):
                log.info("%s: %d of %d frames are already in the merged map and are skipped", path,
                         len(refmap) - len(rows), len(refmap))
            if len(rows) == 0:
                record.append({"map": str(path), "frames": 0, "id_offset": 0})
                continue
            frames = refmap.frames.take(rows)
            offset = 0
            if used_ids.intersection(frames.ids.tolist()):
                offset = next_id - int(frames.ids.min())
                frames = FrameTable(frames.ids + offset, frames.names, frames.sources, frames.stamps,
                                    frames.positions, frames.orientations)
                log.info("%s: frame ids shifted by %d (they clash with the maps before it)", path, offset)
            tables.append(frames)
            descriptors.append(np.asarray(refmap.descriptors[rows]))
            for name, array in refmap.arrays.items():
                arrays[name].append(np.asarray(array[rows]))
            known.update(frames.sources)
            used_ids.update(frames.ids.tolist())
            next_id = max(next_id, int(frames.ids.max()) + 1)
            record.append({"map": str(path), "frames": len(rows), "id_offset": offset})

        assert base.index_spec is not None
        merged = ReferenceMap(frames=FrameTable.concatenate(tables), descriptors=np.concatenate(descriptors),
                              head=base.head, encoder=dict(base.encoder), input_size=base.input_size,
                              index_config=base.index_spec.request(), frame_id=base.frame_id,
                              sections=dict(base.sections),
                              arrays={name: np.concatenate(parts) for name, parts in arrays.items()},
                              provenance={**(provenance or {}), "merged": record})
        if not retrain:
            # The first map's index, trained or not, with the other maps' descriptors added (no retraining).
            index = base.index_in_ram()
            for part in descriptors[1:]:
                index.add(np.ascontiguousarray(part, dtype=np.float32))
            merged._index, merged.index_spec = index, base.index_spec
        merged.save(output, overwrite=overwrite)
    return merged
