"""The default encoder ships with the package: a tracked ONNX file that matches its model card, with its licence,
and no make target but ``make models`` ever rebuilds it (a machine without torch must never be asked to).

That the shipped file is what the exporter builds, and that ``make models`` leaves it untouched when it is, is
checked with torch in test/test_encoder_parity.py; that colcon installs it in test/test_packaging.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from vpr_ros.core.encoders import EncoderConfig, ModelCard, OnnxEncoder
from vpr_ros.core.files import sha256_file
from vpr_ros.core.paths import PACKAGE_ROOT

MODELS = PACKAGE_ROOT / "models"
MODEL = MODELS / "efficientnet_lite0_b10.onnx"
LICENCE = MODELS / "LICENSE.efficientnet_lite0"
EXPORT_MODULE = "vpr_training.export.default_encoder"


def test_shipped_model_matches_its_card():
    card = ModelCard.load(MODEL.with_suffix(".yaml"))
    assert card.onnx_file == MODEL.name and sha256_file(MODEL) == card.onnx_sha256
    encoder = OnnxEncoder(EncoderConfig(model=str(MODEL)))  # the loader checks the checksum too
    assert encoder.describe()["onnx_sha256"] == card.onnx_sha256


def test_licence_names_the_weights_of_the_card():
    card = ModelCard.load(MODEL.with_suffix(".yaml"))
    text = LICENCE.read_text()
    source = card.raw["source"]
    assert source["licence"] == "Apache-2.0" and "Apache License" in text and "Version 2.0, January 2004" in text
    weights_package, _, weights_version = source["weights"].partition("==")
    assert f"{weights_package} {weights_version}" in text and source["weights_sha256"] in text
    assert "What vpr_ros changed" in text and f"block {source['block']}" in text.replace("blocks 0..", "block ")


def test_model_card_and_licence_are_tracked(repo: Path):
    git = shutil.which("git")
    assert git is not None, "git missing"
    for path in (MODEL, MODEL.with_suffix(".yaml"), LICENCE):
        ignored = subprocess.run([git, "-C", str(repo), "check-ignore", "-q", str(path)], check=False)
        assert ignored.returncode == 1, f"{path} is ignored by git (or this is not a git checkout)"


@pytest.mark.parametrize("target", ["demo", "test", "bench", "fuzz"])
def test_no_make_target_but_models_rebuilds_the_model(repo: Path, target: str):
    """Even with the exporter's sources newer than everything (as mtimes can be on a fresh clone)."""
    newest = [str(p.relative_to(repo)) for p in (repo / "training" / "vpr_training" / "export").glob("*.py")]
    out = subprocess.run(["make", "--dry-run", "-C", str(repo), *(f"--what-if={p}" for p in newest), target],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert EXPORT_MODULE not in out.stdout, out.stdout


def test_make_models_always_rebuilds(repo: Path):
    out = subprocess.run(["make", "--dry-run", "-C", str(repo), "models"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert EXPORT_MODULE in out.stdout, out.stdout
