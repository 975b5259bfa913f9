"""Wall time of one ``vpr-adapt`` run on the shipped Nordland part 1 frames (1800 + 1800), step by step.

The same run as seed 0 of ``python -m bench adapt`` (its split and the defaults), alone on the machine, so the
time is that of one user's command on 2 cores; its held-out figures are checked against the ones
``bench/results/adapt_nordland.json`` holds for seed 0 (same seed, same code path: they must agree).

    python -m bench adapt_timing     # -> bench/results/adapt_timing.json (~10 min)
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from bench.bench_adapt import run_seed
from bench.common import RESULTS, write_result


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="vpr_bench_adapt_timing_") as tmp:
        report = run_seed(0, Path(tmp))
    test = report["results"]["test"]["adapted"]
    result = {"description": __doc__.split("\n\n")[0].replace("\n", " "), "seed": 0, "split": report["split"],
              "seconds": report["seconds"], "minutes": round(report["seconds"]["total"] / 60, 1),
              "test_recall@1": {m: round(v["recall@1"], 4) for m, v in test.items()}}
    reference = RESULTS / "adapt_nordland.json"
    if reference.is_file():
        seed0 = json.loads(reference.read_text())["results"]["test"]["adapted"]
        result["same_as_adapt_nordland_seed0"] = {
            m: abs(seed0[m]["recall@1"]["per_seed"][0] - round(v["recall@1"], 4)) < 1e-3 for m, v in test.items()}
    write_result("adapt_timing", result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
