"""What the classifier micro benchmarks (``bench.classify_bench``, ``bench.mysql_classify_bench``)
share: statement templates, the timing loops, and the three cache timings every classifier
gets (cold, cached exact, cached new literal)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from dbbalancer.core.statement import Classification


@dataclass(frozen=True)
class Case:
    """A statement template: ``{}`` slots receive fresh integers for the new-literal runs."""

    name: str
    template: str

    def texts(self) -> Iterator[str]:
        for i in itertools.count(1):
            yield self.template.format(*([i * 7919 % 100_003] * self.template.count("{}")))


class _Classifier(Protocol):
    def classify(self, sql: str) -> Classification: ...


def best_us(fn: Callable[[], object], number: int, rounds: int) -> float:
    """Best per-call time in microseconds over ``rounds`` runs of ``number`` calls."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter_ns()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter_ns() - start) / number / 1000)
    return best


def best_us_stream(fn: Callable[[str], object], texts: list[str], rounds: int) -> float:
    """Like best_us, feeding a different text to every call."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter_ns()
        for text in texts:
            fn(text)
        best = min(best, (time.perf_counter_ns() - start) / len(texts) / 1000)
    return best


@dataclass(frozen=True)
class CacheTimings:
    """Microseconds per statement for one case, and the classification it got."""

    sql: str
    cold: float
    exact: float
    new_literal: float
    verdict: Classification


def time_cache(
    make: Callable[..., _Classifier], case: Case, number: int, rounds: int
) -> CacheTimings:
    """Time ``case`` through classifiers built by ``make(cache_size=...)``: with no cache, with
    the same text cached, and with the template cached but literals never seen before."""
    gen = case.texts()
    sql = next(gen)
    fresh = [next(gen) for _ in range(number * rounds)]
    uncached = make(cache_size=0)
    cached = make()
    cached.classify(sql)
    cold = best_us(lambda s=sql, c=uncached: c.classify(s), number, rounds)  # type: ignore[misc]
    exact = best_us(lambda s=sql, c=cached: c.classify(s), number, rounds)  # type: ignore[misc]
    warm = make(cache_size=len(fresh) + 10)
    warm.classify(sql)
    chunks = [fresh[i * number : (i + 1) * number] for i in range(rounds)]
    # Each round gets literals it has not seen: the exact-text lookup misses, the fingerprint
    # hits (except for literal-sensitive statements, which are classified again).
    new_literal = min(best_us_stream(warm.classify, chunk, 1) for chunk in chunks)
    return CacheTimings(sql, cold, exact, new_literal, uncached.classify(sql))
