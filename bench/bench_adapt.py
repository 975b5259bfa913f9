"""``vpr-adapt`` on Nordland part 1 (summer map, winter queries): the adapted encoder and sequence methods.

The split of the issue: the test queries are the winter frames of places 0-599, which no training or tuning
step sees; training uses places 620-1479 and validation (early stopping of both models, the recommended
method) places 1500-1799, 20-place gaps between the stretches (the longest query sequence); the map is the
whole route, all 1800 summer frames (the default encoder's VLAD vocabulary is fitted on it, as for any map).
Both encoders run at the same input size (64x128, the frames enlarged 2x). Three seeds (the whole pipeline:
training, mining, k-means, sequence model), mean and spread (max - min) per figure.

Part of the route cannot be decided from images: the train stands still at stations in *both* recordings
(the seasons are frame-aligned), so inside a long stop many map frames show exactly the true place and the
+-1 frame tolerance holds only by luck. ``vpr_ros.eval.ambiguity`` measures that: the recall@1 ceiling of
any method that sees only the images of the query sequence (stops: consecutive frames differing by less
than 3 grey levels on average in both seasons), and the recall over the queries it leaves decidable.

    python -m bench adapt           # -> bench/results/adapt_nordland.json and adapt_nordland.png (~30 min)
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

from bench.common import RESULTS, write_result

REPO = Path(__file__).resolve().parents[1]
SEEDS = (0, 1, 2)
SPLIT = "test=0:600,train=620:1480,val=1500:1800"
LENGTHS = (10, 20)
STILL_THRESHOLD = 3.0


def run_seed(seed: int, workdir: Path) -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "training"))
    from vpr_training.adapt.pipeline import AdaptConfig, AdaptRun
    from vpr_training.adapt.route import folder_traversal

    data = REPO / "data" / "nordland_part1"
    traversals = [folder_traversal("summer", data / "summer", None), folder_traversal("winter", data / "winter", None)]
    config = AdaptConfig(seed=seed, sequence_lengths=LENGTHS)
    t0 = time.perf_counter()
    report = AdaptRun(traversals, "summer", workdir / f"seed{seed}", config, aligned=True, split=SPLIT,
                      progress=False).run()
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    return report


def aggregate(reports: list[dict[str, Any]], ceilings: dict[str, np.ndarray]) -> dict[str, Any]:
    """Mean / spread over seeds of every figure, plus recall over the decidable queries."""
    out: dict[str, Any] = {}
    for which in ("val", "test"):
        out[which] = {}
        for encoder in reports[0]["results"][which]:
            out[which][encoder] = {}
            for method in reports[0]["results"][which][encoder]:
                rows = [r["results"][which][encoder][method] for r in reports]
                entry: dict[str, Any] = {}
                for key in ("recall@1", "recall@5", "auc", "recall_at_100_precision"):
                    values = np.array([row[key] for row in rows], dtype=np.float64)
                    entry[key] = {"mean": round(float(values.mean()), 4),
                                  "spread": round(float(values.max() - values.min()), 4),
                                  "per_seed": [round(float(v), 4) for v in values]}
                if which == "test":
                    length = 1 if method == "single frame" else int(method.rsplit(" ", 1)[1])
                    decidable = ceilings[str(length)] >= 1.0
                    values = np.array([np.asarray(row["top1_correct"])[decidable].mean() for row in rows])
                    entry["recall@1_decidable"] = {"mean": round(float(values.mean()), 4),
                                                   "spread": round(float(values.max() - values.min()), 4),
                                                   "queries": int(decidable.sum())}
                out[which][encoder][method] = entry
    return out


def plot(summary: dict[str, Any], ceilings: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    test = summary["test"]
    methods = list(test["adapted"])
    x = np.arange(len(methods))
    fig, ax = plt.subplots(figsize=(9, 4))
    for k, enc in enumerate(("default", "adapted")):
        mean = [test[enc][m]["recall@1"]["mean"] if m in test[enc] else np.nan for m in methods]
        err = [test[enc][m]["recall@1"]["spread"] / 2 if m in test[enc] else 0 for m in methods]
        ax.bar(x + (k - 0.5) * 0.38, mean, 0.38, yerr=err, capsize=3, label=f"{enc} encoder", alpha=0.85)
    for i, m in enumerate(methods):
        length = "1" if m == "single frame" else m.rsplit(" ", 1)[1]
        ax.plot([i - 0.4, i + 0.4], [ceilings[length]] * 2, "k--", lw=1,
                label="ceiling from images (stops)" if i == 0 else None)
    ax.set_xticks(x, methods, rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test recall@1 (+-1 frame), mean of 3 seeds")
    ax.set_title("Nordland part 1, winter queries on places 0-599 vs the 1800-frame summer map", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    from vpr_ros.eval.ambiguity import recall_ceiling, still_runs
    from vpr_ros.io.images import folder_source

    data = REPO / "data" / "nordland_part1"
    summer, winter = folder_source(data / "summer"), folder_source(data / "winter")
    runs = still_runs([summer.load_image, winter.load_image], len(summer), STILL_THRESHOLD)
    ceilings = {str(n): recall_ceiling(runs, np.arange(600), n, 1) for n in (1, *LENGTHS)}
    reports = []
    with tempfile.TemporaryDirectory(prefix="vpr_bench_adapt_") as tmp:
        for seed in SEEDS:
            reports.append(run_seed(seed, Path(tmp)))
            test = reports[-1]["results"]["test"]["adapted"]
            print(f"seed {seed}: " + ", ".join(f"{m} {v['recall@1']:.3f}" for m, v in test.items()) +
                  f"  ({reports[-1]['wall_s']} s)", flush=True)
    summary = aggregate(reports, ceilings)
    result = {
        "description": __doc__.split("\n\n")[1].replace("\n", " "),
        "split": reports[0]["split"], "input_size": reports[0]["input_size"], "seeds": list(SEEDS),
        "tolerance": "+-1 frame", "map": "all 1800 summer frames",
        "settings": "AdaptConfig defaults (vpr-adapt with no --set)",
        "ceiling": {"still_threshold_grey_levels": STILL_THRESHOLD,
                    "still_frames": int(len(runs) - len(np.unique(runs))),
                    **{f"recall@1_{n}_frames": round(float(c.mean()), 4) for n, c in ceilings.items()},
                    **{f"undecidable_queries_{n}_frames": int((c < 1).sum()) for n, c in ceilings.items()}},
        "recommended_on_validation": [r["recommended"] for r in reports],
        "vpr_adapt_seconds": [r["seconds"] for r in reports],
        "results": summary,
    }
    write_result("adapt_nordland", result)
    plot(summary, {k: float(v.mean()) for k, v in ceilings.items()}, RESULTS / "adapt_nordland.png")
    for method, row in summary["test"]["adapted"].items():
        default = summary["test"]["default"].get(method)
        shown = f"{default['recall@1']['mean']:.3f}" if default else "  -  "
        print(f"{method:18s} default {shown}  adapted {row['recall@1']['mean']:.3f} +- "
              f"{row['recall@1']['spread'] / 2:.3f}  decidable {row['recall@1_decidable']['mean']:.3f}  "
              f"AUC {row['auc']['mean']:.3f}  R@100P {row['recall_at_100_precision']['mean']:.3f}")


if __name__ == "__main__":
    main()
