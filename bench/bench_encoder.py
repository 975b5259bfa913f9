"""Feature extraction of the default encoder: ONNX Runtime (what the node runs) vs eager PyTorch, same process.

Same real corridor images, same weights, same input sizes (640x480, the default camera size, and 320x240, what
corridor maps use); torch with 2 threads, with and without batch-norm folding; ONNX Runtime CPU as configured by
vpr_ros (no spinning). Also records the torch-vs-ONNX max abs difference. -> bench/results/encoder.json
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.common import time_ms, write_result
from vpr_ros.core.encoders import EncoderConfig, OnnxEncoder
from vpr_ros.core.image import load_rgb, to_network_input
from vpr_ros.core.paths import PACKAGE_ROOT

REPO = Path(__file__).resolve().parents[1]
SIZES = ((480, 640), (240, 320))


def main() -> dict:
    import torch

    from vpr_training.backbones.efficientnet_lite import FeatureExtractor, load_pretrained_lite0

    torch.set_num_threads(2)
    images = [load_rgb(p) for p in sorted((REPO / "data" / "corridor" / "query").glob("*.jpg"))[::20]]
    encoder = OnnxEncoder(EncoderConfig(model=str(PACKAGE_ROOT / "models" / "efficientnet_lite0_b10.onnx")))
    model = load_pretrained_lite0()
    eager = FeatureExtractor(model, block=10, fold_bn=False).eval()
    folded = FeatureExtractor(model, block=10, fold_bn=True).eval()
    rows = []
    for h, w in SIZES:
        batch = to_network_input(images[:1], h, w)
        tensor = torch.from_numpy(batch)
        with torch.inference_mode():
            ref = eager(tensor).numpy()
            t_eager = time_ms(lambda: eager(tensor), repeats=15)  # noqa: B023 - evaluated inside the loop
            t_folded = time_ms(lambda: folded(tensor), repeats=15)  # noqa: B023
        t_ort = time_ms(lambda: encoder.features(images[:1], h, w), repeats=30)  # noqa: B023
        diff = float(np.abs(encoder.features(images[:1], h, w) - ref).max())
        row = {"size": [h, w], "onnxruntime_ms": t_ort, "torch_eager_ms": t_eager, "torch_bn_folded_ms": t_folded,
               "speedup_vs_eager": t_eager["median"] / t_ort["median"], "max_abs_diff": diff}
        rows.append(row)
        print(f"{w}x{h}: ONNX Runtime {t_ort['median']:.1f} ms, torch eager {t_eager['median']:.1f} ms "
              f"({row['speedup_vs_eager']:.1f}x), torch folded {t_folded['median']:.1f} ms, max|diff| {diff:.1e}")
    payload = {"what": "one image through EfficientNet-Lite0 block 10, median wall time", "torch_threads": 2,
               "providers": encoder.providers, "results": rows}
    write_result("encoder", payload)
    return payload


if __name__ == "__main__":
    main()
