"""``vpr-adapt``'s pipeline: traversals -> adapted encoder + sequence models + map + held-out report.

Steps, each resumable (its outputs are written atomically, and a step whose inputs did not change since it
finished is skipped when the same command runs again; the encoder's training itself resumes from its last
epoch, as ``vpr-train --resume``):

1. ``split``   places along the route -> ``splits/{train,val}.csv`` (:mod:`vpr_training.adapt.route`)
2. ``train``   the frame encoder (NetVLAD on EfficientNet-Lite0, the sub-cache miner picking positives and
               negatives from the places) with early stopping on validation -> ``train/best.pt``
3. ``export``  ONNX encoder + head + model card (parity-checked) -> ``models/adapted.*``
4. ``maps``    the whole route of the map traversal, with the adapted and with the default encoder, both at the
               adapted model's input size -> ``maps/{adapted,default}``
5. ``encode``  every frame of the other traversals with both encoders -> ``descriptors/*.npy``
6. ``sequence`` one learned sequence model (SeqNet) per sequence length, trained on the training places'
               frame descriptors, early-stopped on validation -> ``models/adapted_seqnet<L>.*``
7. ``report``  validation and held-out test recall of every encoder x method -> ``report.json``,
               ``report.png``, and ``localize.yaml`` (the node's settings with the method that did best on
               validation: settings are chosen on validation, never on the test places)
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vpr_ros.config import section, setting
from vpr_ros.core.files import atomic_write_text, sha256_file
from vpr_ros.core.paths import resolve_path
from vpr_ros.core.sequence import SequenceConfig
from vpr_training.adapt.route import PlaceSplit, Route, Traversal, build_route, write_split_list
from vpr_training.seqnet import SeqNetConfig

log = logging.getLogger("vpr_training.adapt")

DEFAULT_MODEL = "models/efficientnet_lite0_b10.onnx"


@dataclass(frozen=True)
class AdaptConfig:
    """What ``vpr-adapt`` trains and how it evaluates (defaults: a few thousand frames on 2 CPU cores)."""

    seed: int = setting(0, "seed of every random choice (training, mining, k-means, sequence model)", min=0)
    image_height: int = setting(0, "network input height for both encoders (0 = the images' height, up to 2x "
                                "enlarged, longer side at most 256 px)", min=0)
    image_width: int = setting(0, "network input width (0 = as image_height)", min=0)
    epochs: int = setting(12, "encoder training epochs at most (early stopping on validation)", min=1)
    iterations_per_epoch: int = setting(40, "training iterations (batches of tuples) per epoch", min=1)
    patience: int = setting(4, "stop encoder training after this many epochs without a better validation "
                            "recall@1", min=1)
    num_clusters: int = setting(32, "NetVLAD clusters of the adapted encoder", min=2)
    descriptor_dim: int = setting(128, "descriptor dimension after PCA-whitening", min=1)
    train_layers: int = setting(5, "trailing backbone blocks trained", min=0)
    lr: float = setting(1e-3, "encoder learning rate (Adam)", min=0.0)
    positive_radius: float = setting(
        0.0, "a map frame is a correct match within this distance (pose units; aligned traversals: places); "
        "0 = 1 place when aligned, else 5 m", min=0.0)
    sequence_lengths: tuple[int, ...] = setting((10, 20), "query sequence lengths evaluated (and one sequence "
                                                "model trained per length)", min=1)
    max_place_distance: float = setting(10.0, "traversals with poses: a frame farther than this from every map "
                                        "frame is on no place and unused", min=0.0)
    default_model: str = setting(DEFAULT_MODEL, "the encoder the adapted one is compared with (VLAD "
                                 "vocabulary fitted on the map)")
    device: str = setting("auto", "auto (CUDA when available), cuda or cpu", choices=("auto", "cuda", "cpu"))
    sequence: SequenceConfig = section(SequenceConfig)
    seqnet: SeqNetConfig = section(SeqNetConfig)


@dataclass
class StepLog:
    """Which steps finished with which inputs (``state.json``), so a rerun skips them."""

    path: Path
    done: dict[str, str] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path) -> StepLog:
        return cls(path, json.loads(path.read_text()) if path.is_file() else {})

    def finished(self, step: str, fingerprint: str) -> bool:
        return self.done.get(step) == fingerprint

    def mark(self, step: str, fingerprint: str) -> None:
        self.done[step] = fingerprint
        atomic_write_text(self.path, json.dumps(self.done, indent=1))


def fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def input_size(traversal: Traversal, config: AdaptConfig) -> tuple[int, int]:
    """(height, width) both encoders run at: as configured, else the images' size enlarged up to 2x with the
    longer side at most 256 px, rounded to multiples of 16 (the encoder's stride)."""
    if config.image_height:
        return config.image_height, config.image_width or config.image_height
    h, w = traversal.source.load_image(0).shape[:2]
    scale = min(2.0, 256.0 / max(h, w))
    return max(16, round(h * scale / 16) * 16), max(16, round(w * scale / 16) * 16)


def train_config_overrides(config: AdaptConfig, splits: Path, size: tuple[int, int], radius: float,
                           train_queries: int) -> dict[str, Any]:
    """The ``vpr-train`` settings of the adapted encoder (sizes of the miner scaled to the training set)."""
    subset = max(16, min(300, train_queries // 4))
    return {
        "seed": config.seed, "epochs": config.epochs, "iterations_per_epoch": config.iterations_per_epoch,
        "patience": config.patience, "batch_size": 4, "image_height": size[0], "image_width": size[1],
        "eval_batch_size": 32, "workers": 0, "probe_tuples": 24, "device": config.device,
        # Decoded, resized images kept in memory: at most about 1 GB of them (float32 RGB).
        "cache_images": max(0, min(6000, int(1e9 // (size[0] * size[1] * 3 * 4)))),
        "train.kind": "list", "train.list_file": str(splits / "train.csv"),
        "val.kind": "list", "val.list_file": str(splits / "val.csv"),
        "mining.subset_size": subset, "mining.refresh_every": 10, "mining.cached_negatives": subset,
        "mining.negative_pool": subset, "mining.positive_dist": radius, "mining.negative_dist": 2.5 * radius,
        "mining.balance": False,
        "model.backbone": "efficientnet_lite0", "model.block": 10, "model.train_layers": config.train_layers,
        "model.num_clusters": config.num_clusters, "model.kmeans_images": 100,
        "model.kmeans_features_per_image": 50, "model.pca_dim": config.descriptor_dim,
        "model.whiten_regularisation": 1.0, "optim.lr": config.lr,
        "validation.positive_dist": radius, "validation.select_on": 1, "validation.recall_ns": (1, 5),
    }


class AdaptRun:
    """One ``vpr-adapt`` run folder (module docstring); :meth:`run` does every step not yet done."""

    def __init__(self, traversals: list[Traversal], map_name: str, out_dir: Path, config: AdaptConfig,
                 aligned: bool, split: str | None = None, progress: bool = True) -> None:
        self.traversals = traversals
        self.out = Path(out_dir)
        self.config = config
        self.progress = progress
        self.route: Route = build_route(traversals, map_name, aligned, config.max_place_distance)
        gap = max(config.sequence_lengths)
        self.split = PlaceSplit.parse(split, self.route.num_places) if split else \
            PlaceSplit.default(self.route.num_places, gap)
        self.radius = config.positive_radius or (1.0 if aligned else 5.0)
        self.map_traversal = traversals[[t.name for t in traversals].index(map_name)]
        self.query_traversals = [t for t in traversals if t.name != map_name]
        self.size = input_size(self.map_traversal, config)
        self.steps = StepLog.open(self.out / "state.json")
        self.timings: dict[str, float] = {}

    # ---- steps ----------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        t_all = time.perf_counter()
        inputs = fingerprint(asdict(self.config), self.split.describe(), self.size,
                             {t.name: t.images for t in self.traversals})
        splits = self._timed("split", lambda: self.write_splits(inputs))
        checkpoint = self._timed("train", lambda: self.train_encoder(inputs, splits))
        model = self._timed("export", lambda: self.export_encoder(checkpoint))
        maps = self._timed("maps", lambda: self.build_maps(model))
        descriptors = self._timed("encode", lambda: self.encode_queries(maps))
        sequence_models = self._timed("sequence", lambda: self.train_sequence_models(maps, descriptors))
        report = self._timed("report", lambda: self.evaluate(maps, descriptors, sequence_models))
        report["seconds"] = {**self.timings, "total": round(time.perf_counter() - t_all, 1)}
        atomic_write_text(self.out / "report.json", json.dumps(report, indent=1))
        return report

    def _timed(self, step: str, fn: Any) -> Any:
        t0 = time.perf_counter()
        log.info("step %s", step)
        result = fn()
        self.timings[step] = round(time.perf_counter() - t0, 1)
        return result

    def write_splits(self, inputs: str) -> Path:
        splits = self.out / "splits"
        splits.mkdir(exist_ok=True)
        self.train_queries = write_split_list(splits / "train.csv", self.route, self.split, self.traversals, "train")
        val_queries = write_split_list(splits / "val.csv", self.route, self.split, self.traversals, "val")
        if self.train_queries < 8 or val_queries < 4:
            from vpr_training.adapt.route import AdaptInputError

            raise AdaptInputError(f"split {self.split.describe()}: {self.train_queries} training and {val_queries} "
                                  "validation query frames; need at least 8 and 4 (more traversal overlap, or "
                                  "another --split)")
        log.info("places along the route: %s (%s); %d training and %d validation query frames", self.split.describe(),
                 self.route.unit, self.train_queries, val_queries)
        return splits

    def train_encoder(self, inputs: str, splits: Path) -> Path:
        from vpr_training.config import load_train_config

        run_dir = self.out / "train"
        overrides = train_config_overrides(self.config, splits, self.size, self.radius, self.train_queries)
        key = fingerprint(inputs, overrides)
        best = run_dir / "best.pt"
        if self.steps.finished("train", key) and best.is_file():
            log.info("encoder already trained (%s)", best)
            return best
        from vpr_training.trainer import Trainer

        cfg = load_train_config(None, overrides)
        resume = self.steps.done.get("train_started") == key
        metrics = run_dir / "metrics.json"
        if resume and best.is_file() and metrics.is_file() and "final" in json.loads(metrics.read_text()):
            # Training finished (possibly stopped early) but the run was interrupted before it was recorded.
            self.steps.mark("train", key)
            return best
        self.steps.mark("train_started", key)
        Trainer(cfg, run_dir, resume=resume, progress=self.progress).run()
        self.steps.mark("train", key)
        return best

    def export_encoder(self, checkpoint: Path) -> Path:
        from vpr_training.export.onnx_export import export_checkpoint

        key = sha256_file(checkpoint)
        onnx = self.out / "models" / "adapted.onnx"
        if self.steps.finished("export", key) and onnx.is_file():
            return onnx
        val = self.out / "splits" / "val.csv"
        images = [line.split(",")[1] for line in val.read_text().splitlines()[1:]]
        export_checkpoint(checkpoint, self.out / "models", name="adapted",
                          check_images=images[:: max(1, len(images) // 8)])
        self.steps.mark("export", key)
        return onnx

    def _encoder_config(self, model: str) -> Any:
        from vpr_ros.core.encoders import EncoderConfig

        return EncoderConfig(model=model, device=self.config.device)

    def build_maps(self, adapted: Path) -> dict[str, Any]:
        """The whole route of the map traversal, with each encoder, as ReferenceMaps + their Localizers."""
        from vpr_ros.core.encoders import make_encoder
        from vpr_ros.core.localizer import Localizer, LocalizerConfig
        from vpr_ros.core.map_builder import BuildMapConfig, build_map
        from vpr_ros.core.refmap import ReferenceMap

        out: dict[str, Any] = {}
        for name, model in (("default", str(resolve_path(self.config.default_model, what="default_model"))),
                            ("adapted", str(adapted))):
            enc_cfg = self._encoder_config(model)
            encoder = make_encoder(enc_cfg)
            path = self.out / "maps" / name
            key = fingerprint(encoder.describe(), self.size, self.map_traversal.images)
            if self.steps.finished(f"map_{name}", key) and (path / "manifest.yaml").is_file():
                refmap = ReferenceMap.load(path)
            else:
                cfg = BuildMapConfig(encoder=enc_cfg, image_height=self.size[0], image_width=self.size[1])
                refmap = build_map(self.map_traversal.source, path, cfg, overwrite=path.exists(),
                                   progress=self.progress, encoder=encoder)
                self.steps.mark(f"map_{name}", key)
            out[name] = Localizer(refmap, encoder, LocalizerConfig(encoder=enc_cfg))
        return out

    def encode_queries(self, maps: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
        """Global descriptors of every frame of every traversal with each encoder (the map traversal's are the
        map's own), cached in ``descriptors/`` by encoder identity."""
        from tqdm import tqdm

        from vpr_ros.core.files import atomic_output

        folder = self.out / "descriptors"
        folder.mkdir(exist_ok=True)
        result: dict[str, dict[str, np.ndarray]] = {}
        for name, loc in maps.items():
            result[name] = {self.map_traversal.name: np.asarray(loc.refmap.descriptors)}
            for t in self.query_traversals:
                key = fingerprint(loc.encoder.describe(), self.size, t.images)
                path = folder / f"{name}_{t.name}_{key}.npy"
                if path.is_file():
                    result[name][t.name] = np.load(path, allow_pickle=False)
                    continue
                chunks = []
                for start in tqdm(range(0, len(t), 64), desc=f"encode {t.name} ({name})", unit="batch",
                                  disable=not self.progress):
                    images = [t.source.load_image(i) for i in range(start, min(start + 64, len(t)))]
                    chunks.append(np.stack([f.global_descriptor for f in loc.encode_many(images)]))
                result[name][t.name] = np.concatenate(chunks)
                with atomic_output(path, "wb") as fh:
                    np.save(fh, result[name][t.name], allow_pickle=False)
        return result

    def _traversal_part(self, descriptors: np.ndarray, traversal: Traversal, which: str) -> Any:
        from vpr_training.seqnet import TraversalDescriptors

        rows = self.split.rows(self.route.place_of[traversal.name], which)
        coord = self.route.coordinate[self.route.place_of[traversal.name][rows]]
        # A new segment wherever frames are not consecutive in the recording (a gap in the split).
        segments = np.concatenate([[0], np.cumsum(np.diff(rows) != 1)])
        return TraversalDescriptors(descriptors[rows], coord, segments)

    def _whole_map(self, descriptors: np.ndarray) -> Any:
        from vpr_training.seqnet import TraversalDescriptors

        return TraversalDescriptors(descriptors, self.route.coordinate, np.zeros(len(descriptors), np.int64))

    def train_sequence_models(self, maps: dict[str, Any],
                              descriptors: dict[str, dict[str, np.ndarray]]) -> dict[int, str]:
        """One SeqNet per sequence length on the adapted encoder's descriptors (query <-> map, both ways)."""
        import dataclasses

        from vpr_ros.core.sequence_model import SequenceModelCard, frame_encoder_identity
        from vpr_training.seqnet import export_seqnet, train_seqnet

        desc = descriptors["adapted"]
        refmap = maps["adapted"].refmap
        identity = frame_encoder_identity(refmap.encoder, refmap.dim)
        scale = 1.0 if self.route.aligned else float(np.median(np.diff(self.route.coordinate)) or 1.0)
        models: dict[int, str] = {}
        for length in self.config.sequence_lengths:
            cfg = dataclasses.replace(self.config.seqnet, length=length, seed=self.config.seed,
                                      positive_radius=self.radius, negative_radius=2.5 * self.radius)
            path = self.out / "models" / f"adapted_seqnet{length}.onnx"
            key = fingerprint(identity, asdict(cfg), self.split.describe(), scale)
            if self.steps.finished(f"seqnet{length}", key) and path.is_file():
                models[length] = str(path)
                continue
            m = self.map_traversal
            train, val = [], []
            for t in self.query_traversals:
                query_part = self._traversal_part(desc[t.name], t, "train")
                map_part = self._traversal_part(desc[m.name], m, "train")
                train += [(query_part, map_part), (map_part, query_part)]
                # Validation queries against the whole map (as the node sees it), not just the validation places.
                val.append((self._traversal_part(desc[t.name], t, "val"), self._whole_map(desc[m.name])))
            model, history = train_seqnet(train, val, cfg, progress=self.progress)
            check_part = val[0][0]
            _, rows = check_part.window_rows(length)
            card = export_seqnet(model, self.out / "models", f"adapted_seqnet{length}", length=length,
                                 frame_encoder=identity, check_windows=check_part.descriptors[rows[:8]],
                                 sections={"training": {**history, "split": self.split.describe(),
                                                        "traversals": [t.name for t in self.traversals]}})
            SequenceModelCard.load(card)
            self.steps.mark(f"seqnet{length}", key)
            models[length] = str(path)
        return models

    def query_set(self, loc: Any, descriptors: dict[str, np.ndarray], which: str) -> Any:
        """The ``which`` stretch's frames of every non-map traversal, as encoded queries with their positives."""
        from vpr_ros.core.localizer import QueryFeatures
        from vpr_ros.eval.ground_truth import positives_within
        from vpr_training.adapt.evaluation import QuerySet

        features, stamps, traversal, positives = [], [], [], []
        map_places = self.route.place_of[self.map_traversal.name]
        empty = np.zeros((1, 1, 1, 1), np.float32)  # re-ranking is not part of this comparison
        for k, t in enumerate(self.query_traversals):
            rows = self.split.rows(self.route.place_of[t.name], which)
            features += [QueryFeatures(empty, descriptors[t.name][r]) for r in rows]
            stamps.append(t.source.frames.stamps[rows])
            traversal.append(np.full(len(rows), k))
            if self.route.aligned:
                place = self.route.place_of[t.name][rows]
                positives += [np.flatnonzero(np.abs(map_places - p) <= self.radius) for p in place]
            else:
                xyz = np.concatenate([self.route.positions[t.name][rows], np.zeros((len(rows), 1))], axis=1)
                ref = loc.refmap.frames.positions
                positives += list(positives_within(xyz, ref, self.radius).positives)
        return QuerySet(features, np.concatenate(stamps), np.concatenate(traversal), positives)

    def evaluate(self, maps: dict[str, Any], descriptors: dict[str, dict[str, np.ndarray]],
                 sequence_models: dict[int, str]) -> dict[str, Any]:
        from vpr_training.adapt.evaluation import method_configs, run_method

        results: dict[str, Any] = {}
        for which in ("val", "test"):
            results[which] = {}
            for name, loc in maps.items():
                queries = self.query_set(loc, descriptors[name], which)
                learned = sequence_models if name == "adapted" else {}
                results[which][name] = {label: run_method(loc, seq, queries) for label, seq in
                                        method_configs(self.config.sequence_lengths, self.config.sequence,
                                                       learned).items()}
        best = recommend(results["val"]["adapted"], self.config.sequence_lengths[0])
        report = {"split": self.split.describe(), "unit": self.route.unit, "positive_radius": self.radius,
                  "input_size": list(self.size), "traversals": {t.name: len(t) for t in self.traversals},
                  "map_traversal": self.map_traversal.name, "seed": self.config.seed,
                  "models": {"adapted": str(self.out / "models" / "adapted.onnx"),
                             "sequence": {str(k): v for k, v in sequence_models.items()},
                             "default": self.config.default_model},
                  "maps": {name: str(self.out / "maps" / name) for name in maps},
                  "recommended": best, "results": results}
        write_localize_config(self.out / "localize.yaml", self.out, best, sequence_models, self.config)
        from vpr_training.adapt.plot import plot_report

        plot_report(report, self.out / "report.png")
        return report


def recommend(val_results: dict[str, Any], length: int) -> str:
    """The adapted encoder's method with the best validation recall@1 among those at ``length`` frames (and the
    single frame): settings are frozen on validation."""
    candidates = {k: v for k, v in val_results.items() if k == "single frame" or k.endswith(f" {length}")}
    return max(candidates, key=lambda k: (candidates[k]["recall@1"], candidates[k]["auc"]))


def write_localize_config(path: Path, out: Path, method: str, sequence_models: dict[int, str],
                          config: AdaptConfig) -> None:
    """The node's settings for the adapted model and map with the recommended sequence method."""
    import yaml

    map_path = (out / "maps" / "adapted").resolve()
    model = (out / "models" / "adapted.onnx").resolve()
    params: dict[str, Any] = {"map_path": str(map_path), "localizer.encoder.model": str(model)}
    if method != "single frame":
        kind, length = method.rsplit(" ", 1)
        params.update({"localizer.sequence.method": kind, "localizer.sequence.length": int(length)})
        if kind in ("learned", "hierarchical"):
            params["localizer.sequence.model"] = str(Path(sequence_models[int(length)]).resolve())
    text = ("# Written by vpr-adapt: the adapted encoder, its map and the sequence method that did best on the\n"
            f"# validation places ({method}). Use:\n#   ros2 launch vpr_ros localize.launch.py params_file:={path} "
            f"map_path:={map_path} model:={model}\n")
    atomic_write_text(path, text + yaml.safe_dump({"/**": {"ros__parameters": params}}, sort_keys=False))
