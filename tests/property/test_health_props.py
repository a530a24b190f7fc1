"""Property tests for the health state machine: random event sequences against a plain model.

The model below restates the documented rules with ordinary if/else, independently of the
`TRANSITIONS` table, so a wrong table entry and a wrong counter both show up as a mismatch.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, replace

from hypothesis import given
from hypothesis import strategies as st

from dbbalancer.core.health import (
    TRANSITIONS,
    HealthEvent,
    HealthState,
    ObservedRole,
    PrimaryElection,
    ProbeFailure,
    ProbeResult,
    ServerHealth,
    ServerView,
    elect_primary,
    next_state,
)
from dbbalancer.postgres.lsn import Lsn

UP, SUSPECT, DOWN, BANNED = (
    HealthState.UP,
    HealthState.SUSPECT,
    HealthState.DOWN,
    HealthState.BANNED,
)

roles = st.none() | st.sampled_from(list(ObservedRole))
probes = st.one_of(
    st.builds(ProbeResult.failed, st.sampled_from(list(ProbeFailure))),
    st.builds(
        ProbeResult,
        ok=st.just(True),
        role=roles,
        epoch=st.none() | st.integers(1, 5),
        position=st.none() | st.builds(Lsn, st.integers(0, 2**40)),
    ),
)
Step = tuple[str, ProbeResult | None]
steps: st.SearchStrategy[Step] = st.one_of(
    st.tuples(st.just("probe"), probes),
    st.tuples(st.sampled_from(["ban", "unban"]), st.none()),
)


@dataclass(frozen=True)
class Model:
    """The documented behaviour of ServerHealth, written out longhand."""

    rise: int
    fall: int
    expected: ObservedRole | None
    state: HealthState = SUSPECT
    ok: int = 0
    bad: int = 0
    from_up: bool = False
    role: ObservedRole | None = None

    def good(self, probe: ProbeResult) -> bool:
        return probe.ok and (self.expected is None or probe.role is self.expected)

    def event(self, kind: str, probe: ProbeResult | None) -> HealthEvent:
        if kind == "ban":
            return HealthEvent.BAN
        if kind == "unban":
            return HealthEvent.UNBAN
        assert probe is not None
        if self.good(probe):
            reached = self.ok + 1 >= self.rise
            return HealthEvent.PROBE_OK_RISE_REACHED if reached else HealthEvent.PROBE_OK
        reached = self.bad + 1 >= self.fall
        return HealthEvent.PROBE_FAILED_FALL_REACHED if reached else HealthEvent.PROBE_FAILED

    def step(self, kind: str, probe: ProbeResult | None) -> Model:
        s = self.state
        if kind == "ban":
            if s is BANNED:
                return self
            return replace(self, state=BANNED, ok=0, bad=0, from_up=False)
        if kind == "unban":
            if s is not BANNED:
                return self
            return replace(self, state=SUSPECT, ok=0, bad=0, from_up=False, role=None)
        assert probe is not None
        if s is BANNED:
            return self
        if self.good(probe):
            ok = self.ok + 1
            role = probe.role if probe.role is not None else self.role
            new = UP if s in (UP, SUSPECT) or ok >= self.rise else DOWN
            return replace(self, state=new, ok=ok, bad=0, from_up=False, role=role)
        bad = self.bad + 1
        if bad >= self.fall:
            new = DOWN
        elif s is UP:
            new = SUSPECT
        else:
            new = s
        from_up = (new is SUSPECT) and (s is UP or (s is SUSPECT and self.from_up))
        return replace(self, state=new, ok=0, bad=bad, from_up=from_up)

    @property
    def usable(self) -> bool:
        return self.state is UP or (self.state is SUSPECT and self.from_up)


@given(
    st.integers(1, 4),
    st.integers(1, 4),
    st.none() | st.sampled_from(list(ObservedRole)),
    st.lists(steps, max_size=60),
)
def test_random_sequences_follow_the_model_and_the_table(
    rise: int, fall: int, expected: ObservedRole | None, sequence: list[Step]
) -> None:
    health = ServerHealth("s", rise=rise, fall=fall, expected_role=expected)
    model = Model(rise, fall, expected)
    last_change: float | None = None
    for i, (kind, probe) in enumerate(sequence):
        now = float(i) + 0.5
        before = health.state
        event = model.event(kind, probe)
        table_next, table_reason = next_state(before, event)
        if kind == "probe":
            assert probe is not None
            t = health.on_probe(probe, now)
            assert health.last_probe is probe
        elif kind == "ban":
            t = health.ban(now)
        else:
            t = health.unban(now)
        model = model.step(kind, probe)

        assert isinstance(health.state, HealthState)
        assert health.state is model.state is table_next
        # A transition is reported exactly when the state changes, and describes that change.
        assert (t is not None) == (health.state is not before)
        if t is not None:
            assert (t.server, t.old, t.new, t.at) == ("s", before, health.state, now)
            assert t.reason is table_reason
            last_change = now
            if kind == "probe":
                assert probe is not None
                # A probe-driven transition carries the failure exactly when the probe failed.
                assert (t.failure is None) == model.good(probe)
                if probe.failure is not None:
                    assert t.failure is probe.failure
            if kind != "probe":
                assert t.failure is None
        assert health.changed_at == last_change
        # Counters.
        assert (health.consecutive_ok, health.consecutive_failures) == (model.ok, model.bad)
        assert health.consecutive_ok == 0 or health.consecutive_failures == 0
        assert health.usable is model.usable
        assert health.role is model.role
        if before is BANNED and kind != "unban":
            assert health.state is BANNED


@given(st.integers(1, 4), st.integers(1, 4), st.lists(probes, max_size=30))
def test_banned_sticks_until_unban(rise: int, fall: int, sequence: list[ProbeResult]) -> None:
    health = ServerHealth("s", rise=rise, fall=fall)
    health.ban(0.0)
    for i, probe in enumerate(sequence):
        assert health.on_probe(probe, float(i + 1)) is None
        assert health.state is BANNED
        assert not health.usable
    t = health.unban(100.0)
    assert t is not None
    assert health.state is SUSPECT


@given(st.integers(1, 4), st.integers(1, 4))
def test_wrong_role_only_ever_fails(rise: int, fall: int) -> None:
    health = ServerHealth("s", rise=rise, fall=fall, expected_role=ObservedRole.PRIMARY)
    for i in range(fall + rise + 2):
        t = health.on_probe(ProbeResult(ok=True, role=ObservedRole.REPLICA), float(i))
        assert health.state is not UP
        assert not health.usable
        if t is not None:
            assert t.failure is ProbeFailure.WRONG_ROLE
    assert health.state is DOWN


def _reaching_sequences() -> dict[tuple[HealthState, HealthEvent], tuple[int, int, list[Step]]]:
    """For every (state, event) pair, a configuration and step sequence whose last step is it.

    Breadth-first over the model with rise and fall in 1..3 and four kinds of step.
    """
    ok = ProbeResult(ok=True)
    fail = ProbeResult.failed(ProbeFailure.TIMEOUT)
    alphabet: list[Step] = [("probe", ok), ("probe", fail), ("ban", None), ("unban", None)]
    found: dict[tuple[HealthState, HealthEvent], tuple[int, int, list[Step]]] = {}
    for rise, fall in itertools.product(range(1, 4), repeat=2):
        queue: deque[tuple[Model, list[Step]]] = deque([(Model(rise, fall, None), [])])
        seen = {Model(rise, fall, None)}
        while queue:
            model, path = queue.popleft()
            for kind, probe in alphabet:
                pair = (model.state, model.event(kind, probe))
                found.setdefault(pair, (rise, fall, [*path, (kind, probe)]))
                nxt = model.step(kind, probe)
                # Counters beyond rise/fall behave alike; cap them to keep the search finite.
                capped = replace(nxt, ok=min(nxt.ok, rise), bad=min(nxt.bad, fall))
                if capped not in seen:
                    seen.add(capped)
                    queue.append((capped, [*path, (kind, probe)]))
    return found


REACHING = _reaching_sequences()


def test_every_pair_is_reachable_through_the_public_api() -> None:
    assert set(REACHING) == set(TRANSITIONS)


@given(st.sampled_from(sorted(TRANSITIONS, key=lambda p: (p[0].value, p[1].value))))
def test_every_pair_behaves_as_the_table_says(pair: tuple[HealthState, HealthEvent]) -> None:
    rise, fall, path = REACHING[pair]
    health = ServerHealth("s", rise=rise, fall=fall)
    for i, (kind, probe) in enumerate(path[:-1]):
        if kind == "probe":
            assert probe is not None
            health.on_probe(probe, float(i))
        elif kind == "ban":
            health.ban(float(i))
        else:
            health.unban(float(i))
    state, _event = pair
    assert health.state is state
    kind, probe = path[-1]
    now = float(len(path))
    if kind == "probe":
        assert probe is not None
        t = health.on_probe(probe, now)
    elif kind == "ban":
        t = health.ban(now)
    else:
        t = health.unban(now)
    expected_state, expected_reason = TRANSITIONS[pair]
    assert health.state is expected_state
    # ...and the table entry itself agrees with the longhand rules.
    model = Model(rise, fall, None)
    for step_kind, step_probe in path:
        model = model.step(step_kind, step_probe)
    assert model.state is expected_state
    assert (None if t is None else t.reason) is expected_reason


# -- primary election ----------------------------------------------------------------------------

views = st.lists(
    st.builds(
        ServerView,
        key=st.sampled_from("abcdef"),
        state=st.sampled_from(list(HealthState)),
        role=roles,
        epoch=st.none() | st.integers(1, 4),
    ),
    max_size=6,
    unique_by=lambda v: v.key,
)


def claimants(vs: list[ServerView]) -> set[str]:
    return {v.key for v in vs if v.state in (UP, SUSPECT) and v.role is ObservedRole.PRIMARY}


@given(views)
def test_election_invariants(vs: list[ServerView]) -> None:
    election = elect_primary(vs)
    assert isinstance(election, PrimaryElection)
    claims = claimants(vs)
    fenced = set(election.fenced)
    assert election.reason
    # Only claimants win or get fenced; the winner is never fenced; the result is deterministic.
    assert fenced <= claims
    assert election.primary is None or election.primary in claims
    assert election.primary not in fenced
    assert list(election.fenced) == sorted(election.fenced)
    assert elect_primary(list(reversed(vs))) == election
    if not claims:
        assert (election.primary, election.fenced) == (None, ())
    elif len(claims) == 1:
        assert (election.primary, election.fenced) == (claims.pop(), ())
    else:
        # Split brain: every claimant but the winner is fenced, and there is no winner unless
        # its timeline is known and strictly the highest.
        assert fenced | {election.primary} - {None} == claims
        timelines = {v.key: v.epoch for v in vs if v.key in claims}
        if election.primary is None:
            known = [t for t in timelines.values() if t is not None]
            assert None in timelines.values() or known.count(max(known)) > 1
            assert "split brain" in election.reason
        else:
            won = timelines[election.primary]
            assert won is not None
            assert all(t is not None and t < won for k, t in timelines.items() if k in fenced)
