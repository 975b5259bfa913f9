"""Rule-based label maps: colour / position rules, for tests and demos where no segmenter is available.

These are NOT a segmentation network's output and must never be presented as one. They are a crude,
deterministic stand-in with the same file layout as real label maps (:mod:`vpr_training.data.label_maps`),
so the APPSVR / StructVPR code paths that consume label maps can be exercised on real images. Each pixel
gets the first rule that fires, in this order (HSV from OpenCV: hue 0..180, saturation and value 0..255):

====  ==============  ======================================================================================
id    name            rule
====  ==============  ======================================================================================
0     top_bright      upper half of the image, value > 170, saturation < 60 (sky outdoors, lights indoors)
1     green           hue 35..85, saturation > 50, value > 40 (vegetation-like colour)
2     dark            value < 45 (shadows, tunnels, dark objects)
3     saturated       saturation > 110 (strongly coloured things: signs, vehicles, clothing, ...)
4     bottom_band     lowest quarter of the rows (ground / floor / track, by position only)
5     other           everything else (mostly structure: walls, buildings, rocks)
====  ==============  ======================================================================================

Six classes, as StructVPR's default number of clustered classes, so ``label_mapping: identity`` feeds them
to the seg-branch; for APPSVR the usual choice of "task-irrelevant" class is ``top_bright`` (sky).

Write them for a dataset (a tree parallel to the images, as real label maps)::

    python -m vpr_training.data.rule_labels --images data/nordland_part1 --out out/labels/nordland_part1
    python -m vpr_training.data.rule_labels --images data/corridor --out out/labels/corridor
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

RULE_CLASSES = ("top_bright", "green", "dark", "saturated", "bottom_band", "other")


def rule_based_label_map(rgb: np.ndarray) -> np.ndarray:
    """Class ids (H, W) uint8 of :data:`RULE_CLASSES` for an RGB uint8 image (module docstring for the rules).

    Shape:
        rgb: (H, W, 3) uint8; returns (H, W) uint8.
    """
    import cv2

    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {rgb.dtype} {rgb.shape}")
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    hue, sat, val = (hsv[..., i].astype(np.int16) for i in range(3))
    rows = np.arange(rgb.shape[0])[:, None]
    h = rgb.shape[0]
    rules = [
        (rows < h / 2) & (val > 170) & (sat < 60),
        (hue >= 35) & (hue <= 85) & (sat > 50) & (val > 40),
        val < 45,
        sat > 110,
        np.broadcast_to(rows >= 0.75 * h, val.shape),
    ]
    labels = np.full(rgb.shape[:2], len(RULE_CLASSES) - 1, np.uint8)
    for class_id in reversed(range(len(rules))):  # earlier rules win: apply them last
        labels[rules[class_id]] = class_id
    return labels


def write_rule_based_label_maps(images: Path, out: Path, progress: bool = True) -> int:
    """Write ``out/<relative path>.png`` for every image under ``images``; returns the number written."""
    import cv2
    from tqdm import tqdm

    from vpr_ros.core.image import IMAGE_SUFFIXES, load_rgb

    files = sorted(p for p in images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and out not in p.parents)
    if not files:
        raise FileNotFoundError(f"--images: no images under {images}")
    for path in tqdm(files, desc="rule-based label maps", unit="image", disable=not progress):
        target = out / path.relative_to(images).with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(target), rule_based_label_map(load_rgb(path)))
    readme = out / "README.txt"
    readme.write_text("Rule-based label maps (colour / position rules of vpr_training.data.rule_labels), NOT the "
                      "output of a segmentation network.\nClasses: "
                      + ", ".join(f"{i} {n}" for i, n in enumerate(RULE_CLASSES)) + "\n")
    return len(files)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vpr_training.data.rule_labels", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write rule-based label maps (colour / position rules, not a segmenter) for every image "
                    "under a folder, in a parallel folder tree.",
        epilog="examples:\n" + __doc__.split("label maps)::\n", 1)[1])
    parser.add_argument("--images", type=Path, required=True, help="folder of images (searched recursively)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (same tree, .png)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        n = write_rule_based_label_maps(args.images, args.out, not args.no_progress)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {n} rule-based label maps to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
