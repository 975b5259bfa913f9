"""The weights-free thumbnail encoder: patch normalisation, identity, maps that refuse another setting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vpr_ros.core.encoders import EncoderConfig, make_encoder
from vpr_ros.core.encoders.thumbnail import ThumbnailEncoder, ThumbnailSpec, patch_normalise, thumbnail_descriptors
from vpr_ros.core.image import load_rgb
from vpr_ros.core.localizer import Localizer, LocalizerConfig
from vpr_ros.core.map_builder import BuildMapConfig, build_map
from vpr_ros.core.refmap import MapError, ReferenceMap
from vpr_ros.io.images import folder_source


def test_spec_parsing_and_errors():
    assert ThumbnailSpec.parse("thumbnail:64x32") == ThumbnailSpec(64, 32, 8)
    assert ThumbnailSpec.parse("thumbnail:32x16,patch=4").name == "thumbnail:32x16,patch=4"
    with pytest.raises(ValueError, match="must divide the thumbnail size 30x16"):
        ThumbnailSpec.parse("thumbnail:30x16,patch=8")
    with pytest.raises(ValueError, match=r"expected 'thumbnail:WxH'"):
        ThumbnailSpec.parse("thumbnail:big")
    with pytest.raises(ValueError, match="must be positive"):
        ThumbnailSpec.parse("thumbnail:0x16")


def test_patch_normalisation_gives_zero_mean_unit_std_patches():
    rng = np.random.default_rng(0)
    grey = rng.uniform(0, 255, size=(2, 16, 24)).astype(np.float32)
    out = patch_normalise(grey, 8).reshape(2, 2, 8, 3, 8)
    np.testing.assert_allclose(out.mean(axis=(2, 4)), 0, atol=1e-4)
    np.testing.assert_allclose(out.std(axis=(2, 4)), 1, atol=1e-4)
    flat = patch_normalise(np.full((1, 8, 8), 7.0, np.float32), 8)
    assert np.all(flat == 0), "a uniform patch has no structure"


def test_descriptor_ignores_brightness_and_contrast_changes(repo: Path):
    image = load_rgb(repo / "data" / "nordland_part1" / "summer" / "images-05000.png")
    darker = (image.astype(np.float32) * 0.5 + 20).astype(np.uint8)
    spec = ThumbnailSpec(64, 32, 8)
    d = thumbnail_descriptors([image, darker], spec)
    assert d.shape == (2, 64 * 32)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1, atol=1e-5)
    assert float(d[0] @ d[1]) > 0.97
    black = thumbnail_descriptors([np.zeros((32, 64, 3), np.uint8)], spec)
    assert np.all(black == 0)


def test_factory_identity_and_map_refuses_another_setting(tmp_path: Path, repo: Path):
    enc = make_encoder(EncoderConfig(model="thumbnail:64x32,patch=8"))
    assert isinstance(enc, ThumbnailEncoder) and enc.head is None and enc.card.kind == "global"
    other = make_encoder(EncoderConfig(model="thumbnail:64x32,patch=4"))
    assert enc.describe()["spec_sha256"] != other.describe()["spec_sha256"]
    assert enc.describe() == ThumbnailEncoder(EncoderConfig(model="thumbnail:64x32, patch=8")).describe()

    summer = folder_source(repo / "data" / "nordland_part1" / "summer")
    m = build_map(summer, tmp_path / "map", BuildMapConfig(encoder=enc.config, image_height=480, image_width=640),
                  progress=False, encoder=enc)
    assert m.input_size == (32, 64), "a thumbnail's size is fixed by its spec"
    loaded = ReferenceMap.load(tmp_path / "map")
    assert loaded.head is None and loaded.dim == 2048 and loaded.encoder["spec"] == "thumbnail:64x32,patch=8"
    with pytest.raises(MapError, match=r"built with encoder thumbnail \(spec sha256 [0-9a-f]{12}"):
        Localizer(loaded, other)
    loc = Localizer(loaded, enc, LocalizerConfig(top_k=3, encoder=enc.config))
    hyp = loc.localize(summer.load_image(900))
    assert hyp.indices[0] == 900 and hyp.scores[0] == pytest.approx(1.0, abs=1e-5)
