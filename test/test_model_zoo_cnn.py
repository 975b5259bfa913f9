"""vpr-import of the CNN model-zoo formats (NetVLAD VGG16, CosPlace, EigenPlaces, MixVPR): shallow random-weight
checkpoints in each official key layout import, pass their ONNX Runtime vs PyTorch check, and run through
build_map and evaluate on the real corridor data; checkpoints of another layout are refused with one line.

Parity with the authors' own code (full-depth models, real images) is the dev bench ``python -m bench model_zoo``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "training") not in sys.path:
    sys.path.insert(0, str(REPO / "training"))

pytestmark = pytest.mark.torch

from vpr_ros.cli import build_map, evaluate  # noqa: E402
from vpr_ros.cli.common import run_cli  # noqa: E402
from vpr_ros.core.encoders import ModelCard  # noqa: E402
from vpr_ros.core.refmap import ReferenceMap  # noqa: E402
from vpr_training.zoo import cli as vpr_import  # noqa: E402
from vpr_training.zoo import format_names, get_format  # noqa: E402

#: format -> (--variant of its shallow random checkpoint, descriptor dimension, fixed input (h, w) or None).
#: The variants cover both backbones of the GeM + FC family (ResNet basic blocks, VGG16) and MixVPR's bottlenecks.
CASES = {
    "netvlad_vgg16": ("k64", 8 * 64, None),
    "cosplace": ("ResNet18_512", 64, None),
    "eigenplaces": ("VGG16_512", 64, None),
    "mixvpr": ("4096", 64, (160, 160)),
}
SIZE = ("--set", "image_height=96", "--set", "image_width=128")  # multiples of 32 and 16, below the 120x160 frames


def cli(main, *argv: str) -> None:
    code = run_cli(main, list(argv))
    assert code == 0, f"{main.__module__} {' '.join(argv)} exited {code}"


@pytest.fixture(scope="module", params=list(CASES))
def imported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    torch.set_num_threads(1)
    name = request.param
    folder = tmp_path_factory.mktemp(name)
    checkpoint = folder / f"random_{name}.pth"
    cli(vpr_import.main, "--format", name, "--random", "--shallow", "--variant", CASES[name][0], "--checkpoint",
        str(checkpoint), "--out-dir", str(folder / "models"), "--id", f"zoo_{name}", "--check-count", "2")
    return {"name": name, "checkpoint": checkpoint, "onnx": folder / "models" / f"zoo_{name}.onnx", "folder": folder}


def test_import_writes_a_parity_checked_global_model(imported: dict):
    _, dimension, fixed = CASES[imported["name"]]
    card = ModelCard.load(imported["onnx"].with_suffix(".yaml"))
    raw = card.to_dict()
    assert card.kind == "global" and card.channels == dimension == raw["descriptor"]["dimension"]
    assert raw["source"]["format"] == imported["name"]
    assert raw["source"]["checkpoint_sha256"] == __import__("hashlib").sha256(
        imported["checkpoint"].read_bytes()).hexdigest()
    assert raw["normalisation"]["mean"] == [0.485, 0.456, 0.406]
    assert raw["parity"]["images"] == 2 and raw["parity"]["max_abs_diff"] < 1e-4
    if fixed:  # MixVPR: the mixer fixes the input size; the card says so, so maps use it
        assert raw["input"]["fixed_size"] is True and list(card.default_size) == list(fixed)
        assert raw["parity"]["sizes"] == [list(fixed)]
    else:  # dynamic height and width, checked at two sizes of different aspect
        assert len(raw["parity"]["sizes"]) == 2 and raw["parity"]["sizes"][0] != raw["parity"]["sizes"][1]


def test_imported_model_maps_and_evaluates_the_corridor(imported: dict, corridor: Path):
    _, dimension, fixed = CASES[imported["name"]]
    folder, model = imported["folder"], str(imported["onnx"])
    cli(build_map.main, "--images", str(corridor / "ref"), "--poses", str(corridor / "ref_poses.csv"), "--output",
        str(folder / "map"), "-q", "--set", f"encoder.model={model}", *SIZE)
    refmap = ReferenceMap.load(folder / "map")
    assert refmap.descriptors.shape == (111, dimension) and refmap.head is None
    np.testing.assert_allclose(np.linalg.norm(refmap.descriptors, axis=1), 1.0, atol=1e-5)
    assert tuple(refmap.input_size) == (fixed or (96, 128))
    cli(evaluate.main, "--map", str(folder / "map"), "--queries", str(corridor / "query"), "--ground-truth",
        str(corridor / "ground_truth_new.npy"), "--out", str(folder / "eval"), "-q", "--no-plots",
        "--set", f"localizer.encoder.model={model}")
    report = json.loads((folder / "eval" / "report.json").read_text())
    assert len(report["per_query"]) == 111 and 0.0 <= report["recall@1"] <= report["recall@10"] <= 1.0
    # Descriptors must separate frames: the ranked lists are not all one and the same reference.
    assert len({q["top"][0] for q in report["per_query"]}) > 5


def one_error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    code = run_cli(vpr_import.main, argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, (code, lines)
    return lines[0]


def test_checkpoint_of_another_layout_is_one_line_naming_file_format_and_key(tmp_path: Path, capsys):
    cosplace = get_format("cosplace").write_random(tmp_path / "cosplace.pth", shallow=True, variant="ResNet18_512")
    line = one_error_line(capsys, ["--format", "mixvpr", "--checkpoint", str(cosplace), "--out-dir",
                                   str(tmp_path / "m"), "--id", "x"])
    assert str(cosplace) in line and "not a mixvpr checkpoint" in line and "missing key 'backbone.model." in line

    netvlad = get_format("netvlad_vgg16").write_random(tmp_path / "nv.pth.tar", shallow=True)
    state = torch.load(netvlad, weights_only=False)
    del state["state_dict"]["pool.conv.weight"]
    state["state_dict"]["pool.extra"] = torch.zeros(1)
    torch.save(state, tmp_path / "damaged.pth.tar")
    line = one_error_line(capsys, ["--format", "netvlad_vgg16", "--checkpoint", str(tmp_path / "damaged.pth.tar"),
                                   "--out-dir", str(tmp_path / "m"), "--id", "x"])
    assert "not a netvlad_vgg16 checkpoint: missing key 'pool.conv.weight'" in line

    del state["state_dict"]["pool.extra"]
    state["state_dict"]["pool.conv.weight"] = torch.zeros(8, 64, 1, 1)
    state["state_dict"]["encoder.99.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "extra.pth.tar")
    line = one_error_line(capsys, ["--format", "netvlad_vgg16", "--checkpoint", str(tmp_path / "extra.pth.tar"),
                                   "--out-dir", str(tmp_path / "m"), "--id", "x"])
    assert "unexpected key 'encoder.99.weight'" in line
    # The Patch-NetVLAD format checks the same layout before its own conversion.
    line = one_error_line(capsys, ["--format", "patchnetvlad", "--checkpoint", str(cosplace), "--out-dir",
                                   str(tmp_path / "m"), "--id", "x"])
    assert "not a patchnetvlad checkpoint" in line or "not a Patch-NetVLAD checkpoint" in line
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


def test_registry_lists_every_format(capsys):
    assert set(CASES) | {"patchnetvlad"} <= set(format_names())
    assert run_cli(vpr_import.main, ["--list-formats"]) == 0
    out = capsys.readouterr().out
    for name in format_names():
        fmt = get_format(name)
        assert f"{name}: {fmt.description}" in out and fmt.weights in out
    assert one_error_line(capsys, ["--format", "nope", "--checkpoint", "x.pth", "--out-dir", "m"]).startswith(
        "error: unknown import format 'nope'")
