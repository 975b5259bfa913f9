"""vpr-import: convert a published VPR model's official checkpoint into an ONNX encoder + model card.

The result runs in the localize node, build_map and evaluate like any other encoder (``encoder.model:
models/<id>.onnx``): ONNX Runtime only, normalisation inside the graph, global descriptors out. Before anything
is written, ONNX Runtime is checked against PyTorch on real images (the corridor frames shipped in data/).
A checkpoint of another layout is refused with one line naming the first missing or unexpected key.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from vpr_ros.cli.common import HelpFormatter, run_cli
from vpr_ros.errors import InputError

EPILOG = """\
examples:
  vpr-import --list-formats
  vpr-import --format cosplace --checkpoint ResNet50_2048_cosplace.pth --out-dir models --id cosplace_r50_2048
  vpr-import --format mixvpr --checkpoint "resnet50_MixVPR_4096_channels(1024)_rows(4).ckpt" --out-dir models \\
      --id mixvpr_4096
  vpr-import --format netvlad_vgg16 --random --checkpoint /tmp/random_netvlad.pth.tar --out-dir /tmp/models \\
      --id random_netvlad      # no download: seeded random weights in the official layout
then map and localise with it:
  build_map --images ref/ --poses ref.csv --out maps/site --set encoder.model=models/cosplace_r50_2048.onnx
"""


def list_formats() -> str:
    """A table of every format: name, what it is, where its weights are, dimension and input size rules."""
    from vpr_training.zoo import format_names, get_format

    blocks = []
    for name in format_names():
        fmt = get_format(name)
        lines = [f"{name}: {fmt.description}", f"weights: {fmt.weights}", f"paper: {fmt.paper}",
                 f"descriptor: {fmt.dimension_rule}", f"input: {fmt.size_rule}; {fmt.normalisation.describe()}"]
        if fmt.variants:
            lines.append(f"--random variants: {', '.join(fmt.variants)} (default {fmt.variants[0]})")
        blocks.append(lines[0] + "\n" + textwrap.indent("\n".join(lines[1:]), "    "))
    return "\n".join(blocks)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vpr-import", description=__doc__, epilog=EPILOG,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--list-formats", action="store_true", help="list the formats, where to get their "
                        "weights and their dimension / input-size rules, then exit")
    parser.add_argument("--format", help="the checkpoint's format (see --list-formats)")
    parser.add_argument("--checkpoint", type=Path, help="the official checkpoint file (written first with --random)")
    parser.add_argument("--out-dir", type=Path, help="where to write <id>.onnx and <id>.yaml (omit with --random "
                        "to only write the checkpoint)")
    parser.add_argument("--id", help="model id and file stem (default: the checkpoint's file name up to its "
                        "first dot)")
    parser.add_argument("--random", action="store_true", help="first write a checkpoint with seeded random "
                        "weights in the format's official layout (no download; for trials and parity checks)")
    parser.add_argument("--variant", help="with --random: which member of the family (see --list-formats)")
    parser.add_argument("--shallow", action="store_true", help="with --random: fewer / narrower layers under the "
                        "same key names (fast tests)")
    parser.add_argument("--seed", type=int, default=0, help="with --random: the random seed")
    parser.add_argument("--check-images", type=Path, action="append", metavar="DIR",
                        help="folder of real images for the ONNX Runtime vs PyTorch check (repeatable; default: "
                        "the corridor data shipped in data/)")
    parser.add_argument("--check-count", type=int, default=4, help="images used for that check")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from vpr_training.zoo import get_format
    from vpr_training.zoo.convert import ParityError, convert, real_images

    if args.list_formats:
        print(list_formats())
        return 0
    if not args.format or args.checkpoint is None:
        raise InputError("--format and --checkpoint are required (or --list-formats); see vpr-import --help")
    fmt = get_format(args.format)
    if (args.variant or args.shallow) and not args.random:
        raise InputError("--variant and --shallow only apply with --random")
    if args.random:
        if args.variant and args.variant not in fmt.variants:
            raise InputError(f"--variant {args.variant!r} is not one of {list(fmt.variants)} for {fmt.name}")
        fmt.write_random(args.checkpoint, seed=args.seed, shallow=args.shallow, variant=args.variant)
        print(f"wrote {args.checkpoint} (random weights, seed {args.seed}, {fmt.name} layout)")
    elif args.out_dir is None:
        raise InputError("--out-dir is required to convert a checkpoint")
    if args.out_dir is None:
        return 0
    images = real_images(args.check_images, args.check_count) if args.check_images else None
    model_id = args.id or args.checkpoint.name.split(".")[0]
    try:
        path = convert(fmt, args.checkpoint, args.out_dir, model_id, check_images=images,
                       check_count=args.check_count)
    except ParityError as exc:
        print(f"error: {args.checkpoint}: export refused, nothing written: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {path} and {path.with_suffix('.yaml').name}")
    return 0


def entry_point() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    entry_point()
