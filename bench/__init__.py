"""Benchmarks: each prints its figures beside the raw limit measured in the same run,
and ends with one JSON object on its last line."""
