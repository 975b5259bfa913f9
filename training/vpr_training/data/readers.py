"""Dataset readers by layout: MSLS, image folders + pose files, Pitts/Tokyo (.mat / .npz), Nordland.

Each reader turns a :class:`DatasetConfig` into a :class:`~vpr_training.data.places.PlaceSet`. They are
registered by name in :data:`DATASET_READERS` (``@register_reader("name")``) so new layouts are additions.
Nothing here downloads anything: point ``root`` at data you have. Layouts that ``vpr_convert`` also reads
(MSLS, Nordland) are parsed by its parsers in :mod:`vpr_ros.io.datasets`, so both read a folder alike.

Layouts
-------
``msls``  Mapillary SLS: ``root/{train_val,test}/<city>/{query,database}/`` with ``postprocessed.csv``
          (``key, easting, northing, night, view_direction``), ``raw.csv`` (``key, lon, lat, ca, captured_at,
          pano``; ``ca`` is the compass angle in degrees), ``seq_info.csv`` (``key, sequence_key,
          frame_number``) and ``images/<key>.jpg`` (:func:`vpr_ros.io.datasets.msls.read_msls_folder`; the
          rows of ``postprocessed.csv`` are the images). Panoramas are excluded by default. UTM coordinates of
          different cities are moved 10,000 km apart so no place is ever a positive across cities.
``folders`` Two image folders with the pose files of ``build_map`` (CSV ``name,x,y[,z][,yaw|q..]`` or
          TUM): ``query_dir`` + ``query_poses``, ``db_dir`` + ``db_poses``. Headings come from the poses.
``pitts`` Pitts250k/30k and Tokyo 24/7/TM: ``ground_truth`` is the NetVLAD ``dbStruct`` ``.mat``
          (``dbImage``, ``utmDb``, ``qImage``, ``utmQ``) or an ``.npz`` with ``db_images``, ``db_utm``
          (N, 2), ``query_images``, ``query_utm`` (Q, 2) and optionally ``query_night`` (Q,); database
          image names are relative to ``root``, query names to ``query_root`` (default: ``root``).
``list``  One CSV file (``list_file``) with a header ``role,image,x,y,heading``: one row per image, ``role``
          ``query`` or ``db``, position ``x, y`` and heading in degrees (empty = unknown). ``vpr-adapt`` writes
          its train / validation splits this way, so any traversals it reads (folders, bags, aligned seasons)
          reach the trainer alike.
``nordland`` ``root/<season>/images-NNNNN.png`` (the Nordland frames, read by
          :func:`vpr_ros.io.datasets.nordland.season_frames`): query season ``query_season``, database season
          ``db_season``; the position of a frame is its number in the full-rate video
          (``images-00120.png`` -> 120), so with frames every 10 video frames the default 10 / 25
          thresholds make +-1 step a positive and more than 2 steps a negative.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vpr_ros.config import setting
from vpr_ros.io.datasets.msls import read_msls_folder
from vpr_ros.io.datasets.nordland import season_frames
from vpr_ros.io.poses import quaternion_to_yaw
from vpr_training.data.places import PlaceSet

#: Offset between MSLS cities (metres): UTM zones overlap numerically, cities must never be neighbours.
CITY_OFFSET_M = 1e7


@dataclass(frozen=True)
class DatasetConfig:
    """Where one split's images and positions come from (see ``vpr_training.data.readers`` for layouts)."""

    kind: str = setting("folders", "layout of the data: msls, folders, pitts, nordland (or a registered reader)")
    root: str = setting("", "dataset root (msls, pitts, nordland)")
    cities: tuple[str, ...] = setting((), "msls: cities to use (empty = every city folder under train_val/)")
    msls_subdir: str = setting("train_val", "msls: train_val or test")
    exclude_panoramas: bool = setting(True, "msls: skip images raw.csv marks as panoramas")
    query_dir: str = setting("", "folders: query image folder")
    query_poses: str = setting("", "folders: query pose file (CSV or TUM, as for build_map)")
    db_dir: str = setting("", "folders: database image folder")
    db_poses: str = setting("", "folders: database pose file")
    ground_truth: str = setting("", "pitts: dbStruct .mat or .npz with names and UTM positions")
    query_root: str = setting("", "pitts: folder the query names are relative to (default: root)")
    query_season: str = setting("winter", "nordland: season folder of the queries")
    db_season: str = setting("summer", "nordland: season folder of the database")
    first: int = setting(0, "keep only places from this index on (nordland/folders: by sorted file order)",
                         min=0)
    count: int = setting(0, "keep at most this many places from 'first' (0 = all)", min=0)
    stride: int = setting(1, "keep every stride-th place (nordland/folders)", min=1)
    labels: str = setting("", "semantic label maps (APPSVR / StructVPR): folder tree parallel to the images, one "
                          "single-channel PNG of class ids per image (empty = none); see data.label_maps")
    labels_base: str = setting("", "folder the image paths are taken relative to when finding their label maps "
                               "(empty = the deepest folder holding all images of the split)")
    list_file: str = setting("", "list: CSV with a header 'role,image,x,y,heading' (role query or db; heading in "
                             "degrees, empty if unknown; image paths absolute or relative to the file), as vpr-adapt "
                             "writes for its splits")
    label_mapping: str = setting("identity", "raw label ids -> model classes: identity, ade20k_6, or a YAML file "
                                 "of 'raw_id: class_id' lines")


Reader = Callable[[DatasetConfig], PlaceSet]
DATASET_READERS: dict[str, Reader] = {}


def register_reader(name: str) -> Callable[[Reader], Reader]:
    """Decorator: make a reader available as ``DatasetConfig.kind == name``."""

    def add(fn: Reader) -> Reader:
        DATASET_READERS[name] = fn
        return fn

    return add


def load_places(config: DatasetConfig) -> PlaceSet:
    """Read the split ``config`` describes; errors name the file or setting at fault."""
    if config.kind not in DATASET_READERS:
        raise ValueError(f"dataset kind {config.kind!r} is not one of {sorted(DATASET_READERS)}")
    places = DATASET_READERS[config.kind](config)
    if config.labels:
        attach_label_maps(places, config)
    return places


def attach_label_maps(places: PlaceSet, config: DatasetConfig) -> None:
    """Point every image of ``places`` at its label map under ``config.labels``; all must exist."""
    from vpr_training.data.label_maps import check_label_files, label_paths, mapping_table

    labels = _need(config.labels, "labels", config.kind)
    mapping_table(config.label_mapping)  # refuse a bad mapping now, not mid-training
    paths = label_paths(places.query_images + places.db_images, labels, config.labels_base or None)
    check_label_files(paths, f"{places.name}: labels {labels}")
    places.query_labels, places.db_labels = paths[:places.num_queries], paths[places.num_queries:]
    places.info["labels"] = {"root": str(labels), "mapping": config.label_mapping}
    readme = labels / "README.txt"
    if readme.is_file() and readme.read_text().startswith("Rule-based"):  # written by data.rule_labels
        places.info["labels"]["kind"] = "rule-based (colour/position rules), not a segmenter's output"


def _need(value: str, name: str, kind: str) -> Path:
    if not value:
        raise ValueError(f"dataset kind {kind!r} needs the setting '{name}'")
    path = Path(value)
    if not path.exists():
        raise FileNotFoundError(f"{name}: {path} does not exist")
    return path


def _window(n: int, config: DatasetConfig) -> np.ndarray:
    """Indices kept by first / count / stride."""
    rows = np.arange(config.first, n, config.stride)
    return rows[: config.count] if config.count else rows


# ---- MSLS ----------------------------------------------------------------------------------------
def _msls_side(folder: Path, exclude_panoramas: bool) -> dict[str, object]:
    """One city's query or database folder -> images, positions, headings, tags (rows in postprocessed.csv order)."""
    table = read_msls_folder(folder, ("postprocessed.csv", "raw.csv"))
    if exclude_panoramas:
        table = table.take(np.flatnonzero(~table.pano))
    return {"images": [str(p) for p in table.images], "xy": table.utm, "heading": table.compass,
            "night": table.night, "sideways": np.array([v.lower() == "sideways" for v in table.view_direction], bool),
            "sequences": table.sequence}


@register_reader("msls")
def read_msls(config: DatasetConfig) -> PlaceSet:
    """Mapillary SLS layout (module docstring)."""
    base = _need(config.root, "root", "msls") / config.msls_subdir
    if not base.is_dir():
        raise FileNotFoundError(f"root: {base} does not exist (expected root/{config.msls_subdir}/<city>/...)")
    cities = list(config.cities) or sorted(p.name for p in base.iterdir() if p.is_dir())
    if not cities:
        raise FileNotFoundError(f"root: no city folders under {base}")
    parts: dict[str, list[dict[str, object]]] = {"query": [], "database": []}
    for c, city in enumerate(cities):
        for side in parts:
            folder = base / city / side
            if not folder.is_dir():
                raise FileNotFoundError(f"MSLS city {city!r}: {folder} does not exist")
            entry = _msls_side(folder, config.exclude_panoramas)
            entry["xy"] = entry["xy"] + np.array([c * CITY_OFFSET_M, 0.0])  # type: ignore[operator]
            parts[side].append(entry)

    def cat(side: str, key: str) -> np.ndarray:
        return np.concatenate([np.asarray(e[key]) for e in parts[side]])

    def cat_list(side: str, key: str) -> list[str]:
        return [str(x) for e in parts[side] for x in e[key]]  # type: ignore[attr-defined]

    return PlaceSet(
        name=f"msls:{config.msls_subdir}:{','.join(cities)}",
        db_images=cat_list("database", "images"), db_positions=cat("database", "xy"),
        query_images=cat_list("query", "images"), query_positions=cat("query", "xy"),
        db_headings=cat("database", "heading"), query_headings=cat("query", "heading"),
        query_night=cat("query", "night"), query_sideways=cat("query", "sideways"),
        query_sequences=cat_list("query", "sequences"), db_sequences=cat_list("database", "sequences"),
        info={"layout": "msls", "root": str(config.root), "cities": cities})


# ---- image folders + pose files ------------------------------------------------------------------
def _folder_side(folder: str, poses: str, config: DatasetConfig, what: str) -> tuple[list[str], np.ndarray,
                                                                                     np.ndarray]:
    from vpr_ros.io.images import folder_source

    source = folder_source(_need(folder, f"{what}_dir", "folders"), _need(poses, f"{what}_poses", "folders"))
    frames = source.frames
    rows = _window(len(frames), config)
    yaw = np.degrees(quaternion_to_yaw(frames.orientations[rows]))
    return [frames.sources[i] for i in rows], frames.positions[rows], yaw


@register_reader("folders")
def read_folders(config: DatasetConfig) -> PlaceSet:
    """Query and database image folders with ``build_map``'s pose files (module docstring)."""
    q_images, q_pos, q_yaw = _folder_side(config.query_dir, config.query_poses, config, "query")
    d_images, d_pos, d_yaw = _folder_side(config.db_dir, config.db_poses, config, "db")
    has_heading = not (np.isnan(q_yaw).all() or np.isnan(d_yaw).all())
    return PlaceSet(name=f"folders:{Path(config.query_dir).name}->{Path(config.db_dir).name}",
                    db_images=d_images, db_positions=d_pos, query_images=q_images, query_positions=q_pos,
                    db_headings=d_yaw if has_heading else None, query_headings=q_yaw if has_heading else None,
                    info={"layout": "folders", "query_dir": config.query_dir, "db_dir": config.db_dir,
                          "first": config.first, "count": config.count, "stride": config.stride})


@register_reader("list")
def read_list(config: DatasetConfig) -> PlaceSet:
    """A CSV list of query and database images with positions (module docstring)."""
    import csv

    path = _need(config.list_file, "list_file", "list")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"role", "image", "x", "y"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"list_file {path}: missing columns {sorted(missing)} (header: role,image,x,y,heading)")
        rows = list(reader)
    sides: dict[str, dict[str, list]] = {"query": {"images": [], "xy": [], "heading": []},
                                          "db": {"images": [], "xy": [], "heading": []}}
    for line, row in enumerate(rows, start=2):
        role = row["role"].strip()
        if role not in sides:
            raise ValueError(f"list_file {path}, line {line}: role {role!r} is not 'query' or 'db'")
        image = Path(row["image"])
        sides[role]["images"].append(str(image if image.is_absolute() else path.parent / image))
        try:
            sides[role]["xy"].append((float(row["x"]), float(row["y"])))
            heading = (row.get("heading") or "").strip()
            sides[role]["heading"].append(float(heading) if heading else np.nan)
        except ValueError:
            raise ValueError(f"list_file {path}, line {line}: x, y and heading must be numbers") from None
    for role, side in sides.items():
        if not side["images"]:
            raise ValueError(f"list_file {path}: no '{role}' rows")
    q, d = sides["query"], sides["db"]
    q_heading, d_heading = np.asarray(q["heading"], float), np.asarray(d["heading"], float)
    has_heading = not (np.isnan(q_heading).all() or np.isnan(d_heading).all())
    return PlaceSet(name=f"list:{path.name}", db_images=d["images"], db_positions=np.asarray(d["xy"], float),
                    query_images=q["images"], query_positions=np.asarray(q["xy"], float),
                    db_headings=d_heading if has_heading else None, query_headings=q_heading if has_heading else None,
                    info={"layout": "list", "list_file": str(path)})


# ---- Pitts / Tokyo -------------------------------------------------------------------------------
def _mat_strings(cell: np.ndarray) -> list[str]:
    return [str(np.asarray(x).ravel()[0]) if np.asarray(x).size else "" for x in np.asarray(cell).ravel()]


def _read_db_struct(path: Path) -> dict[str, object]:
    """NetVLAD's ``dbStruct`` (.mat, MATLAB v5) or the equivalent .npz."""
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            missing = {"db_images", "db_utm", "query_images", "query_utm"} - set(npz.files)
            if missing:
                raise ValueError(f"{path}: missing arrays {sorted(missing)}")
            return {k: npz[k] for k in npz.files}
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path))
    except (ValueError, OSError, NotImplementedError) as exc:
        raise ValueError(f"{path}: not a readable MATLAB dbStruct ({exc})") from None
    if "dbStruct" not in mat:
        raise ValueError(f"{path}: no 'dbStruct' variable (has {sorted(k for k in mat if not k.startswith('_'))})")
    s = mat["dbStruct"][0, 0]
    names = s.dtype.names or ()
    # Older files store whichSet, dbImage, utmDb, qImage, utmQ ... by position, newer ones by name.
    get = (lambda k, i: s[k]) if "dbImage" in names else (lambda k, i: s[i])
    return {"db_images": np.array(_mat_strings(get("dbImage", 1))),
            "db_utm": np.asarray(get("utmDb", 2), dtype=np.float64).T,
            "query_images": np.array(_mat_strings(get("qImage", 3))),
            "query_utm": np.asarray(get("utmQ", 4), dtype=np.float64).T}


@register_reader("pitts")
def read_pitts(config: DatasetConfig) -> PlaceSet:
    """Pitts / Tokyo style ground truth (module docstring)."""
    gt = _need(config.ground_truth, "ground_truth", "pitts")
    root = _need(config.root, "root", "pitts")
    qroot = Path(config.query_root) if config.query_root else root
    data = _read_db_struct(gt)
    night = data.get("query_night")
    return PlaceSet(name=f"pitts:{gt.stem}",
                    db_images=[str(root / str(n)) for n in data["db_images"]],  # type: ignore[union-attr]
                    db_positions=np.asarray(data["db_utm"], np.float64),
                    query_images=[str(qroot / str(n)) for n in data["query_images"]],  # type: ignore[union-attr]
                    query_positions=np.asarray(data["query_utm"], np.float64),
                    query_night=None if night is None else np.asarray(night, bool),
                    info={"layout": "pitts", "ground_truth": str(gt)})


# ---- Nordland ------------------------------------------------------------------------------------
@register_reader("nordland")
def read_nordland(config: DatasetConfig) -> PlaceSet:
    """Nordland seasons (module docstring); only frames present in both seasons are kept."""
    root = _need(config.root, "root", "nordland")
    q, d = season_frames(root / config.query_season), season_frames(root / config.db_season)
    common = np.array(sorted(set(q) & set(d)))
    kept = common[_window(len(common), config)]
    positions = np.stack([kept.astype(np.float64), np.zeros(len(kept))], axis=1)
    return PlaceSet(name=f"nordland:{config.query_season}->{config.db_season}",
                    db_images=[str(d[int(k)]) for k in kept], db_positions=positions,
                    query_images=[str(q[int(k)]) for k in kept], query_positions=positions.copy(),
                    info={"layout": "nordland", "root": str(root), "frames": [int(kept[0]), int(kept[-1])],
                          "first": config.first, "count": config.count, "stride": config.stride})
