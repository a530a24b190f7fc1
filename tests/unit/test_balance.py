"""Unit tests for the balancing policies in dbbalancer.core.balance."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter

import pytest

from dbbalancer.core.balance import Balancer, Candidate, LatencyTracker, Policy


def picks(balancer: Balancer, candidates: list[Candidate], n: int) -> list[str]:
    out: list[str] = []
    for _ in range(n):
        chosen = balancer.pick(candidates)
        assert chosen is not None
        out.append(chosen.key)
    return out


def keys(candidates: list[Candidate]) -> list[str]:
    return [c.key for c in candidates]


ABC = [Candidate("a"), Candidate("b"), Candidate("c")]


# -- general -------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", list(Policy))
def test_empty_in_empty_out(policy: Policy) -> None:
    balancer = Balancer(policy, rng=random.Random(1))
    assert balancer.order([]) == []
    assert balancer.pick([]) is None


@pytest.mark.parametrize("policy", list(Policy))
def test_single_candidate_is_always_picked(policy: Policy) -> None:
    balancer = Balancer(policy, rng=random.Random(1))
    only = [Candidate("solo", weight=0.0)]
    assert picks(balancer, only, 5) == ["solo"] * 5


@pytest.mark.parametrize("policy", list(Policy))
def test_order_is_a_permutation_with_fallbacks(policy: Policy) -> None:
    balancer = Balancer(policy, rng=random.Random(7))
    cands = [
        Candidate("a", weight=2, connections=3, latency=0.01, load=1.0),
        Candidate("b", weight=0, connections=1, latency=None, load=None),
        Candidate("c", weight=1, connections=1, latency=0.002, load=0.5),
    ]
    for _ in range(10):
        ordered = balancer.order(cands)
        assert sorted(keys(ordered)) == ["a", "b", "c"]


@pytest.mark.parametrize("policy", list(Policy))
def test_repeated_keys_are_kept_at_the_end(policy: Policy) -> None:
    balancer = Balancer(policy, rng=random.Random(3))
    dup = Candidate("a", connections=9)
    cands = [Candidate("a"), Candidate("b"), dup]
    ordered = balancer.order(cands)
    assert len(ordered) == 3
    assert ordered[-1] is dup


def test_policy_values_match_config_names() -> None:
    assert {p.value for p in Policy} == {
        "round_robin",
        "random",
        "least_connections",
        "weighted",
        "least_latency",
        "least_load",
    }
    assert Balancer(Policy.LEAST_LOAD).policy is Policy.LEAST_LOAD


@pytest.mark.parametrize(
    "kwargs",
    [
        {"weight": -1.0},
        {"weight": math.nan},
        {"weight": math.inf},
        {"connections": -1},
        {"latency": -0.1},
        {"latency": math.nan},
        {"load": math.nan},
    ],
)
def test_candidate_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        Candidate("x", **kwargs)  # type: ignore[arg-type]


# -- round robin ---------------------------------------------------------------------------------


def test_round_robin_exactly_even() -> None:
    balancer = Balancer(Policy.ROUND_ROBIN)
    counts = Counter(picks(balancer, ABC, 300))
    assert counts == {"a": 100, "b": 100, "c": 100}


def test_round_robin_cycles_in_key_order_whatever_the_input_order() -> None:
    balancer = Balancer(Policy.ROUND_ROBIN)
    shuffled = [Candidate("c"), Candidate("a"), Candidate("b")]
    assert picks(balancer, shuffled, 6) == ["a", "b", "c", "a", "b", "c"]


def test_round_robin_fallbacks_continue_the_rotation() -> None:
    balancer = Balancer(Policy.ROUND_ROBIN)
    assert keys(balancer.order(ABC)) == ["a", "b", "c"]
    assert keys(balancer.order(ABC)) == ["b", "c", "a"]
    assert keys(balancer.order(ABC)) == ["c", "a", "b"]


def test_round_robin_continues_after_a_removed_key() -> None:
    balancer = Balancer(Policy.ROUND_ROBIN)
    assert picks(balancer, ABC, 2) == ["a", "b"]
    # b leaves: the next key after "b" is still "c", not a restart at "a".
    without_b = [Candidate("a"), Candidate("c")]
    assert picks(balancer, without_b, 3) == ["c", "a", "c"]


def test_round_robin_new_key_joins_its_place_in_the_rotation() -> None:
    balancer = Balancer(Policy.ROUND_ROBIN)
    ac = [Candidate("a"), Candidate("c")]
    assert picks(balancer, ac, 1) == ["a"]
    assert picks(balancer, ABC, 4) == ["b", "c", "a", "b"]


def test_round_robin_stays_fair_when_the_set_changes_mid_stream() -> None:
    balancer = Balancer(Policy.ROUND_ROBIN)
    abcd = [*ABC, Candidate("d")]
    counts: Counter[str] = Counter()
    for _ in range(50):
        counts.update(picks(balancer, ABC, 3))
        counts.update(picks(balancer, abcd, 4))
    assert counts == {"a": 100, "b": 100, "c": 100, "d": 50}


# -- random --------------------------------------------------------------------------------------


def test_random_is_uniform_within_statistical_bounds() -> None:
    balancer = Balancer(Policy.RANDOM, rng=random.Random(20240501))
    cands = [Candidate(k) for k in "abcde"]
    n = 10_000
    counts = Counter(picks(balancer, cands, n))
    expected = n / len(cands)
    chi2 = sum((counts[c.key] - expected) ** 2 / expected for c in cands)
    # 4 degrees of freedom: P(chi2 > 18.47) = 0.001. The seed is fixed, so this is deterministic;
    # a non-uniform picker (e.g. always the first) lands in the thousands.
    assert chi2 < 18.47
    assert set(counts) == {"a", "b", "c", "d", "e"}


def test_random_uses_the_injected_rng() -> None:
    cands = [Candidate(k) for k in "abcdefgh"]
    one = picks(Balancer(Policy.RANDOM, rng=random.Random(5)), cands, 50)
    two = picks(Balancer(Policy.RANDOM, rng=random.Random(5)), cands, 50)
    other = picks(Balancer(Policy.RANDOM, rng=random.Random(6)), cands, 50)
    assert one == two
    assert one != other


# -- least connections ---------------------------------------------------------------------------


def test_least_connections_picks_the_minimum() -> None:
    balancer = Balancer(Policy.LEAST_CONNECTIONS)
    cands = [
        Candidate("a", connections=5),
        Candidate("b", connections=2),
        Candidate("c", connections=9),
    ]
    for _ in range(3):
        assert keys(balancer.order(cands)) == ["b", "a", "c"]


def test_least_connections_rotates_ties() -> None:
    balancer = Balancer(Policy.LEAST_CONNECTIONS)
    cands = [
        Candidate("a", connections=1),
        Candidate("b", connections=4),
        Candidate("c", connections=1),
        Candidate("d", connections=1),
    ]
    assert picks(balancer, cands, 6) == ["a", "c", "d", "a", "c", "d"]


def test_least_connections_follows_changing_counts() -> None:
    balancer = Balancer(Policy.LEAST_CONNECTIONS)
    conns = {"a": 0, "b": 0, "c": 0}
    for _ in range(30):
        chosen = balancer.pick([Candidate(k, connections=v) for k, v in conns.items()])
        assert chosen is not None
        conns[chosen.key] += 1
    assert conns == {"a": 10, "b": 10, "c": 10}


# -- weighted ------------------------------------------------------------------------------------


def test_weighted_exact_split() -> None:
    balancer = Balancer(Policy.WEIGHTED)
    cands = [Candidate("a", weight=5), Candidate("b", weight=3), Candidate("c", weight=1)]
    counts = Counter(picks(balancer, cands, 900))
    assert counts == {"a": 500, "b": 300, "c": 100}


def test_weighted_exact_in_every_period() -> None:
    balancer = Balancer(Policy.WEIGHTED)
    cands = [Candidate("a", weight=5), Candidate("b", weight=3), Candidate("c", weight=1)]
    for _ in range(20):
        assert Counter(picks(balancer, cands, 9)) == {"a": 5, "b": 3, "c": 1}


def test_weighted_is_smooth() -> None:
    balancer = Balancer(Policy.WEIGHTED)
    cands = [Candidate("a", weight=5), Candidate("b", weight=1), Candidate("c", weight=1)]
    # nginx's documented smooth sequence for 5:1:1.
    assert "".join(picks(balancer, cands, 14)) == "aabacaa" * 2


def test_weighted_never_runs_longer_than_needed() -> None:
    balancer = Balancer(Policy.WEIGHTED)
    cands = [Candidate("a", weight=5), Candidate("b", weight=3), Candidate("c", weight=1)]
    seq = picks(balancer, cands, 900)
    longest: Counter[str] = Counter()
    run = 1
    for prev, cur in itertools.pairwise(seq):
        run = run + 1 if cur == prev else 1
        longest[cur] = max(longest[cur], run)
    # a has 5 of 9 slots: it can be separated by the 4 others at best into runs of 2.
    assert longest["a"] <= 2
    assert longest["b"] <= 1
    assert longest["c"] <= 1


def test_weighted_zero_weight_never_picked_but_is_a_fallback() -> None:
    balancer = Balancer(Policy.WEIGHTED)
    cands = [Candidate("a", weight=1), Candidate("z", weight=0), Candidate("b", weight=2)]
    for _ in range(30):
        ordered = balancer.order(cands)
        assert ordered[0].key != "z"
        assert ordered[-1].key == "z"


def test_weighted_all_zero_behaves_as_round_robin() -> None:
    balancer = Balancer(Policy.WEIGHTED)
    cands = [Candidate(k, weight=0) for k in "cab"]
    assert picks(balancer, cands, 6) == ["a", "b", "c", "a", "b", "c"]


def test_weighted_fractional_weights() -> None:
    balancer = Balancer(Policy.WEIGHTED)
    cands = [Candidate("a", weight=0.5), Candidate("b", weight=1.5)]
    assert Counter(picks(balancer, cands, 400)) == {"a": 100, "b": 300}


def test_weighted_stays_proportional_after_a_server_leaves_and_returns() -> None:
    balancer = Balancer(Policy.WEIGHTED)
    full = [Candidate("a", weight=2), Candidate("b", weight=1), Candidate("c", weight=1)]
    picks(balancer, full, 3)  # leave scores mid-period
    without_c = full[:2]
    counts = Counter(picks(balancer, without_c, 300))
    assert abs(counts["a"] - 200) <= 2
    assert abs(counts["b"] - 100) <= 2
    counts = Counter(picks(balancer, full, 400))
    assert abs(counts["a"] - 200) <= 2
    assert abs(counts["c"] - 100) <= 2


def test_weighted_fallbacks_hold_every_other_positive_weight_first() -> None:
    balancer = Balancer(Policy.WEIGHTED)
    cands = [
        Candidate("z0", weight=0),
        Candidate("a", weight=3),
        Candidate("b", weight=1),
        Candidate("y0", weight=0),
    ]
    ordered = keys(balancer.order(cands))
    assert ordered[:2] == ["a", "b"]
    assert set(ordered[2:]) == {"y0", "z0"}


# -- least latency -------------------------------------------------------------------------------


def test_least_latency_prefers_unsampled_then_lowest() -> None:
    balancer = Balancer(Policy.LEAST_LATENCY)
    cands = [
        Candidate("fast", latency=0.001),
        Candidate("new", latency=None),
        Candidate("slow", latency=0.2),
        Candidate("mid", latency=0.01),
    ]
    assert keys(balancer.order(cands)) == ["new", "fast", "mid", "slow"]


def test_least_latency_rotates_unsampled_and_ties() -> None:
    balancer = Balancer(Policy.LEAST_LATENCY)
    unsampled = [Candidate("a"), Candidate("b"), Candidate("c", latency=0.0)]
    assert picks(balancer, unsampled, 4) == ["a", "b", "a", "b"]
    tied = [Candidate("a", latency=0.5), Candidate("b", latency=0.1), Candidate("c", latency=0.1)]
    assert picks(balancer, tied, 4) == ["c", "b", "c", "b"]


def test_least_latency_with_tracker_measures_new_servers_first() -> None:
    tracker = LatencyTracker(alpha=0.5)
    balancer = Balancer(Policy.LEAST_LATENCY)
    true_latency = {"a": 0.03, "b": 0.01, "c": 0.02}
    seen: list[str] = []
    for _ in range(6):
        chosen = balancer.pick([Candidate(k, latency=tracker.get(k)) for k in true_latency])
        assert chosen is not None
        seen.append(chosen.key)
        tracker.observe(chosen.key, true_latency[chosen.key])
    assert sorted(seen[:3]) == ["a", "b", "c"]
    assert seen[3:] == ["b", "b", "b"]


# -- least load ----------------------------------------------------------------------------------


def test_least_load_prefers_known_lowest_then_unknown() -> None:
    balancer = Balancer(Policy.LEAST_LOAD)
    cands = [
        Candidate("unknown", load=None),
        Candidate("busy", load=12.0),
        Candidate("idle", load=0.0),
        Candidate("some", load=3.0),
    ]
    assert keys(balancer.order(cands)) == ["idle", "some", "busy", "unknown"]


def test_least_load_unknown_only_is_round_robin() -> None:
    balancer = Balancer(Policy.LEAST_LOAD)
    assert picks(balancer, ABC, 6) == ["a", "b", "c", "a", "b", "c"]


def test_least_load_rotates_ties() -> None:
    balancer = Balancer(Policy.LEAST_LOAD)
    cands = [Candidate("a", load=2.0), Candidate("b", load=1.0), Candidate("c", load=1.0)]
    assert picks(balancer, cands, 4) == ["b", "c", "b", "c"]


# -- latency tracker -----------------------------------------------------------------------------


def test_latency_tracker_first_sample_is_taken_as_is() -> None:
    tracker = LatencyTracker()
    assert tracker.get("a") is None
    tracker.observe("a", 0.3)
    assert tracker.get("a") == pytest.approx(0.3)


def test_latency_tracker_ewma_maths() -> None:
    tracker = LatencyTracker(alpha=0.25)
    tracker.observe("a", 1.0)
    tracker.observe("a", 3.0)
    assert tracker.get("a") == pytest.approx(0.25 * 3.0 + 0.75 * 1.0)  # 1.5
    tracker.observe("a", 0.0)
    assert tracker.get("a") == pytest.approx(0.75 * 1.5)
    assert tracker.alpha == 0.25


def test_latency_tracker_converges_to_a_steady_value() -> None:
    tracker = LatencyTracker(alpha=0.2)
    tracker.observe("a", 10.0)
    for _ in range(200):
        tracker.observe("a", 1.0)
    value = tracker.get("a")
    assert value is not None
    assert value == pytest.approx(1.0, abs=1e-9)


def test_latency_tracker_alpha_one_keeps_only_the_last_sample() -> None:
    tracker = LatencyTracker(alpha=1.0)
    tracker.observe("a", 5.0)
    tracker.observe("a", 2.0)
    assert tracker.get("a") == 2.0


def test_latency_tracker_keys_are_independent_and_forgettable() -> None:
    tracker = LatencyTracker()
    tracker.observe("a", 1.0)
    tracker.observe("b", 2.0)
    tracker.forget("a")
    tracker.forget("never-seen")
    assert tracker.get("a") is None
    assert tracker.get("b") == 2.0
    assert tracker.snapshot() == {"b": 2.0}


@pytest.mark.parametrize("alpha", [0.0, -0.1, 1.5, math.nan])
def test_latency_tracker_rejects_bad_alpha(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        LatencyTracker(alpha=alpha)


@pytest.mark.parametrize("seconds", [-0.001, math.nan, math.inf])
def test_latency_tracker_rejects_bad_samples(seconds: float) -> None:
    tracker = LatencyTracker()
    with pytest.raises(ValueError, match="seconds"):
        tracker.observe("a", seconds)
    assert tracker.get("a") is None
