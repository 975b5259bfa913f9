"""Export parity of the default encoder: PyTorch EfficientNet-Lite0 vs its ONNX graphs on real images.

Needs the offline ``training/`` package (torch, onnx, onnxruntime, the weights package); the whole module
is skipped where those are not installed, so the rest of the suite runs without torch.

Tolerances (float32, CPU; the ONNX graphs run on a batch-norm-folded copy, ONNX Runtime uses other
convolution kernels and summation orders than torch):

=========  ==========================  ======================================================
output     tolerance                   why
=========  ==========================  ======================================================
logits     atol 1e-3, rtol 1e-4        logits reach ~10; observed max |diff| ~1e-5, so 1e-3 leaves
                                       ~100x margin for other CPUs yet is far below a class change
features   max |diff| < 2e-3           block-10 features reach ~40; observed ~3e-4 (relative 1e-5)
=========  ==========================  ======================================================
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "training") not in sys.path:
    sys.path.insert(0, str(REPO / "training"))

pytestmark = pytest.mark.torch

from vpr_ros.core.encoders.model_card import ModelCard  # noqa: E402
from vpr_ros.core.files import sha256_file  # noqa: E402
from vpr_ros.core.paths import PACKAGE_ROOT  # noqa: E402
from vpr_training.backbones.efficientnet_lite import EfficientNetLite0, load_pretrained_lite0  # noqa: E402
from vpr_training.export import default_encoder as de  # noqa: E402

LOGITS_ATOL, LOGITS_RTOL = 1e-3, 1e-4
FEATURES_MAX_ABS = 2e-3
#: ImageNet classes that are a sensible top-1 for a Tokyo street at night / by day (the exported model
#: gives "street sign" for both images; the others are what the wrong preprocessing variants gave).
TOKYO_PLAUSIBLE = {
    "street sign",
    "traffic light",
    "cab",
    "streetcar",
    "trolleybus",
    "jinrikisha",
    "parking meter",
    "pole",
    "grocery store",
}
N_CORRIDOR = 4
SHIPPED_MODEL = PACKAGE_ROOT / "models" / "efficientnet_lite0_b10.onnx"


def corridor_images() -> list[Path]:
    """Real corridor frames from ``<repo>/data/corridor``, else ``<repo>/../shared/data/corridor``."""
    for root in (REPO / "data" / "corridor", REPO.parent / "shared" / "data" / "corridor"):
        found = sorted((root / "ref").glob("*.jpg"))
        if found:
            return de.spread(found, N_CORRIDOR)
    return []


@pytest.fixture(scope="module")
def model() -> EfficientNetLite0:
    torch.set_num_threads(2)
    return load_pretrained_lite0()


@pytest.fixture(scope="module")
def images() -> dict[str, list[Path]]:
    tokyo, corridor = de.tokyo_example_images(), corridor_images()
    assert len(tokyo) >= 2 and corridor, \
        "real test images missing: the patchnetvlad package's example images (requirements), data/corridor"
    return {"tokyo": tokyo, "all": tokyo + corridor}


@pytest.fixture(scope="module")
def exported(model: EfficientNetLite0, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("onnx")
    paths = {"backbone": out / "backbone.onnx", "classifier": out / "classifier.onnx"}
    de.export_backbone_onnx(model, paths["backbone"], block=10)
    de.export_classifier_onnx(model, paths["classifier"])
    return paths


def _top1(logits: np.ndarray) -> list[str]:
    cats = de.imagenet_categories()
    return [cats[i] for i in logits.argmax(-1)]


class TestEncoderParity:
    def test_classifier_logits_match(
        self,
        model: EfficientNetLite0,
        images: dict[str, list[Path]],
        exported: dict[str, Path],
        record_property: Any,
    ) -> None:
        batch = np.stack([de.load_image(p, (de.CLASSIFY_SIZE,) * 2, centre_crop=True) for p in images["all"]])
        expected = de.run_torch(de.NormalisedClassifier(model, fold_bn=False).eval(), batch)
        got = de.run_onnx(de.ort_session(exported["classifier"]), batch)
        assert got.shape == expected.shape == (len(batch), 1000)
        max_diff = float(np.abs(got - expected).max())
        print(
            f"\nclassifier logits: max |torch - onnx| = {max_diff:.3g}"
            f" (|logit| <= {np.abs(expected).max():.1f})"
        )
        record_property("classifier_logits_max_abs_diff", max_diff)
        assert _top1(got) == _top1(expected)
        np.testing.assert_allclose(got, expected, atol=LOGITS_ATOL, rtol=LOGITS_RTOL)

    def test_backbone_features_match(
        self,
        model: EfficientNetLite0,
        images: dict[str, list[Path]],
        exported: dict[str, Path],
        record_property: Any,
    ) -> None:
        batch = np.stack([de.load_image(p, de.DEFAULT_SIZE) for p in images["all"]])
        expected = de.run_torch(model.feature_extractor(10, fold_bn=False), batch)
        got = de.run_onnx(de.ort_session(exported["backbone"]), batch)
        assert got.shape == expected.shape == (len(batch), 112, 30, 40)
        stats = de.parity(expected, got)
        print(f"\nbackbone block 10 at 480x640: {stats}")
        record_property("backbone_max_abs_diff", stats["max_abs_diff"])
        record_property("backbone_mean_abs_diff", stats["mean_abs_diff"])
        assert stats["max_abs_diff"] < FEATURES_MAX_ABS

    def test_tokyo_top1_is_a_street_class(
        self, model: EfficientNetLite0, images: dict[str, list[Path]]
    ) -> None:
        """Guards the preprocessing found for these weights: wrong normalisation or padding shifts these."""
        batch = np.stack(
            [de.load_image(p, (de.CLASSIFY_SIZE,) * 2, centre_crop=True) for p in images["tokyo"]]
        )
        top1 = _top1(de.run_torch(de.NormalisedClassifier(model, fold_bn=False).eval(), batch))
        print(f"\nTokyo top-1: {top1}")
        assert set(top1) <= TOKYO_PLAUSIBLE

    def test_backbone_other_size_has_stride_16(self, exported: dict[str, Path]) -> None:
        session = de.ort_session(exported["backbone"])
        for h, w in ((240, 320), (250, 330)):  # 250x330: not a multiple of 16, output is ceil(size / 16)
            out = session.run(None, {"image": np.full((2, 3, h, w), 127.0, np.float32)})[0]
            assert out.shape == (2, 112, -(-h // 16), -(-w // 16))
            assert np.isfinite(out).all()

    def test_export_is_deterministic(
        self, model: EfficientNetLite0, exported: dict[str, Path], tmp_path: Path
    ) -> None:
        again = tmp_path / "again.onnx"
        de.export_backbone_onnx(model, again, block=10)
        assert sha256_file(again) == sha256_file(exported["backbone"])

    def test_shipped_model_is_this_export(self, exported: dict[str, Path]) -> None:
        """The tracked default model is what this code exports from the pinned weights, byte for byte."""
        card = ModelCard.load(SHIPPED_MODEL.with_suffix(".yaml"))
        assert sha256_file(exported["backbone"]) == card.onnx_sha256 == sha256_file(SHIPPED_MODEL), \
            "the shipped model is not what the exporter builds: run `make models` and commit the result"


class TestExportCli:
    def test_writes_model_and_card(self, tmp_path: Path) -> None:
        import yaml

        corridor = corridor_images()
        assert corridor, "data/corridor missing: it ships with the repository"
        check_glob = str(corridor[0].parent / "*.jpg")
        assert (
            de.main(["--out-dir", str(tmp_path), "--check-images", check_glob, "--max-check-images", "2"])
            == 0
        )
        card = yaml.safe_load((tmp_path / "efficientnet_lite0_b10.yaml").read_text())
        assert card["id"] == "efficientnet_lite0_b10" and card["kind"] == "backbone"
        assert card["onnx_sha256"] == sha256_file(tmp_path / card["onnx_file"])
        assert card["input"]["default_size"] == [480, 640] and card["input"]["range"] == [0, 255]
        assert card["output"] == {"name": "features", "channels": 112, "stride": 16}
        assert card["parity"]["images"] == 2 and card["parity"]["max_abs_diff"] < FEATURES_MAX_ABS

    def test_rebuilding_the_shipped_model_leaves_model_and_card_untouched(self, tmp_path: Path) -> None:
        """``make models`` on a checkout: same ONNX, so no new ``created`` date in the tracked card."""
        for path in (SHIPPED_MODEL, SHIPPED_MODEL.with_suffix(".yaml")):
            shutil.copy2(path, tmp_path / path.name)
        before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir()}
        assert de.main(["--out-dir", str(tmp_path)]) == 0
        assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir()} == before

    def test_missing_weights_exits_nonzero(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        def missing() -> Path:
            raise de.WeightsNotFoundError("EfficientNet-Lite0 weights not found: install them")

        monkeypatch.setattr(de, "pretrained_weights_path", missing)
        assert de.main(["--out-dir", str(tmp_path)]) != 0
        assert "weights not found" in capsys.readouterr().err
        assert not list(tmp_path.iterdir())


class TestInstallModel:
    """Which rebuilds replace the model and its card (no torch export needed: a stand-in file and card)."""

    @staticmethod
    def card_for(onnx: Path, description: str = "stand-in", parity: float = 1e-4) -> ModelCard:
        return ModelCard.build(id="stand_in", kind="backbone", description=description, onnx_file="stand_in.onnx",
                               onnx_sha256=sha256_file(onnx), opset=17, output_name="features", channels=8,
                               stride=16, default_size=(480, 640), sections={"parity": {"max_abs_diff": parity}})

    def test_only_a_new_graph_or_a_new_description_rewrites(self, tmp_path: Path) -> None:
        out, scratch = tmp_path / "out", tmp_path / "out" / ".scratch"
        scratch.mkdir(parents=True)
        (scratch / "stand_in.onnx").write_bytes(b"graph one")
        assert de.install_model(scratch / "stand_in.onnx", self.card_for(scratch / "stand_in.onnx"), out)
        card_text = (out / "stand_in.yaml").read_text()
        assert (out / "stand_in.onnx").read_bytes() == b"graph one" and not (scratch / "stand_in.onnx").exists()
        assert (out / "stand_in.onnx").stat().st_mode & 0o777 == 0o644 == (out / "stand_in.yaml").stat().st_mode & 0o777

        # Same graph, parity measured again (and a new time stamp): nothing is written.
        (scratch / "stand_in.onnx").write_bytes(b"graph one")
        remeasured = self.card_for(scratch / "stand_in.onnx", parity=2e-4)
        assert not de.install_model(scratch / "stand_in.onnx", remeasured, out)
        assert (out / "stand_in.yaml").read_text() == card_text

        # Same graph, another description: the card is rewritten.
        described = self.card_for(scratch / "stand_in.onnx", description="another")
        assert de.install_model(scratch / "stand_in.onnx", described, out)
        assert "another" in (out / "stand_in.yaml").read_text()

        # Another graph: both are replaced.
        (scratch / "stand_in.onnx").write_bytes(b"graph two")
        assert de.install_model(scratch / "stand_in.onnx", self.card_for(scratch / "stand_in.onnx"), out)
        assert (out / "stand_in.onnx").read_bytes() == b"graph two"
        assert ModelCard.load(out / "stand_in.yaml").onnx_sha256 == sha256_file(out / "stand_in.onnx")
