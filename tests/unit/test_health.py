"""Unit tests for the server health state machine and primary election (core.health)."""

from __future__ import annotations

import itertools

import pytest

from dbbalancer.core.health import (
    TRANSITIONS,
    HealthEvent,
    HealthState,
    HealthTableError,
    ObservedRole,
    ProbeFailure,
    ProbeResult,
    ServerHealth,
    ServerView,
    Transition,
    TransitionReason,
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
PRIMARY, REPLICA = ObservedRole.PRIMARY, ObservedRole.REPLICA
OK = ProbeResult(ok=True)
FAIL = ProbeResult.failed(ProbeFailure.TIMEOUT)


def drive(health: ServerHealth, probes: list[ProbeResult], start: float = 0.0) -> list[Transition]:
    out: list[Transition] = []
    for i, probe in enumerate(probes):
        t = health.on_probe(probe, start + i)
        if t is not None:
            out.append(t)
    return out


def brought_up(
    *, rise: int = 2, fall: int = 3, expected_role: ObservedRole | None = None
) -> ServerHealth:
    health = ServerHealth("s1", rise=rise, fall=fall, expected_role=expected_role)
    health.on_probe(ProbeResult(ok=True, role=expected_role), 0.0)
    assert health.state is UP
    return health


# -- the table -----------------------------------------------------------------------------------


def test_table_is_total() -> None:
    assert set(TRANSITIONS) == set(itertools.product(HealthState, HealthEvent))


@pytest.mark.parametrize(("state", "event"), list(itertools.product(HealthState, HealthEvent)))
def test_every_pair_reports_a_reason_exactly_when_the_state_changes(
    state: HealthState, event: HealthEvent
) -> None:
    new, reason = next_state(state, event)
    assert (reason is None) == (new is state)


@pytest.mark.parametrize("event", list(HealthEvent))
def test_banned_leaves_only_on_unban(event: HealthEvent) -> None:
    new, _ = next_state(BANNED, event)
    assert new is (SUSPECT if event is HealthEvent.UNBAN else BANNED)


@pytest.mark.parametrize("state", [UP, SUSPECT, DOWN])
def test_ban_from_anywhere(state: HealthState) -> None:
    assert next_state(state, HealthEvent.BAN) == (BANNED, TransitionReason.BANNED_BY_ADMIN)


def test_missing_pair_is_an_explicit_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import dbbalancer.core.health as health_module

    partial = dict(TRANSITIONS)
    del partial[UP, HealthEvent.BAN]
    monkeypatch.setattr(health_module, "TRANSITIONS", partial)
    with pytest.raises(HealthTableError, match="BAN in state UP"):
        health_module.next_state(UP, HealthEvent.BAN)


def test_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        TRANSITIONS[UP, HealthEvent.BAN] = (UP, None)  # type: ignore[index]


# -- start and the basic graph -------------------------------------------------------------------


def test_starts_suspect_and_unusable() -> None:
    health = ServerHealth("s1")
    assert health.state is SUSPECT
    assert not health.usable
    assert health.last_probe is None
    assert health.role is None
    assert health.changed_at is None
    assert (health.rise, health.fall, health.expected_role) == (2, 3, None)


def test_first_good_probe_brings_it_up() -> None:
    health = ServerHealth("s1", rise=5)
    t = health.on_probe(ProbeResult(ok=True, role=PRIMARY, epoch=3), 10.0)
    assert t == Transition("s1", SUSPECT, UP, TransitionReason.PROBE_OK, None, 10.0)
    assert health.usable
    assert health.role is PRIMARY
    assert health.epoch == 3
    assert health.changed_at == 10.0


def test_good_probes_while_up_report_nothing() -> None:
    health = brought_up()
    assert drive(health, [OK] * 5) == []
    assert health.consecutive_ok == 6


def test_initial_failures_go_down_after_fall() -> None:
    health = ServerHealth("s1", fall=3)
    transitions = drive(health, [FAIL, FAIL, FAIL])
    assert [(t.old, t.new, t.reason) for t in transitions] == [
        (SUSPECT, DOWN, TransitionReason.FALL_REACHED)
    ]
    assert not health.usable


def test_one_failure_makes_up_suspect_but_still_usable() -> None:
    health = brought_up()
    t = health.on_probe(ProbeResult.failed(ProbeFailure.CONNECTION_LOST), 5.0)
    assert t == Transition(
        "s1", UP, SUSPECT, TransitionReason.PROBE_FAILED, ProbeFailure.CONNECTION_LOST, 5.0
    )
    assert health.usable


def test_suspect_recovers_on_one_good_probe() -> None:
    health = brought_up(rise=4)
    health.on_probe(FAIL, 1.0)
    t = health.on_probe(OK, 2.0)
    assert t is not None
    assert (t.old, t.new, t.reason, t.failure) == (SUSPECT, UP, TransitionReason.PROBE_OK, None)


def test_fall_counts_the_failure_that_left_up() -> None:
    health = brought_up(fall=3)
    transitions = drive(health, [FAIL, FAIL, FAIL], start=1.0)
    assert [(t.old, t.new, t.reason) for t in transitions] == [
        (UP, SUSPECT, TransitionReason.PROBE_FAILED),
        (SUSPECT, DOWN, TransitionReason.FALL_REACHED),
    ]
    assert transitions[-1].at == 3.0
    assert transitions[-1].failure is ProbeFailure.TIMEOUT
    assert not health.usable


def test_fall_one_goes_straight_down() -> None:
    health = brought_up(fall=1)
    t = health.on_probe(ProbeResult.failed(ProbeFailure.REFUSED), 1.0)
    assert t is not None
    assert (t.old, t.new, t.reason) == (UP, DOWN, TransitionReason.FALL_REACHED)


def test_a_good_probe_resets_the_fall_count() -> None:
    health = brought_up(fall=3)
    drive(health, [FAIL, FAIL, OK, FAIL, FAIL])
    assert health.state is SUSPECT
    assert health.consecutive_failures == 2
    health.on_probe(FAIL, 9.0)
    assert health.state is DOWN


def test_down_needs_rise_consecutive_good_probes() -> None:
    health = brought_up(rise=3, fall=1)
    health.on_probe(FAIL, 1.0)
    assert health.state is DOWN
    assert drive(health, [OK, OK], start=2.0) == []
    assert health.state is DOWN
    t = health.on_probe(OK, 4.0)
    assert t is not None
    assert (t.old, t.new, t.reason) == (DOWN, UP, TransitionReason.RISE_REACHED)


def test_a_failure_resets_the_rise_count() -> None:
    health = brought_up(rise=2, fall=1)
    drive(health, [FAIL, OK, FAIL, OK])
    assert health.state is DOWN
    health.on_probe(OK, 9.0)
    assert health.state is UP


def test_more_failures_while_down_report_nothing() -> None:
    health = brought_up(fall=1)
    health.on_probe(FAIL, 1.0)
    assert drive(health, [FAIL] * 5) == []
    assert health.consecutive_failures == 6


def test_rise_one() -> None:
    health = brought_up(rise=1, fall=1)
    health.on_probe(FAIL, 1.0)
    t = health.on_probe(OK, 2.0)
    assert t is not None
    assert t.reason is TransitionReason.RISE_REACHED


@pytest.mark.parametrize(("rise", "fall"), [(0, 3), (2, 0), (-1, 1)])
def test_rise_and_fall_must_be_positive(rise: int, fall: int) -> None:
    with pytest.raises(ValueError, match="must be >= 1"):
        ServerHealth("s1", rise=rise, fall=fall)


# -- probes --------------------------------------------------------------------------------------


def test_probe_result_ok_and_failure_must_agree() -> None:
    with pytest.raises(ValueError, match="good probe"):
        ProbeResult(ok=True, failure=ProbeFailure.TIMEOUT)
    with pytest.raises(ValueError, match="must say why"):
        ProbeResult(ok=False)


def test_last_probe_and_role_tracking() -> None:
    health = ServerHealth("s1")
    good = ProbeResult(ok=True, role=REPLICA, epoch=2, position=Lsn(1024), replay_delay=0.5)
    health.on_probe(good, 1.0)
    assert health.last_probe is good
    health.on_probe(FAIL, 2.0)
    assert health.last_probe is FAIL
    # The role is the last *observed* one: a failed probe observes nothing.
    assert health.role is REPLICA
    assert health.epoch == 2
    health.on_probe(ProbeResult(ok=True, role=PRIMARY), 3.0)
    assert health.role is PRIMARY
    assert health.epoch == 2  # not reported this time: keep the last known


# -- wrong role ----------------------------------------------------------------------------------


def test_wrong_role_is_a_failure() -> None:
    health = brought_up(expected_role=PRIMARY, fall=2)
    t = health.on_probe(ProbeResult(ok=True, role=REPLICA), 1.0)
    assert t == Transition(
        "s1", UP, SUSPECT, TransitionReason.PROBE_FAILED, ProbeFailure.WRONG_ROLE, 1.0
    )
    t = health.on_probe(ProbeResult(ok=True, role=REPLICA), 2.0)
    assert t is not None
    assert (t.new, t.reason, t.failure) == (
        DOWN,
        TransitionReason.FALL_REACHED,
        ProbeFailure.WRONG_ROLE,
    )
    assert health.role is PRIMARY  # a rejected probe does not update the observed role


def test_missing_role_counts_as_wrong_when_a_role_is_expected() -> None:
    health = ServerHealth("s1", expected_role=REPLICA)
    t = health.on_probe(ProbeResult(ok=True, role=None), 1.0)
    assert t is None
    assert health.consecutive_failures == 1
    assert health.state is SUSPECT


def test_right_role_is_fine_and_auto_accepts_any() -> None:
    replica = ServerHealth("r", expected_role=REPLICA)
    replica.on_probe(ProbeResult(ok=True, role=REPLICA), 1.0)
    assert replica.state is UP
    auto = ServerHealth("a")
    auto.on_probe(ProbeResult(ok=True, role=REPLICA), 1.0)
    auto.on_probe(ProbeResult(ok=True, role=PRIMARY), 2.0)
    assert auto.state is UP
    assert auto.role is PRIMARY


def test_wrong_role_server_comes_back_once_the_role_is_right() -> None:
    health = brought_up(expected_role=REPLICA, rise=2, fall=1)
    health.on_probe(ProbeResult(ok=True, role=PRIMARY), 1.0)
    assert health.state is DOWN
    drive(health, [ProbeResult(ok=True, role=REPLICA)] * 2, start=2.0)
    assert health.state is UP


# -- ban -----------------------------------------------------------------------------------------


def test_ban_and_unban() -> None:
    health = brought_up()
    t = health.ban(1.0)
    assert t == Transition("s1", UP, BANNED, TransitionReason.BANNED_BY_ADMIN, None, 1.0)
    assert not health.usable
    assert health.ban(2.0) is None
    t = health.unban(3.0)
    assert t == Transition("s1", BANNED, SUSPECT, TransitionReason.UNBANNED_BY_ADMIN, None, 3.0)
    assert not health.usable  # nothing known since the ban
    assert health.role is None
    assert health.unban(4.0) is None
    t = health.on_probe(ProbeResult(ok=True, role=PRIMARY), 5.0)
    assert t is not None
    assert (t.old, t.new) == (SUSPECT, UP)


def test_banned_ignores_probes_but_records_them() -> None:
    health = brought_up()
    health.ban(1.0)
    assert drive(health, [OK] * 5 + [FAIL] * 5, start=2.0) == []
    assert health.state is BANNED
    assert health.last_probe is FAIL
    assert health.consecutive_ok == 0
    assert health.consecutive_failures == 0


def test_unban_resets_counters() -> None:
    health = brought_up(fall=3)
    drive(health, [FAIL, FAIL])
    health.ban(5.0)
    health.unban(6.0)
    # The two failures before the ban do not count towards fall.
    drive(health, [FAIL, FAIL], start=7.0)
    assert health.state is SUSPECT
    health.on_probe(FAIL, 9.0)
    assert health.state is DOWN


def test_ban_a_down_server() -> None:
    health = ServerHealth("s1", fall=1)
    health.on_probe(FAIL, 0.0)
    assert health.state is DOWN
    t = health.ban(1.0)
    assert t is not None
    assert t.old is DOWN


def test_unban_while_not_banned_is_a_no_op() -> None:
    health = brought_up()
    assert health.unban(1.0) is None
    assert health.state is UP


def test_view() -> None:
    health = ServerHealth("s9")
    health.on_probe(ProbeResult(ok=True, role=PRIMARY, epoch=4), 0.0)
    assert health.view() == ServerView("s9", UP, PRIMARY, 4)
    assert health.server == "s9"


# -- primary election ----------------------------------------------------------------------------


def v(key: str, state: HealthState, role: ObservedRole | None, timeline: int | None) -> ServerView:
    return ServerView(key=key, state=state, role=role, epoch=timeline)


def test_elect_no_views() -> None:
    election = elect_primary([])
    assert election.primary is None
    assert election.fenced == ()
    assert "no usable server" in election.reason


def test_elect_only_replicas() -> None:
    election = elect_primary([v("a", UP, REPLICA, 1), v("b", UP, REPLICA, 1)])
    assert (election.primary, election.fenced) == (None, ())


def test_elect_single_primary() -> None:
    election = elect_primary([v("r1", UP, REPLICA, 2), v("p", UP, PRIMARY, 2)])
    assert (election.primary, election.fenced) == ("p", ())
    assert "p" in election.reason


def test_elect_suspect_primary_still_counts() -> None:
    election = elect_primary([v("p", SUSPECT, PRIMARY, 2), v("r", UP, REPLICA, 2)])
    assert election.primary == "p"


@pytest.mark.parametrize("state", [DOWN, BANNED])
def test_elect_ignores_unusable_primaries(state: HealthState) -> None:
    election = elect_primary([v("old", state, PRIMARY, 9), v("new", UP, PRIMARY, 1)])
    assert (election.primary, election.fenced) == ("new", ())


def test_elect_split_brain_highest_timeline_wins() -> None:
    election = elect_primary(
        [v("old", UP, PRIMARY, 3), v("new", UP, PRIMARY, 4), v("r", UP, REPLICA, 4)],
        epoch_name="timeline",
    )
    assert election.primary == "new"
    assert election.fenced == ("old",)
    assert "split brain" in election.reason
    assert "timeline 4" in election.reason


def test_elect_split_brain_three_way() -> None:
    election = elect_primary(
        [v("c", UP, PRIMARY, 5), v("a", UP, PRIMARY, 7), v("b", SUSPECT, PRIMARY, 6)]
    )
    assert election.primary == "a"
    assert election.fenced == ("b", "c")


def test_elect_split_brain_tie_refuses_writes() -> None:
    election = elect_primary(
        [v("x", UP, PRIMARY, 5), v("y", UP, PRIMARY, 5), v("z", UP, PRIMARY, 4)]
    )
    assert election.primary is None
    assert election.fenced == ("x", "y", "z")
    assert "split brain" in election.reason
    assert "refusing writes" in election.reason


def test_elect_split_brain_unknown_timeline_refuses_writes() -> None:
    election = elect_primary([v("x", UP, PRIMARY, 5), v("y", UP, PRIMARY, None)])
    assert election.primary is None
    assert election.fenced == ("x", "y")
    assert "unknown" in election.reason


def test_elect_single_primary_with_unknown_timeline_is_fine() -> None:
    assert elect_primary([v("x", UP, PRIMARY, None)]).primary == "x"


def test_elect_rejects_duplicate_keys() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        elect_primary([v("x", UP, PRIMARY, 1), v("x", UP, REPLICA, 1)])


def test_elect_from_server_health_views() -> None:
    old = ServerHealth("old")
    new = ServerHealth("new")
    old.on_probe(ProbeResult(ok=True, role=PRIMARY, epoch=1), 0.0)
    new.on_probe(ProbeResult(ok=True, role=REPLICA, epoch=1), 0.0)
    assert elect_primary([old.view(), new.view()]).primary == "old"
    # Failover: new is promoted onto timeline 2 while old comes back still claiming primary.
    new.on_probe(ProbeResult(ok=True, role=PRIMARY, epoch=2), 1.0)
    election = elect_primary([old.view(), new.view()])
    assert (election.primary, election.fenced) == ("new", ("old",))
