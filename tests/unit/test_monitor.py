"""Unit tests for the health monitor (core.monitor).

Two ways in, neither reading the wall clock:

* `record()` drives the accounting directly with scripted probe results and a fake clock;
* the probe loops run on `VirtualTimeLoop`, an event loop whose clock only moves when every task
  is waiting: it then jumps to the next timer. A 10-second window costs microseconds, and what a
  test counts (probe calls in a window) is deterministic.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import selectors
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

import pytest

from dbbalancer.core.health import (
    HealthState,
    ObservedRole,
    ProbeFailure,
    ProbeResult,
    Transition,
    TransitionReason,
)
from dbbalancer.core.monitor import HealthMonitor, vet_role
from dbbalancer.core.topology import Server, ServerRole
from dbbalancer.postgres.lsn import Lsn

T = TypeVar("T")

PRIMARY, REPLICA = ObservedRole.PRIMARY, ObservedRole.REPLICA
UP, SUSPECT, DOWN, BANNED = (
    HealthState.UP,
    HealthState.SUSPECT,
    HealthState.DOWN,
    HealthState.BANNED,
)
REFUSED = ProbeResult.failed(ProbeFailure.REFUSED)


def as_primary(timeline: int = 1, position: int = 1000, **kw: Any) -> ProbeResult:
    return ProbeResult(ok=True, role=PRIMARY, epoch=timeline, position=Lsn(position), **kw)


def as_replica(timeline: int = 1, position: int = 1000, **kw: Any) -> ProbeResult:
    return ProbeResult(ok=True, role=REPLICA, epoch=timeline, position=Lsn(position), **kw)


def server(name: str, role: ServerRole = ServerRole.AUTO) -> Server:
    return Server(name=name, host="127.0.0.1", port=5432, role=role)


# -- virtual time -------------------------------------------------------------------------------


class _VirtualSelector(selectors.DefaultSelector):
    """Polls real file descriptors without blocking; a wait for a timer advances virtual time."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise RuntimeError("virtual-time loop: every task waits and no timer is due")
        self.now += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose `time()` advances only when all tasks wait for a timer."""

    def __init__(self) -> None:
        self._virtual = _VirtualSelector()
        super().__init__(self._virtual)

    def time(self) -> float:
        return self._virtual.now


def run_virtual(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main())


def now() -> float:
    return asyncio.get_running_loop().time()


@contextlib.asynccontextmanager
async def running(monitor: HealthMonitor) -> AsyncIterator[None]:
    task = asyncio.get_running_loop().create_task(monitor.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class ScriptedProber:
    """Answers each server from a script of (virtual time -> result); counts the calls."""

    def __init__(self, script: dict[str, Callable[[float], ProbeResult]]) -> None:
        self.script = script
        self.calls: Counter[str] = Counter()
        self.call_times: dict[str, list[float]] = {name: [] for name in script}

    async def __call__(self, srv: Server) -> ProbeResult:
        self.calls[srv.name] += 1
        self.call_times[srv.name].append(now())
        return self.script[srv.name](now())


def always(result: ProbeResult) -> Callable[[float], ProbeResult]:
    return lambda _t: result


def test_virtual_loop_jumps_over_sleeps() -> None:
    async def main() -> float:
        await asyncio.sleep(3600)
        return now()

    assert run_virtual(main) == pytest.approx(3600)


# -- vet_role -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("configured", "role", "other_primary", "accepted"),
    [
        (ServerRole.AUTO, PRIMARY, "x", True),
        (ServerRole.AUTO, REPLICA, None, True),
        (ServerRole.AUTO, None, None, True),
        (ServerRole.PRIMARY, PRIMARY, None, True),
        (ServerRole.PRIMARY, PRIMARY, "x", True),  # split brain: elect_primary decides
        (ServerRole.PRIMARY, REPLICA, None, False),
        (ServerRole.PRIMARY, None, None, False),
        (ServerRole.REPLICA, REPLICA, "x", True),
        (ServerRole.REPLICA, PRIMARY, None, True),  # failover followed
        (ServerRole.REPLICA, PRIMARY, "x", False),  # configured roles win over a stray promotion
        (ServerRole.REPLICA, None, None, False),
    ],
)
def test_vet_role(
    configured: ServerRole, role: ObservedRole | None, other_primary: str | None, accepted: bool
) -> None:
    result = ProbeResult(ok=True, role=role)
    vetted = vet_role(configured, result, other_primary=other_primary)
    if accepted:
        assert vetted is result
    else:
        assert vetted == ProbeResult.failed(ProbeFailure.WRONG_ROLE)


@pytest.mark.parametrize("configured", list(ServerRole))
def test_vet_role_passes_failures_through(configured: ServerRole) -> None:
    assert vet_role(configured, REFUSED, other_primary="x") is REFUSED


# -- accounting through record() ------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


async def _never(_srv: Server) -> ProbeResult:
    raise AssertionError("record()-driven tests run no probes")


def make(*servers: Server, fall: int = 3, rise: int = 2, **kw: Any) -> HealthMonitor:
    return HealthMonitor("c", list(servers), _never, fall=fall, rise=rise, clock=FakeClock(), **kw)


def names(servers: list[Server]) -> list[str]:
    return [s.name for s in servers]


def test_primary_and_replicas_elected_from_probes() -> None:
    m = make(server("a"), server("b"), server("c"))
    assert m.primary is None
    m.record("a", as_primary())
    m.record("b", as_replica())
    assert m.primary is not None
    assert m.primary.name == "a"
    assert names(m.usable_replicas()) == ["b"]  # c never probed: not usable
    assert not m.server_status("c").usable


def test_primary_failing_fall_times_leaves_no_primary() -> None:
    m = make(server("a"), server("b"), fall=3)
    m.record("a", as_primary())
    m.record("b", as_replica())
    m.record("a", REFUSED)
    m.record("a", REFUSED)
    # SUSPECT after a failure it came UP from: still the primary until `fall` confirms it.
    assert m.server_status("a").state is SUSPECT
    assert m.primary is not None
    m.record("a", REFUSED)
    assert m.server_status("a").state is DOWN
    assert m.primary is None
    assert names(m.usable_replicas()) == ["b"]


def test_auto_replica_promoted_becomes_primary() -> None:
    m = make(server("a"), server("b"))
    m.record("a", as_primary())
    m.record("b", as_replica())
    for _ in range(3):
        m.record("a", REFUSED)
    m.record("b", as_primary(timeline=2))
    assert m.primary is not None
    assert m.primary.name == "b"
    assert m.usable_replicas() == []


def test_configured_replica_promoted_is_followed_once_primary_is_gone() -> None:
    m = make(server("a", ServerRole.PRIMARY), server("b", ServerRole.REPLICA), fall=3)
    m.record("a", as_primary())
    m.record("b", as_replica())
    m.record("a", REFUSED)  # a is SUSPECT but still elected
    t = m.record("b", as_primary(timeline=2))
    assert t is not None
    assert t.failure is ProbeFailure.WRONG_ROLE
    assert m.primary is not None
    assert m.primary.name == "a"
    m.record("a", REFUSED)
    m.record("a", REFUSED)
    assert m.primary is None
    m.record("b", as_primary(timeline=2))
    assert m.primary is not None
    assert m.primary.name == "b"
    status = m.server_status("b")
    assert (status.state, status.role, status.epoch) == (UP, PRIMARY, 2)


def test_configured_replica_claiming_primary_is_refused_while_primary_is_up() -> None:
    m = make(server("a", ServerRole.PRIMARY), server("b", ServerRole.REPLICA), fall=2)
    m.record("a", as_primary())
    m.record("b", as_replica())
    m.record("b", as_primary(timeline=2))
    m.record("b", as_primary(timeline=2))
    assert m.primary is not None
    assert m.primary.name == "a"
    b = m.server_status("b")
    assert b.state is DOWN
    assert not b.usable
    assert b.last_transition is not None
    assert b.last_transition.failure is ProbeFailure.WRONG_ROLE


def test_configured_primary_reporting_replica_goes_down() -> None:
    m = make(server("a", ServerRole.PRIMARY), fall=2)
    m.record("a", as_primary())
    m.record("a", as_replica())
    m.record("a", as_replica())
    assert m.server_status("a").state is DOWN
    assert m.primary is None


def test_split_brain_fences_lower_timeline() -> None:
    m = make(server("a"), server("b"), server("c"))
    m.record("a", as_primary(timeline=1))
    m.record("b", as_primary(timeline=2))
    m.record("c", as_replica(timeline=2))
    assert m.primary is not None
    assert m.primary.name == "b"
    a = m.server_status("a")
    assert a.fenced
    assert not a.usable
    assert a.state is UP  # healthy, yet gets no traffic
    assert names(m.usable_replicas()) == ["c"]
    # The fenced server goes away: nothing is fenced any more.
    for _ in range(3):
        m.record("a", REFUSED)
    assert not m.server_status("a").fenced
    assert m.primary.name == "b"


def test_split_brain_on_same_timeline_refuses_writes() -> None:
    m = make(server("a"), server("b"))
    m.record("a", as_primary(timeline=3))
    m.record("b", as_primary(timeline=3))
    assert m.primary is None
    assert all(s.fenced and not s.usable for s in m.status())


def test_lag_bytes_from_primary_position() -> None:
    m = make(server("a"), server("b"), server("c"))
    m.record("a", as_primary(position=5000))
    m.record("b", as_replica(position=3000, replay_delay=1.5))
    m.record("c", as_replica(position=5200))  # probed after a newer write: ahead, not negative
    b, c = m.server_status("b"), m.server_status("c")
    assert (b.lag_bytes, b.replay_delay, b.position) == (2000, 1.5, Lsn(3000))
    assert c.lag_bytes == 0
    primary = m.server_status("a")
    assert (primary.lag_bytes, primary.replay_delay, primary.position) == (None, None, Lsn(5000))


def test_lag_unknown_without_primary() -> None:
    m = make(server("a"), server("b"))
    m.record("b", as_replica(position=3000))
    assert m.server_status("b").lag_bytes is None


def test_ban_and_unban() -> None:
    transitions: list[Transition] = []
    m = make(server("a"), server("b"), on_transition=transitions.append)
    m.record("a", as_primary())
    m.record("b", as_replica())
    m.ban("a")
    assert m.primary is None
    assert m.server_status("a").state is BANNED
    m.record("a", as_primary())  # probes keep running and count for nothing
    assert m.primary is None
    m.ban("b")
    assert m.usable_replicas() == []
    m.unban("a")
    assert m.server_status("a").state is SUSPECT
    assert m.primary is None  # not usable until a good probe after the unban
    m.record("a", as_primary())
    assert m.primary is not None
    assert m.primary.name == "a"
    assert [t.reason for t in transitions if t.server == "a"] == [
        TransitionReason.PROBE_OK,
        TransitionReason.BANNED_BY_ADMIN,
        TransitionReason.UNBANNED_BY_ADMIN,
        TransitionReason.PROBE_OK,
    ]


def test_transitions_carry_clock_time_and_reach_callback() -> None:
    seen: list[Transition] = []
    m = make(server("a"), on_transition=seen.append, fall=1)
    m.record("a", as_primary())
    m.record("a", REFUSED)
    assert [(t.old, t.new, t.failure) for t in seen] == [
        (SUSPECT, UP, None),
        (UP, DOWN, ProbeFailure.REFUSED),
    ]
    assert seen[0].at < seen[1].at
    assert m.server_status("a").last_transition == seen[1]


def test_failing_callback_does_not_break_accounting() -> None:
    def boom(_t: Transition) -> None:
        raise RuntimeError("callback bug")

    m = make(server("a"), on_transition=boom)
    m.record("a", as_primary())
    assert m.primary is not None


def test_status_snapshot_fields() -> None:
    m = make(server("a"), server("b"))
    m.record("a", as_primary(load=3.0, latency=0.002))
    m.record("b", REFUSED)
    a, b = m.status()
    assert (a.server.name, a.load, a.latency, a.usable, a.role) == ("a", 3.0, 0.002, True, PRIMARY)
    assert (b.server.name, b.usable, b.role, b.position) == ("b", False, None, None)


def test_probe_delay_is_fast_while_primary_unknown_or_failing() -> None:
    m = make(server("a"), server("b"), interval=0.5, fast_interval=0.05, fall=3)
    assert m.probe_delay("a") == m.probe_delay("b") == 0.05
    m.record("a", as_primary())
    m.record("b", as_replica())
    assert m.probe_delay("a") == m.probe_delay("b") == 0.5
    m.record("a", REFUSED)
    assert (m.probe_delay("a"), m.probe_delay("b")) == (0.05, 0.5)


def test_probe_delay_is_fast_for_a_server_in_transition() -> None:
    """HAProxy's fastinter: a replica failing probes is confirmed down at the fast pace, a down
    one that answers again comes back at it; a down one that stays silent is probed at the
    normal pace."""
    m = make(server("a"), server("b"), interval=0.5, fast_interval=0.05, fall=3, rise=2)
    m.record("a", as_primary())
    m.record("b", as_replica())
    m.record("b", REFUSED)
    assert m.server_status("b").state is HealthState.SUSPECT
    assert (m.probe_delay("a"), m.probe_delay("b")) == (0.5, 0.05)
    m.record("b", REFUSED)
    m.record("b", REFUSED)
    assert m.server_status("b").state is HealthState.DOWN
    assert m.probe_delay("b") == 0.5
    m.record("b", as_replica())
    assert m.server_status("b").state is HealthState.DOWN
    assert m.probe_delay("b") == 0.05
    m.record("b", as_replica())
    assert m.server_status("b").state is HealthState.UP
    assert m.probe_delay("b") == 0.5


@pytest.mark.parametrize(
    "kwargs",
    [{"interval": 0}, {"timeout": -1}, {"fast_interval": 0.0}, {"rise": 0}, {"fall": 0}],
)
def test_bad_settings_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        HealthMonitor("c", [server("a")], _never, **kwargs)


def test_duplicate_or_missing_servers_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        HealthMonitor("c", [server("a"), server("a")], _never)
    with pytest.raises(ValueError, match="at least one"):
        HealthMonitor("c", [], _never)


def test_unknown_server_is_a_key_error() -> None:
    m = make(server("a"))
    with pytest.raises(KeyError):
        m.poke("nope")
    with pytest.raises(KeyError):
        m.server_status("nope")


# -- the probe loops, in virtual time -------------------------------------------------------------


def test_first_round_elects_primary() -> None:
    async def main() -> None:
        prober = ScriptedProber({"a": always(as_primary()), "b": always(as_replica())})
        m = HealthMonitor("c", [server("a"), server("b")], prober, clock=now)
        assert not await m.wait_first_round(0)
        async with running(m):
            assert await m.wait_first_round(1.0)
            assert now() == 0  # both probes answered at once
            primary = m.primary
            assert primary is not None
            assert primary.name == "a"
            assert names(m.usable_replicas()) == ["b"]

    run_virtual(main)


def test_steady_state_probes_at_interval() -> None:
    async def main() -> None:
        prober = ScriptedProber({"a": always(as_primary()), "b": always(as_replica())})
        m = HealthMonitor("c", [server("a"), server("b")], prober, interval=1.0, clock=now)
        async with running(m):
            await asyncio.sleep(9.5)  # virtual seconds
        # One probe at t=0, then every second: t = 0, 1, ..., 9.
        assert prober.calls == {"a": 10, "b": 10}

    run_virtual(main)


def test_fast_interval_while_no_primary_then_promoted_replica_found() -> None:
    promoted_at = 5.0

    def replica_script(t: float) -> ProbeResult:
        return as_primary(timeline=2) if t >= promoted_at else as_replica()

    async def main() -> None:
        prober = ScriptedProber({"a": always(REFUSED), "b": replica_script})
        m = HealthMonitor(
            "c",
            [server("a"), server("b")],
            prober,
            interval=1.0,
            fast_interval=0.1,
            clock=now,
        )
        async with running(m):
            assert await m.wait_primary(10.0) is not None
            found_at = now()
            before = dict(prober.calls)
            await asyncio.sleep(10.0)
        assert m.primary is not None
        assert m.primary.name == "b"
        # Until the promotion no primary is known: about 10 probes a second, not 1.
        assert before["b"] >= 45
        # Found by the first probe after the promotion, one fast interval at most.
        assert found_at - promoted_at <= 0.1 + 1e-6
        # With the primary known, b is back to the slow pace (a, DOWN, is probed slowly too).
        assert prober.calls["b"] - before["b"] <= 11

    run_virtual(main)


def test_failing_primary_is_reprobed_fast_and_replicas_switch_to_fast_pace() -> None:
    dies_at = 10.0

    def primary_script(t: float) -> ProbeResult:
        return as_primary() if t < dies_at else REFUSED

    async def main() -> float:
        prober = ScriptedProber({"a": primary_script, "b": always(as_replica())})
        m = HealthMonitor(
            "c",
            [server("a"), server("b")],
            prober,
            interval=1.0,
            fast_interval=0.1,
            fall=3,
            clock=now,
        )
        async with running(m):
            await asyncio.sleep(dies_at + 0.5)
            primary_lost = m.primary is None
            b_calls = prober.calls["b"]
            await asyncio.sleep(1.0)
            b_fast = prober.calls["b"] - b_calls
        assert primary_lost
        assert b_fast >= 9  # b probed at the fast pace once the primary is gone
        failures = [t for t in prober.call_times["a"] if t >= dies_at]
        return failures[2] - failures[0]

    # The second and third failures follow the first at the fast pace.
    assert run_virtual(main) <= 0.2 + 1e-6


def test_poke_probes_at_once() -> None:
    async def main() -> None:
        prober = ScriptedProber({"a": always(as_primary())})
        m = HealthMonitor("c", [server("a")], prober, interval=100.0, clock=now)
        async with running(m):
            await m.wait_first_round(1.0)
            await asyncio.sleep(1.0)
            assert prober.calls["a"] == 1
            m.poke("a")
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            assert prober.calls["a"] == 2
            assert prober.call_times["a"][1] == 1.0  # no virtual time passed

    run_virtual(main)


def test_wait_primary_returns_when_elected() -> None:
    async def main() -> None:
        prober = ScriptedProber({"a": lambda t: as_primary() if t >= 3 else REFUSED})
        m = HealthMonitor("c", [server("a")], prober, rise=1, fast_interval=0.1, clock=now)
        async with running(m):
            primary = await m.wait_primary(10.0)
            assert primary is not None
            assert primary.name == "a"
            assert 3.0 <= now() < 3.2
            assert await m.wait_primary(0) is primary  # known: at once

    run_virtual(main)


def test_wait_primary_gives_up_after_limit() -> None:
    async def main() -> None:
        prober = ScriptedProber({"a": always(as_replica()), "b": always(as_replica())})
        m = HealthMonitor("c", [server("a"), server("b")], prober, clock=now)
        async with running(m):
            assert await m.wait_primary(2.0) is None
            assert now() == pytest.approx(2.0)

    run_virtual(main)


def test_wait_first_round_gives_up_after_limit() -> None:
    async def hang(_srv: Server) -> ProbeResult:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable: the monitor's timeout is shorter")

    async def main() -> None:
        m = HealthMonitor("c", [server("a")], hang, timeout=5.0, clock=now)
        async with running(m):
            assert not await m.wait_first_round(1.0)

    run_virtual(main)


def test_slow_probe_times_out() -> None:
    seen: list[Transition] = []

    async def hang(_srv: Server) -> ProbeResult:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable: the monitor's timeout is shorter")

    async def main() -> None:
        m = HealthMonitor(
            "c", [server("a")], hang, timeout=1.0, fall=1, clock=now, on_transition=seen.append
        )
        async with running(m):
            await asyncio.sleep(1.5)
        assert m.server_status("a").state is DOWN
        assert m.server_status("a").latency == pytest.approx(1.0)

    run_virtual(main)
    assert [(t.new, t.failure) for t in seen] == [(DOWN, ProbeFailure.TIMEOUT)]


def test_raising_prober_counts_as_failure_and_loops_go_on() -> None:
    counter = itertools.count()

    async def flaky(_srv: Server) -> ProbeResult:
        if next(counter) % 2 == 0:
            raise RuntimeError("prober bug")
        return as_primary()

    async def main() -> None:
        seen: list[Transition] = []
        m = HealthMonitor(
            "c", [server("a")], flaky, interval=1.0, clock=now, on_transition=seen.append
        )
        async with running(m):
            await asyncio.sleep(3.5)
        assert any(t.failure is ProbeFailure.SERVER_ERROR for t in seen)
        assert next(counter) >= 4  # still probing after the exceptions

    run_virtual(main)


def test_run_twice_is_refused() -> None:
    async def main() -> None:
        prober = ScriptedProber({"a": always(as_primary())})
        m = HealthMonitor("c", [server("a")], prober, clock=now)
        async with running(m):
            await asyncio.sleep(0)
            with pytest.raises(RuntimeError, match="already running"):
                await m.run()

    run_virtual(main)
