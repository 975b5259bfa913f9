"""End-to-end CPU training on real images: k-means init -> sub-cache triplet training -> PCA -> ONNX -> map.

Runs ``training/configs/nordland_cpu_small.yaml`` (the shipped Nordland part 1 frames: 240 training places,
160 validation places, winter queries against the summer database, EfficientNet-Lite0 + NetVLAD K=16) once per
module, then checks what the issue accepts: the loss goes down, validation recall@5 beats the k-means
initialised model, and the exported model loads in the node's pipeline and builds a map that localizes.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.torch, pytest.mark.slow]

from vpr_training.config import TrainConfig, load_train_config  # noqa: E402
from vpr_training.trainer import Trainer, TrainResult, load_checkpoint  # noqa: E402


def small_config(repo: Path, **overrides) -> TrainConfig:
    root = str(repo / "data" / "nordland_part1")
    return load_train_config(repo / "training" / "configs" / "nordland_cpu_small.yaml",
                        {"train.root": root, "val.root": root, **overrides})


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, repo: Path) -> TrainResult:
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    out = tmp_path_factory.mktemp("train") / "run"
    return Trainer(small_config(repo), out, progress=False).run()


def test_training_lowers_the_loss_and_beats_the_kmeans_initialisation(trained: TrainResult):
    initial, (first, second) = trained.initial, trained.history
    # Measured here (seeds 0-2): training loss 0.49 -> 0.35, 0.39 -> 0.30, 0.44 -> 0.35; probe loss
    # 0.99 -> 0.20, 0.93 -> 0.12, 0.68 -> 0.09; recall@5 0.71 -> 0.86, 0.70 -> 0.84, 0.71 -> 0.86.
    assert second["loss"] < first["loss"], trained.history
    # The probe tuples were mined once with the initial model and are scored after every epoch: a fixed
    # yardstick (the training loss is measured on ever harder mined tuples).
    assert second["probe_loss"] < 0.5 * initial["probe_loss"], (initial, trained.history)
    for epoch in trained.history:
        assert epoch["iterations"] == 30 and epoch["trivial_batches"] == 0
        assert epoch["cache_refreshes"] == 3  # 30 iterations, refresh every 10, one sub-cache of 120 queries
    assert trained.best["recall@5"] > initial["recall@5"] + 0.05, (initial, trained.history)
    assert trained.best["epoch"] >= 1


def test_run_folder_has_checkpoints_metrics_and_tensorboard(trained: TrainResult):
    out = trained.out_dir
    for name in ("init.pt", "last.pt", "best.pt", "metrics.json"):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_data"]["queries"] == 240 and metrics["val_data"]["queries"] == 160
    best = load_checkpoint(trained.best_checkpoint)
    assert best["projection"]["projection"].shape == (128, 16 * 112)
    assert 0.0 < trained.final["recall@5"] <= 1.0


def test_export_loads_in_the_node_pipeline_and_builds_a_map(trained: TrainResult, tmp_path: Path, repo: Path):
    from vpr_ros.core.encoders import EncoderConfig, ModelCard, OnnxEncoder
    from vpr_ros.core.image import load_rgb
    from vpr_ros.core.localizer import Localizer, LocalizerConfig
    from vpr_ros.core.map_builder import BuildMapConfig, build_map
    from vpr_ros.io.images import folder_source
    from vpr_training.export.onnx_export import main as export_main

    models = tmp_path / "models"
    assert export_main(["--checkpoint", str(trained.best_checkpoint), "--out-dir", str(models),
                        "--name", "netvlad_nordland_test"]) == 0
    card = ModelCard.load(models / "netvlad_nordland_test.yaml")
    assert card.kind == "netvlad" and card.channels == 112 and card.default_size == (64, 128)
    assert card.raw["parity"]["global"]["max_abs_diff"] < 1e-3 and card.raw["parity"]["images"] == 8
    assert card.raw["training"]["metrics"]["best"]["recall@5"] == pytest.approx(trained.best["recall@5"])
    assert card.raw["training"]["data"]["train"]["name"] == "nordland:winter->summer"

    encoder = OnnxEncoder(EncoderConfig(model=str(models / "netvlad_nordland_test.onnx")))
    assert encoder.head is not None and encoder.head.output_dim == 128

    # A map of the validation stretch of the summer traversal, built by build_map from an image folder with
    # a pose file (x = frame number), then winter queries localized through the node's pipeline.
    frames = range(1200, 1360, 2)
    summer = tmp_path / "summer"
    summer.mkdir()
    with open(tmp_path / "poses.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["name", "x", "y"])
        for i in frames:
            name = f"images-{(i + 1) * 10:05d}.png"
            (summer / name).symlink_to(repo / "data" / "nordland_part1" / "summer" / name)
            writer.writerow([name, (i + 1) * 10, 0])
    refmap = build_map(folder_source(summer, tmp_path / "poses.csv"), tmp_path / "map", BuildMapConfig(),
                       progress=False, encoder=encoder)
    assert refmap.input_size == (64, 128) and refmap.dim == 128
    np.testing.assert_array_equal(refmap.head.centroids, encoder.head.centroids)

    loc = Localizer(refmap, encoder, LocalizerConfig(top_k=5))
    hits = []
    for i in frames:
        hyp = loc.localize(load_rgb(repo / "data" / "nordland_part1" / "winter" / f"images-{(i + 1) * 10:05d}.png"))
        hits.append(bool((np.abs(hyp.positions[:, 0] - (i + 1) * 10) <= 20).any()))
    # 80 places, chance of a hit in the top 5 within +-2 steps is ~0.3; the trained model does far better.
    assert np.mean(hits) > 0.6, np.mean(hits)
