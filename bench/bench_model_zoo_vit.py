"""Model-zoo parity of the DINOv2-based and BoQ formats against the authors' own code, with size, FLOPs, latency.

For each case (salad, megaloc, boq_dinov2, boq_resnet50, anyloc): a full-size checkpoint in the official key layout
with seeded random weights (no weights can be downloaded here) is converted by ``vpr-import``; the authors'
reference implementation, imported at run time from a snapshot of their repository under ``$VPR_REFS`` (default
/work/refs; never copied into this project), loads the same checkpoint, and both run on real images: corridor
(reference / query), Nordland part 1 (summer / winter) and the two Tokyo 24/7 examples of the ``patchnetvlad``
package. DINOv2 comes from the facebookresearch/dinov2 snapshot (``torch.hub.load(source="local",
pretrained=False)`` in place of the download the authors' code asks for; the checkpoint's weights replace it).
Recorded in ``bench/results/model_zoo.json`` under ``formats.<case>`` (read-modify-write: the CNN formats' entries
written by ``bench/bench_model_zoo.py`` are kept):

* descriptors: max |diff| and minimum cosine, ONNX Runtime (our export) vs the reference in PyTorch;
* retrieval: top-1 agreement over the queries whose reference top-2 similarity margin exceeds 1e-3 (random
  weights give near-parallel descriptors; how many queries qualify is stated), and the reference's mean cosine
  between different images (how degenerate the random descriptors are);
* the ONNX file size, parameters, FLOPs (``torch.utils.flop_counter.FlopCounterMode``, 2 per multiply-add) and
  ONNX Runtime CPU latency (2 threads, median) at 322x322 and at the 640x480 equivalent (476x644 for the ViTs,
  multiples of 14; 480x640 for ResNet-50).

Degenerate random descriptors: random ResNet features, and the random ViT's tokens after its final norm, share a
large component across images, so SALAD, MegaLoc and BoQ-ResNet-50 give descriptors with cosines near 1 between
any two images. Their aggregation layers are first centred on statistics of real features (every other database
image), recorded as ``aggregation_init``: SALAD / MegaLoc: the biases of the last cluster-feature conv and of the
token MLP become minus their mean outputs (MegaLoc also its final ``linear``); BoQ-ResNet-50: ``proj_c``'s bias
becomes minus its mean output. AnyLoc has no trained aggregation: its VLAD (32-word k-means vocabulary, PCA-whitening)
is fitted on the reference's database features with vpr_ros' map-building functions and applied to both sides'
features; the parity bar applies to the export's output, the L2-normalised local features (``parity``); the
global descriptors' differences are recorded as ``global_parity``.

AnyLoc is measured with the ViT-B/14 hub layout (block 9 value facet): its own ViT-g/14 cannot be exported (its
blocks up to 31 hold more than one ONNX file can; vpr-import refuses it) and would not fit this machine anyway; that
model's parameters and FLOPs are counted without running it (meta tensors).

Snapshots: ``fetch github:facebookresearch/dinov2``, ``serizba/salad``, ``amaralibey/Bag-of-Queries``,
``gmberton/MegaLoc``, ``AnyLoc/AnyLoc``, each extracted to ``$VPR_REFS/<owner>+<name>/`` (as bench_model_zoo's).
The results file, the image helpers, the reference plumbing and the retrieval agreement are bench_model_zoo's.
Run: ``python -m bench model_zoo_vit`` (every case) or ``python -m bench.bench_model_zoo_vit CASE ...``.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "training") not in sys.path:
    sys.path.insert(0, str(REPO / "training"))

# The results file, image helpers and the authors'-code plumbing are bench_model_zoo's (the CNN formats' bench).
from bench.bench_model_zoo import (  # noqa: E402
    batch,
    module_from_file,
    on_path,
    real_image_pairs,
    retrieval_agreement,
    run_reference,
    snapshot,
    update_results,
)
from bench.common import time_ms  # noqa: E402

VIT_LATENCY_SIZES = {"322x322": (322, 322), "640x480": (476, 644)}
CNN_LATENCY_SIZES = {"322x322": (322, 322), "640x480": (480, 640)}
#: case -> (format, --random variant, checkpoint suffix, parity input (h, w)).
CASES: dict[str, tuple[str, str | None, str, tuple[int, int]]] = {
    "salad": ("salad", None, ".ckpt", (322, 322)),
    "megaloc": ("megaloc", None, ".safetensors", (322, 322)),
    "boq_dinov2": ("boq", "dinov2", ".pth", (322, 322)),
    "boq_resnet50": ("boq", "resnet50", ".pth", (384, 384)),
    "anyloc": ("anyloc", "vitb14", ".pth", (322, 434)),
}


# ---- real images ---------------------------------------------------------------------------------------------------

# ---- the authors' code ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def local_dinov2_hub() -> Iterator[None]:
    """``torch.hub.load('facebookresearch/dinov2', name)`` answered from the dinov2 snapshot without weights (the
    authors' code downloads the pretrained model; the checkpoint's weights replace them anyway)."""
    import torch

    hub_load = torch.hub.load
    local = str(snapshot("facebookresearch+dinov2"))
    torch.hub.load = lambda repo, name, *a, **kw: hub_load(local, name, source="local",  # type: ignore[assignment]
                                                           pretrained=False)
    try:
        yield
    finally:
        torch.hub.load = hub_load


def reference_salad(state: dict) -> Callable[[Any], Any]:
    """serizba/salad: hubconf.dinov2_salad's VPRModel = models/backbones/dinov2.py DINOv2 (4 trainable blocks, token,
    norm) + models/aggregators/salad.py SALAD, forward = aggregator(backbone(x)) (vpr_model.py itself needs
    pytorch_lightning, for training only)."""
    import torch

    with on_path(snapshot("serizba+salad")), local_dinov2_hub():
        from models.aggregators.salad import SALAD
        from models.backbones.dinov2 import DINOv2

        model = torch.nn.Module()
        model.add_module("backbone", DINOv2("dinov2_vitb14", num_trainable_blocks=4, norm_layer=True,
                                            return_token=True))
        model.add_module("aggregator", SALAD(num_channels=768, num_clusters=64, cluster_dim=128, token_dim=256))
    model.load_state_dict(state)
    model.eval()
    return lambda x: model.aggregator(model.backbone(x))


def reference_megaloc(state: dict) -> Callable[[Any], Any]:
    """gmberton/MegaLoc megaloc_model.py MegaLoc (what hubconf.get_trained_model builds before loading weights)."""
    megaloc = module_from_file("megaloc_model", snapshot("gmberton+MegaLoc") / "megaloc_model.py")
    model = megaloc.MegaLoc()
    model.load_state_dict(state)
    return model.eval()


def reference_boq(state: dict) -> Callable[[Any], Any]:
    """amaralibey/Bag-of-Queries hubconf.get_trained_boq's VPRModel (src/backbones.py + src/boq.py), built as that
    function builds it (ResNet without the ImageNet download); its forward returns (descriptor, attentions)."""
    with local_dinov2_hub():
        hubconf = module_from_file("boq_hubconf", snapshot("amaralibey+Bag-of-Queries") / "hubconf.py")
        if "backbone.dino.cls_token" in state:
            backbone = hubconf.DinoV2()
            aggregator = hubconf.BoQ(in_channels=backbone.out_channels, proj_channels=384, num_queries=64,
                                     num_layers=2, row_dim=12288 // 384)
        else:
            backbone = hubconf.ResNet(backbone_name="resnet50", pretrained=False, crop_last_block=True)
            aggregator = hubconf.BoQ(in_channels=backbone.out_channels, proj_channels=512, num_queries=64,
                                     num_layers=2, row_dim=16384 // 512)
    model = hubconf.VPRModel(backbone=backbone, aggregator=aggregator)
    model.load_state_dict(state)
    model.eval()
    return lambda x: model(x)[0]


def reference_anyloc(state: dict, layer: int) -> Callable[[Any], Any]:
    """AnyLoc/AnyLoc demo/utilities.py DinoV2ExtractFeatures(dinov2_vitb14, layer, "value"): (B, n, D) L2-normalised
    value-facet descriptors of the patches."""
    with on_path(snapshot("AnyLoc+AnyLoc") / "demo"), local_dinov2_hub():
        import utilities

        extractor = utilities.DinoV2ExtractFeatures("dinov2_vitb14", layer, "value", device="cpu")
    extractor.dino_model.load_state_dict(state)
    return extractor


REFERENCES = {
    "salad": "serizba/salad models/backbones/dinov2.py DINOv2 + models/aggregators/salad.py SALAD (hubconf settings)",
    "megaloc": "gmberton/MegaLoc megaloc_model.py MegaLoc",
    "boq_dinov2": "amaralibey/Bag-of-Queries hubconf.py VPRModel(src/backbones.py DinoV2, src/boq.py BoQ)",
    "boq_resnet50": "amaralibey/Bag-of-Queries hubconf.py VPRModel(src/backbones.py ResNet, src/boq.py BoQ)",
    "anyloc": "AnyLoc/AnyLoc demo/utilities.py DinoV2ExtractFeatures(dinov2_vitb14, value facet) on the "
              "facebookresearch/dinov2 hub model",
}


# ---- aggregation initialised from real features ---------------------------------------------------------------

def centre_aggregation(case: str, model: Any, normalised: Any) -> str:
    """Centre ``model``'s aggregation on statistics of its features of ``normalised`` images (module docstring), in
    place; returns what was done, or "" where random descriptors are not degenerate."""
    import torch

    with torch.no_grad():
        if case in ("salad", "megaloc"):
            agg = model.aggregator.agg if case == "megaloc" else model.aggregator
            tokens = (model.backbone if case == "megaloc" else model.backbone.model).tokens(normalised)
            agg.cluster_features[3].bias -= agg.cluster_features(tokens.patches).mean((0, 2, 3))
            agg.token_features[2].bias -= agg.token_features(tokens.cls).mean(0)
            note = "cluster_features.3 and token_features.2 biases = -(their mean outputs)"
            if case == "megaloc":
                model.aggregator.linear.bias -= model.aggregator.linear(agg(tokens.patches, tokens.cls)).mean(0)
                note += ", then linear's bias = -(its mean output)"
            return f"{note}, over {len(normalised)} database images"
        if case == "boq_resnet50":
            proj = model.aggregator.proj_c
            proj.bias -= proj(model.backbone(normalised)).mean((0, 2, 3))
            return f"proj_c bias = -(mean proj_c output over {len(normalised)} database images and positions)"
    return ""


# ---- measurements ----------------------------------------------------------------------------------------------

def descriptor_parity(reference: np.ndarray, ours: np.ndarray) -> dict[str, float]:
    ref, cand = reference.astype(np.float64), ours.astype(np.float64)
    cosine = (ref * cand).sum(-1) / (np.linalg.norm(ref, axis=-1) * np.linalg.norm(cand, axis=-1))
    return {"max_abs_diff": float(f"{np.abs(ref - cand).max():.3g}"), "min_cosine": float(f"{cosine.min():.9f}"),
            "descriptors": int(np.prod(ref.shape[:-1]))}


def mean_cosine_between_images(descriptors: np.ndarray) -> float:
    sim = descriptors @ descriptors.T
    return float(f"{sim[~np.eye(len(sim), dtype=bool)].mean():.4f}")


def gflop(module: Any, hw: tuple[int, int], device: str = "cpu") -> float:
    """GFLOP of one forward pass at ``hw``; ``device="meta"`` counts without computing (a module built on meta)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    module.requires_grad_(False)  # FlopCounterMode's module tracker hooks tensors that require grad
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad(), torch.device(device):
        module(torch.zeros(1, 3, *hw))
    return round(counter.get_total_flops() / 1e9, 2)


def export_params_m(onnx_path: Path) -> float:
    """Million parameters in the exported graph (its initializers: only the weights the graph uses)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return round(sum(int(np.prod(t.dims)) for t in graph.initializer) / 1e6, 2)


def anyloc_global(reference_db: np.ndarray, features: list[np.ndarray]) -> list[np.ndarray]:
    """A VLAD head fitted as the map builder fits it (vpr_ros.core.vlad: 32-word k-means vocabulary, soft assignment,
    PCA-whitening) on the reference's database descriptors, applied to each (B, D, h, w) feature map set."""
    from vpr_ros.core.vlad import VladConfig, VladHead, assignment_from_centroids, fit_pca_whitening, kmeans_vocabulary

    cfg = VladConfig()
    local = reference_db.reshape(-1, reference_db.shape[-1])
    centroids = kmeans_vocabulary(local, cfg.num_clusters, cfg.kmeans_iterations, cfg.seed)
    weight, bias = assignment_from_centroids(centroids, local, cfg.assignment_ratio)
    head = VladHead(centroids, weight, bias)
    db_map = np.ascontiguousarray(reference_db.transpose(0, 2, 1)).reshape(len(reference_db), -1, *features[0]
                                                                             .shape[2:])
    projection, proj_bias = fit_pca_whitening(head.vlad(db_map), cfg.pca_dim, cfg.whiten, cfg.whiten_regularisation)
    head = VladHead(centroids, weight, bias, projection, proj_bias)
    return [head.global_descriptors(f) for f in features]


def measure(case: str, db: list[np.ndarray], queries: list[np.ndarray], work: Path) -> dict[str, Any]:
    import torch

    from vpr_ros.core.encoders.model_card import ModelCard
    from vpr_training.export.common import ort_session, run_onnx
    from vpr_training.zoo import cli as vpr_import
    from vpr_training.zoo import get_format
    from vpr_training.zoo.anyloc import ValueFacet, facet_layer
    from vpr_training.zoo.dinov2 import HUB_SPECS

    fmt_name, variant, suffix, hw = CASES[case]
    fmt = get_format(fmt_name)
    t0 = time.perf_counter()
    checkpoint = fmt.write_random(work / f"{case}{suffix}", seed=0, variant=variant)
    db_batch, q_batch = batch(db, hw), batch(queries, hw)

    built = fmt.build(fmt.state_dict(checkpoint))
    net = built.module.eval()  # NormalisedInput(model)
    init_note = centre_aggregation(case, net.model, (torch.from_numpy(db_batch[::2]) - net.offset) * net.scale)
    if init_note:  # write the centred weights back in the official layout (the model's keys are the official ones)
        state = {k: v.contiguous() for k, v in net.model.state_dict().items()}
        if suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(state, str(checkpoint))
        else:
            torch.save(state, checkpoint)

    code = vpr_import.main(["--format", fmt_name, "--checkpoint", str(checkpoint), "--out-dir", str(work / "models"),
                            "--id", case, "--check-count", "2"])
    assert code == 0, f"vpr-import {case} exited {code}"
    onnx_path = work / "models" / f"{case}.onnx"
    card = ModelCard.load(onnx_path.with_suffix(".yaml"))
    session = ort_session(onnx_path, threads=2)
    our_db, our_q = run_onnx(session, db_batch, chunk=2), run_onnx(session, q_batch, chunk=2)

    state = {k: v.clone() for k, v in fmt.state_dict(checkpoint).items()}
    entry: dict[str, Any] = {"format": fmt_name, "variant": built.variant, "kind": card.kind,
                             "descriptor_dim": card.channels, "input_size_rule": fmt.size_rule,
                             "reference": REFERENCES[case],
                             "checkpoint": f"{variant or 'release'} layout, seeded random weights (seed 0)",
                             "aggregation_init": init_note or "none (random descriptors not degenerate)",
                             "parity_input": list(hw)}
    if case == "anyloc":
        layer = facet_layer(built.details["blocks"])
        reference = reference_anyloc(state, layer)
        ref_db, ref_q = run_reference(reference, db_batch), run_reference(reference, q_batch)

        def unit_local(features: np.ndarray) -> np.ndarray:
            x = features.reshape(*features.shape[:2], -1).transpose(0, 2, 1)
            return x / np.linalg.norm(x, axis=-1, keepdims=True)

        local_parity = descriptor_parity(np.concatenate([ref_db, ref_q]),
                                         np.concatenate([unit_local(our_db), unit_local(our_q)]))
        grid = our_db.shape[2:]
        ref_maps = [np.ascontiguousarray(r.transpose(0, 2, 1)).reshape(len(r), -1, *grid) for r in (ref_db, ref_q)]
        ref_db, ref_q, our_db, our_q = anyloc_global(ref_db, [*ref_maps, our_db, our_q])
        entry["global"] = "VLAD fitted on the reference's database features (vpr_ros.core.vlad, map-builder settings)"
        entry["layer"], entry["facet"] = layer, "value"
    else:
        reference = {"salad": reference_salad, "megaloc": reference_megaloc}.get(case, reference_boq)(state)
        ref_db, ref_q = run_reference(reference, db_batch), run_reference(reference, q_batch)
    both_ref, both_ours = np.concatenate([ref_db, ref_q]), np.concatenate([our_db, our_q])
    entry["parity"] = {**descriptor_parity(both_ref, both_ours),
                       "reference_mean_cosine_between_images": mean_cosine_between_images(both_ref)}
    if case == "anyloc":
        # The export's output is the local features: the parity bar applies to them. The global descriptors
        # (VLAD + PCA-whitening of random-ViT features) magnify their float32 differences: sharp soft assignment
        # over nearly parallel features, and whitening of the few weak components 15 database images give.
        entry["global_parity"] = {**entry["parity"], "descriptors_compared": "VLAD global descriptors (module "
                                  "docstring), a sensitivity check rather than the export's parity"}
        entry["parity"] = {**local_parity, "descriptors_compared": "L2-normalised value-facet local features (the "
                           "export's output), reference vs ONNX Runtime"}
    entry["retrieval"] = retrieval_agreement(ref_db, ref_q, our_db, our_q)

    sizes = CNN_LATENCY_SIZES if case == "boq_resnet50" else VIT_LATENCY_SIZES
    latency = {}
    for label, size in sizes.items():
        image = np.zeros((1, 3, *size), np.float32) + 128.0
        latency[label] = {**time_ms(lambda image=image: session.run(None, {"image": image}), repeats=5, warmup=1),
                          "input": list(size)}
    entry.update(export_bytes=onnx_path.stat().st_size, export_mb=round(onnx_path.stat().st_size / 1e6, 1),
                 params_m=export_params_m(onnx_path), gflop={label: gflop(net, size) for label, size in sizes.items()},
                 latency_ms=latency, latency_threads=2)
    if case == "anyloc":  # AnyLoc's own ViT-g/14, block 31: counted on meta tensors, not run
        with torch.device("meta"):
            vitg = ValueFacet(HUB_SPECS["vitg14"], facet_layer(HUB_SPECS["vitg14"].depth))
        entry["vitg14_block31_not_run"] = {
            "gflop": {label: gflop(vitg, size, device="meta") for label, size in sizes.items()},
            "params_m_used": round(sum(p.numel() for b in vitg.vit.blocks[:32] for p in b.parameters()) / 1e6, 1)}
    entry["seconds"] = round(time.perf_counter() - t0, 1)
    return entry


def main(names: list[str] | None = None) -> None:
    import torch

    torch.set_num_threads(2)
    # Few images: a ViT-B at 322x322 takes seconds per image on a busy 2-core machine.
    db, queries, sources = real_image_pairs(corridor_images=8, nordland_images=6)
    entries: dict[str, dict[str, Any]] = {}
    failed = []
    with tempfile.TemporaryDirectory(prefix="model_zoo_vit_") as tmp:
        for case in names or list(CASES):
            print(f"-- {case}", flush=True)
            try:
                entries[case] = {**measure(case, db, queries, Path(tmp)), "images": sources}
            except Exception:  # one reference failing must not cost the other cases' hour of measurements
                traceback.print_exc()
                failed.append(case)
                continue
            e = entries[case]
            print(f"   max|diff| {e['parity']['max_abs_diff']:.2g}, min cos {e['parity']['min_cosine']:.7f}, top-1 "
                  f"{e['retrieval']['top1_agreement_qualifying']} over {e['retrieval']['qualifying_queries']} "
                  f"queries, {e['latency_ms']['640x480']['median']:.0f} ms at 640x480 ({e['seconds']} s)", flush=True)
            update_results({case: entries[case]})  # after each case: a long run keeps what it measured
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)} (tracebacks above); the other cases were written")


if __name__ == "__main__":
    main(sys.argv[1:] or None)
