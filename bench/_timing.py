"""Tiny timing helpers: interleaved rounds, medians, ratios (no timed unit tests)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def per_op(fn: Callable[[], object], ops: int) -> float:
    """Seconds per operation for one round of ``ops`` calls."""
    start = time.perf_counter()
    for _ in range(ops):
        fn()
    return (time.perf_counter() - start) / ops


def compare(
    contenders: dict[str, Callable[[], object]], ops: int, rounds: int = 7
) -> dict[str, float]:
    """Median seconds per op of each contender; rounds interleave them to share the noise."""
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for fn in contenders.values():  # warm up
        per_op(fn, max(1, ops // 10))
    for _ in range(rounds):
        for name, fn in contenders.items():
            samples[name].append(per_op(fn, ops))
    return {name: statistics.median(values) for name, values in samples.items()}


def report(title: str, medians: dict[str, float], baseline: str) -> None:
    print(f"\n{title}")
    base = medians[baseline]
    for name, seconds in medians.items():
        print(
            f"  {name:<44} {seconds * 1e6:10.2f} us/op  {1 / seconds:10.0f} ops/s"
            f"  cost {seconds / base:5.2f}x  throughput {base / seconds:5.2f}x"
        )
