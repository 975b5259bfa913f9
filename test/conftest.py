"""Test session setup: loopback-only DDS in a domain of its own, shared real data and a corridor map."""

from __future__ import annotations

import os
import random

# Network rule (before anything imports rclpy): DDS discovery stays on loopback, and each test session
# uses its own domain so parallel sessions (CI, a developer's demo) never see each other's topics.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(1, 100)))

# OpenMP threads that busy-wait between operators (torch's default) starve every other process on a small
# shared machine, and each other: measured on 2 busy cores, the training test took minutes instead of ~25 s.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training"))
DEFAULT_MODEL = REPO / "models" / "efficientnet_lite0_b10.onnx"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def corridor() -> Path:
    """The real corridor dataset shipped in data/corridor (VPR-Bench, MIT)."""
    path = REPO / "data" / "corridor"
    assert (path / "ref").is_dir(), f"{path} missing: the corridor data ships with the repository"
    return path


@pytest.fixture(scope="session")
def default_model() -> Path:
    assert DEFAULT_MODEL.exists(), f"{DEFAULT_MODEL} missing: run `make models` (make test does it)"
    return DEFAULT_MODEL


@pytest.fixture(scope="session")
def encoder(default_model: Path):
    from vpr_ros.core.encoder import EncoderConfig, OnnxEncoder

    return OnnxEncoder(EncoderConfig(model=str(default_model)))


@pytest.fixture(scope="session")
def corridor_map(tmp_path_factory: pytest.TempPathFactory, corridor: Path, encoder) -> Path:
    """A map of the corridor reference traversal with the default settings, built once per session."""
    from vpr_ros.core.map_builder import BuildMapConfig, build_map
    from vpr_ros.io.images import folder_source

    out = tmp_path_factory.mktemp("maps") / "corridor"
    build_map(folder_source(corridor / "ref", corridor / "ref_poses.csv"), out, BuildMapConfig(),
              progress=False, encoder=encoder)
    return out


@pytest.fixture(scope="session")
def corridor_ground_truth(corridor: Path) -> list[np.ndarray]:
    rows = np.load(corridor / "ground_truth_new.npy", allow_pickle=True)
    return [np.asarray(r[1], dtype=np.int64) for r in rows]


@pytest.fixture(scope="session")
def corridor_patch_map(tmp_path_factory: pytest.TempPathFactory, corridor: Path, encoder) -> Path:
    """The corridor map with a Patch-NetVLAD patch store of the ``speed`` configuration (int8 patches)."""
    from vpr_ros.core.map_builder import BuildMapConfig, build_map
    from vpr_ros.core.patch_store import PatchStoreConfig
    from vpr_ros.io.images import folder_source

    out = tmp_path_factory.mktemp("maps") / "corridor_speed"
    build_map(folder_source(corridor / "ref", corridor / "ref_poses.csv"), out,
              BuildMapConfig(patches=PatchStoreConfig(preset="speed")), progress=False, encoder=encoder)
    return out
