"""APPSVR ablations and StructVPR vs NetVLAD on the small Nordland CPU setup (real frames, rule-based label maps).

Every run uses the data, backbone (EfficientNet-Lite0 at 64x128, K=16), mining and schedule of
``training/configs/nordland_cpu_small.yaml`` (2 epochs x 30 iterations, 240 training places, 160 validation
places, winter queries vs summer database), so only the model differs:

* NetVLAD (``nordland_cpu_small.yaml``), the baseline;
* APPSVR: L1 (local weighting only), L3, PN-L3, SC-L3, SC-PN-L3 (``appsvr_nordland_cpu_small*.yaml``);
* StructVPR: stage-1 rgb- and seg-branch, partition (Nt 10, Nm 100), stage 2 (rgb-branch + weighted distillation).

Label maps are the rule-based ones of :mod:`vpr_training.data.rule_labels` (colour/position rules, not a
segmenter), written to a temporary folder. Figures are validation recall@N of the best epoch (before PCA) and
after the PCA-whitening fitted on 240 images. One seed; tiny data: differences of a few points are noise.

    python -m bench appsvr_structvpr      # -> bench/results/appsvr_structvpr.json
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from bench.common import write_result

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "training" / "configs"
APPSVR_VARIANTS = ("L1", "L3", "PN_L3", "SC_L3", "")


def _recalls(record: dict[str, Any]) -> dict[str, float]:
    return {k: round(float(v), 4) for k, v in record.items() if k.startswith("recall@")}


def main() -> None:
    sys.path.insert(0, str(REPO / "training"))
    import torch

    from vpr_training.config import load_train_config
    from vpr_training.data.rule_labels import write_rule_based_label_maps
    from vpr_training.structvpr_partition import compute_partition
    from vpr_training.trainer import Trainer

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    root = str(REPO / "data" / "nordland_part1")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        labels = tmp / "labels"
        write_rule_based_label_maps(REPO / "data" / "nordland_part1", labels, progress=False)

        def run(name: str, config: str, **overrides: Any) -> Any:
            cfg = load_train_config(CONFIGS / config, {"train.root": root, "val.root": root, **overrides})
            t0 = time.perf_counter()
            result = Trainer(cfg, tmp / name, progress=False).run()
            row = {"model": name, "config": config, "overrides": {k: str(v) for k, v in overrides.items()},
                   "initial": _recalls(result.initial), "best_epoch": result.best.get("epoch"),
                   "best": _recalls(result.best), "after_pca": _recalls(result.final),
                   "loss": [round(r["loss"], 4) for r in result.history],
                   "probe_loss": [round(result.initial["probe_loss"], 4)]
                   + [round(r["probe_loss"], 4) for r in result.history],
                   "seconds": round(time.perf_counter() - t0, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            return result

        run("netvlad", "nordland_cpu_small.yaml")
        for variant in APPSVR_VARIANTS:
            name = "APPSVR-" + (variant.replace("_", "-") or "SC-PN-L3")
            config = f"appsvr_nordland_cpu_small{'_' + variant if variant else ''}.yaml"
            run(name, config, **{"train.labels": str(labels)})
        rgb = run("structvpr-stage1-rgb", "nordland_cpu_small.yaml", **{"model.name": "structvpr"})
        seg = run("structvpr-stage1-seg", "nordland_cpu_small.yaml",
                  **{"model.name": "structvpr_seg", "model.pca_dim": 0, "train.labels": str(labels),
                     "val.labels": str(labels), "optim.lr": 0.001})
        # The rgb run has no label maps: the partition takes the data (and label maps) of the seg run, the same places.
        partition = compute_partition(rgb.best_checkpoint, seg.best_checkpoint, nt=10, nm=100)
        partition.save(tmp / "partition.npz")
        summary = partition.summary()
        print(json.dumps({k: v for k, v in summary.items() if k != "train_data"}), flush=True)
        run("StructVPR (stage 2)", "nordland_cpu_small.yaml",
            **{"model.name": "structvpr", "model.structvpr.partition": str(tmp / "partition.npz")})

    write_result("appsvr_structvpr", {
        "data": "Nordland part 1: train places 0-239, validation 1200-1359",
        "label_maps": "rule-based (vpr_training.data.rule_labels), not a segmenter",
        "runs": rows, "structvpr_partition": {k: v for k, v in summary.items()
                                              if k not in ("train_data", "rgb_checkpoint", "seg_checkpoint")}})


if __name__ == "__main__":
    main()
