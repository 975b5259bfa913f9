"""Learned sequence descriptors (SeqNet): training on real descriptors, ONNX export, the node's sequence stage.

Frame descriptors are the shipped thumbnail encoder's on the real Nordland part 1 frames (summer map, winter
queries): cheap to compute, and real.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vpr_ros.core.encoders import EncoderConfig, make_encoder
from vpr_ros.core.localizer import Localizer, LocalizerConfig, QueryFeatures
from vpr_ros.core.map_builder import BuildMapConfig, build_map
from vpr_ros.core.refmap import ReferenceMap
from vpr_ros.core.sequence import SequenceConfig, SequenceMatcher
from vpr_ros.core.sequence_model import SequenceDescriptorModel, SequenceModelError, frame_encoder_identity
from vpr_ros.io.images import folder_source
from vpr_training.seqnet import SeqNet, SeqNetConfig, TraversalDescriptors, export_seqnet, train_seqnet

THUMBNAIL = EncoderConfig(model="thumbnail:16x8,patch=4")  # 128-d: a small SeqNet
PLACES = 360
LENGTH = 5
MAP_DIR: list[Path] = []


@pytest.fixture(scope="module")
def nordland_map(tmp_path_factory: pytest.TempPathFactory, repo: Path) -> tuple[ReferenceMap, np.ndarray]:
    """The first PLACES summer frames as a map (written to disk: ``refmap.provenance['path']`` is not kept, so
    the node test reads it from ``MAP_DIR``), and the winter frames' descriptors."""
    data = repo / "data" / "nordland_part1"
    rows = np.arange(PLACES)
    summer = folder_source(data / "summer").take(rows)
    winter = folder_source(data / "winter").take(rows)
    out = tmp_path_factory.mktemp("seqmodel") / "map"
    MAP_DIR.append(out)
    encoder = make_encoder(THUMBNAIL)
    refmap = build_map(summer, out, BuildMapConfig(encoder=THUMBNAIL), progress=False, encoder=encoder)
    loc = Localizer(refmap, encoder, LocalizerConfig(encoder=THUMBNAIL))
    queries = np.stack([f.global_descriptor for f in loc.encode_many([winter.load_image(i) for i in rows])])
    return refmap, queries


def identity(refmap: ReferenceMap) -> dict:
    return frame_encoder_identity(refmap.encoder, refmap.dim)


def export(model: SeqNet, refmap: ReferenceMap, queries: np.ndarray, out: Path, name: str = "seq") -> Path:
    rows = np.arange(LENGTH, LENGTH + 8)[:, None] - np.arange(LENGTH - 1, -1, -1)[None, :]
    return export_seqnet(model, out, name, length=LENGTH, frame_encoder=identity(refmap),
                         check_windows=queries[rows]).with_suffix(".onnx")


def run(refmap: ReferenceMap, queries: np.ndarray, sequence: SequenceConfig) -> np.ndarray:
    loc = Localizer(refmap, make_encoder(THUMBNAIL), LocalizerConfig(encoder=THUMBNAIL, sequence=sequence))
    empty = np.zeros((1, 1, 1, 1), np.float32)
    return np.array([loc.localize_features(QueryFeatures(empty, q), float(i)).best_index
                     for i, q in enumerate(queries)])


def test_concatenation_start_is_seq2seq_cat_through_onnx(nordland_map, tmp_path: Path):
    """Untrained, the default SeqNet is the concatenation of the frames: through ONNX Runtime in the node's
    sequence stage it ranks the map exactly as seq2seq CAT does."""
    refmap, queries = nordland_map
    model = SeqNet(refmap.dim, LENGTH * refmap.dim, LENGTH).init_as_concatenation()
    windows = torch.from_numpy(queries[:LENGTH][None])
    expected = torch.nn.functional.normalize(windows.reshape(1, -1), dim=1)
    assert torch.allclose(model(windows), expected, atol=1e-6)
    path = export(model, refmap, queries, tmp_path)
    learned = run(refmap, queries, SequenceConfig(method="learned", length=LENGTH, model=str(path)))
    cat = run(refmap, queries, SequenceConfig(method="seq2seq_cat", length=LENGTH))
    agree = (learned == cat).mean()
    assert agree > 0.98, f"learned (concatenation start) and seq2seq_cat agree on {agree:.3f}"
    recall = np.mean(np.abs(learned - np.arange(PLACES)) <= 1)
    single = run(refmap, queries, SequenceConfig())
    assert recall > np.mean(np.abs(single - np.arange(PLACES)) <= 1) + 0.1


def test_training_improves_validation_and_hierarchical_rescoring(nordland_map, tmp_path: Path):
    """Trained on places 0-199 (both directions), early-stopped on 220-359: validation recall@1 does not fall
    below the concatenation start, and the hierarchical method answers inside the learned shortlist."""
    refmap, queries = nordland_map
    summer = np.asarray(refmap.descriptors)
    pos = np.arange(PLACES, dtype=float)

    def part(d: np.ndarray, a: int, b: int) -> TraversalDescriptors:
        return TraversalDescriptors(d[a:b], pos[a:b], np.zeros(b - a, int))

    train = [(part(queries, 0, 200), part(summer, 0, 200)), (part(summer, 0, 200), part(queries, 0, 200))]
    val = [(part(queries, 220, PLACES), part(summer, 220, PLACES))]
    model, report = train_seqnet(train, val, SeqNetConfig(length=LENGTH, epochs=6, patience=3), progress=False)
    assert report["best_val_recall@1"] >= report["history"][0]["val_recall@1"]
    assert len(report["history"]) >= 2 and np.isfinite(report["history"][1]["loss"])
    path = export(model, refmap, queries, tmp_path)
    matcher = SequenceMatcher(SequenceConfig(method="hierarchical", length=LENGTH, model=str(path), shortlist=7),
                              summer, top_k=3)
    learned = SequenceMatcher(SequenceConfig(method="learned", length=LENGTH, model=str(path)), summer, top_k=7)
    for i in range(30):
        shortlist = learned.fuse(queries[i], np.zeros(0, np.int64), np.zeros(0, np.float32), float(i))
        answer = matcher.fuse(queries[i], np.zeros(0, np.int64), np.zeros(0, np.float32), float(i))
        assert set(answer.rows) <= set(shortlist.rows)
        assert np.all(np.diff(answer.scores) <= 0)


def test_a_model_of_another_encoder_or_a_changed_file_is_refused(nordland_map, tmp_path: Path):
    refmap, queries = nordland_map
    model = SeqNet(refmap.dim, LENGTH * refmap.dim, LENGTH).init_as_concatenation()
    path = export(model, refmap, queries, tmp_path)
    other = {**refmap.encoder, "id": "other_encoder", "spec_sha256": "f" * 64}
    with pytest.raises(SequenceModelError, match=r"trained on descriptors of encoder .* other_encoder"):
        SequenceDescriptorModel(path).check_map(other, refmap.dim)
    card = yaml.safe_load(path.with_suffix(".yaml").read_text())
    card["input"]["dim"] = "many"
    path.with_suffix(".yaml").write_text(yaml.safe_dump(card))
    with pytest.raises(SequenceModelError, match="malformed key"):
        SequenceDescriptorModel(path)
    path2 = export(model, refmap, queries, tmp_path, name="seq2")
    path2.write_bytes(path2.read_bytes() + b"\0")
    with pytest.raises(SequenceModelError, match=r"sha256 does not match"):
        SequenceDescriptorModel(path2)


def test_learned_methods_need_a_model():
    with pytest.raises(ValueError, match=r"needs sequence\.model"):
        SequenceConfig(method="hierarchical")
    assert dataclasses.replace(SequenceConfig(), method="seqslam").model == ""


@pytest.mark.ros
def test_the_node_runs_the_hierarchical_method_and_refuses_a_foreign_model(start_localize, nordland_map,
                                                                             tmp_path: Path, repo: Path):
    """A real localize node with ``sequence.method: hierarchical`` answers as the core Localizer does; a
    sequence model of another encoder, set while it runs, is refused and the running method stays."""
    from rclpy.parameter import Parameter
    from rclpy.parameter_client import AsyncParameterClient

    from vpr_ros.core.image import load_rgb
    from vpr_ros.nodes.replay import rgb_to_image_msg

    refmap, queries = nordland_map
    model = SeqNet(refmap.dim, LENGTH * refmap.dim, LENGTH).init_as_concatenation()
    path = export(model, refmap, queries, tmp_path)
    sequence = {"localizer.sequence.method": "hierarchical", "localizer.sequence.length": LENGTH,
                "localizer.sequence.model": str(path), "localizer.sequence.shortlist": 10}
    endpoint = start_localize(MAP_DIR[0], "/seqnet", model=THUMBNAIL.model, **sequence)
    images = sorted((repo / "data" / "nordland_part1" / "winter").glob("*.png"))[100:130]
    answers = []
    for i, image in enumerate(images):
        answer = endpoint.client.send_and_wait(rgb_to_image_msg(load_rgb(image), 1000.0 + i), timeout=30)
        assert answer is not None, f"no answer for winter frame {100 + i}"
        answers.append(int(answer.ref_ids[0]))
    expected = run(refmap, queries[100:130], SequenceConfig(method="hierarchical", length=LENGTH, model=str(path),
                                                            shortlist=10))
    assert answers == [int(refmap.frames.ids[r]) for r in expected]

    other = tmp_path / "other"
    other.mkdir()
    thumbnail_64 = make_encoder(EncoderConfig(model="thumbnail:64x32,patch=8")).describe()
    foreign = export_seqnet(model, other, "foreign", length=LENGTH,
                            frame_encoder={**frame_encoder_identity(thumbnail_64, refmap.dim), "id": "thumbnail 64x32"},
                            check_windows=queries[:8, None].repeat(LENGTH, axis=1)).with_suffix(".onnx")
    parameters = AsyncParameterClient(endpoint.client, "/seqnet/localize")
    assert parameters.wait_for_services(timeout_sec=10)
    future = parameters.set_parameters([Parameter("localizer.sequence.model", value=str(foreign))])
    deadline = time.monotonic() + 30
    while not future.done() and time.monotonic() < deadline:
        time.sleep(0.02)
    (result,) = future.result().results
    assert not result.successful and "trained on descriptors of encoder thumbnail 64x32" in result.reason
    assert endpoint.node.localizer.sequence.model.path == path
