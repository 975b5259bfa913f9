"""ReferenceMap: save/load round trip, atomic replacement, corruption and version detection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from vpr_ros.core.frames import FrameTable
from vpr_ros.core.refmap import IndexConfig, MapError, ReferenceMap
from vpr_ros.core.vlad import VladHead


def small_map(n: int = 20, dim: int = 8, factory: str = "Flat", seed: int = 0) -> ReferenceMap:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(2, 4)).astype(np.float32)
    proj = rng.normal(size=(dim, 8)).astype(np.float32)
    head = VladHead(c, c, np.zeros(2, np.float32), proj, np.zeros(dim, np.float32))
    desc = rng.normal(size=(n, dim)).astype(np.float32)
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    quat = np.tile([0.0, 0.0, 0.0, 1.0], (n, 1))
    quat[3] = np.nan
    frames = FrameTable(np.arange(n), [f"img,{i}.jpg" for i in range(n)], [f"/data/img,{i}.jpg" for i in range(n)],
                        np.arange(n) * 0.1 + 1e9, rng.normal(size=(n, 3)) * 100, quat)
    return ReferenceMap(frames, desc, head, {"id": "test_encoder", "onnx_sha256": "ab" * 32}, (480, 640),
                        IndexConfig(factory=factory), arrays={"patches": rng.normal(size=(n, 5, 3)).astype(np.float16)})


def test_round_trip_preserves_everything(tmp_path: Path):
    m = small_map()
    m.save(tmp_path / "map")
    again = ReferenceMap.load(tmp_path / "map")
    assert again.frames.names == m.frames.names and again.frames.sources == m.frames.sources
    np.testing.assert_array_equal(again.frames.stamps, m.frames.stamps)
    np.testing.assert_array_equal(again.frames.positions, m.frames.positions)
    np.testing.assert_array_equal(again.frames.orientations, m.frames.orientations)  # NaN rows included
    np.testing.assert_array_equal(again.descriptors, m.descriptors)
    np.testing.assert_array_equal(again.arrays["patches"], m.arrays["patches"])
    assert isinstance(again.arrays["patches"], np.memmap)
    assert again.input_size == (480, 640) and again.encoder == m.encoder
    q = m.descriptors[[3, 7]]
    sims, idx = again.search(q, 3)
    assert idx[:, 0].tolist() == [3, 7]
    np.testing.assert_allclose(sims[:, 0], 1.0, rtol=1e-5)


def test_existing_map_is_not_overwritten_without_consent(tmp_path: Path):
    small_map().save(tmp_path / "map")
    with pytest.raises(FileExistsError, match="overwrite"):
        small_map(seed=1).save(tmp_path / "map")
    small_map(n=5, seed=1).save(tmp_path / "map", overwrite=True)
    assert len(ReferenceMap.load(tmp_path / "map")) == 5
    assert [p.name for p in tmp_path.iterdir()] == ["map"], "temporary or old directories left behind"


def test_failed_save_leaves_no_partial_map(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A crash after the data files but before the manifest must leave neither a map nor temp dirs."""
    small_map().save(tmp_path / "map")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("vpr_ros.core.refmap.yaml.safe_dump", fail)
    with pytest.raises(OSError, match="disk full"):
        small_map(n=6, seed=2).save(tmp_path / "map", overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["map"]
    monkeypatch.undo()
    assert len(ReferenceMap.load(tmp_path / "map")) == 20, "the previous map must survive a failed overwrite"


@pytest.mark.parametrize("victim", ["descriptors.npy", "frames.npz", "global.faiss", "head.npz",
                                    "arrays/patches.npy"])
def test_flipped_byte_is_detected_and_file_named(tmp_path: Path, victim: str):
    small_map().save(tmp_path / "map")
    path = tmp_path / "map" / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(MapError, match=rf"{victim}.*sha256 mismatch"):
        ReferenceMap.load(tmp_path / "map")


def test_truncated_file_is_detected(tmp_path: Path):
    small_map().save(tmp_path / "map")
    path = tmp_path / "map" / "descriptors.npy"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(MapError, match=r"descriptors\.npy.*truncated"):
        ReferenceMap.load(tmp_path / "map", verify=False)


def test_missing_file_and_missing_map(tmp_path: Path):
    small_map().save(tmp_path / "map")
    (tmp_path / "map" / "global.faiss").unlink()
    with pytest.raises(MapError, match=r"global\.faiss: missing"):
        ReferenceMap.load(tmp_path / "map")
    with pytest.raises(MapError, match="does not exist"):
        ReferenceMap.load(tmp_path / "nowhere")


def test_newer_format_version_is_refused(tmp_path: Path):
    small_map().save(tmp_path / "map")
    mf = tmp_path / "map" / "manifest.yaml"
    manifest = yaml.safe_load(mf.read_text())
    manifest["format_version"] = 99
    mf.write_text(yaml.safe_dump(manifest))
    with pytest.raises(MapError, match="format version 99"):
        ReferenceMap.load(tmp_path / "map")


def test_encoder_mismatch_is_refused():
    m = small_map()
    with pytest.raises(MapError, match="built with encoder test_encoder"):
        m.check_encoder({"id": "other", "onnx_sha256": "cd" * 32})
    m.check_encoder({"id": "test_encoder", "onnx_sha256": "ab" * 32})


def test_append_grows_map_and_index(tmp_path: Path):
    m = small_map(n=10)
    extra = small_map(n=4, seed=3)
    extra.frames.ids[:] = np.arange(10, 14)
    m.append(extra.frames, extra.descriptors, {"patches": extra.arrays["patches"]})
    assert len(m) == 14 and m.arrays["patches"].shape[0] == 14
    _, idx = m.search(extra.descriptors[[2]], 1)
    assert idx[0, 0] == 12
    with pytest.raises(ValueError, match="already in the map"):
        m.append(extra.frames, extra.descriptors)


@pytest.mark.parametrize("factory", ["HNSW16", "IVF4,Flat"])
def test_other_faiss_factories(tmp_path: Path, factory: str):
    m = small_map(n=200, factory=factory)
    m.save(tmp_path / "map")
    again = ReferenceMap.load(tmp_path / "map")
    _, idx = again.search(m.descriptors[:20], 1)
    assert (idx[:, 0] == np.arange(20)).mean() >= 0.9


def test_atomic_writes_get_the_permissions_open_would_give(tmp_path):
    from vpr_ros.core.files import atomic_write_bytes, current_umask

    path = atomic_write_bytes(tmp_path / "frames.csv", b"id\n")
    assert path.stat().st_mode & 0o777 == 0o666 & ~current_umask()
    assert path.stat().st_mode & 0o044  # readable by group and others under the usual umask 022
