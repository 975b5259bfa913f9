"""Models, losses and export of the training package: torch NetVLAD == numpy head, gradients, registry.

Tolerances: float32 on CPU; torch and numpy sum in different orders, descriptors are L2-normalised
(entries < 1), observed differences ~1e-7, asserted at 1e-5.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.torch

from vpr_ros.core.vlad import VladHead  # noqa: E402
from vpr_training.config import LossConfig, ModelConfig  # noqa: E402
from vpr_training.losses import CompositeLoss, TripletMarginLoss, TupleLayout, build_loss  # noqa: E402
from vpr_training.models import MODELS, VprModel, build_backbone, build_model, register_model  # noqa: E402
from vpr_training.models.netvlad import NetVLAD  # noqa: E402


class TestNetVLAD:
    def test_matches_the_numpy_head(self):
        torch.manual_seed(0)
        layer = NetVLAD(8, 16)
        features = torch.randn(3, 16, 5, 7)
        head = VladHead.from_arrays(layer.head_arrays())
        with torch.no_grad():
            np.testing.assert_allclose(layer(features).numpy(), head.vlad(features.numpy()), atol=1e-5)
            np.testing.assert_allclose(layer.residuals(features).numpy(),
                                       head.aggregate(head.local_descriptors(features.numpy())), atol=1e-5)

    def test_kmeans_initialisation_is_netvlads(self):
        rng = np.random.default_rng(0)
        samples = rng.normal(size=(500, 16)).astype(np.float32)
        samples /= np.linalg.norm(samples, axis=1, keepdims=True)
        centroids = samples[:8].copy()
        layer = NetVLAD(8, 16)
        layer.init_from_kmeans(centroids, samples, ratio=100.0)
        w, b = layer.assign_weight.detach().numpy(), layer.assign_bias.detach().numpy()
        alpha = w[0, 0] / (2 * centroids[0, 0])
        np.testing.assert_allclose(w, 2 * alpha * centroids, rtol=1e-5)  # w_k = 2 alpha c_k
        np.testing.assert_allclose(b, -alpha * (centroids ** 2).sum(1), rtol=1e-5)  # b_k = -alpha ||c_k||^2
        with pytest.raises(ValueError, match=r"expected centroids \(8, 16\)"):
            layer.init_from_kmeans(centroids[:4], samples)

    def test_shape_check_names_the_expected_shape(self):
        with pytest.raises(ValueError, match=r"expected features \(B, 16, h, w\)"):
            NetVLAD(4, 16)(torch.zeros(1, 8, 2, 2))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(ModelConfig(num_clusters=8, train_layers=2))


class TestModel:
    def test_outputs_and_gradients_reach_every_trained_parameter(self, model):
        model.train()
        out = model(torch.rand(4, 3, 64, 96) * 255)
        assert out["features"].shape == (4, 112, 4, 6) and out["vlad"].shape == (4, 8 * 112)
        torch.testing.assert_close(out["global"].norm(dim=1), torch.ones(4))
        out["global"][:, :10].sum().backward()
        trained = {n for n, p in model.named_parameters() if p.requires_grad}
        assert {n for n in trained if "_blocks.9." in n or "_blocks.10." in n} and "netvlad.centroids" in trained
        assert not any("_blocks.8." in n or "_fc" in n for n in trained)  # only the last 2 blocks train
        assert all(model.get_parameter(n).grad is not None for n in trained)
        model.zero_grad()

    def test_batchnorm_statistics_stay_frozen(self, model):
        model.train()
        bn = model.backbone.net._blocks[10]._bn1
        before = bn.running_mean.clone()
        model(torch.rand(2, 3, 64, 64) * 255)
        assert not bn.training and torch.equal(bn.running_mean, before)

    def test_projection_fit_and_head_arrays(self, model):
        model.eval()
        with torch.no_grad():
            vlads = model(torch.rand(12, 3, 64, 64) * 255)["vlad"].numpy()
        info = model.fit_projection(vlads)
        assert info["pca_dim"] == 11  # clamped to N - 1
        head = VladHead.from_arrays(model.head_arrays())
        assert head.output_dim == 11
        images = torch.rand(2, 3, 64, 64) * 255
        with torch.no_grad():
            expected = model(images)["global"].numpy()
            got = head.global_descriptors(model.backbone(images).numpy())
        np.testing.assert_allclose(got, expected, atol=1e-5)
        model.projection = None

    @pytest.mark.parametrize(("name", "channels", "stride"), [("resnet18", 256, 16), ("mobilenet_v2", 320, 32),
                                                              ("vgg16", 512, 16)])
    def test_torchvision_backbones_start_random_without_weights(self, name, channels, stride, caplog):
        with caplog.at_level(logging.WARNING):
            backbone = build_backbone(name, train_layers=1)
        assert "random initialisation" in caplog.text
        assert (backbone.out_channels, backbone.stride) == (channels, stride)
        with torch.no_grad():
            assert backbone(torch.rand(1, 3, 64, 64) * 255).shape == (1, channels, 64 // stride, 64 // stride)
        assert any(p.requires_grad for p in backbone.parameters())
        assert not all(p.requires_grad for p in backbone.parameters())

    def test_backbone_weights_file_must_exist(self, tmp_path: Path):
        with pytest.raises(FileNotFoundError, match="backbone_weights"):
            build_backbone("resnet18", weights=str(tmp_path / "missing.pth"))
        with pytest.raises(ValueError, match="backbone 'alexnet' is not one of"):
            build_backbone("alexnet")


class TestLoss:
    def test_triplet_loss_by_hand(self):
        layout = TupleLayout(tuples=1, negatives=2)
        q, p = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])        # ||q-p||^2 = 2
        n = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])                          # ||q-n||^2 = 0, 4
        loss = TripletMarginLoss(margin=0.1)({"global": torch.cat([q, p, n])}, layout)
        assert float(loss) == pytest.approx((2 - 0 + 0.1) + 0.0)  # second negative satisfies the margin
        plain = TripletMarginLoss(margin=0.1, squared=False)({"global": torch.cat([q, p, n])}, layout)
        assert float(plain) == pytest.approx(2 ** 0.5 + 0.1)

    def test_layout_and_extra_terms(self):
        layout = TupleLayout(tuples=2, negatives=3)
        x = torch.arange(10.0).unsqueeze(1)
        q, p, n = layout.split(x)
        assert q.flatten().tolist() == [0, 1] and p.flatten().tolist() == [2, 3] and n.shape == (2, 3, 1)
        with pytest.raises(ValueError, match="expected 10 rows"):
            layout.split(torch.zeros(9, 1))
        loss = build_loss(LossConfig())
        assert isinstance(loss, CompositeLoss)
        loss.add(0.5, "size", lambda outputs, layout, extras: outputs["global"].abs().mean())
        total, parts = loss({"global": torch.zeros(10, 4)}, layout)
        assert parts["size"] == 0.0 and parts["total"] == pytest.approx(parts["main"]) and float(total) > 0


class MeanPooled(VprModel):
    """A model registered by a test: mean-pooled Lite0 features, exported as a 'global' ONNX model."""

    kind = "global"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.backbone = build_backbone(config.backbone, train_layers=0)

    def forward(self, images):
        g = self.backbone(images).mean((2, 3))
        return {"global": g / g.norm(dim=1, keepdim=True)}

    def export_module(self):
        return self

    def describe(self):
        return {"stride": self.backbone.stride}


def test_registry_adds_models_that_export_as_global(tmp_path: Path, corridor: Path):
    """Models added later (APPSVR, StructVPR) plug in by name; a 'global' model runs in the node's encoder."""
    from vpr_ros.config import config_to_dict
    from vpr_ros.core.encoders import EncoderConfig, OnnxEncoder
    from vpr_training.config import TrainConfig
    from vpr_training.export.onnx_export import export_checkpoint
    from vpr_training.trainer import CHECKPOINT_FORMAT, CHECKPOINT_VERSION

    register_model("test_mean_pooled")(MeanPooled)
    try:
        cfg = TrainConfig(image_height=64, image_width=96, model=ModelConfig(name="test_mean_pooled"))
        model = build_model(cfg.model)
        ckpt = tmp_path / "ckpt.pt"
        torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": config_to_dict(cfg),
                    "model": model.state_dict()}, ckpt)
        images = sorted(str(p) for p in (corridor / "ref").glob("*.jpg"))[:4]
        result = export_checkpoint(ckpt, tmp_path / "models", "mean_pooled", check_images=images)
        assert result.card.kind == "global" and result.head_path is None
        assert result.card.raw["parity"]["global"]["max_abs_diff"] < 1e-4
        enc = OnnxEncoder(EncoderConfig(model=str(result.onnx_path)))
        assert enc.head is None and enc.card.output_name == "global" and enc.card.channels == 112
    finally:
        MODELS.pop("test_mean_pooled")
