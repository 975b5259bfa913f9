"""The DINOv2-based and BoQ import formats (issue 16): salad, megaloc, boq (DINOv2 and ResNet-50 releases), anyloc.

Each format writes a SHALLOW random-weight checkpoint in its official key layout through ``vpr-import --random
--shallow`` (main() in process), converts it (the export's ONNX Runtime vs PyTorch parity is checked before writing),
then maps the corridor with ``build_map`` and evaluates its queries with ``evaluate``, so the exported graphs run
through the whole pipeline: ``kind: global`` descriptors for salad / megaloc / boq, a ``kind: backbone`` local
feature map whose VLAD is fitted on the map for anyloc. The parity against the authors' own code on real images is
the dev bench ``bench/bench_model_zoo.py`` (not part of ``make test``).

Maps run at 112x154 (the corridor's 120x160 rounded down to multiples of 14) to keep the suite fast; the default
sizes are exercised by the import's own parity check (322x322 and a second aspect ratio).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from vpr_ros.cli import build_map, evaluate
from vpr_ros.cli.common import run_cli
from vpr_ros.core.encoders import ModelCard
from vpr_ros.core.refmap import ReferenceMap
from vpr_training.zoo import cli as zoo_cli
from vpr_training.zoo.dinov2 import SHALLOW_SPEC, DinoV2, InputSizeError, bicubic_matrix, random_vit_state

pytestmark = pytest.mark.torch

#: format name, --variant, checkpoint suffix, model card kind, descriptor / feature dimension of the shallow model.
FORMATS = {
    "salad": ("salad", None, ".ckpt", "global", 8 * 16 + 32),
    "megaloc": ("megaloc", None, ".safetensors", "global", 64),
    "boq_dinov2": ("boq", "dinov2", ".pth", "global", 64 * 4),
    "boq_resnet50": ("boq", "resnet50", ".pth", "global", 64 * 4),
    "anyloc": ("anyloc", None, ".pth", "backbone", 128),
}
MAP_SIZE = ("--set", "image_height=112", "--set", "image_width=154")


def cli(main, *argv: str) -> None:
    code = run_cli(main, list(argv))
    assert code == 0, f"{main.__module__} {' '.join(argv)} exited {code}"


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every format's shallow random checkpoint, imported: name -> ONNX path."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("zoo_vit")
    paths = {}
    for name, (fmt, variant, suffix, _, _) in FORMATS.items():
        argv = ["--format", fmt, "--random", "--shallow", "--checkpoint", str(out / f"{name}{suffix}"),
                "--out-dir", str(out / "models"), "--id", name, "--check-count", "2"]
        cli(zoo_cli.main, *argv, *(["--variant", variant] if variant else []))
        paths[name] = out / "models" / f"{name}.onnx"
    return paths


@pytest.mark.parametrize("name", list(FORMATS))
def test_import_build_map_and_evaluate_on_corridor(name: str, imported: dict[str, Path], corridor: Path,
                                                   tmp_path: Path):
    _, _, _, kind, dimension = FORMATS[name]
    model = imported[name]
    card = ModelCard.load(model.with_suffix(".yaml"))
    assert (card.kind, card.channels) == (kind, dimension)
    assert card.raw["parity"]["max_abs_diff"] <= 1e-4 or card.raw["parity"].get("min_cosine", 0) >= 0.99999
    vit = name != "boq_resnet50"
    assert card.raw["input"]["size_multiple"] == (14 if vit else 16)
    assert bool(card.raw["input"].get("size_multiple_required")) == vit

    cli(build_map.main, "--images", str(corridor / "ref"), "--poses", str(corridor / "ref_poses.csv"), "--output",
        str(tmp_path / "map"), "-q", "--set", f"encoder.model={model}", *MAP_SIZE)
    cli(evaluate.main, "--map", str(tmp_path / "map"), "--queries", str(corridor / "query"), "--query-poses",
        str(corridor / "query_poses.csv"), "--dist-threshold", "2", "--out", str(tmp_path / "eval"), "-q",
        "--no-plots", "--set", f"localizer.encoder.model={model}")
    refmap = ReferenceMap.load(tmp_path / "map")
    assert refmap.descriptors.shape[0] == len(list((corridor / "ref").glob("*.jpg")))
    assert np.isfinite(refmap.descriptors).all()
    if kind == "global":  # the model's own descriptors
        assert refmap.head is None and refmap.descriptors.shape[1] == dimension
    else:  # a VLAD fitted on the map's own value-facet features
        assert refmap.head is not None and refmap.head.feature_dim == dimension
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert len(report["per_query"]) == len(list((corridor / "query").glob("*.jpg")))
    assert 0.0 <= report["recall@1"] <= 1.0


def test_map_size_not_a_multiple_of_14_is_refused_with_one_line(imported: dict[str, Path], corridor: Path,
                                                                 tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    code = run_cli(build_map.main, ["--images", str(corridor / "ref"), "--poses", str(corridor / "ref_poses.csv"),
                                    "--output", str(tmp_path / "map"), "-q", "--set",
                                    f"encoder.model={imported['salad']}", "--set", "image_height=120", "--set",
                                    "image_width=160"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert "160x120" in lines[0] and "multiples of 14" in lines[0]


def test_checkpoint_of_another_format_is_refused_naming_the_key(imported: dict[str, Path], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]):
    """A SALAD file given as MegaLoc: one line naming the first key MegaLoc's layout lacks; nothing written."""
    salad_checkpoint = imported["salad"].parent.parent / "salad.ckpt"
    code = run_cli(zoo_cli.main, ["--format", "megaloc", "--checkpoint", str(salad_checkpoint), "--out-dir",
                                  str(tmp_path), "--id", "wrong", "--check-count", "1"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert "not a megaloc checkpoint" in lines[0] and "backbone." in lines[0]
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("n", [4, 6, 9, 23])
def test_position_embedding_resize_is_pytorch_bicubic_with_the_official_offset(n: int):
    """The in-graph resize matrix equals F.interpolate(scale_factor=(n + 0.1) / M, bicubic) of the official
    interpolate_pos_encoding (float32 index rounding aside)."""
    m = 6
    grid = torch.randn(1, 8, m, m, generator=torch.Generator().manual_seed(n))
    expected = F.interpolate(grid, scale_factor=((n + 0.1) / m, (n + 0.1) / m), mode="bicubic", antialias=False)
    matrix = bicubic_matrix(n, m)
    assert expected.shape[-1] == n
    torch.testing.assert_close(torch.einsum("hm,bcmn,wn->bchw", matrix, grid, matrix), expected, atol=2e-5,
                               rtol=0)


def test_position_embeddings_at_the_native_grid_are_the_stored_ones():
    """Official shortcut: at exactly M x M patches the stored embeddings are used, not resized by (M + 0.1) / M."""
    vit = DinoV2(SHALLOW_SPEC)
    vit.load_state_dict(random_vit_state(SHALLOW_SPEC, torch.Generator().manual_seed(0)))
    m = SHALLOW_SPEC.pos_grid
    with torch.no_grad():
        torch.testing.assert_close(vit.position_embeddings(m, m), vit.pos_embed, atol=0, rtol=0)
        assert not torch.allclose(vit.position_embeddings(m, m + 1)[:, 1:m + 1], vit.pos_embed[:, 1:m + 1])


def test_vit_refuses_sides_that_are_not_multiples_of_14():
    vit = DinoV2(SHALLOW_SPEC).eval()
    with pytest.raises(InputSizeError, match=r"160x120 .*multiples of 14 .*width 154 or 168, height 112 or 126"):
        vit.tokens(torch.zeros(1, 3, 120, 160))


def test_anyloc_size_limit_counts_exactly_the_exported_weights(imported: dict[str, Path]):
    """The 2 GB refusal (AnyLoc's ViT-g/14) rests on this count: it must equal the weights in the exported graph."""
    import onnx

    from vpr_training.zoo import get_format
    from vpr_training.zoo.anyloc import exported_parameters

    fmt = get_format("anyloc")
    built = fmt.build(fmt.state_dict(imported["anyloc"].parent.parent / "anyloc.pth"))
    graph = onnx.load(str(imported["anyloc"])).graph
    weights = [t for t in graph.initializer if t.name not in ("offset", "scale")]  # input normalisation, 2 x 3
    assert exported_parameters(built.module.model) == sum(int(np.prod(t.dims)) for t in weights)
