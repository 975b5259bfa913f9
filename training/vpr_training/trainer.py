"""The training loop: k-means initialisation, sub-cache mining, triplet training, validation, PCA, checkpoints.

One :class:`Trainer` runs on CPU, on one GPU (with AMP), or in every process of a ``torchrun`` launch (DDP:
NCCL on GPUs, gloo on CPUs). In DDP every process holds the same sub-cache (each encodes a shard of it and
the shards are gathered), mines the same tuples from the same seeds, and trains on its share of each batch;
gradients are averaged by DDP. Only rank 0 writes files.

Output folder::

    init.pt          the k-means-initialised model (epoch 0)
    last.pt          after the last finished epoch (``--resume`` continues from here)
    best.pt          best validation recall@5 so far; after training also holds the fitted PCA-whitening
    metrics.json     per-epoch loss and recall, initial and final figures, data and config
    tensorboard/     scalars (loss, recall@N, learning rate, cache size)

Extension points (for models added later): :class:`TrainerHook` callbacks, :meth:`Trainer.compute_loss`,
extra loss terms (``trainer.loss.add``, or a model's :meth:`VprModel.loss_terms`), and the model registry.
Models declare what they read (:attr:`VprModel.input_kind`: images, or label maps for StructVPR's seg-branch)
and whether their initialisation needs the label maps' classes (:attr:`VprModel.init_needs_labels`: APPSVR).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import random
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from vpr_ros.config import config_to_dict
from vpr_ros.core.files import atomic_output
from vpr_ros.eval.metrics import recall_at_n
from vpr_training import checkpoints
from vpr_training.checkpoints import CheckpointError, plain_data
from vpr_training.config import TrainConfig
from vpr_training.data.images import ImageLoader
from vpr_training.data.label_maps import LabelMapLoader
from vpr_training.data.readers import load_places
from vpr_training.losses import TupleLayout, build_loss
from vpr_training.mining import SubCacheMiner, Triplet, TripletBatch
from vpr_training.models.registry import VprModel, build_model

log = logging.getLogger("vpr_training")

CHECKPOINT_FORMAT = "vpr_training.checkpoint"
CHECKPOINT_VERSION = 1


class TrainerHook:
    """Callbacks; override what you need. ``trainer`` gives access to model, optimiser, config, history."""

    def on_train_start(self, trainer: Trainer) -> None: ...

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None: ...

    def on_batch_end(self, trainer: Trainer, batch: TripletBatch, parts: dict[str, float]) -> None: ...

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None: ...

    def on_train_end(self, trainer: Trainer, result: TrainResult) -> None: ...


@dataclass
class TrainResult:
    """Where the run left its files and what it measured."""

    out_dir: Path
    best_checkpoint: Path
    history: list[dict[str, Any]]
    initial: dict[str, float]
    best: dict[str, Any]
    final: dict[str, Any] = field(default_factory=dict)


@dataclass
class Distributed:
    """This process' place in a torchrun launch (world 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Distributed:
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` atomically: an interrupted run never leaves a half-written checkpoint."""
    with atomic_output(path) as fh:
        torch.save(obj, fh)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :class:`Trainer` (plain data only, see :mod:`vpr_training.checkpoints`) and
    check its format."""
    ckpt = checkpoints.load_checkpoint(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a vpr_training checkpoint")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ckpt.get('version')}, this code reads "
                              f"{CHECKPOINT_VERSION}")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> VprModel:
    """Rebuild the model of a checkpoint (registry + config), weights and fitted projection loaded, eval mode."""
    from vpr_ros.config import config_from_dict

    cfg = config_from_dict(TrainConfig, ckpt["config"])
    model = build_model(cfg.model)
    model.load_state_dict(ckpt["model"], strict=True)
    model.load_projection({k: np.asarray(v) for k, v in ckpt.get("projection", {}).items()})
    return model.eval()


class Trainer:
    """Trains ``config.model`` on ``config.train``, validating on ``config.val`` (see module docstring)."""

    def __init__(self, config: TrainConfig, out_dir: str | Path, hooks: Sequence[TrainerHook] = (),
                 resume: bool = False, progress: bool = True) -> None:
        self.config = config
        self.out_dir = Path(out_dir)
        self.hooks = list(hooks)
        self.resume = resume
        self.progress = progress
        self.dist = Distributed.from_env()
        self.device = self._pick_device()
        self.amp = bool(config.amp and self.device.type == "cuda")
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {}
        self.initial: dict[str, float] = {}
        self.epoch = 0
        self.iteration = 0
        self.writer: Any = None
        self.probe: list[Triplet] = []

    # ---- setup -----------------------------------------------------------------------------------
    def _pick_device(self) -> torch.device:
        want = self.config.device
        if want == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but torch sees no CUDA device")
        if want != "cpu" and torch.cuda.is_available():
            return torch.device("cuda", self.dist.local_rank)
        return torch.device("cpu")

    def _setup(self) -> None:
        cfg = self.config
        if self.dist.enabled and not torch.distributed.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            torch.distributed.init_process_group(backend)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg.model).to(self.device)
        self.train_places = load_places(cfg.train)
        self.val_places = load_places(cfg.val)
        size = (cfg.image_height, cfg.image_width)
        self.label_loader: LabelMapLoader | None = None
        if self.train_places.has_labels:
            self.label_loader = LabelMapLoader(size, cfg.train.label_mapping, cfg.model.structvpr.seg_classes,
                                               cfg.cache_images)
        if self.model.input_kind == "label_maps":
            # A label-map branch (StructVPR's seg-branch) sees label maps wherever other models see images.
            self.train_places = self.train_places.label_maps_as_images()
            self.val_places = self.val_places.label_maps_as_images()
            self.loader: Any = LabelMapLoader(size, cfg.train.label_mapping, cfg.model.structvpr.seg_classes,
                                              cfg.cache_images)
        else:
            self.loader = ImageLoader(size, cfg.workers, cfg.cache_images)
        self.miner = SubCacheMiner(self.train_places, cfg.mining, seed=cfg.seed)
        self.val_positives = self.val_places.positives(cfg.validation.positive_dist, cfg.validation.positive_angle)
        self.loss = build_loss(cfg.loss)
        for weight, name, term in self.model.loss_terms(self.train_places):
            self.loss.add(weight, name, term)
        params = [p for p in self.model.parameters() if p.requires_grad]
        o = cfg.optim
        if o.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum,
                                                                    weight_decay=o.weight_decay)
        elif o.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
        else:
            self.optimizer = torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
        if o.schedule == "step":
            self.scheduler: Any = torch.optim.lr_scheduler.StepLR(self.optimizer, o.lr_step, o.lr_gamma)
        elif o.schedule == "cosine":
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, max(cfg.epochs, 1))
        else:
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda _: 1.0)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.ddp_model: torch.nn.Module = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = DistributedDataParallel(self.model, device_ids=ids)
        if self.dist.main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.writer = _summary_writer(self.out_dir / "tensorboard")

    # ---- encoding (cache refresh, validation, k-means, PCA) -------------------------------------
    def _autocast(self) -> Any:
        return torch.autocast("cuda", dtype=torch.float16) if self.amp else nullcontext()

    @torch.no_grad()
    def encode(self, paths: list[str], output: str = "global", desc: str | None = None) -> np.ndarray:
        """Descriptors ``output`` of ``paths`` with the current model in eval mode; (n, P) float32.

        Under DDP each process encodes every world-th image and the shards are gathered, so all processes
        return the same array.
        """
        was_training = self.model.training
        self.model.eval()
        mine = list(range(self.dist.rank, len(paths), self.dist.world))
        bs = self.config.eval_batch_size
        chunks = []
        bar = tqdm(range(0, len(mine), bs), desc=desc, unit="batch", leave=False,
                   disable=not (self.progress and desc and self.dist.main))
        for start in bar:
            x = torch.from_numpy(self.loader.load([paths[i] for i in mine[start:start + bs]])).to(self.device)
            with self._autocast():
                chunks.append(self.model(x)[output].float().cpu().numpy())
        local = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
        if was_training:
            self.model.train()
        if not self.dist.enabled:
            return local
        gathered: list[Any] = [None] * self.dist.world
        torch.distributed.all_gather_object(gathered, (mine, local))
        dim = max(g[1].shape[1] for g in gathered if g[1].size)
        out = np.zeros((len(paths), dim), np.float32)
        for rows, arr in gathered:
            if len(rows):
                out[np.asarray(rows)] = arr
        return out

    def validate(self, output: str = "global") -> dict[str, float]:
        """Recall@N of the validation queries against the validation database (inner product = cosine)."""
        import faiss

        cfg = self.config.validation
        db = self.encode(self.val_places.db_images, output, desc="validate: database")
        q = self.encode(self.val_places.query_images, output, desc="validate: queries")
        index = faiss.IndexFlatIP(db.shape[1])
        index.add(np.ascontiguousarray(db))
        k = min(max(cfg.recall_ns), len(db))
        _, ranked = index.search(np.ascontiguousarray(q), k)
        recall = recall_at_n(list(ranked), self.val_positives, cfg.recall_ns)
        return {f"recall@{n}": float(v) for n, v in recall.items()}

    # ---- fixed probe tuples ----------------------------------------------------------------------
    def mine_probe(self) -> list[Triplet]:
        """Tuples of the first ``probe_tuples`` trainable queries (in a seeded order), mined with the current
        model on a sub-cache of their own, without touching the miner's kept hard negatives."""
        n = self.config.probe_tuples
        if n == 0:
            return []
        rng = np.random.default_rng([self.config.seed, 13])
        queries = np.sort(rng.permutation(self.miner.trainable)[:n])
        cache = self.miner.build_cache(queries, rng)
        self.miner.refresh(cache, lambda paths: self.encode(paths, "global", desc="probe: mine tuples"))
        return [t for q in queries if (t := self.miner.mine(cache, int(q), rng, remember=False)) is not None]

    @torch.no_grad()
    def probe_loss(self) -> float:
        """Mean loss of the fixed probe tuples with the current model (eval mode)."""
        if not self.probe:
            return float("nan")
        was_training = self.model.training
        self.model.eval()
        values = []
        for start in range(0, len(self.probe), self.config.batch_size):
            share = self.probe[start:start + self.config.batch_size]
            loss, _ = self._tuple_loss(share, None, model=self.model)
            values.append(float(loss) * len(share))
        if was_training:
            self.model.train()
        return sum(values) / len(self.probe)

    # ---- initialisation and checkpoints ----------------------------------------------------------
    def initialise(self) -> dict[str, Any]:
        """k-means centroids on sampled training images (same sample on every process)."""
        cfg = self.config
        pool = self.train_places.db_images + self.train_places.query_images
        rng = np.random.default_rng([cfg.seed, 7])
        pick = rng.choice(len(pool), size=min(cfg.model.kmeans_images, len(pool)), replace=False)
        paths = [pool[i] for i in np.sort(pick)]
        bs = cfg.eval_batch_size
        labels: list[str] | None = None
        if self.model.init_needs_labels and self.label_loader is not None:
            label_pool = (self.train_places.db_labels or []) + (self.train_places.query_labels or [])
            labels = [label_pool[i] for i in np.sort(pick)]

        def batches() -> Any:
            for s in tqdm(range(0, len(paths), bs), desc="init: k-means features", unit="batch", leave=False,
                          disable=not (self.progress and self.dist.main)):
                images = torch.from_numpy(self.loader.load(paths[s:s + bs])).to(self.device)
                if labels is not None and self.label_loader is not None:  # models that need classes (APPSVR)
                    yield images, self.label_loader.load_ids(labels[s:s + bs])
                else:
                    yield images

        self.model.eval()
        info = self.model.initialise(batches(), seed=cfg.seed)
        self.model.train()
        return info

    def checkpoint(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Everything :meth:`_restore` needs, as data that loads with ``weights_only=True``: torch's own state
        dicts as they are, the rest through :func:`plain_data` (numpy values would need an allow-list)."""
        torch_state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                       "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                       "torch_rng": torch.get_rng_state()}
        return {**torch_state, **plain_data({
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "config": config_to_dict(self.config), "epoch": self.epoch, "iteration": self.iteration,
            "history": self.history, "best": self.best, "initial": self.initial,
            "miner": self.miner.state_dict(),
            "train_data": self.train_places.describe(), "val_data": self.val_places.describe(),
            "probe": [(t.query, t.positive, t.negatives.tolist()) for t in getattr(self, "probe", [])],
            **(extra or {}),
        })}

    def _save(self, name: str, extra: dict[str, Any] | None = None) -> Path:
        path = self.out_dir / name
        if self.dist.main:
            atomic_save(self.checkpoint(extra), path)
        return path

    def _restore(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.iteration = int(ckpt["epoch"]), int(ckpt["iteration"])
        self.history, self.best, self.initial = list(ckpt["history"]), dict(ckpt["best"]), dict(ckpt["initial"])
        self.miner.load_state_dict(ckpt["miner"])
        torch.set_rng_state(ckpt["torch_rng"])

    # ---- one iteration ---------------------------------------------------------------------------
    def compute_loss(self, batch: TripletBatch) -> tuple[torch.Tensor, dict[str, float]] | None:
        """Forward this process' share of ``batch`` and return (loss, parts), or None when it has no tuples."""
        share = batch.triplets[self.dist.rank::self.dist.world]
        if not share:
            return None
        return self._tuple_loss(share, batch, model=self.ddp_model)

    def _tuple_loss(self, share: list[Triplet], batch: TripletBatch | None,
                    model: torch.nn.Module) -> tuple[torch.Tensor, dict[str, float]]:
        places = self.train_places
        paths = ([places.query_images[t.query] for t in share] + [places.db_images[t.positive] for t in share]
                 + [places.db_images[int(n)] for t in share for n in t.negatives])
        layout = TupleLayout(len(share), self.config.mining.num_negatives)
        x = torch.from_numpy(self.loader.load(paths)).to(self.device, non_blocking=True)
        with self._autocast():
            outputs = model(x)
        return self.loss(outputs, layout, {"batch": batch, "triplets": share})

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        cfg = self.config
        self.model.train()
        n_batches = math.ceil(len(self.miner.trainable) / cfg.batch_size)
        if cfg.iterations_per_epoch:
            n_batches = min(n_batches, cfg.iterations_per_epoch)
        losses, skipped, refreshes = [], 0, 0
        bar = tqdm(total=n_batches, desc=f"epoch {epoch}/{cfg.epochs}", unit="it",
                   disable=not (self.progress and self.dist.main))

        def encode(paths: list[str]) -> np.ndarray:
            nonlocal refreshes
            refreshes += 1
            return self.encode(paths, "global", desc="refresh sub-cache")

        t0 = time.perf_counter()
        # islice never asks the miner for batch n_batches + 1, so no cache is refreshed for nothing.
        for batch in itertools.islice(self.miner.batches(epoch, cfg.batch_size, encode, self.iteration), n_batches):
            self.iteration = batch.iteration + 1
            # Every process sees the same tuples; skip together when there are too few to share.
            if len(batch.triplets) < self.dist.world:
                skipped += 1
                bar.update(1)
                continue
            result = self.compute_loss(batch)
            assert result is not None
            loss, parts = result
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if cfg.optim.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            losses.append(parts["total"])
            for hook in self.hooks:
                hook.on_batch_end(self, batch, parts)
            if self.writer is not None and batch.iteration % cfg.log_every == 0:
                for k, v in parts.items():
                    self.writer.add_scalar(f"loss/{k}", v, batch.iteration)
                self.writer.add_scalar("mining/cache_size", batch.cache_size, batch.iteration)
                self.writer.add_scalar("mining/tuples", len(batch.triplets), batch.iteration)
            bar.set_postfix(loss=f"{parts['total']:.4f}")
            bar.update(1)
        bar.close()
        self.scheduler.step()
        return {"epoch": epoch, "loss": float(np.mean(losses)) if losses else float("nan"),
                "iterations": len(losses), "trivial_batches": skipped, "cache_refreshes": refreshes,
                "seconds": round(time.perf_counter() - t0, 2), "lr": self.optimizer.param_groups[0]["lr"]}

    # ---- the run ---------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        cfg = self.config
        self._setup()
        last = self.out_dir / "last.pt"
        select = f"recall@{cfg.validation.select_on}"
        if self.resume and last.is_file():
            ckpt = load_checkpoint(last)
            self._restore(ckpt)
            self.probe = [Triplet(int(q), int(p), np.asarray(n, np.int64), np.zeros(len(n), np.float32))
                          for q, p, n in ckpt.get("probe", [])]
            log.info("resuming after epoch %d (iteration %d) from %s", self.epoch, self.iteration, last)
        else:
            t0 = time.perf_counter()
            init_info = self.initialise()
            if self.dist.enabled:  # every process computed the same k-means; make it bit-identical anyway
                for tensor in self.model.state_dict().values():
                    torch.distributed.broadcast(tensor, 0)
            self.probe = self.mine_probe()
            self.initial = {**self.validate(), "probe_loss": self.probe_loss(),
                            "seconds": round(time.perf_counter() - t0, 2)}
            self.initial_info = init_info
            self.best = {"epoch": 0, **self.initial}
            self._save("init.pt", {"init": init_info})
            self._save("best.pt")
            self._log_epoch({"epoch": 0, **self.initial})
        for hook in self.hooks:
            hook.on_train_start(self)
        while self.epoch < cfg.epochs:
            epoch = self.epoch + 1
            for hook in self.hooks:
                hook.on_epoch_start(self, epoch)
            record = self.train_epoch(epoch)
            record.update(self.validate())
            record["probe_loss"] = self.probe_loss()
            self.epoch = epoch
            self.history.append(record)
            if record[select] > self.best.get(select, -1.0):
                self.best = {"epoch": epoch, **{k: v for k, v in record.items() if k.startswith("recall@")}}
                self._save("best.pt")
            self._save("last.pt")
            self._log_epoch(record)
            for hook in self.hooks:
                hook.on_epoch_end(self, epoch, record)
            if cfg.patience and epoch - int(self.best.get("epoch", 0)) >= cfg.patience:
                log.info("early stopping after epoch %d: no better validation %s for %d epochs (best: epoch %d)",
                         epoch, select, cfg.patience, self.best.get("epoch", 0))
                break
        result = self.finish()
        for hook in self.hooks:
            hook.on_train_end(self, result)
        if self.writer is not None:
            self.writer.close()
        self.loader.close()
        return result

    def finish(self) -> TrainResult:
        """Reload the best model, fit its PCA-whitening on training-database descriptors, validate, save."""
        cfg = self.config
        best_path = self.out_dir / "best.pt"
        if self.dist.enabled:
            torch.distributed.barrier()
        best = load_checkpoint(best_path)
        self.model.load_state_dict(best["model"])
        final: dict[str, Any] = {}
        if cfg.model.pca_dim > 0:
            rng = np.random.default_rng([cfg.seed, 11])
            db = self.train_places.db_images
            pick = np.sort(rng.choice(len(db), size=min(cfg.model.pca_images, len(db)), replace=False))
            pre = self.encode([db[i] for i in pick], "vlad", desc="PCA: encode training database")
            final["projection"] = self.model.fit_projection(pre)
            final.update(self.validate())
        if self.dist.main:
            best.update(plain_data({"projection": self.model.projection_arrays(), "final": final,
                                    "init": getattr(self, "initial_info", best.get("init", {}))}))
            atomic_save(best, best_path)
            self._write_metrics(final)
        if self.dist.enabled:
            torch.distributed.barrier()
        return TrainResult(self.out_dir, best_path, self.history, self.initial, self.best, final)

    def _log_epoch(self, record: dict[str, Any]) -> None:
        shown = "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items())
        if self.dist.main:
            log.info("%s", shown)
            if self.progress:
                tqdm.write(shown)
        if self.writer is not None:
            for k, v in record.items():
                if k.startswith("recall@"):
                    self.writer.add_scalar(f"val/{k}", v, record["epoch"])
            if not math.isnan(record.get("probe_loss", float("nan"))):
                self.writer.add_scalar("val/probe_loss", record["probe_loss"], record["epoch"])
            if "loss" in record:
                self.writer.add_scalar("epoch/loss", record["loss"], record["epoch"])
                self.writer.add_scalar("epoch/lr", record["lr"], record["epoch"])

    def _write_metrics(self, final: dict[str, Any]) -> None:
        metrics = {"initial": self.initial, "history": self.history, "best": self.best, "final": final,
                   "train_data": self.train_places.describe(), "val_data": self.val_places.describe(),
                   "mining": self.miner.describe(), "world_size": self.dist.world, "device": str(self.device),
                   "amp": self.amp, "config": config_to_dict(self.config)}
        (self.out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")


def _summary_writer(path: Path) -> Any:
    """TensorBoard writer, or None (with a warning) when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")
        return None
    return SummaryWriter(str(path))
