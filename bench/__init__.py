"""Benchmarks: each module times our code beside a named peer, in the same run, as ratios.

`python -m bench` runs them all (`make bench`); `python -m bench.features` runs one; `--help`
on any of them lists its options and runs nothing.
"""
