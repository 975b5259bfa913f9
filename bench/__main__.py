"""Run every benchmark module (bench/bench_*.py) or the ones named: python -m bench [name ...]."""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

from bench.common import mark_start


def main(argv: list[str] | None = None) -> int:
    names = argv if argv else sorted(p.stem for p in Path(__file__).parent.glob("bench_*.py"))
    if not names:
        print("no benchmarks yet")
        return 0
    for name in names:
        module = importlib.import_module(f"bench.{name if name.startswith('bench_') else 'bench_' + name}")
        t0 = time.perf_counter()
        print(f"== {module.__name__} ==", flush=True)
        mark_start()
        module.main()
        print(f"== {module.__name__} done in {time.perf_counter() - t0:.0f} s ==", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
