"""Benchmarks of the pipeline against C baselines; ``python -m perf --help``."""
