"""Command-line tools: argparse only; the work is done by vpr_ros.core, vpr_ros.io and vpr_ros.eval."""
