"""APPSVR: each attention module on hand-computed cases, shadow centroids on a planted dynamic cluster,
gradients, APPSVR tuple mining, ablation configs, and training -> ONNX -> map -> localize (evaluate and node).

Tolerances: float32 on CPU; the hand cases are exact up to float32 rounding (1e-6 on unit-norm descriptors).
Label maps are rule-based (colour/position rules), never a segmenter's output.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.torch

from vpr_ros.core.vlad import VladHead  # noqa: E402
from vpr_training.config import AppsvrConfig, ModelConfig, TrainConfig, load_train_config  # noqa: E402
from vpr_training.data.places import PlaceSet  # noqa: E402
from vpr_training.mining import MiningConfig, SubCacheMiner  # noqa: E402
from vpr_training.models import build_model  # noqa: E402
from vpr_training.models.appsvr import (  # noqa: E402
    AppsvrHead,
    LocalWeighting,
    pyramid_masks,
    semantic_constrained_centroids,
)

OFF = AppsvrConfig(local_weighting=False, pyramid_levels=1, parametric_norm=False, shadows_per_cluster=0)


def unit(v) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)


def head_with(config: AppsvrConfig, k: int, d: int, centroids, assign_weight, assign_bias,
              normalize_input: bool = False) -> AppsvrHead:
    head = AppsvrHead(k, d, config, normalize_input=normalize_input)
    with torch.no_grad():
        head.centroids.copy_(torch.tensor(centroids, dtype=torch.float32))
        head.assign_weight.copy_(torch.tensor(assign_weight, dtype=torch.float32))
        head.assign_bias.copy_(torch.tensor(assign_bias, dtype=torch.float32))
    return head


class TestModules:
    def test_local_weighting_by_hand(self):
        lw = LocalWeighting(dim=2, hidden=1)
        with torch.no_grad():
            lw.context.weight.zero_()
            lw.context.weight[0, 0, 1, 1] = 1.0   # centre tap of channel 0: hidden = relu(f0)
            lw.context.bias.zero_()
            lw.score.weight.fill_(2.0)
            lw.score.bias.fill_(-1.0)
        f = torch.zeros(1, 2, 2, 2)
        f[0, 0] = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
        f[0, 1] = torch.tensor([[5.0, -5.0], [7.0, 1.0]])  # channel 1 does not matter
        expected = 1 / (1 + np.exp(-(2 * np.array([[0, 1], [2, 3]]) - 1)))
        np.testing.assert_allclose(lw(f).detach().numpy()[0, 0], expected, atol=1e-6)

    def test_pyramid_regions_by_hand_on_a_grid_that_does_not_divide(self):
        masks = pyramid_masks(torch.zeros(1, 4, 3, 5), levels=2)[0].numpy()
        # level 1: everything; level 2 on 3 x 5: rows {0,1}|{2}, columns {0,1,2}|{3,4}
        assert masks.shape == (5, 15) and masks.sum(1).tolist() == [15, 6, 4, 3, 2]
        grid = masks[1:].argmax(0).reshape(3, 5)
        assert grid.tolist() == [[0, 0, 0, 1, 1], [0, 0, 0, 1, 1], [2, 2, 2, 3, 3]]
        assert (masks.sum(0) == 2).all()  # every location in exactly one region per level

    def test_attentional_pyramid_pooling_by_hand(self):
        # K = 1 cluster at the origin, hard assignment, raw features: every regional VLAD is a feature sum.
        cfg = AppsvrConfig(local_weighting=False, pyramid_levels=2, parametric_norm=False, shadows_per_cluster=0)
        head = head_with(cfg, 1, 2, [[0.0, 0.0]], [[0.0, 0.0]], [0.0])
        with torch.no_grad():
            head.saliency.copy_(torch.tensor([1.0, 0.0]))     # u: saliency grows with the first coordinate
            head.level_bias.copy_(torch.tensor([0.0, math.log(3.0)]))
        x = {(0, 0): (1, 0), (0, 1): (0, 1), (1, 0): (1, 1), (1, 1): (2, 0)}
        f = torch.zeros(1, 2, 2, 2)
        for (i, j), v in x.items():
            f[0, :, i, j] = torch.tensor(v, dtype=torch.float32)
        out = head(f)

        def sig(z: float) -> float:
            return 1 / (1 + math.exp(-z))

        regions = [unit((4, 2))] + [unit(x[ij]) for ij in [(0, 0), (0, 1), (1, 0), (1, 1)]]
        saliency = [sig(regions[0][0])] + [sig(r[0] + math.log(3.0)) for r in regions[1:]]
        pooled = sum(s * r for s, r in zip(saliency, regions, strict=True))
        np.testing.assert_allclose(out["saliency"].detach().numpy()[0], saliency, atol=1e-6)
        np.testing.assert_allclose(out["vlad"].detach().numpy()[0], unit(pooled), atol=1e-6)

    def test_parametric_normalisation_by_hand(self):
        cfg = AppsvrConfig(local_weighting=False, pyramid_levels=1, parametric_norm=True, shadows_per_cluster=0)
        # Two clusters at the origin; the sign of the first coordinate assigns (hard) to cluster 0 or 1.
        head = head_with(cfg, 2, 2, [[0, 0], [0, 0]], [[50, 0], [-50, 0]], [0, 0])
        with torch.no_grad():
            head.log_contribution.copy_(torch.tensor([0.0, math.log(3.0)]))  # g = (1, 3)
        f = torch.tensor([[1.0, 0.0], [2.0, 0.0], [-1.0, 1.0]]).t().reshape(1, 2, 1, 3)
        expected = unit([1, 0, -3 / math.sqrt(2), 3 / math.sqrt(2)])        # V_0 = (3, 0), V_1 = (-1, 1)
        np.testing.assert_allclose(head(f)["vlad"].detach().numpy()[0], expected, atol=1e-6)

    def test_all_modules_off_is_netvlad(self):
        torch.manual_seed(0)
        head = AppsvrHead(4, 8, OFF, normalize_input=True)
        numpy_head = VladHead.from_arrays({"centroids": head.centroids.detach().numpy(),
                                           "assign_weight": head.assign_weight.detach().numpy(),
                                           "assign_bias": head.assign_bias.detach().numpy(),
                                           "normalize_input": np.array(True)})
        f = torch.randn(3, 8, 5, 7)
        with torch.no_grad():
            np.testing.assert_allclose(head(f)["vlad"].numpy(), numpy_head.vlad(f.numpy()), atol=1e-5)
        with pytest.raises(ValueError, match=r"expected features \(B, 8, h, w\)"):
            head(torch.zeros(1, 3, 2, 2))


class TestShadowCentroids:
    """A planted 'dynamic' cluster: features of an irrelevant class around their own centre."""

    @pytest.fixture(scope="class")
    @classmethod
    def planted(cls):
        rng = np.random.default_rng(0)
        centres = np.linalg.qr(rng.normal(size=(16, 4)))[0].T.astype(np.float32)  # 4 orthonormal directions
        static, dynamic = centres[:3], centres[3]

        def around(c: np.ndarray, n: int) -> np.ndarray:
            x = c + 0.15 * rng.normal(size=(n, 16)).astype(np.float32)
            return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

        samples = np.concatenate([around(c, 200) for c in static] + [around(dynamic, 200)])
        labels = np.repeat([0, 0, 0, 1], 200)
        image_static = np.concatenate([around(c, 10) for c in static])          # 30 static locations
        image_mixed = np.concatenate([image_static, around(dynamic, 30)])      # + 30 dynamic locations
        return centres, samples, labels, image_static, image_mixed

    @staticmethod
    def vlad(head: AppsvrHead, locations: np.ndarray) -> np.ndarray:
        f = torch.from_numpy(locations.T.copy()).reshape(1, 16, 1, len(locations))
        with torch.no_grad():
            return head(f)["vlad"].numpy()[0]

    def test_initialisation_puts_shadows_on_the_dynamic_cluster(self, planted):
        centres, samples, labels, _, _ = planted
        c, shadows, info = semantic_constrained_centroids(samples, labels, 3, 1, 2, irrelevant=[1], seed=0)
        assert info["static_features"] == 600 and info["candidates"] == {1: 2}
        c = c / np.linalg.norm(c, axis=1, keepdims=True)             # k-means means are shorter than 1
        assert (np.abs(c @ centres[:3].T).max(1) > 0.95).all()       # informative: the static centres
        assert (c @ centres[3] < 0.2).all()
        shadows = shadows / np.linalg.norm(shadows, axis=1, keepdims=True)
        assert shadows.shape == (3, 16) and (shadows @ centres[3] > 0.95).all()
        with pytest.raises(ValueError, match="no local feature carries an irrelevant class"):
            semantic_constrained_centroids(samples, labels, 3, 1, 2, irrelevant=[7])

    def test_shadow_centroids_absorb_the_dynamic_residuals(self, planted):
        _, samples, labels, image_static, image_mixed = planted
        c, shadows, _ = semantic_constrained_centroids(samples, labels, 3, 1, 2, irrelevant=[1], seed=0)
        with_sc = AppsvrHead(3, 16, AppsvrConfig(local_weighting=False, pyramid_levels=1, parametric_norm=False,
                                                 shadows_per_cluster=1))
        with_sc.init_from_centroids(c, shadows, samples)
        without = AppsvrHead(3, 16, OFF)
        without.init_from_centroids(c, np.zeros((0, 16), np.float32), samples)
        # The dynamic features' informative assignment mass is ~0 with shadows, ~1 each without.
        dyn = torch.from_numpy(image_mixed[30:])
        with torch.no_grad():
            assert float(with_sc.soft_assign(dyn).sum()) < 0.01 * 30
            assert float(without.soft_assign(dyn).sum()) > 0.99 * 30
        cos_sc = float(self.vlad(with_sc, image_static) @ self.vlad(with_sc, image_mixed))
        cos_plain = float(self.vlad(without, image_static) @ self.vlad(without, image_mixed))
        assert cos_sc > 0.999 and cos_plain < 0.9, (cos_sc, cos_plain)


def test_gradients_reach_every_learned_parameter(corridor: Path):
    from vpr_training.data.images import ImageLoader

    torch.manual_seed(0)
    model = build_model(ModelConfig(name="appsvr", num_clusters=8, train_layers=1,
                                    appsvr=AppsvrConfig(shadows_per_cluster=2, pyramid_levels=3)))
    model.train()
    images = torch.from_numpy(ImageLoader((120, 160)).load(sorted((corridor / "ref").glob("*.jpg"))[:3]))
    out = model(images)
    assert out["global"].shape == (3, 8 * 112) and out["saliency"].shape == (3, 14)
    assert out["weights"].shape == (3, 1, 8, 10)
    (out["global"] @ torch.randn(8 * 112)).sum().backward()
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert {"head.saliency", "head.level_bias", "head.log_contribution", "head.assign_weight",
            "head.weighting.context.weight", "head.weighting.score.weight", "head.centroids"} <= set(trained)
    no_grad = [n for n in trained if model.get_parameter(n).grad is None
               or not model.get_parameter(n).grad.abs().sum() > 0]
    assert not no_grad, no_grad


def test_semantic_constrained_init_needs_label_maps():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="appsvr", num_clusters=4, kmeans_features_per_image=20))
    with pytest.raises(ValueError, match=r"needs label maps: set train\.labels"):
        model.initialise(iter([torch.rand(2, 3, 64, 64) * 255]))
    plain = build_model(ModelConfig(name="appsvr", num_clusters=4, kmeans_features_per_image=16,
                                    appsvr=AppsvrConfig(shadows_per_cluster=0)))
    info = plain.initialise(iter([torch.rand(2, 3, 64, 64) * 255]))   # no SC: NetVLAD's k-means, no labels
    assert info["shadow_centroids"] == 0 and info["static_features"] == 32


class TestHalfCachedMining:
    """APPSVR's tuples (supplement sec. 4): half hardest of the random pool, half from the cached hard list."""

    @pytest.fixture
    def miner(self):
        db_x = np.array([0.0] + [100.0 + i for i in range(10)])              # row 0 positive, rows 1-10 negatives
        places = PlaceSet("hand", [f"d{i}" for i in range(11)], np.c_[db_x, np.zeros(11)], ["q0"], np.zeros((1, 2)))
        cfg = MiningConfig(num_negatives=4, negative_pool=100, cached_negatives=11, negative_strategy="half_cached",
                           skip_trivial=False, hard_negative_memory=5)
        return SubCacheMiner(places, cfg, seed=0)

    @staticmethod
    def descriptors(paths: list[str]) -> np.ndarray:
        # query e0; positive e0; negative i at angle growing with i: the lower the row, the harder
        out = []
        for p in paths:
            i = 0 if p in ("q0", "d0") else int(p[1:])
            out.append([math.cos(0.15 * i), math.sin(0.15 * i)])
        return np.asarray(out, np.float32)

    def test_half_hardest_half_cached(self, miner):
        rng = np.random.default_rng(0)
        miner.hard_negatives[0] = np.array([8, 9, 10])
        cache = miner.build_cache(np.array([0]), rng)
        miner.refresh(cache, self.descriptors)
        t = miner.mine(cache, 0, rng)
        assert t.positive == 0 and t.negatives[:2].tolist() == [1, 2]              # hardest of the pool
        assert set(t.negatives[2:].tolist()) <= {8, 9, 10} and len(set(t.negatives[2:].tolist())) == 2
        # violation = ||q-p||^2 + m - ||q-n||^2 with ||q-n||^2 = 2 - 2 cos(0.15 i)
        np.testing.assert_allclose(t.violation, 0.1 - (2 - 2 * np.cos(0.15 * t.negatives)), atol=1e-5)
        # remembered: this round's violating pool negatives (hardest first), then the old list, at most 5
        violating = [i for i in range(1, 11) if 0.1 - (2 - 2 * math.cos(0.15 * i)) > 0]
        assert miner.hard_negatives[0].tolist() == ([*violating, 8, 9, 10])[:5]

    def test_empty_cached_list_is_topped_up_with_the_next_hardest(self, miner):
        rng = np.random.default_rng(0)
        cache = miner.build_cache(np.array([0]), rng)
        miner.refresh(cache, self.descriptors)
        assert miner.mine(cache, 0, rng, remember=False).negatives.tolist() == [1, 2, 3, 4]
        assert 0 not in miner.hard_negatives


@pytest.mark.parametrize("name", ["appsvr_nordland_cpu_small", "appsvr_nordland_cpu_small_L1",
                                  "appsvr_nordland_cpu_small_L3", "appsvr_nordland_cpu_small_PN_L3",
                                  "appsvr_nordland_cpu_small_SC_L3", "appsvr_corridor_cpu_small",
                                  "appsvr_pitts30k_vgg16"])
def test_ablation_configs_load_and_build(repo: Path, name: str):
    cfg = load_train_config(repo / "training" / "configs" / f"{name}.yaml")
    model = build_model(cfg.model)
    app = cfg.model.appsvr
    variant = model.describe()["variant"]
    expected = {"appsvr_nordland_cpu_small_L1": "APPSVR-L1", "appsvr_nordland_cpu_small_L3": "APPSVR-L3",
                "appsvr_nordland_cpu_small_PN_L3": "APPSVR-PN-L3", "appsvr_nordland_cpu_small_SC_L3": "APPSVR-SC-L3"}
    assert variant == expected.get(name, "APPSVR-SC-PN-L3")
    k = cfg.model.num_clusters
    assert model.head.assign_weight.shape[0] == k * (1 + app.shadows_per_cluster)
    assert (model.head.log_contribution is not None) == app.parametric_norm
    assert model.head.num_regions == sum(level * level for level in range(1, app.pyramid_levels + 1))
    assert cfg.mining.negative_strategy == "half_cached" and model.kind == "global"


# ---- training -> export -> map -> localize on the real corridor data ------------------------------------
def corridor_config(repo: Path, labels: Path, **overrides) -> TrainConfig:
    corridor = repo / "data" / "corridor"
    paths = {f"{split}.{key}": str(corridor / value) for split in ("train", "val")
             for key, value in (("query_dir", "query"), ("query_poses", "query_poses.csv"), ("db_dir", "ref"),
                                ("db_poses", "ref_poses.csv"))}
    return load_train_config(repo / "training/configs/appsvr_corridor_cpu_small.yaml",
                       {**paths, "train.labels": str(labels), **overrides})


def test_training_steps_on_real_tuples_lower_their_loss(repo: Path, corridor_rule_labels: Path, tmp_path: Path):
    """Semantic-constrained init on real corridor images + rule-based label maps, tuples mined with the initial
    model, then 6 optimiser steps on them: their loss falls (measured here 0.249 -> 0.005)."""
    from vpr_training.trainer import Trainer

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    trainer = Trainer(corridor_config(repo, corridor_rule_labels, probe_tuples=80), tmp_path, progress=False)
    trainer._setup()
    info = trainer.initialise()
    assert info["shadow_centroids"] == 32 and info["candidates"] == {0: 8}
    tuples = trainer.mine_probe()[:4]  # of 80 queries, those with a violating negative (the corridor is easy)
    assert len(tuples) >= 3
    model = trainer.model
    losses = []
    for _ in range(6):
        model.train()
        loss, parts = trainer._tuple_loss(tuples, None, model=model)
        losses.append(parts["total"])
        trainer.optimizer.zero_grad()
        loss.backward()
        trainer.optimizer.step()
    with torch.no_grad():
        model.eval()
        final = float(trainer._tuple_loss(tuples, None, model=model)[0])
    assert final < 0.5 * losses[0], (losses, final)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, repo: Path, corridor_rule_labels: Path):
    from vpr_training.trainer import Trainer

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    cfg = corridor_config(repo, corridor_rule_labels)
    return Trainer(cfg, tmp_path_factory.mktemp("appsvr") / "run", progress=False).run()


def test_export_runs_in_build_map_evaluate_and_the_node(trained, tmp_path: Path, corridor: Path,
                                                        corridor_ground_truth, localize_via_node):
    import json

    from vpr_ros.cli.evaluate import main as evaluate_main
    from vpr_ros.core.encoders import EncoderConfig, ModelCard, OnnxEncoder
    from vpr_ros.core.localizer import Localizer, LocalizerConfig
    from vpr_ros.core.map_builder import BuildMapConfig, build_map
    from vpr_ros.io.images import folder_source
    from vpr_training.export.onnx_export import main as export_main
    from vpr_training.trainer import load_checkpoint

    init = load_checkpoint(trained.best_checkpoint)["init"]  # weights_only: APPSVR's init facts are plain data
    assert init["shadow_centroids"] == 16 * 2 and init["candidates"] == {0: 8}
    models = tmp_path / "models"
    assert export_main(["--checkpoint", str(trained.best_checkpoint), "--out-dir", str(models),
                        "--name", "appsvr_test"]) == 0
    card = ModelCard.load(models / "appsvr_test.yaml")
    assert card.kind == "global" and card.output_name == "global" and card.channels == 64
    assert card.raw["variant"] == "APPSVR-SC-PN-L3" and "main paper is not available" in card.raw["notes"]
    assert card.raw["parity"]["global"]["max_abs_diff"] < 1e-4
    assert card.raw["training"]["data"]["train"]["labels"]["kind"].startswith("rule-based")
    assert not (models / "appsvr_test_head.npz").exists()

    encoder = OnnxEncoder(EncoderConfig(model=str(models / "appsvr_test.onnx")))
    src = folder_source(corridor / "ref", corridor / "ref_poses.csv")
    refmap = build_map(src, tmp_path / "map", BuildMapConfig(), progress=False, encoder=encoder)
    assert refmap.head is None and refmap.dim == 64
    hyp = Localizer(refmap, encoder, LocalizerConfig(top_k=5)).localize(src.load_image(40))
    assert hyp.ids[0] == 40

    assert evaluate_main(["--map", str(tmp_path / "map"), "--queries", str(corridor / "query"), "--ground-truth",
                          str(corridor / "ground_truth_new.npy"), "--out", str(tmp_path / "eval"), "--quiet",
                          "--no-plots", "--set", f"localizer.encoder.model={models / 'appsvr_test.onnx'}"]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    # Measured here: R@1 0.83, R@5 0.99 (best on validation was the initialised model: the corridor is easy).
    assert report["recall@5"] > 0.85, report["recall@5"]

    queries = sorted((corridor / "query").glob("*.jpg"))[::10]
    top1 = localize_via_node(tmp_path / "map", models / "appsvr_test.onnx", queries, "/appsvr")
    hits = [t in corridor_ground_truth[int(q.stem)] for t, q in zip(top1, queries, strict=True)]
    assert -1 not in top1 and np.mean(hits) >= 0.6, (top1, hits)
