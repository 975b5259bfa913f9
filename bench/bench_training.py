"""Sub-cache cost vs dataset size (MSLS thesis 4.4.3): one cache refresh with the real model on real images.

For growing slices of the shipped Nordland part 1 (winter queries, summer database), one refresh of
(a) a sub-cache of ``SUBSET`` queries (+ their positives + ``CACHED_NEGATIVES`` random database images) and
(b) the classic full cache (every query and database image) is timed end to end: decode + resize + forward
through EfficientNet-Lite0 + NetVLAD (K=16) at 64x128 on the CPU. The sub-cache stays flat while the full cache
grows linearly with the dataset.

    python -m bench training        # -> bench/results/training_subcache.json and .png
"""

from __future__ import annotations

import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

from bench.common import RESULTS, write_result

REPO = Path(__file__).resolve().parents[1]

SIZES = (200, 400, 800, 1600)
SUBSET = 100
CACHED_NEGATIVES = 100
IMAGE_SIZE = (64, 128)


def main() -> None:
    import sys

    sys.path.insert(0, str(REPO / "training"))
    import torch

    from vpr_training.config import ModelConfig
    from vpr_training.data import DatasetConfig, load_places
    from vpr_training.data.images import ImageLoader
    from vpr_training.mining import MiningConfig, SubCacheMiner
    from vpr_training.models import build_model

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    model = build_model(ModelConfig(num_clusters=16)).eval()

    def encoder(loader: ImageLoader):
        @torch.no_grad()
        def encode(paths: list[str]) -> np.ndarray:
            out = [model(torch.from_numpy(loader.load(paths[i:i + 32])))["global"].numpy()
                   for i in range(0, len(paths), 32)]
            return np.concatenate(out)
        return encode

    encoder(ImageLoader(IMAGE_SIZE))([str(REPO / "data/nordland_part1/summer/images-00010.png")] * 4)  # warm up
    rows = []
    for n in SIZES:
        places = load_places(DatasetConfig(kind="nordland", root=str(REPO / "data" / "nordland_part1"), count=n))
        row = {"places": n, "dataset_images": places.num_queries + places.num_db}
        for label, subset, negatives in (("subcache", SUBSET, CACHED_NEGATIVES), ("full_cache", n, n)):
            miner = SubCacheMiner(places, MiningConfig(subset_size=subset, cached_negatives=negatives))
            cache = miner.build_cache(miner.epoch_subsets(0)[0], np.random.default_rng(0))
            t0 = time.perf_counter()
            miner.refresh(cache, encoder(ImageLoader(IMAGE_SIZE)))  # fresh loader: no image cache
            seconds = time.perf_counter() - t0
            row[label] = {"images": cache.size, "seconds": round(seconds, 3),
                          "ms_per_image": round(1e3 * seconds / cache.size, 3)}
            print(f"{n:5d} places  {label:10s}  {cache.size:5d} images  {seconds:6.2f} s", flush=True)
        rows.append(row)
    result = {"description": __doc__.split("\n\n")[1].replace("\n", " "),
              "subset_queries": SUBSET, "cached_negatives": CACHED_NEGATIVES, "image_size": list(IMAGE_SIZE),
              "model": "EfficientNet-Lite0 block 10 + NetVLAD K=16", "threads": torch.get_num_threads(),
              "rows": rows}
    write_result("training_subcache", result)
    plot(rows, RESULTS / "training_subcache.png")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["dataset_images"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, style in (("full_cache", "o-"), ("subcache", "s-")):
        ax.plot(x, [r[label]["seconds"] for r in rows], style, label=label.replace("_", " "))
    ax.set_xlabel("dataset images (queries + database)")
    ax.set_ylabel("seconds per cache refresh")
    ax.set_title(f"Cache refresh cost (sub-cache: {SUBSET} queries)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
