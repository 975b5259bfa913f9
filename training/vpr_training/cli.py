"""``vpr-train``: train a place-recognition model from a YAML config (``python -m vpr_training.cli``).

Examples::

    # everything from a file; any setting overridden on the command line
    vpr-train --config training/configs/nordland_lite0.yaml --out runs/nordland
    vpr-train --config my.yaml --out runs/msls --set epochs=10 --set mining.subset_size=5000
    # continue an interrupted run from runs/msls/last.pt
    vpr-train --config my.yaml --out runs/msls --resume
    # several GPUs (DDP), or two CPU processes (gloo)
    torchrun --nproc_per_node 4 -m vpr_training.cli --config my.yaml --out runs/msls
    vpr-train --list-settings

Then export what the node loads:  vpr-export-onnx --checkpoint runs/msls/best.pt --out-dir models
Watch it:                          tensorboard --logdir runs/msls/tensorboard
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from vpr_ros.cli.common import (
    HelpFormatter,
    add_config_arguments,
    parse_overrides,
    print_settings,
    run_cli,
    setup_logging,
)
from vpr_ros.core.paths import resolve_path
from vpr_training.config import TrainConfig, load_train_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vpr-train", formatter_class=HelpFormatter,
                                     description=__doc__.split("\n\n", 1)[0],
                                     epilog="examples:" + __doc__.split("Examples::", 1)[1])
    parser.add_argument("--out", type=Path, help="run folder: checkpoints, metrics.json, tensorboard/")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/last.pt if it exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    parser.add_argument("-v", "--verbose", action="store_true")
    add_config_arguments(parser, TrainConfig, None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Before torch loads OpenMP: busy-waiting threads starve data loading and other processes on CPUs.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    if args.list_settings:
        print_settings(TrainConfig)
        return 0
    if args.out is None:
        raise ValueError("--out is required (the run folder)")
    setup_logging(args.verbose)
    # The training loader, not config_from_args: training files may extend a base file (vpr_training.config).
    config_file = resolve_path(args.config, what="config file") if args.config else None
    config = load_train_config(config_file, parse_overrides(args.set))
    from vpr_training.trainer import Trainer  # torch is imported only when training for real

    result = Trainer(config, args.out, resume=args.resume, progress=not args.no_progress).run()
    if int(os.environ.get("RANK", 0)) != 0:
        return 0
    logging.getLogger("vpr_training").info(
        "best epoch %s: %s; model: %s", result.best.get("epoch"),
        ", ".join(f"{k} {v:.3f}" for k, v in result.best.items() if k.startswith("recall@")), result.best_checkpoint)
    return 0


def entry_point() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    entry_point()
