"""Model-zoo parity against the authors' own code, plus size, FLOPs and CPU latency of every CNN import format.

For each format (netvlad_vgg16, cosplace, eigenplaces, mixvpr): a full-depth checkpoint in the official key layout
with seeded random weights (no weights can be downloaded here) is converted by ``vpr-import``; the authors'
reference implementation (imported at run time from a snapshot of their repository under ``$VPR_REFS``, default
/work/refs, never copied into this project) loads the same checkpoint, and both run on real images: corridor
(data/corridor, reference and query), Nordland (data/nordland_part1, summer as database, winter as queries) and the
two Tokyo 24/7 examples shipped with the ``patchnetvlad`` package. Recorded per format in
``bench/results/model_zoo.json`` (``formats.<name>``; other formats in the file, e.g. the DINOv2 ones, are kept):

* descriptors: max |diff| and minimum cosine, ONNX Runtime vs the reference;
* retrieval: top-1 agreement over the queries whose reference top-2 similarity margin exceeds 1e-3 (random
  weights give near-parallel descriptors; how many queries qualify is stated);
* the ONNX file size, parameters, FLOPs (``torch.utils.flop_counter.FlopCounterMode``, 2 per multiply-add) and
  ONNX Runtime CPU latency (2 threads, median) at 322x322 and 640x480 (MixVPR: its fixed 320x320 for both).

Random VGG / ResNet features are nearly the same for every image (a large common component), which makes
descriptors degenerate (all cosines near 1). So the aggregation layers are first initialised from statistics of
real features (images of the database half), as the authors' own training starts (recorded as
``aggregation_init``): NetVLAD's centroids by k-means of conv5_3 features and its assignment by the port's
``init_params`` rule; the GeM + FC formats' FC bias to minus the FC image of the mean GeM vector; MixVPR's
channel-projection bias to minus the mean projected feature.

Snapshots: ``fetch github:Nanne/pytorch-NetVlad``, ``gmberton/CosPlace``, ``gmberton/EigenPlaces``,
``amaralibey/MixVPR``, each extracted to ``$VPR_REFS/<owner>+<name>/``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "training") not in sys.path:
    sys.path.insert(0, str(REPO / "training"))

from bench.common import RESULTS, machine_load, time_ms  # noqa: E402
from vpr_ros.core.files import atomic_write_text  # noqa: E402
from vpr_ros.core.image import load_rgb, resize_rgb  # noqa: E402
from vpr_ros.eval.report import machine_description  # noqa: E402

REFS = Path(os.environ.get("VPR_REFS", "/work/refs"))
RESULT_FILE = RESULTS / "model_zoo.json"
MARGIN = 1e-3
LATENCY_SIZES = {"322x322": (322, 322), "640x480": (480, 640)}
#: format -> (random checkpoint variant, parity input (h, w)).
CASES = {"netvlad_vgg16": ("k64", (240, 320)), "cosplace": ("ResNet50_2048", (240, 320)),
         "eigenplaces": ("ResNet50_2048", (240, 320)), "mixvpr": ("4096", (320, 320))}


# ---- results file shared with the other model-zoo benches --------------------------------------------------------

def update_results(entries: dict[str, dict[str, Any]]) -> Path:
    """Read-modify-write ``model_zoo.json``: ``formats.<name>`` replaced for the given formats only (each entry
    stamped with its own time, machine and load), the file's machine / load set to this run's."""
    doc: dict[str, Any] = json.loads(RESULT_FILE.read_text()) if RESULT_FILE.exists() else {}
    stamp = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_description(),
             "load": machine_load()}
    formats = dict(doc.get("formats", {}))
    formats.update({name: {**entry, **stamp} for name, entry in entries.items()})
    doc = {"benchmark": "model_zoo", **stamp, "formats": dict(sorted(formats.items()))}
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULT_FILE, json.dumps(doc, indent=2, default=str) + "\n")
    print(f"wrote {RESULT_FILE}")
    return RESULT_FILE


# ---- real images ---------------------------------------------------------------------------------------------------

def evenly(files: list[Path], n: int) -> list[Path]:
    return [files[i] for i in np.linspace(0, len(files) - 1, n).round().astype(int)]


def real_image_pairs(corridor_images: int = 16, nordland_images: int = 12) -> tuple[list[np.ndarray],
                                                                                   list[np.ndarray], list[str]]:
    """(database images, query images, where each pair of lists comes from): corridor ref / query, Nordland
    summer / winter (that many of each, evenly spread), Tokyo 24/7 database / query."""
    import patchnetvlad

    corridor, nordland = REPO / "data" / "corridor", REPO / "data" / "nordland_part1"
    tokyo = Path(patchnetvlad.__file__).parent / "example_images"
    groups = [("corridor", evenly(sorted((corridor / "ref").glob("*.jpg")), corridor_images),
               evenly(sorted((corridor / "query").glob("*.jpg")), corridor_images)),
              ("nordland", evenly(sorted((nordland / "summer").glob("*.png")), nordland_images),
               evenly(sorted((nordland / "winter").glob("*.png")), nordland_images)),
              ("tokyo", [tokyo / "tokyo_db.png"], [tokyo / "tokyo_query.jpg"])]
    db, queries, sources = [], [], []
    for name, d, q in groups:
        db += [load_rgb(p) for p in d]
        queries += [load_rgb(p) for p in q]
        sources.append(f"{name}: {len(d)} database + {len(q)} query images")
    return db, queries, sources


def batch(images: list[np.ndarray], hw: tuple[int, int]) -> np.ndarray:
    return np.stack([resize_rgb(im, *hw).transpose(2, 0, 1) for im in images]).astype(np.float32)


# ---- the authors' code ---------------------------------------------------------------------------------------------

def snapshot(name: str) -> Path:
    path = REFS / name
    if not path.is_dir():
        raise SystemExit(f"{path} missing: fetch github:{name.replace('+', '/')} and extract it there")
    return path


def module_from_file(name: str, path: Path) -> ModuleType:
    """Import one file of a snapshot without its package's __init__ (which may pull in unrelated dependencies)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def on_path(folder: Path) -> Iterator[None]:
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))


def without_downloads(backbone_name: str) -> Any:
    """torchvision's model of that name with random weights (the authors' code asks for ImageNet weights, which
    cannot be downloaded here and are replaced by the checkpoint's anyway)."""
    import torchvision

    return getattr(torchvision.models, backbone_name.lower())(weights=None)


def reference_netvlad(state: dict) -> Any:
    """Nanne/pytorch-NetVlad: main.py's model assembly (encoder = VGG16 features[:-2], pool = netvlad.NetVLAD)."""
    import torch
    import torchvision

    netvlad = module_from_file("nanne_netvlad", snapshot("Nanne+pytorch-NetVlad") / "netvlad.py")
    k, dim = state["pool.centroids"].shape
    model = torch.nn.Module()
    model.add_module("encoder", torch.nn.Sequential(*list(torchvision.models.vgg16(weights=None).features
                                                         .children())[:-2]))
    model.add_module("pool", netvlad.NetVLAD(num_clusters=k, dim=dim, vladv2=False))
    model.load_state_dict(state)
    return lambda x: model.pool(model.encoder(x))


def reference_cosplace(state: dict) -> Any:
    with on_path(snapshot("gmberton+CosPlace")):
        from cosplace_model import cosplace_network

        cosplace_network.get_pretrained_torchvision_model = without_downloads
        model = cosplace_network.GeoLocalizationNet("ResNet50", int(state["aggregation.3.weight"].shape[0]))
    model.load_state_dict(state)
    return model.eval()


def reference_eigenplaces(state: dict) -> Any:
    import torch

    cosplace = reference_cosplace  # EigenPlaces starts from a CosPlace model fetched with torch.hub.load
    hub_load = torch.hub.load
    torch.hub.load = lambda *a, **kw: cosplace(dict(state.items()))  # type: ignore[assignment]
    try:
        with on_path(snapshot("gmberton+EigenPlaces")):
            from eigenplaces_model import eigenplaces_network

            model = eigenplaces_network.GeoLocalizationNet_("ResNet50", int(state["aggregation.3.weight"].shape[0]))
    finally:
        torch.hub.load = hub_load
    model.load_state_dict(state)
    return model.eval()


def reference_mixvpr(state: dict) -> Any:
    """amaralibey/MixVPR: main.py's VPRModel is (backbone = models/backbones/resnet.py ResNet, aggregator =
    models/aggregators/mixvpr.py MixVPR), forward = aggregator(backbone(x)); built from those two files (main.py
    itself needs pytorch_lightning and pytorch_metric_learning, for training only)."""
    import torch

    root = snapshot("amaralibey+MixVPR") / "models"
    resnet = module_from_file("mixvpr_resnet", root / "backbones" / "resnet.py")
    mixvpr = module_from_file("mixvpr_aggregator", root / "aggregators" / "mixvpr.py")
    model = torch.nn.Module()
    model.add_module("backbone", resnet.ResNet("resnet50", pretrained=False, layers_to_freeze=2, layers_to_crop=[4]))
    rows, channels = state["aggregator.row_proj.weight"].shape[0], state["aggregator.channel_proj.weight"].shape[0]
    model.add_module("aggregator", mixvpr.MixVPR(in_channels=1024, in_h=20, in_w=20, out_channels=channels,
                                                 mix_depth=4, mlp_ratio=1, out_rows=rows))
    model.load_state_dict(state)
    model.eval()
    return lambda x: model.aggregator(model.backbone(x))


REFERENCES: dict[str, tuple[Callable[[dict], Any], str]] = {
    "netvlad_vgg16": (reference_netvlad, "Nanne/pytorch-NetVlad netvlad.py NetVLAD + main.py assembly"),
    "cosplace": (reference_cosplace, "gmberton/CosPlace cosplace_model/cosplace_network.py GeoLocalizationNet"),
    "eigenplaces": (reference_eigenplaces, "gmberton/EigenPlaces eigenplaces_model/eigenplaces_network.py "
                                           "GeoLocalizationNet_"),
    "mixvpr": (reference_mixvpr, "amaralibey/MixVPR models/backbones/resnet.py ResNet + "
                                 "models/aggregators/mixvpr.py MixVPR"),
}


def run_reference(model: Callable[[Any], Any], images: np.ndarray) -> np.ndarray:
    """The authors' preprocessing: ToTensor (/255) + Normalize(ImageNet mean, std), then their model."""
    import torch
    from torchvision.transforms.functional import normalize

    out = []
    with torch.inference_mode():
        for i in range(0, len(images), 4):
            x = normalize(torch.from_numpy(images[i:i + 4]) / 255.0, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
            out.append(model(x).numpy())
    return np.concatenate(out)


# ---- aggregation initialised from real features ---------------------------------------------------------------

def init_from_real_features(name: str, state: dict, images: np.ndarray) -> str:
    """Set ``state``'s aggregation from statistics of our module's features on ``images`` (module docstring);
    returns what was done."""
    import torch

    from vpr_ros.core.vlad import kmeans_vocabulary, local_descriptors
    from vpr_training.zoo import get_format

    net = get_format(name).build(state).module  # NormalisedInput(model)
    x = torch.from_numpy(images)
    with torch.inference_mode():
        normalised = (x - net.offset) * net.scale
        if name == "netvlad_vgg16":
            local = local_descriptors(net.model.encoder(normalised).numpy()).reshape(-1, state["pool.centroids"]
                                                                                      .shape[1])
            rng = np.random.default_rng(0)
            sample = local[rng.choice(len(local), min(len(local), 20000), replace=False)]
            k = state["pool.centroids"].shape[0]
            centroids = kmeans_vocabulary(sample, k, 25, seed=0)
            assign = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
            dots = np.sort(assign @ sample.T, axis=0)[::-1]
            alpha = float(-np.log(0.01) / np.mean(dots[0] - dots[1]))  # the port's init_params (vladv1)
            state["pool.centroids"] = torch.from_numpy(centroids)
            state["pool.conv.weight"] = torch.from_numpy(alpha * assign)[:, :, None, None].float()
            return (f"k-means ({k} centroids) of {len(sample)} conv5_3 features of {len(images)} database images; "
                    f"assignment alpha {alpha:.1f} x normalised centroids (the port's init_params)")
        if name in ("cosplace", "eigenplaces"):
            agg = net.model.aggregation
            gem = agg[2](agg[1](agg[0](net.model.backbone(normalised))))
            mean_fc = gem.mean(0) @ state["aggregation.3.weight"].T
            state["aggregation.3.bias"] = -mean_fc
            return f"FC bias = -(FC weight x mean GeM vector of {len(images)} database images)"
        if name == "mixvpr":
            agg = net.model.aggregator
            mixed = agg.mix(net.model.backbone(normalised).flatten(2)).transpose(1, 2)
            projected = mixed @ state["aggregator.channel_proj.weight"].T
            state["aggregator.channel_proj.bias"] = -projected.mean((0, 1))
            return f"channel_proj bias = -(mean channel-projected mixed feature of {len(images)} database images)"
    raise KeyError(name)


# ---- measurements ----------------------------------------------------------------------------------------------

def retrieval_agreement(ref_db: np.ndarray, ref_q: np.ndarray, our_db: np.ndarray, our_q: np.ndarray) -> dict:
    """Top-1 agreement, counted over queries whose reference top-2 margin exceeds MARGIN."""
    ref_sim, our_sim = ref_q @ ref_db.T, our_q @ our_db.T
    top2 = np.sort(ref_sim, axis=1)[:, -2:]
    qualifies = (top2[:, 1] - top2[:, 0]) > MARGIN
    same = ref_sim.argmax(1) == our_sim.argmax(1)
    return {"queries": len(ref_q), "database": len(ref_db), "qualifying_queries": int(qualifies.sum()),
            "top1_agreement_qualifying": float(same[qualifies].mean()) if qualifies.any() else None,
            "top1_agreement_all": float(same.mean()), "margin": MARGIN,
            "median_top2_margin": float(np.median(top2[:, 1] - top2[:, 0]))}


def flops_and_params(module: Any, hw: tuple[int, int]) -> dict[str, float]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        module(torch.zeros(1, 3, *hw))
    return {"gflop": round(counter.get_total_flops() / 1e9, 3)}


def measure(name: str, variant: str, parity_hw: tuple[int, int], db: list[np.ndarray], queries: list[np.ndarray],
            work: Path) -> dict[str, Any]:
    import torch

    from vpr_ros.core.encoders.model_card import ModelCard
    from vpr_training.export.common import ort_session, run_onnx
    from vpr_training.zoo import cli as vpr_import
    from vpr_training.zoo import get_format
    from vpr_training.zoo.registry import read_state_dict

    fmt = get_format(name)
    t0 = time.perf_counter()
    checkpoint = fmt.write_random(work / f"{name}.pth", seed=0, variant=variant)
    db_batch, q_batch = batch(db, parity_hw), batch(queries, parity_hw)
    content = torch.load(checkpoint, weights_only=False)  # our own file, just written
    state = read_state_dict(checkpoint)
    init_note = init_from_real_features(name, state, db_batch[::3])
    if isinstance(content, dict) and "state_dict" in content:
        content["state_dict"] = state
    else:
        content = state
    torch.save(content, checkpoint)

    code = vpr_import.main(["--format", name, "--checkpoint", str(checkpoint), "--out-dir", str(work / "models"),
                            "--id", name])
    assert code == 0, f"vpr-import {name} exited {code}"
    onnx_path = work / "models" / f"{name}.onnx"
    card = ModelCard.load(onnx_path.with_suffix(".yaml"))

    reference_builder, reference_name = REFERENCES[name]
    reference = reference_builder({k: v.clone() for k, v in read_state_dict(checkpoint).items()})
    ref_db, ref_q = run_reference(reference, db_batch), run_reference(reference, q_batch)
    session = ort_session(onnx_path, threads=2)
    our_db, our_q = run_onnx(session, db_batch, chunk=4), run_onnx(session, q_batch, chunk=4)
    both_ref, both_ours = np.concatenate([ref_db, ref_q]), np.concatenate([our_db, our_q])
    diff = np.abs(both_ref.astype(np.float64) - both_ours)
    cosine = (both_ref.astype(np.float64) * both_ours).sum(1) / (
        np.linalg.norm(both_ref, axis=1) * np.linalg.norm(both_ours, axis=1))
    off_diagonal = (ref_db @ ref_db.T)[~np.eye(len(ref_db), dtype=bool)]

    built = fmt.build(read_state_dict(checkpoint))
    latency, flops = {}, {}
    for label, hw in LATENCY_SIZES.items():
        run_hw = built.default_size if built.fixed_size else hw
        image = np.zeros((1, 3, *run_hw), np.float32) + 128.0
        latency[label] = {**time_ms(lambda image=image: session.run(None, {"image": image}), repeats=7, warmup=2),
                          "input": list(run_hw)}
        flops[label] = flops_and_params(built.module, run_hw)["gflop"]
    return {
        "variant": built.variant, "descriptor_dim": card.channels, "kind": card.kind,
        "input_size_rule": fmt.size_rule, "fixed_size": built.fixed_size,
        "reference": reference_name, "checkpoint": f"{variant}, seeded random weights (seed 0), official layout",
        "aggregation_init": init_note, "parity_input": list(parity_hw),
        "parity": {"max_abs_diff": float(f"{diff.max():.3g}"), "min_cosine": float(f"{cosine.min():.9f}"),
                   "descriptors": len(both_ref),
                   "reference_mean_cosine_between_images": float(f"{off_diagonal.mean():.4f}")},
        "retrieval": retrieval_agreement(ref_db, ref_q, our_db, our_q),
        "export_bytes": onnx_path.stat().st_size, "export_mb": round(onnx_path.stat().st_size / 1e6, 1),
        "params_m": round(sum(p.numel() for p in built.module.parameters()) / 1e6, 2),
        "gflop": flops, "latency_ms": latency, "latency_threads": 2,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(names: list[str] | None = None) -> None:
    import torch

    torch.set_num_threads(2)
    db, queries, sources = real_image_pairs()
    entries: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="model_zoo_") as tmp:
        for name in names or list(CASES):
            variant, hw = CASES[name]
            print(f"-- {name} ({variant})", flush=True)
            entries[name] = {**measure(name, variant, hw, db, queries, Path(tmp)), "images": sources}
            e = entries[name]
            print(f"   max|diff| {e['parity']['max_abs_diff']:.2g}, min cos {e['parity']['min_cosine']:.7f}, top-1 "
                  f"{e['retrieval']['top1_agreement_qualifying']} over {e['retrieval']['qualifying_queries']} "
                  f"queries, {e['latency_ms']['640x480']['median']:.0f} ms at 640x480", flush=True)
    update_results(entries)


if __name__ == "__main__":
    main(sys.argv[1:] or None)
