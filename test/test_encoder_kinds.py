"""Model kinds: 'netvlad' models bring their own head, 'global' models output descriptors directly."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper

from vpr_ros.core.encoders import EncoderConfig, ModelCard, OnnxEncoder, write_model_card
from vpr_ros.core.files import sha256_file
from vpr_ros.core.localizer import Localizer, LocalizerConfig
from vpr_ros.core.map_builder import BuildMapConfig, build_map
from vpr_ros.core.refmap import ReferenceMap
from vpr_ros.io.images import folder_source


def test_netvlad_kind_uses_the_models_head(tmp_path: Path, default_model: Path, corridor_map: Path, corridor: Path):
    head_source = ReferenceMap.load(corridor_map).head
    shutil.copy(default_model, tmp_path / "model.onnx")
    np.savez(tmp_path / "model_head.npz", **head_source.to_arrays())
    card = yaml.safe_load(default_model.with_suffix(".yaml").read_text())
    card.update(id="lite0_with_head", kind="netvlad", onnx_file="model.onnx", head_file="model_head.npz",
                head_sha256=sha256_file(tmp_path / "model_head.npz"))
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(card))
    enc = OnnxEncoder(EncoderConfig(model=str(tmp_path / "model.onnx")))
    assert enc.head is not None and enc.head.num_clusters == head_source.num_clusters

    src = folder_source(corridor / "ref", corridor / "ref_poses.csv")
    # k-means settings must not matter: nothing is fitted for a netvlad model.
    m = build_map(src, tmp_path / "map", BuildMapConfig(vlad=BuildMapConfig().vlad.__class__(num_clusters=3)),
                  progress=False, encoder=enc)
    reference = ReferenceMap.load(corridor_map)
    np.testing.assert_allclose(m.descriptors, reference.descriptors, atol=1e-5)
    np.testing.assert_array_equal(ReferenceMap.load(tmp_path / "map").head.centroids, head_source.centroids)

    (tmp_path / "model_head.npz").write_bytes((tmp_path / "model_head.npz").read_bytes()[:-8] + bytes(8))
    with pytest.raises(ValueError, match=r"model_head\.npz: sha256 does not match"):
        OnnxEncoder(EncoderConfig(model=str(tmp_path / "model.onnx")))


def tiny_global_model(path: Path) -> None:
    """A real ONNX graph with no weights: mean colour of each 2x2 grid cell -> (B, 12) descriptor."""
    nodes = [helper.make_node("AveragePool", ["image"], ["cells"], kernel_shape=[60, 80], strides=[60, 80]),
             helper.make_node("Flatten", ["cells"], ["descriptor"], axis=1)]
    graph = helper.make_graph(nodes, "grid_colour",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["B", 3, 120, 160])],
                              [helper.make_tensor_value_info("descriptor", TensorProto.FLOAT, ["B", 12])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    card = {"id": "grid_colour", "format_version": 1, "kind": "global", "onnx_file": path.name,
            "onnx_sha256": sha256_file(path), "input": {"name": "image", "default_size": [120, 160]},
            "output": {"name": "descriptor", "channels": 12, "stride": 1}}
    path.with_suffix(".yaml").write_text(yaml.safe_dump(card))


def test_global_kind_needs_no_head(tmp_path: Path, corridor: Path):
    tiny_global_model(tmp_path / "grid.onnx")
    assert ModelCard.load(tmp_path / "grid.yaml").kind == "global"
    enc = OnnxEncoder(EncoderConfig(model=str(tmp_path / "grid.onnx")))
    assert enc.head is None
    src = folder_source(corridor / "ref", corridor / "ref_poses.csv")
    m = build_map(src, tmp_path / "map", BuildMapConfig(max_upscale=1.0), progress=False, encoder=enc)
    assert m.head is None and m.dim == 12 and m.input_size == (120, 160)
    again = ReferenceMap.load(tmp_path / "map")
    assert again.head is None and not (tmp_path / "map" / "head.npz").exists()
    loc = Localizer(again, enc, LocalizerConfig(top_k=3))
    hyp = loc.localize(src.load_image(17))
    assert hyp.indices[0] == 17 and hyp.scores[0] == pytest.approx(1.0, abs=1e-5)


def test_bad_kind_is_refused(tmp_path: Path, default_model: Path):
    card = yaml.safe_load(default_model.with_suffix(".yaml").read_text())
    card["kind"] = "magic"
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(card))
    with pytest.raises(ValueError, match="kind 'magic' is not one of"):
        ModelCard.load(tmp_path / "m.yaml")
    card["kind"] = "netvlad"
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(card))
    with pytest.raises(ValueError, match="needs 'head_file'"):
        ModelCard.load(tmp_path / "m.yaml")


def grid_card(path: Path, **fields) -> ModelCard:
    """The card of :func:`tiny_global_model`'s graph, built by the writer's schema."""
    return ModelCard.build(**{"id": "grid_colour", "kind": "global", "description": "mean colour of 2x2 cells",
                              "onnx_file": path.name, "onnx_sha256": sha256_file(path), "opset": 17,
                              "output_name": "descriptor", "channels": 12, "stride": 1, "default_size": (120, 160),
                              "sections": {"parity": {"images": 0}}, **fields})


def test_written_card_reads_back_as_built(tmp_path: Path):
    tiny_global_model(tmp_path / "grid.onnx")
    card = grid_card(tmp_path / "grid.onnx", about={"variant": "2x2"})
    write_model_card(tmp_path / "grid.yaml", card)
    text = (tmp_path / "grid.yaml").read_text()
    assert "default_size: [120, 160]" in text and "range: [0, 255]" in text  # scalar lists on one line
    assert list(yaml.safe_load(text)) == ["id", "format_version", "kind", "description", "variant", "onnx_file",
                                          "onnx_sha256", "onnx_opset", "input", "output", "parity", "created"]
    loaded = ModelCard.load(tmp_path / "grid.yaml")
    assert loaded == card and loaded.to_dict() == card.to_dict()
    assert loaded.to_dict() is not loaded.raw
    enc = OnnxEncoder(EncoderConfig(model=str(tmp_path / "grid.onnx")))
    assert enc.card.channels == 12 and enc.card.default_size == (120, 160)


def test_writer_refuses_cards_the_reader_would_not_take(tmp_path: Path):
    tiny_global_model(tmp_path / "grid.onnx")
    (tmp_path / "grid.yaml").unlink()
    onnx = tmp_path / "grid.onnx"
    with pytest.raises(ValueError, match="kind 'magic' is not one of"):
        grid_card(onnx, kind="magic")
    with pytest.raises(ValueError, match="needs 'head_file'"):
        grid_card(onnx, kind="netvlad")
    with pytest.raises(ValueError, match=r"extra keys \['output'\] are schema keys"):
        grid_card(onnx, sections={"output": {"name": "other"}})
    with pytest.raises(ValueError, match="must be a file name"):
        grid_card(onnx, onnx_file="models/grid.onnx")
    with pytest.raises(ValueError, match=r"the card of grid\.onnx must be named grid\.yaml"):
        write_model_card(tmp_path / "other.yaml", grid_card(onnx))
    with pytest.raises(ValueError, match="not plain YAML"):
        write_model_card(tmp_path / "grid.yaml", grid_card(onnx, sections={"parity": {"max": np.float32(1.5)}}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.onnx"]  # nothing half-written
