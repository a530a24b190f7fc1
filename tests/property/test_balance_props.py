"""Property tests for dbbalancer.core.balance: invariants every policy must keep."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from dbbalancer.core.balance import Balancer, Candidate, LatencyTracker, Policy

KEYS = st.text(alphabet="abcdefgh", min_size=1, max_size=3)
policies = st.sampled_from(list(Policy))
seeds = st.integers(min_value=0, max_value=2**32 - 1)


@st.composite
def candidate(draw: st.DrawFn, key: st.SearchStrategy[str] = KEYS) -> Candidate:
    return Candidate(
        key=draw(key),
        weight=draw(st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0]) | st.floats(0, 100)),
        connections=draw(st.integers(0, 5)),
        latency=draw(st.none() | st.floats(0, 2)),
        load=draw(st.none() | st.floats(-5, 5)),
    )


# Unique keys: what the balancer is documented to expect.
unique_sets = st.lists(candidate(), max_size=8, unique_by=lambda c: c.key)
# Repeated keys too: order() must still be a permutation.
any_lists = st.lists(candidate(st.sampled_from("abc")), max_size=8)


def pick_key(balancer: Balancer, cands: list[Candidate]) -> str:
    chosen = balancer.pick(cands)
    assert chosen is not None
    return chosen.key


def same_multiset(a: list[Candidate], b: list[Candidate]) -> bool:
    return Counter(map(id, a)) == Counter(map(id, b))


@given(policies, seeds, st.lists(any_lists, min_size=1, max_size=15))
def test_order_is_a_permutation(policy: Policy, seed: int, rounds: list[list[Candidate]]) -> None:
    balancer = Balancer(policy, rng=random.Random(seed))
    for cands in rounds:
        ordered = balancer.order(cands)
        assert len(ordered) == len(cands)
        assert same_multiset(ordered, cands)


@given(policies, seeds, st.lists(unique_sets, min_size=1, max_size=15))
def test_pick_is_order_first(policy: Policy, seed: int, rounds: list[list[Candidate]]) -> None:
    # Two balancers in the same state: one asked for pick(), the other for order().
    picker = Balancer(policy, rng=random.Random(seed))
    orderer = Balancer(policy, rng=random.Random(seed))
    for cands in rounds:
        chosen = picker.pick(cands)
        ordered = orderer.order(cands)
        if cands:
            assert chosen is ordered[0]
        else:
            assert chosen is None
            assert ordered == []


@given(policies, seeds, st.lists(unique_sets, min_size=1, max_size=15))
def test_never_picks_outside_the_input(
    policy: Policy, seed: int, rounds: list[list[Candidate]]
) -> None:
    balancer = Balancer(policy, rng=random.Random(seed))
    for cands in rounds:
        chosen = balancer.pick(cands)
        assert chosen is None or any(chosen is c for c in cands)
        assert (chosen is None) == (not cands)


@given(seeds, st.lists(unique_sets, min_size=1, max_size=20))
def test_weighted_never_picks_weight_zero_when_some_weight_is_positive(
    seed: int, rounds: list[list[Candidate]]
) -> None:
    balancer = Balancer(Policy.WEIGHTED, rng=random.Random(seed))
    for cands in rounds:
        chosen = balancer.pick(cands)
        if any(c.weight > 0 for c in cands):
            assert chosen is not None
            assert chosen.weight > 0


@given(st.dictionaries(KEYS, st.integers(1, 6), min_size=1, max_size=5), st.integers(1, 3))
def test_weighted_integer_weights_are_exact_per_period(
    weights: dict[str, int], periods: int
) -> None:
    balancer = Balancer(Policy.WEIGHTED)
    cands = [Candidate(k, weight=w) for k, w in weights.items()]
    total = sum(weights.values())
    for _ in range(periods):
        assert Counter(pick_key(balancer, cands) for _ in range(total)) == weights


@given(st.lists(unique_sets, max_size=5), unique_sets.filter(bool), st.integers(1, 4))
def test_round_robin_is_exact_over_whole_rounds_whatever_came_before(
    history: list[list[Candidate]], cands: list[Candidate], rounds: int
) -> None:
    balancer = Balancer(Policy.ROUND_ROBIN)
    for earlier in history:
        balancer.pick(earlier)
    got = Counter(pick_key(balancer, cands) for _ in range(rounds * len(cands)))
    assert got == dict.fromkeys((c.key for c in cands), rounds)


@given(unique_sets.filter(bool), st.integers(0, 10))
def test_least_connections_pick_has_the_minimum(cands: list[Candidate], warm: int) -> None:
    balancer = Balancer(Policy.LEAST_CONNECTIONS)
    for _ in range(warm):
        balancer.pick(cands)
    ordered = balancer.order(cands)
    conns = [c.connections for c in ordered]
    assert conns == sorted(conns)


@given(unique_sets.filter(bool), st.integers(0, 10))
def test_least_latency_order(cands: list[Candidate], warm: int) -> None:
    balancer = Balancer(Policy.LEAST_LATENCY)
    for _ in range(warm):
        balancer.pick(cands)
    ordered = balancer.order(cands)
    sampled = [c.latency for c in ordered if c.latency is not None]
    unsampled_first = [c.latency is None for c in ordered]
    assert unsampled_first == sorted(unsampled_first, reverse=True)
    assert sampled == sorted(sampled)


@given(unique_sets.filter(bool), st.integers(0, 10))
def test_least_load_order(cands: list[Candidate], warm: int) -> None:
    balancer = Balancer(Policy.LEAST_LOAD)
    for _ in range(warm):
        balancer.pick(cands)
    ordered = balancer.order(cands)
    known = [c.load for c in ordered if c.load is not None]
    unknown_last = [c.load is None for c in ordered]
    assert unknown_last == sorted(unknown_last)
    assert known == sorted(known)


@given(
    st.sampled_from([Policy.LEAST_CONNECTIONS, Policy.LEAST_LATENCY, Policy.LEAST_LOAD]),
    st.lists(KEYS, min_size=1, max_size=6, unique=True),
    st.integers(1, 3),
)
def test_tied_metric_policies_rotate_like_round_robin(
    policy: Policy, keys: list[str], rounds: int
) -> None:
    balancer = Balancer(policy)
    cands = [Candidate(k, connections=1, latency=0.1, load=1.0) for k in keys]
    got = Counter(pick_key(balancer, cands) for _ in range(rounds * len(keys)))
    assert got == dict.fromkeys(keys, rounds)


@given(
    st.floats(0.01, 1.0),
    st.lists(st.floats(0, 10), min_size=1, max_size=30),
)
def test_latency_tracker_stays_within_sample_range(alpha: float, samples: list[float]) -> None:
    tracker = LatencyTracker(alpha)
    for s in samples:
        tracker.observe("k", s)
    value = tracker.get("k")
    assert value is not None
    assert min(samples) - 1e-9 <= value <= max(samples) + 1e-9


@given(st.lists(st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=8), max_size=30))
def test_rotation_start_orders_like_round_robin(rounds: list[list[str]]) -> None:
    """The ring fast path (sorted keys rotated at `rotation_start`) matches `order`, whatever
    the membership changes between picks, and leaves the cursor where `order` does."""
    fast = Balancer(Policy.ROUND_ROBIN)
    slow = Balancer(Policy.ROUND_ROBIN)
    for names in rounds:
        keys = sorted(set(names))
        start = fast.rotation_start(keys)
        expected = [c.key for c in slow.order([Candidate(key) for key in keys])]
        assert keys[start:] + keys[:start] == expected
