"""StructVPR's sample partition and weighting function (Shen et al., CVPR 2023), and ``vpr-structvpr-partition``.

Between the two stages, every training query is scored by both stage-1 branches: x = the recall ranking of its
positive with the seg-branch, y = with the rgb-branch (1-based: rank 1 = the first retrieved database image is
a positive). Ranks are capped at Nm (a positive not within the top Nm counts as rank Nm). With threshold
Nt = 10 the samples fall into four groups (our reading of the paper's partition, consistent with the
supplement's Table 1 where D1 + D2 + D3 = S1, the samples on which seg is better):

=====  ======================  ===========================================
group  condition               meaning
=====  ======================  ===========================================
D1     x < y <= Nt             both find the place, seg ranks it higher
D2     x <= Nt < y             seg finds it, rgb does not
D3     Nt < x < y              neither within Nt, seg still ranks it higher
D4     x >= y                  rgb is as good or better (S2): no distillation
=====  ======================  ===========================================

The stage-2 distillation weight of a sample is (supplement, "Weighting function", Table 4)::

    phi(x, y) = (y - x) / ln(x + 1)   if x < y,   else 0,

non-negative, growing with y - x, shrinking with x, and bounded through the rank cap Nm ("Nm is mainly used to
limit the weight range"; the cap on the ranks is our reading of "capped by Nm": phi <= (Nm - 1) / ln 2).

The partition file also stores the frozen seg-branch's descriptors of every training image, the teacher of
the stage-2 distillation (so stage 2 needs no label maps).

Example::

    vpr-structvpr-partition --rgb runs/structvpr_rgb/best.pt --seg runs/structvpr_seg/best.pt \\
        --out runs/structvpr_partition.npz
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vpr_ros.core.files import atomic_savez, sha256_file

log = logging.getLogger("vpr_training.structvpr")

PARTITION_FORMAT = "vpr_training.structvpr_partition"
PARTITION_VERSION = 1
GROUP_NAMES = ("D1", "D2", "D3", "D4")


def distillation_weights(x: np.ndarray, y: np.ndarray, nm: int) -> np.ndarray:
    """phi = (y - x) / ln(x + 1) where x < y, else 0, on ranks capped at ``nm`` (module docstring).

    Shape:
        x, y: (Q,) 1-based ranks (seg-branch, rgb-branch); returns (Q,) float64.
    """
    x = np.minimum(np.asarray(x, np.float64), nm)
    y = np.minimum(np.asarray(y, np.float64), nm)
    if (x < 1).any() or (y < 1).any():
        raise ValueError("ranks are 1-based (1 = the first retrieved image is a positive)")
    return np.where(x < y, (y - x) / np.log(x + 1.0), 0.0)


def partition_groups(x: np.ndarray, y: np.ndarray, nt: int, nm: int) -> np.ndarray:
    """Group 1..4 (D1..D4, module docstring) of every sample, on ranks capped at ``nm``. Shape: (Q,) -> (Q,)."""
    x, y = np.minimum(x, nm), np.minimum(y, nm)
    groups = np.full(len(x), 4, np.int8)
    seg_better = x < y
    groups[seg_better & (y <= nt)] = 1
    groups[seg_better & (x <= nt) & (y > nt)] = 2
    groups[seg_better & (x > nt)] = 3
    return groups


def recall_ranks(query: np.ndarray, db: np.ndarray, positives: Sequence[np.ndarray], nm: int) -> np.ndarray:
    """1-based rank of the first positive in each query's retrieval list (cosine), capped at ``nm``.

    Shape:
        query: (Q, P), db: (N, P) L2-normalised; positives: Q arrays of database rows; returns (Q,) int64.
    """
    import faiss

    index = faiss.IndexFlatIP(db.shape[1])
    index.add(np.ascontiguousarray(db, np.float32))
    _, ranked = index.search(np.ascontiguousarray(query, np.float32), min(nm, len(db)))
    ranks = np.full(len(query), nm, np.int64)
    for i, pos in enumerate(positives):
        hit = np.flatnonzero(np.isin(ranked[i], pos))
        if len(hit):
            ranks[i] = min(int(hit[0]) + 1, nm)
    return ranks


@dataclass
class Partition:
    """What stage 2 reads: per training query its ranks, group and weight, and the seg-branch descriptors.

    Shape:
        x, y, group, phi: (Q,); seg_query: (Q, P); seg_db: (N, P); query_images: Q names; db_images: N names.
    """

    x: np.ndarray
    y: np.ndarray
    group: np.ndarray
    phi: np.ndarray
    seg_query: np.ndarray
    seg_db: np.ndarray
    query_images: list[str]
    db_images: list[str]
    nt: int
    nm: int
    info: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        counts = np.bincount(self.group, minlength=5)[1:]
        q = len(self.x)
        return {"queries": q, "nt": self.nt, "nm": self.nm,
                "groups": {n: {"count": int(c), "ratio": round(float(c) / max(q, 1), 4)}
                           for n, c in zip(GROUP_NAMES, counts, strict=True)},
                "seg_better (S1)": round(float((self.group < 4).mean()), 4),
                "mean_phi_S1": round(float(self.phi[self.group < 4].mean()), 4) if (self.group < 4).any() else 0.0,
                "recall@1 seg / rgb": [round(float((self.x == 1).mean()), 4), round(float((self.y == 1).mean()), 4)],
                **self.info}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_savez(path, {
            "format": np.array(PARTITION_FORMAT), "version": np.array(PARTITION_VERSION), "x": self.x, "y": self.y,
            "group": self.group, "phi": self.phi, "seg_query": self.seg_query, "seg_db": self.seg_db,
            "query_images": np.array(self.query_images), "db_images": np.array(self.db_images),
            "nt": np.array(self.nt), "nm": np.array(self.nm), "info": np.array(json.dumps(self.info))})

    @classmethod
    def load(cls, path: str | Path) -> Partition:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"model.structvpr.partition: {path} does not exist (run vpr-structvpr-partition)")
        with np.load(path, allow_pickle=False) as npz:
            if str(npz.get("format", "")) != PARTITION_FORMAT or int(npz["version"]) != PARTITION_VERSION:
                raise ValueError(f"{path}: not a version-{PARTITION_VERSION} StructVPR partition file")
            return cls(x=npz["x"], y=npz["y"], group=npz["group"], phi=npz["phi"], seg_query=npz["seg_query"],
                       seg_db=npz["seg_db"], query_images=[str(s) for s in npz["query_images"]],
                       db_images=[str(s) for s in npz["db_images"]], nt=int(npz["nt"]), nm=int(npz["nm"]),
                       info=json.loads(str(npz["info"])))


def _encode(model: Any, loader: Any, paths: list[str], batch: int) -> np.ndarray:
    import torch
    from tqdm import tqdm

    out = []
    with torch.inference_mode():
        for s in tqdm(range(0, len(paths), batch), desc="encode", unit="batch", leave=False):
            out.append(model(torch.from_numpy(loader.load(paths[s:s + batch])))["global"].float().numpy())
    return np.concatenate(out)


def compute_partition(rgb_checkpoint: str | Path, seg_checkpoint: str | Path, nt: int = 10, nm: int = 100,
                      batch: int = 32) -> Partition:
    """Ranks of both stage-1 branches on the rgb run's training data, groups, weights, seg descriptors."""
    from vpr_ros.config import config_from_dict
    from vpr_training.config import TrainConfig
    from vpr_training.data.images import ImageLoader
    from vpr_training.data.label_maps import LabelMapLoader
    from vpr_training.data.readers import load_places
    from vpr_training.trainer import load_checkpoint, model_from_checkpoint

    rgb_ckpt, seg_ckpt = load_checkpoint(rgb_checkpoint), load_checkpoint(seg_checkpoint)
    rgb_cfg = config_from_dict(TrainConfig, rgb_ckpt["config"])
    seg_cfg = config_from_dict(TrainConfig, seg_ckpt["config"])
    rgb, seg = model_from_checkpoint(rgb_ckpt), model_from_checkpoint(seg_ckpt)
    if seg.input_kind != "label_maps" or rgb.input_kind != "rgb":
        raise ValueError(f"--seg must be a seg-branch checkpoint (model structvpr_seg, got {seg_cfg.model.name!r}) "
                         f"and --rgb an image model (got {rgb_cfg.model.name!r})")
    places = load_places(rgb_cfg.train if rgb_cfg.train.labels else seg_cfg.train)
    labels = places.label_maps_as_images()
    size = (rgb_cfg.image_height, rgb_cfg.image_width)
    seg_size = (seg_cfg.image_height, seg_cfg.image_width)
    images = ImageLoader(size, rgb_cfg.workers)
    label_loader = LabelMapLoader(seg_size, seg_cfg.train.label_mapping, seg_cfg.model.structvpr.seg_classes)
    positives = places.positives(rgb_cfg.mining.positive_dist, rgb_cfg.mining.positive_angle)
    log.info("encoding %d queries + %d database images with both branches", places.num_queries, places.num_db)
    y = recall_ranks(_encode(rgb, images, places.query_images, batch), _encode(rgb, images, places.db_images, batch),
                     positives, nm)
    seg_query = _encode(seg, label_loader, labels.query_images, batch)
    seg_db = _encode(seg, label_loader, labels.db_images, batch)
    x = recall_ranks(seg_query, seg_db, positives, nm)
    images.close()
    return Partition(x=x, y=y, group=partition_groups(x, y, nt, nm), phi=distillation_weights(x, y, nm),
                     seg_query=seg_query, seg_db=seg_db, query_images=places.query_images,
                     db_images=places.db_images, nt=nt, nm=nm,
                     info={"rgb_checkpoint": str(rgb_checkpoint), "rgb_sha256": sha256_file(rgb_checkpoint),
                           "seg_checkpoint": str(seg_checkpoint), "seg_sha256": sha256_file(seg_checkpoint),
                           "train_data": places.describe(), "positive_dist": rgb_cfg.mining.positive_dist})


def main(argv: Sequence[str] | None = None) -> int:
    """CLI; exit 0 ok, 2 bad input."""
    parser = argparse.ArgumentParser(
        prog="vpr-structvpr-partition", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="StructVPR between stage 1 and 2: rank every training query's positive with the stage-1 seg- "
                    "and rgb-branches, partition the samples and compute their distillation weights phi.",
        epilog="example:\n" + __doc__.split("Example::\n", 1)[1])
    parser.add_argument("--rgb", required=True, type=Path, help="stage-1 rgb-branch checkpoint (best.pt)")
    parser.add_argument("--seg", required=True, type=Path, help="stage-1 seg-branch checkpoint (best.pt)")
    parser.add_argument("--out", required=True, type=Path, help="partition file to write (.npz)")
    parser.add_argument("--nt", type=int, default=10, help="rank threshold Nt of the groups (default: 10)")
    parser.add_argument("--nm", type=int, default=100, help="rank cap Nm (default: 100)")
    parser.add_argument("--batch", type=int, default=32, help="images per forward pass")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[structvpr] %(message)s")
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader logs which CPU build it picked
    if not 1 <= args.nt < args.nm:
        print(f"error: need 1 <= --nt < --nm, got {args.nt} and {args.nm}", file=sys.stderr)
        return 2
    try:
        partition = compute_partition(args.rgb, args.seg, args.nt, args.nm, args.batch)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    partition.save(args.out)
    summary = partition.summary()
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k not in ("train_data",)}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
