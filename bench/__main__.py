"""Run every benchmark module in order and print its markdown table."""

from __future__ import annotations

import argparse
import importlib
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
    "bench.magnitude",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run every benchmark in bench/ in order (what `make bench` does) and print "
        "its markdown table: each times our code beside a named peer, in the same run, as "
        "ratios. Each takes its settings from its environment variables.",
        epilog="Benchmarks, in order: "
        + ", ".join(BENCHMARKS)
        + ". Run one alone with `python -m bench.<name>` (`--help` for its options).",
    )
    parser.parse_args(argv)
    for name in BENCHMARKS:
        started = time.perf_counter()
        module = importlib.import_module(name)
        print(module.run())
        print(f"_{name}: {time.perf_counter() - started:.0f} s_\n", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
