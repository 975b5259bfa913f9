"""Performance suite (`make bench`): each bench_*.py module has main() -> dict and writes bench/results/*.json."""
