"""Maps at scale: index chosen by size, append without retraining, --retrain, merge and its refusals, memory-mapped
open, search parameters per call, and maps of format version 1 still opening (issue 17)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import faiss
import numpy as np
import pytest
import yaml

from vpr_ros.cli import build_map as build_map_cli
from vpr_ros.cli.common import run_cli
from vpr_ros.core import map_index
from vpr_ros.core.frames import FrameTable
from vpr_ros.core.map_index import AUTO_TABLE, IndexConfig, SearchConfig, choose_index
from vpr_ros.core.map_manifest import sealed_manifest_text
from vpr_ros.core.refmap import FORMAT_VERSION, ReferenceMap
from vpr_ros.core.vlad import VladHead

DIM = 16
ENCODER = {"id": "test_encoder", "onnx_sha256": "ab" * 32}


def make_head(seed: int = 0) -> VladHead:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(2, 4)).astype(np.float32)
    return VladHead(c, c, np.zeros(2, np.float32), rng.normal(size=(DIM, 8)).astype(np.float32),
                    np.zeros(DIM, np.float32))


def make_map(n: int, seed: int = 0, factory: str = "auto", first_id: int = 0, head_seed: int = 0,
             encoder: dict | None = None, dim: int = DIM, prefix: str = "run") -> ReferenceMap:
    """A map of ``n`` clustered unit descriptors (clusters make IVF lists uneven, as real descriptors do)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, dim))
    desc = (centres[rng.integers(0, 8, n)] + 0.3 * rng.normal(size=(n, dim))).astype(np.float32)
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    ids = first_id + np.arange(n)
    frames = FrameTable(ids, [f"{i:06d}.jpg" for i in ids], [f"/data/{prefix}/{i:06d}.jpg" for i in ids],
                        ids * 0.1, rng.normal(size=(n, 3)), np.tile([0.0, 0.0, 0.0, 1.0], (n, 1)))
    head = make_head(head_seed) if dim == DIM else None
    return ReferenceMap(frames, desc, head, dict(encoder or ENCODER), (480, 640), IndexConfig(factory=factory))


def manifest(path: Path) -> dict:
    return yaml.safe_load((path / "manifest.yaml").read_text())


def quantizer_centroids(refmap: ReferenceMap) -> np.ndarray:
    ivf = faiss.extract_index_ivf(refmap.index)
    return ivf.quantizer.reconstruct_n(0, ivf.nlist)


# ---- auto index choice -------------------------------------------------------------------------------------------

def test_auto_picks_exact_search_for_a_small_map_and_records_why(tmp_path: Path):
    make_map(300).save(tmp_path / "map")
    index = manifest(tmp_path / "map")["index"]
    assert index["factory"] == "Flat" and index["requested"] == "auto" and "exact search" in index["reason"]
    assert index["trained_on"] == 0  # nothing trained
    assert choose_index(AUTO_TABLE[0].max_frames, 256).factory == "Flat"


@pytest.mark.parametrize("frames, factory", [(1_000_000, "IVF4096,SQ8"), (200_000, "IVF2048,SQ8"),
                                             (AUTO_TABLE[0].max_frames + 1, "IVF1024,SQ8")])
def test_auto_picks_an_inverted_file_beyond_the_flat_limit_with_its_measured_parameters(frames: int, factory: str):
    spec = choose_index(frames, 256)
    row = AUTO_TABLE[1]
    nlist = int(factory[3:].split(",")[0])
    assert spec.factory == factory and spec.nprobe == nlist // row.probe_fraction and spec.refine == row.refine
    assert spec.approximate and spec.requested == "auto" and spec.reason == row.why
    assert frames >= map_index.MIN_POINTS_PER_LIST * int(factory[3:].split(",")[0])  # enough training points


def test_explicit_settings_override_the_auto_values():
    spec = choose_index(1_000_000, 256, IndexConfig(nprobe=5, refine=2))
    assert spec.factory.startswith("IVF") and (spec.nprobe, spec.refine) == (5, 2)
    named = choose_index(10, 256, IndexConfig(factory="HNSW32", ef_search=40))
    assert (named.factory, named.ef_search, named.refine, named.requested) == ("HNSW32", 40, 1, "HNSW32")


def test_auto_scalar_codes_take_any_dimension():
    # 8-bit codes per dimension: a prime dimension (no product-quantiser split) gets the same index.
    assert choose_index(100_000, 127).factory == choose_index(100_000, 256).factory == "IVF1024,SQ8"


# ---- search parameters per call ----------------------------------------------------------------------------------

def test_search_parameters_apply_per_call_without_touching_the_index():
    m = make_map(3000, factory="IVF64,Flat")
    exact = make_map(3000, factory="Flat")
    queries = m.descriptors[:200] + 0.05
    _, rows_exact = exact.search(queries, 5)
    _, rows_all_lists = m.search(queries, 5, SearchConfig(nprobe=64))
    np.testing.assert_array_equal(rows_all_lists, rows_exact)  # every list visited: exact
    _, rows_one_list = m.search(queries, 5, SearchConfig(nprobe=1))
    assert (rows_one_list[:, 0] != rows_exact[:, 0]).any()
    assert faiss.extract_index_ivf(m.index).nprobe == 1  # FAISS default untouched: the map's nprobe is per call


def test_refine_rescoring_is_exact_over_the_fetched_candidates():
    m = make_map(3000, factory="IVF16,PQ4np")
    exact = make_map(3000, factory="Flat")
    queries = m.descriptors[:300] + 0.02
    sims_exact, rows_exact = exact.search(queries, 1)
    _, rows_coarse = m.search(queries, 1, SearchConfig(nprobe=16, refine=1))
    sims, rows = m.search(queries, 1, SearchConfig(nprobe=16, refine=50))
    assert (rows[:, 0] == rows_exact[:, 0]).mean() > (rows_coarse[:, 0] == rows_exact[:, 0]).mean()
    hit = rows[:, 0] == rows_exact[:, 0]
    np.testing.assert_allclose(sims[hit, 0], sims_exact[hit, 0], rtol=1e-5)  # exact scores, not PQ estimates


# ---- append without retraining -----------------------------------------------------------------------------------

def test_append_adds_to_the_trained_index_without_retraining(tmp_path: Path):
    make_map(2000, factory="IVF32,Flat").save(tmp_path / "map")
    trained = manifest(tmp_path / "map")["index"]
    assert trained["trained_on"] == 2000 and trained["trained_at"]
    m = ReferenceMap.load(tmp_path / "map")
    before = quantizer_centroids(m)
    extra = make_map(100, seed=5, first_id=2000, prefix="run2")
    m.append(extra.frames, extra.descriptors)
    np.testing.assert_array_equal(quantizer_centroids(m), before)
    m.save(tmp_path / "map", overwrite=True)
    grown = ReferenceMap.load(tmp_path / "map")
    index = manifest(tmp_path / "map")["index"]
    assert len(grown) == 2100 and index["trained_on"] == 2000 and index["trained_at"] == trained["trained_at"]
    np.testing.assert_array_equal(quantizer_centroids(grown), before)
    _, rows = grown.search(extra.descriptors, 1, SearchConfig(nprobe=32))
    np.testing.assert_array_equal(rows[:, 0], np.arange(2000, 2100))  # the new frames are found


def test_retrain_trains_the_index_again_on_all_frames(tmp_path: Path):
    make_map(2000, factory="IVF32,Flat").save(tmp_path / "map")
    m = ReferenceMap.load(tmp_path / "map")
    before = quantizer_centroids(m)
    extra = make_map(500, seed=7, first_id=2000, prefix="run2")
    m.append(extra.frames, extra.descriptors, retrain=True)
    m.save(tmp_path / "map", overwrite=True)
    index = manifest(tmp_path / "map")["index"]
    assert index["trained_on"] == 2500 and index["factory"] == "IVF32,Flat"
    assert not np.array_equal(quantizer_centroids(ReferenceMap.load(tmp_path / "map")), before)


# ---- memory-mapped open ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("factory", ["Flat", "IVF16,PQ4np", "HNSW16"])
def test_index_is_memory_mapped_and_answers_like_an_in_ram_open(tmp_path: Path, factory: str):
    make_map(1500, factory=factory).save(tmp_path / "map")
    mapped = ReferenceMap.load(tmp_path / "map", index_in_ram_below=0)
    in_ram = ReferenceMap.load(tmp_path / "map", mmap=False)
    index_file = str((tmp_path / "map" / "global.faiss").resolve())
    assert index_file in Path("/proc/self/maps").read_text(), "global.faiss is not memory-mapped"
    queries = mapped.descriptors[::7] + 0.01
    for settings in (None, SearchConfig(nprobe=3, refine=4)):
        sims_a, rows_a = mapped.search(queries, 10, settings)
        sims_b, rows_b = in_ram.search(queries, 10, settings)
        np.testing.assert_array_equal(rows_a, rows_b)
        np.testing.assert_array_equal(sims_a, sims_b)
    assert isinstance(mapped.descriptors, np.memmap) or isinstance(mapped.descriptors.base, np.memmap)


def test_a_small_index_is_read_into_ram_and_its_descriptors_stay_mapped(tmp_path: Path):
    make_map(1500, factory="IVF16,SQ8").save(tmp_path / "map")
    index_file = str((tmp_path / "map" / "global.faiss").resolve())
    m = ReferenceMap.load(tmp_path / "map")
    assert index_file not in Path("/proc/self/maps").read_text()
    assert isinstance(m.descriptors, np.memmap) or isinstance(m.descriptors.base, np.memmap)
    mapped = ReferenceMap.load(tmp_path / "map", index_in_ram_below=0)
    assert index_file in Path("/proc/self/maps").read_text()
    np.testing.assert_array_equal(m.search(m.descriptors[::5], 5)[1], mapped.search(m.descriptors[::5], 5)[1])


def test_appending_to_a_memory_mapped_ivf_map_copies_its_index_into_ram(tmp_path: Path):
    make_map(1000, factory="IVF16,Flat").save(tmp_path / "map")
    m = ReferenceMap.load(tmp_path / "map", index_in_ram_below=0)
    extra = make_map(10, seed=2, first_id=1000, prefix="b")
    m.append(extra.frames, extra.descriptors)
    _, rows = m.search(extra.descriptors, 1, SearchConfig(nprobe=16))
    np.testing.assert_array_equal(rows[:, 0], np.arange(1000, 1010))
    assert ReferenceMap.load(tmp_path / "map").index.ntotal == 1000  # the file on disk is untouched


def test_corrupt_index_is_named_with_verification_in_one_pass(tmp_path: Path):
    make_map(500, factory="IVF8,Flat").save(tmp_path / "map")
    path = tmp_path / "map" / "global.faiss"
    data = bytearray(path.read_bytes())
    data[-5] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(Exception, match=r"global\.faiss: sha256 mismatch"):
        ReferenceMap.load(tmp_path / "map")


# ---- format version 1 maps ---------------------------------------------------------------------------------------

def write_version_1(path: Path) -> None:
    """Turn a saved map into what vpr_ros wrote before format version 2: frames.csv, a two-key index section."""
    raw = manifest(path)
    frames = ReferenceMap.load(path).frames
    (path / "frames.npz").unlink()
    (path / "frames.csv").write_text(frames.to_csv())
    raw["format_version"] = 1
    raw["index"] = {"factory": raw["index"]["factory"], "nprobe": raw["index"]["nprobe"]}
    files = {k: v for k, v in raw["files"].items() if k != "frames.npz"}
    data = (path / "frames.csv").read_bytes()
    files["frames.csv"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    raw["files"] = dict(sorted(files.items()))
    raw.pop("manifest_sha256")
    (path / "manifest.yaml").write_text(sealed_manifest_text(raw))


def test_format_version_1_maps_open_and_are_written_as_the_current_version(tmp_path: Path):
    original = make_map(1200, factory="IVF16,Flat")
    original.frames.names[3] = "a, quoted \"name\".jpg"  # the text table quotes it
    original.save(tmp_path / "map")
    write_version_1(tmp_path / "map")
    old = ReferenceMap.load(tmp_path / "map")
    assert old.frames.names == original.frames.names
    np.testing.assert_array_equal(old.frames.positions, original.frames.positions)
    assert old.index_spec is not None and old.index_spec.trained_on == 1200  # v1: trained on all its frames
    _, rows = old.search(original.descriptors[:50], 1, SearchConfig(nprobe=16))
    np.testing.assert_array_equal(rows[:, 0], np.arange(50))
    extra = make_map(5, seed=9, first_id=1200, prefix="c")
    old.append(extra.frames, extra.descriptors)
    old.save(tmp_path / "map", overwrite=True)
    new = manifest(tmp_path / "map")
    assert new["format_version"] == FORMAT_VERSION == 2 and "frames.npz" in new["files"]
    assert "frames.csv" not in new["files"] and not (tmp_path / "map" / "frames.csv").exists()
    assert new["index"]["trained_on"] == 1200


def test_frame_table_round_trip_keeps_any_name_but_refuses_nul():
    t = make_map(4).frames
    t.names[1] = "ünïcode, comma\nnewline.jpg"
    back = FrameTable.from_columns(t.to_columns(), "x")
    assert back.names == t.names and back.sources == t.sources
    assert t.to_columns() == t.to_columns()  # reproducible bytes (checksums of rebuilt maps agree)
    t.sources[0] = "bad\0source"
    with pytest.raises(ValueError, match="NUL"):
        t.to_columns()


# ---- merge -------------------------------------------------------------------------------------------------------

def test_merge_joins_maps_renumbering_clashing_ids(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    a, b = make_map(300, seed=1, prefix="a"), make_map(200, seed=2, prefix="b")  # both ids 0..
    a.save(tmp_path / "a")
    b.save(tmp_path / "b")
    code = run_cli(build_map_cli.main, ["--merge", str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "a"),
                                        "--output", str(tmp_path / "c"), "-q"])
    assert code == 0, capsys.readouterr().err
    c = ReferenceMap.load(tmp_path / "c")
    assert len(c) == 500  # the second copy of a adds nothing
    np.testing.assert_array_equal(c.frames.ids, np.arange(500))
    assert c.frames.sources == a.frames.sources + b.frames.sources
    _, rows = c.search(b.descriptors[:20], 1)
    np.testing.assert_array_equal(rows[:, 0], 300 + np.arange(20))
    record = manifest(tmp_path / "c")["provenance"]["merged"]
    assert [r["frames"] for r in record] == [300, 200, 0] and record[1]["id_offset"] == 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]


def test_merge_keeps_the_first_maps_trained_index_unless_retrain(tmp_path: Path):
    make_map(1500, seed=1, factory="IVF16,Flat", prefix="a").save(tmp_path / "a")
    make_map(400, seed=2, first_id=5000, prefix="b").save(tmp_path / "b")
    assert run_cli(build_map_cli.main, ["--merge", str(tmp_path / "a"), str(tmp_path / "b"),
                                        "-o", str(tmp_path / "c"), "-q"]) == 0
    index = manifest(tmp_path / "c")["index"]
    assert index["factory"] == "IVF16,Flat" and index["trained_on"] == 1500
    np.testing.assert_array_equal(quantizer_centroids(ReferenceMap.load(tmp_path / "c")),
                                  quantizer_centroids(ReferenceMap.load(tmp_path / "a")))
    assert ReferenceMap.load(tmp_path / "c").frames.ids[1500] == 5000  # no clash: ids kept
    assert run_cli(build_map_cli.main, ["--merge", str(tmp_path / "a"), str(tmp_path / "b"),
                                        "-o", str(tmp_path / "d"), "--retrain", "-q"]) == 0
    assert manifest(tmp_path / "d")["index"]["trained_on"] == 1900


@pytest.mark.parametrize("other, reason", [
    ({"encoder": {"id": "test_encoder", "onnx_sha256": "cd" * 32}}, r"encoder differs \(onnx_sha256 abab"),
    ({"head_seed": 1}, "VLAD vocabulary / PCA-whitening differs"),
    ({"dim": 32}, r"descriptor dimension differs \(16 vs 32\)"),
])
def test_merge_refuses_incompatible_maps_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       other: dict, reason: str):
    make_map(100, prefix="a").save(tmp_path / "a")
    make_map(100, seed=3, prefix="b", **other).save(tmp_path / "b")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    code = run_cli(build_map_cli.main, ["--merge", str(tmp_path / "a"), str(tmp_path / "b"),
                                        "-o", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"cannot merge {tmp_path / 'a'} and {tmp_path / 'b'}: " in err
    assert re.search(reason, err), err
    assert not (tmp_path / "c").exists()
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_merge_refuses_an_output_inside_an_input_and_an_existing_output(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]):
    make_map(50).save(tmp_path / "a")
    assert run_cli(build_map_cli.main, ["--merge", str(tmp_path / "a"), "-o", str(tmp_path / "a" / "x")]) == 2
    assert "lies inside the input map" in capsys.readouterr().err
    (tmp_path / "photos").mkdir()
    assert run_cli(build_map_cli.main, ["--merge", str(tmp_path / "a"), "-o", str(tmp_path / "photos")]) == 2
    assert "exists" in capsys.readouterr().err
    assert run_cli(build_map_cli.main, ["--merge", str(tmp_path / "a"), "-o", str(tmp_path / "photos"),
                                        "--overwrite"]) == 2
    assert "not a vpr_ros map" in capsys.readouterr().err and (tmp_path / "photos").is_dir()
