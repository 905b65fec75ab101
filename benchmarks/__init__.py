"""Reproducible speed / efficiency measurements of merc-sweeps (``python -m benchmarks run``).

Each benchmark module exposes ``run(ctx) -> dict`` returning a section of the results file
(``measurements`` with median/min/max/n, ``targets`` with whether they were met, ``setup`` stating
the workload). :mod:`benchmarks.common` holds the timing helpers and the results writer; see
``benchmarks/README.md`` for what each benchmark measures and how to read the numbers.
"""
