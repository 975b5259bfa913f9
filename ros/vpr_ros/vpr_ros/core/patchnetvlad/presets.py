"""Named Patch-NetVLAD configurations, mirroring the paper's (Hausler et al., CVPR 2021, sections 4.1, 4.5).

A preset says which patches a map stores (sizes, strides, descriptor dimension, store encoding) and how
the localizer scores them (rapid spatial score or RANSAC, fusion weights):

=============  ===========  =======  ======  =======  =======  ===============================================
preset         sizes        weights  dim     scorer   store    paper
=============  ===========  =======  ======  =======  =======  ===============================================
performance    2, 5, 8      .45 .15  4096    ransac   float16  Multi-RANSAC-Patch-NetVLAD, D_PCA 4096 (red star)
                            .40
balanced       2, 5, 8      as above 512     rapid    float16  Multi-Spatial-Patch-NetVLAD (table 2), 512-D
speed          5            1        512     rapid    int8     Single-Spatial, 512-D (official speed.ini)
storage        5            1        128     rapid    int8     D_PCA 128, "SIFT-like" memory (storage.ini)
realtime       5 (stride 2) 1        512     rapid    int8     ours: speed on every second patch centre
=============  ===========  =======  ======  =======  =======  ===============================================

Strides are 1, except ``realtime``: its patches start at every second feature cell in both directions, a quarter
of the patches of ``speed`` and a sixteenth of its matching work, which is what lets re-ranking of the top 20 fit
beside the encoder in 66 ms (15 Hz) at 640x480 on 2 CPU cores (``python -m bench pipeline_640``; README
"Real time"). The paper's sizes are for a 30x40 feature map (640x480 input, VGG16 stride 16); on other
grids they are scaled by ``rows / 30`` (rounded, at least 1) so a patch keeps covering the same fraction
of the image (the paper's size 5 is "a 228 by 228 pixel area" of 480 rows). ``dim`` keeps the leading
rows of the model's projection (PCA / WPCA) and is capped by the projection's size: maps fitted on few
images have fewer PCA components (corridor: 110), imported checkpoints bring their own WPCA size.
The paper does not define "balanced" precisely (a point of Fig. 4); we take multi-scale patches with the
rapid score at 512 dimensions.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Rows of the feature map the paper's patch sizes are given for (480-pixel input, stride 16).
PAPER_FEATURE_ROWS = 30
SCORERS = ("rapid", "ransac")
ENCODINGS = ("float32", "float16", "int8")


@dataclass(frozen=True)
class PatchPreset:
    """One named Patch-NetVLAD configuration (module docstring)."""

    sizes: tuple[int, ...]
    strides: tuple[int, ...]
    weights: tuple[float, ...]
    dim: int
    scorer: str
    encoding: str

    def __post_init__(self) -> None:
        if not (len(self.sizes) == len(self.strides) == len(self.weights)) or not self.sizes:
            raise ValueError("a preset needs one stride and one weight per patch size")
        if abs(sum(self.weights) - 1.0) > 1e-6 or min(self.weights) < 0:
            raise ValueError(f"fusion weights must be non-negative and sum to 1 (eq. 5), got {self.weights}")
        if self.scorer not in SCORERS or self.encoding not in ENCODINGS:
            raise ValueError(f"scorer must be one of {SCORERS} and encoding one of {ENCODINGS}")


PRESETS: dict[str, PatchPreset] = {
    "performance": PatchPreset((2, 5, 8), (1, 1, 1), (0.45, 0.15, 0.40), 4096, "ransac", "float16"),
    "balanced": PatchPreset((2, 5, 8), (1, 1, 1), (0.45, 0.15, 0.40), 512, "rapid", "float16"),
    "speed": PatchPreset((5,), (1,), (1.0,), 512, "rapid", "int8"),
    "storage": PatchPreset((5,), (1,), (1.0,), 128, "rapid", "int8"),
    "realtime": PatchPreset((5,), (2,), (1.0,), 512, "rapid", "int8"),
}


def scale_sizes(sizes: tuple[int, ...], feature_hw: tuple[int, int]) -> tuple[int, ...]:
    """Paper patch sizes (for 30 feature rows) scaled to a feature map with ``feature_hw[0]`` rows.

    Rounded half up, at least 1 and at most the map's shorter side.
    """
    h, w = feature_hw
    return tuple(int(min(min(h, w), max(1, int(s * h / PAPER_FEATURE_ROWS + 0.5)))) for s in sizes)
