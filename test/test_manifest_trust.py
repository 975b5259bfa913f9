"""The map manifest is not trusted blindly (issue 12): file names stay inside the map, no symbolic links, every
value is checked against the manifest schema, the manifest's own content is covered by ``manifest_sha256``, and
a node whose ``~/reload_map`` failed says so on /diagnostics."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_refmap import small_map

from vpr_ros.core.image import load_rgb
from vpr_ros.core.refmap import MapError, ReferenceMap, read_manifest
from vpr_ros.nodes.replay import rgb_to_image_msg


def canonical_sha256(manifest: dict[str, Any]) -> str:
    """The documented rule, written out here independently: sha256 of the manifest without ``manifest_sha256``
    as JSON with sorted keys, compact separators, UTF-8."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
                          .encode("utf-8")).hexdigest()


def edit_manifest(map_dir: Path, edit: Callable[[dict[str, Any]], None], reseal: bool = True) -> None:
    """Apply ``edit`` to the manifest; ``reseal`` recomputes its hash, as someone crafting a map would."""
    mf = map_dir / "manifest.yaml"
    manifest = yaml.safe_load(mf.read_text())
    edit(manifest)
    if reseal:
        manifest["manifest_sha256"] = canonical_sha256(manifest)
    mf.write_text(yaml.safe_dump(manifest, sort_keys=False))


def file_entry(path: Path) -> dict[str, Any]:
    return {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "bytes": path.stat().st_size}


def refused(map_dir: Path, pattern: str) -> str:
    with pytest.raises(MapError, match=pattern) as info:
        ReferenceMap.load(map_dir)
    message = str(info.value)
    assert "\n" not in message, f"not one line: {message!r}"
    return message


@pytest.fixture
def map_dir(tmp_path: Path) -> Path:
    small_map().save(tmp_path / "map")
    return tmp_path / "map"


# ---- file names ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("entry", ["../outside.npy", "arrays/../../outside.npy", "ABSOLUTE", "arrays/x/../y.npy",
                                   "./frames.csv.bak", "arrays/.hidden.npy", "notes.txt", "arrays/patches.npz"])
def test_file_entries_outside_the_fixed_names_are_refused(map_dir: Path, entry: str):
    """Regression: entries reaching out of the map directory were accepted (and memory-mapped) when their hash
    matched."""
    outside = map_dir.parent / "outside.npy"
    shutil.copy(map_dir / "arrays" / "patches.npy", outside)
    entry = str(outside) if entry == "ABSOLUTE" else entry
    if entry not in ("../outside.npy", "arrays/../../outside.npy", str(outside)):
        target = (map_dir / entry)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(outside, target)
    edit_manifest(map_dir, lambda m: m["files"].update({entry: file_entry(outside)}))
    refused(map_dir, rf"files entry '{re.escape(entry)}'.*not a map file name")


def test_symlinked_file_is_refused(map_dir: Path):
    victim = map_dir / "arrays" / "patches.npy"
    outside = map_dir.parent / "patches_elsewhere.npy"
    shutil.move(victim, outside)
    os.symlink(outside, victim)
    refused(map_dir, r"files entry 'arrays/patches\.npy'.*symbolic link")


def test_symlinked_arrays_directory_is_refused(map_dir: Path):
    outside = map_dir.parent / "arrays_elsewhere"
    shutil.move(map_dir / "arrays", outside)
    os.symlink(outside, map_dir / "arrays")
    refused(map_dir, r"files entry 'arrays/patches\.npy'.*arrays.*symbolic link")


def test_symlinked_top_level_file_is_refused(map_dir: Path):
    outside = map_dir.parent / "descriptors_elsewhere.npy"
    shutil.move(map_dir / "descriptors.npy", outside)
    os.symlink(outside, map_dir / "descriptors.npy")
    refused(map_dir, r"files entry 'descriptors\.npy'.*symbolic link")


def test_symlinked_map_directory_itself_still_opens(map_dir: Path):
    """A link to the whole map (e.g. maps/current -> maps/v3) is the user's choice, not the manifest's."""
    current = map_dir.parent / "current"
    os.symlink(map_dir, current)
    assert len(ReferenceMap.load(current)) == 20


# ---- the manifest's own hash ---------------------------------------------------------------------------------

def test_map_is_sealed_and_untouched_map_loads(map_dir: Path):
    manifest = yaml.safe_load((map_dir / "manifest.yaml").read_text())
    assert manifest["manifest_sha256"] == canonical_sha256(manifest)
    assert len(ReferenceMap.load(map_dir)) == 20


def test_flipped_bit_in_input_size_is_detected(map_dir: Path):
    """Regression: 480 -> 481 (one bit) was used silently as the network input height."""
    mf = map_dir / "manifest.yaml"
    text = mf.read_text()
    assert text.count("- 480\n") == 1
    mf.write_text(text.replace("- 480\n", "- 481\n"))
    refused(map_dir, r"manifest\.yaml: manifest_sha256 mismatch")


@pytest.mark.parametrize("edit", [
    lambda m: m["index"].update(nprobe=17),
    lambda m: m.update(frame_id="odom"),
    lambda m: m["files"]["descriptors.npy"].update(sha256="0" * 64),
    lambda m: m["sections"].update(extra={"a": 1}),
    lambda m: m.update(manifest_sha256="f" * 64),
])
def test_edited_value_with_stale_hash_is_refused(map_dir: Path, edit: Callable[[dict[str, Any]], None]):
    edit_manifest(map_dir, edit, reseal=False)
    refused(map_dir, r"manifest_sha256 mismatch")


def test_map_without_manifest_hash_still_opens_but_is_validated(map_dir: Path):
    """Maps written before the hash existed (format version 1) keep opening; their values are still checked."""
    edit_manifest(map_dir, lambda m: m.pop("manifest_sha256", None), reseal=False)
    assert len(ReferenceMap.load(map_dir)) == 20
    assert "manifest_sha256" not in read_manifest(map_dir)
    edit_manifest(map_dir, lambda m: m.update(input_size=[0, 640]), reseal=False)
    refused(map_dir, r"input_size: 0 is below the minimum 8")


# ---- values: types and ranges (resealed, so only the schema can catch them) ---------------------------------

@pytest.mark.parametrize(("edit", "pattern"), [
    (lambda m: m.update(input_size=[0, 640]), r"input_size: 0 is below the minimum 8"),
    (lambda m: m.update(input_size=[480, 10 ** 9]), r"input_size: 1000000000 is above the maximum 8192"),
    (lambda m: m.update(input_size=[480]), r"input_size: expected 2 values \(height, width\)"),
    (lambda m: m.update(input_size=["480", 640]), r"input_size\[0\]: expected an integer"),
    (lambda m: m.update(frame_count=0), r"frame_count: 0 is below the minimum 1"),
    (lambda m: m.update(frame_count=21), r"frame_count: 21 but frames\.npz holds 20 frames"),
    (lambda m: m["descriptor"].update(dim=9), r"descriptor\.dim"),
    (lambda m: m["descriptor"].update(dtype="float64"), r"descriptor\.dtype: 'float64' is not one of"),
    (lambda m: m["index"].update(nprobe=0), r"index\.nprobe: 0 is below the minimum 1"),
    (lambda m: m["index"].update(nprobe=10 ** 12), r"index\.nprobe: .* is above the maximum"),
    (lambda m: m["index"].update(factory="NoSuchIndex99"), r"index\.factory: FAISS does not accept 'NoSuchIndex99'"),
    (lambda m: m["index"].update(factory=7), r"index\.factory: expected a string"),
    (lambda m: m["head"].update(num_clusters=0), r"head\.num_clusters: 0 is below the minimum 1"),
    (lambda m: m["head"].update(num_clusters=3), r"head\.num_clusters: 3 but head\.npz holds 2"),
    (lambda m: m["head"].update(type="none"), r"head\.type: none but the files list head\.npz"),
    (lambda m: m["encoder"].pop("id"), r"encoder\.id: missing"),
    (lambda m: m["encoder"].update(onnx_sha256="xyz"), r"encoder\.onnx_sha256: expected 64 hexadecimal digits"),
    (lambda m: m.update(encoder="test_encoder"), r"encoder: expected a mapping"),
    (lambda m: m["files"]["descriptors.npy"].update(bytes=-1), r"files\.descriptors\.npy\.bytes: -1 is below"),
    (lambda m: m["files"]["global.faiss"].pop("sha256"), r"files\.global\.faiss: missing key 'sha256'"),
    (lambda m: m.pop("index"), r"missing key 'index'"),
    (lambda m: m.pop("input_size"), r"missing key 'input_size'"),
    (lambda m: m["descriptor"].pop("dim"), r"descriptor: missing key 'dim'"),
    (lambda m: m.update(unexpected=1), r"unknown key\(s\) unexpected"),
    (lambda m: m.update(sections=[1, 2]), r"sections: expected a mapping"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_invalid_values_are_refused_naming_the_field(map_dir: Path, edit: Callable[[dict[str, Any]], None],
                                                     pattern: str):
    """Regression: 0 or a missing key gave a traceback, a huge value ran for minutes."""
    edit_manifest(map_dir, edit)
    refused(map_dir, pattern)


def test_corridor_map_verifies(corridor_map: Path):
    manifest = read_manifest(corridor_map)
    assert manifest["manifest_sha256"] == canonical_sha256(manifest)
    refmap = ReferenceMap.load(corridor_map)
    assert len(refmap) == manifest["frame_count"] == 111


@pytest.mark.parametrize(("key", "value", "pattern"), [
    ("pixel_stride", 0, r"sections\.patches\.pixel_stride: 0 is below the minimum 1"),
    ("feature_hw", [10 ** 6, 10 ** 6], r"sections\.patches\.feature_hw: 1000000 is above the maximum"),
    ("feature_hw", [16, 20], r"sections\.patches\.feature_hw: \[16, 20\] but input_size"),
    ("sizes", "5", r"sections\.patches\.sizes: expected a list"),
    ("dim", 0, r"sections\.patches\.dim: 0 is below the minimum 1"),
    ("weights", [0.5], r"sections\.patches\.weights: must sum to 1"),
    ("encoding", "int4", r"sections\.patches\.encoding: 'int4' is not one of"),
    ("arrays", ["patches_s9_t1"], r"sections\.patches\.arrays: \['patches_s9_t1'\] but"),
    ("preset", None, r"sections\.patches: missing key 'preset'"),
])
def test_invalid_patch_section_is_refused(corridor_patch_map: Path, tmp_path: Path, key: str, value: Any,
                                          pattern: str):
    """Regression: a patch store section with pixel stride 0 (wrong RANSAC geometry) or a feature grid that does
    not follow from the input size was accepted once its arrays had the right shape."""
    map_dir = tmp_path / "corridor_speed"
    shutil.copytree(corridor_patch_map, map_dir)
    assert len(ReferenceMap.load(map_dir, verify=False)) == 111

    def edit(m: dict[str, Any]) -> None:
        section = m["sections"]["patches"]
        if value is None:
            section.pop(key)
        else:
            section[key] = value

    edit_manifest(map_dir, edit)
    refused(map_dir, pattern)


# ---- the node ------------------------------------------------------------------------------------------------

@pytest.mark.ros
def test_failed_reload_is_reported_until_a_reload_succeeds(start_localize, corridor_map: Path, corridor: Path,
                                                          tmp_path: Path):
    """Regression: a failed ~/reload_map kept the old map (good) but /diagnostics still said "localizing"."""
    map_dir = tmp_path / "corridor"
    shutil.copytree(corridor_map, map_dir)
    started = start_localize(map_dir, "/reload")
    client = started.client
    good_manifest = (map_dir / "manifest.yaml").read_text()

    edit_manifest(map_dir, lambda m: m.update(input_size=[0, 640]))
    response = client.trigger("reload_map", timeout=60)
    refusal = "input_size: 0 is below the minimum 8"
    assert response is not None and not response.success and refusal in response.message, response
    d = client.wait_for_diagnostic(lambda d: d["level"] != "0")
    assert d is not None, client.latest_diagnostic()
    assert d["level"] == "1", d
    assert "reload" in d["message"] and str(map_dir) in d["message"] and refusal in d["message"], d
    # The previous map keeps answering.
    answer = client.send_and_wait(rgb_to_image_msg(load_rgb(corridor / "query" / "0000060.jpg"), 2.0), 30)
    assert answer is not None and abs(int(answer.ref_ids[0]) - 60) <= 2
    d = client.wait_for_diagnostic(lambda d: int(d["frames_processed"]) >= 1)
    assert d is not None and d["level"] == "1" and refusal in d["message"], d

    (map_dir / "manifest.yaml").write_text(good_manifest)
    response = client.trigger("reload_map", timeout=60)
    assert response is not None and response.success, response
    d = client.wait_for_diagnostic(lambda d: d["level"] == "0")
    assert d is not None, client.latest_diagnostic()
    assert d["message"] == "localizing" and started.node.map_error == ""
