"""Benchmarks run by hand (`make bench`); each prints ratios against a raw floor measured in the same run."""
