"""Balancing policies: candidates in, candidates in preference order out.

Pure and protocol-agnostic: no sockets, no clocks, no database knowledge. A `Balancer` is given
the servers that routing already judged eligible (right role, usable health) as `Candidate`
values and returns them in the order a session should try them; the first is the pick, the rest
are fallbacks for a retry. `order()` always returns a permutation of its input.

The policies follow well-known peers:

- round robin / least connections: HAProxy `balance roundrobin` / `balance leastconn`, with ties
  among equally loaded servers rotated so none is starved;
- weighted: nginx's smooth weighted round robin (`ngx_http_upstream_get_peer`): every pick adds
  each server's weight to its running score, picks the highest score and subtracts the total
  weight from the winner, which spreads a 5:1:1 split as a a b a c a a instead of a a a a a b c;
- least latency / least load: prefer the server with the lowest moving-average latency (the idea
  behind Finagle's and linkerd's EWMA balancers) or the lowest self-reported load; a server with
  no measurement yet is tried first for latency (so it gets measured) and last for load.
"""

from __future__ import annotations

import bisect
import enum
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["Balancer", "Candidate", "LatencyTracker", "Policy"]


class Policy(enum.Enum):
    """How a `Balancer` orders its candidates (config value in lower case)."""

    ROUND_ROBIN = "round_robin"
    RANDOM = "random"
    LEAST_CONNECTIONS = "least_connections"
    WEIGHTED = "weighted"
    LEAST_LATENCY = "least_latency"
    LEAST_LOAD = "least_load"


def _check_finite(name: str, value: float, *, minimum: float | None = None) -> None:
    # NaN would make every comparison false and silently break the sort orders below.
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")


@dataclass(frozen=True, slots=True)
class Candidate:
    """One server as a balancing policy sees it: identity plus the few numbers policies use.

    `key` is the server's name and must be unique within one call. `connections` counts active
    (checked-out) server connections, `latency` is an EWMA of query latency in seconds (None: no
    sample yet) and `load` is what the server reports about itself (None: unknown).
    """

    key: str
    weight: float = 1.0
    connections: int = 0
    latency: float | None = None
    load: float | None = None

    def __post_init__(self) -> None:
        _check_finite("weight", self.weight, minimum=0.0)
        if self.connections < 0:
            raise ValueError(f"connections must be >= 0, got {self.connections!r}")
        if self.latency is not None:
            _check_finite("latency", self.latency, minimum=0.0)
        if self.load is not None:
            _check_finite("load", self.load)


class Balancer:
    """One per cluster (per pool key set): orders candidates according to one `Policy`.

    Holds only the state a policy needs between picks: the last key picked (the round-robin
    cursor, also used to rotate ties), the random generator, and the smooth-weighted scores.
    The round-robin cursor is a key, not an index, so the rotation stays fair when servers join
    or leave: the next pick is the first key after the last one in sorted key order.
    """

    __slots__ = ("_current", "_last_key", "_policy", "_rng")

    def __init__(self, policy: Policy, *, rng: random.Random | None = None) -> None:
        self._policy = policy
        self._rng = rng if rng is not None else random.Random()
        self._last_key: str | None = None
        # Smooth weighted round robin: running score per key (nginx `current_weight`).
        self._current: dict[str, float] = {}

    @property
    def policy(self) -> Policy:
        """The policy this balancer applies."""
        return self._policy

    def order(self, candidates: Sequence[Candidate]) -> list[Candidate]:
        """Return `candidates` in preference order and advance the policy state by one pick.

        The first element is the pick; the rest are fallbacks for a retry. Empty in, empty out.
        Keys should be unique; a repeated key is not balanced and only kept at the end so that
        the result is still a permutation of the input.
        """
        unique, repeated = _split_repeated(candidates)
        if not unique:
            return list(repeated)
        policy = self._policy
        if policy is Policy.RANDOM:
            ordered = self._rng.sample(unique, len(unique))
        elif policy is Policy.WEIGHTED:
            ordered = self._weighted(unique)
        else:
            ordered = sorted(unique, key=_SORT_KEYS[policy](self._rotation(unique)))
        self._last_key = ordered[0].key
        ordered.extend(repeated)
        return ordered

    def rotation_start(self, keys: Sequence[str]) -> int:
        """Round robin over distinct `keys` sorted ascending, without building candidates.

        Returns the index of the pick: `order` of candidates with these keys under
        `Policy.ROUND_ROBIN` is the keys from that index on, then those before it. Advances the
        cursor exactly as `order` does. Only for the round-robin policy and non-empty `keys`.
        """
        if self._policy is not Policy.ROUND_ROBIN or not keys:
            raise ValueError("rotation_start needs the round_robin policy and at least one key")
        start = self._start(keys)
        if start == len(keys):
            start = 0
        self._last_key = keys[start]
        return start

    def pick(self, candidates: Sequence[Candidate]) -> Candidate | None:
        """Return the preferred candidate (`order(candidates)[0]`), or None when there is none."""
        ordered = self.order(candidates)
        return ordered[0] if ordered else None

    def _rotation(self, candidates: Sequence[Candidate]) -> dict[str, int]:
        """Rank of each key in round-robin order, starting right after the last key picked."""
        keys = sorted(c.key for c in candidates)
        start = self._start(keys)
        count = len(keys)
        return {key: (index - start) % count for index, key in enumerate(keys)}

    def _start(self, keys: Sequence[str]) -> int:
        """Index in sorted `keys` of the first key after the last one picked (len: wrap)."""
        return 0 if self._last_key is None else bisect.bisect_right(keys, self._last_key)

    def _weighted(self, candidates: list[Candidate]) -> list[Candidate]:
        rank = self._rotation(candidates)
        positive = sorted((c for c in candidates if c.weight > 0), key=lambda c: c.key)
        zero = sorted((c for c in candidates if c.weight <= 0), key=lambda c: rank[c.key])
        if not positive:
            # All weights zero: nobody is preferred, so share the work evenly.
            return zero
        current = self._current
        present = {c.key for c in positive}
        stale = [key for key in current if key not in present]
        if stale:
            for key in stale:
                del current[key]
            # nginx keeps sum(current) == 0 after each pick; dropping a server breaks that. A
            # uniform shift changes no comparison, it only keeps the scores near zero so that
            # many membership changes cannot let them drift to where floats lose precision.
            if current:
                shift = sum(current.values()) / len(current)
                for key in current:
                    current[key] -= shift
        total = 0.0
        for c in positive:
            current[c.key] = current.get(c.key, 0.0) + c.weight
            total += c.weight
        # max() keeps the first of equal scores, and `positive` is key-sorted: deterministic.
        best = max(positive, key=lambda c: current[c.key])
        current[best.key] -= total
        rest = sorted(
            (c for c in positive if c is not best), key=lambda c: (-current[c.key], c.key)
        )
        return [best, *rest, *zero]


_SortKey = Callable[[Candidate], tuple[float, ...]]


def _round_robin_key(rank: dict[str, int]) -> _SortKey:
    return lambda c: (rank[c.key],)


def _least_connections_key(rank: dict[str, int]) -> _SortKey:
    return lambda c: (c.connections, rank[c.key])


def _least_latency_key(rank: dict[str, int]) -> _SortKey:
    # Unmeasured servers first: otherwise a new server would never get the query that measures it.
    return lambda c: (0, 0.0, rank[c.key]) if c.latency is None else (1, c.latency, rank[c.key])


def _least_load_key(rank: dict[str, int]) -> _SortKey:
    # Unknown load is eligible but worst: we would rather send work where we know it fits.
    return lambda c: (1, 0.0, rank[c.key]) if c.load is None else (0, c.load, rank[c.key])


_SORT_KEYS: dict[Policy, Callable[[dict[str, int]], _SortKey]] = {
    Policy.ROUND_ROBIN: _round_robin_key,
    Policy.LEAST_CONNECTIONS: _least_connections_key,
    Policy.LEAST_LATENCY: _least_latency_key,
    Policy.LEAST_LOAD: _least_load_key,
}


def _split_repeated(candidates: Sequence[Candidate]) -> tuple[list[Candidate], list[Candidate]]:
    """First occurrence of each key, and every later occurrence in input order."""
    seen: set[str] = set()
    unique: list[Candidate] = []
    repeated: list[Candidate] = []
    for candidate in candidates:
        if candidate.key in seen:
            repeated.append(candidate)
        else:
            seen.add(candidate.key)
            unique.append(candidate)
    return unique, repeated


class LatencyTracker:
    """Exponentially weighted moving average of observed latency, per server key.

    `value = alpha * sample + (1 - alpha) * value`; the first sample is taken as is, so a new
    server is not compared through a made-up starting value.
    """

    __slots__ = ("_alpha", "_values")

    def __init__(self, alpha: float = 0.2) -> None:
        if not (math.isfinite(alpha) and 0.0 < alpha <= 1.0):
            raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
        self._alpha = alpha
        self._values: dict[str, float] = {}

    @property
    def alpha(self) -> float:
        """Weight of the newest sample."""
        return self._alpha

    def observe(self, key: str, seconds: float) -> None:
        """Fold one latency sample (monotonic seconds, >= 0) into the average for `key`."""
        _check_finite("seconds", seconds, minimum=0.0)
        previous = self._values.get(key)
        if previous is None:
            self._values[key] = seconds
        else:
            self._values[key] = self._alpha * seconds + (1.0 - self._alpha) * previous

    def get(self, key: str) -> float | None:
        """The current average for `key`, or None before its first sample."""
        return self._values.get(key)

    def forget(self, key: str) -> None:
        """Drop `key`'s average (server removed, or back from down and to be measured afresh)."""
        self._values.pop(key, None)

    def snapshot(self) -> dict[str, float]:
        """A copy of every current average, for stats and the admin console."""
        return dict(self._values)
