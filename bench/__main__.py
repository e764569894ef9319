"""Run every benchmark module in order and print its markdown table."""

from __future__ import annotations

import importlib
import sys
import time

# Each module exposes `run() -> str` (a markdown table) and runs alone with `python -m`.
BENCHMARKS: tuple[str, ...] = (
    "bench.features",
    "bench.queue_ops",
    "bench.train_overhead",
    "bench.predict_latency",
    "bench.model_types",
    "bench.replicas",
    "bench.registry_cost",
    "bench.live_loop",
    "bench.scale_pairs",
    "bench.drift_alarms",
    "bench.verdict_coverage",
)


def main() -> int:
    for name in BENCHMARKS:
        started = time.perf_counter()
        module = importlib.import_module(name)
        print(module.run())
        print(f"_{name}: {time.perf_counter() - started:.0f} s_\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
