"""The runtime health monitor of one cluster: probe loops, primary election, status snapshots.

One probe loop per server feeds `ServerHealth` (the rise/fall state machine of `core.health`),
then re-runs `elect_primary` over the usable servers. The probe itself is injected (a `Prober`,
one per protocol), and so is the clock, so this module knows no socket and no wire format.

Probe pacing follows HAProxy's health checks (`inter`, with a faster `fastinter` while a server is
changing state): every server is probed every `interval` seconds, and every `fast_interval`
seconds while the cluster has no primary, and for a server in transition (failing probes but not
yet down, or down and answering again). A failover is only followed as fast as the promoted
server is seen and the dead one is confirmed, and both happen at the fast pace. `poke()` probes
a server at once: the proxy calls it when live traffic sees a connection error or a SQLSTATE
such as 57P01 (admin_shutdown) or 25006 (read_only_sql_transaction), which usually arrive
before the next scheduled probe.

Role policy (see `vet_role`):

* ``auto`` servers take the role they report.
* A server configured ``primary`` must report the primary role; reporting anything else is a
  failed probe (`ProbeFailure.WRONG_ROLE`), so a rewound old primary gets no traffic until the
  configuration says what it is.
* A server configured ``replica`` must report the replica role, except that a configured replica
  reporting the primary role while no *other* server is the elected primary is accepted as the
  new primary: that is a failover done by an outside tool (Patroni, repmgr, an operator running
  `pg_promote()`), and refusing writes until someone edits the configuration would turn a
  20-second failover into an outage. It is logged at WARNING. While another primary is elected,
  the claim is a failed probe (WRONG_ROLE): configured roles win over a stray promotion.

Split brain (several usable servers reporting the primary role) is decided by `elect_primary`:
the highest epoch (PostgreSQL: timeline) wins, the losers are fenced, and a fenced server gets no
traffic at all; without epochs, nobody wins and every claimant is fenced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from dbbalancer.core.health import (
    HealthState,
    ObservedRole,
    PrimaryElection,
    ProbeFailure,
    ProbeResult,
    ServerHealth,
    Transition,
    elect_primary,
)
from dbbalancer.core.position import Position
from dbbalancer.core.topology import Server, ServerRole

__all__ = ["HealthMonitor", "Prober", "ServerStatus", "vet_role"]

log = logging.getLogger(__name__)

Prober = Callable[[Server], Awaitable[ProbeResult]]
"""Probes one server once. Must never raise: failures come back as ProbeResult(ok=False, ...)."""


def _is_downward(transition: Transition) -> bool:
    if transition.new is HealthState.SUSPECT:
        return transition.old is HealthState.UP
    return transition.new is HealthState.DOWN or transition.new is HealthState.BANNED


@dataclass(frozen=True, slots=True)
class ServerStatus:
    """A snapshot of one server for routing, the admin console and metrics.

    `epoch` is the protocol's promotion counter (PostgreSQL: timeline), `position` the replication
    position (the write position on a primary, the applied position on a replica; see
    `core.position`); `lag_bytes` is, for a replica, how many bytes it is behind the elected
    primary's last known position (0 when it covers it; None when either is unknown or the
    protocol cannot count bytes); the position, delay and load values come from the last good
    probe, `latency` from the last probe.
    """

    server: Server
    state: HealthState
    usable: bool
    role: ObservedRole | None
    epoch: int | None
    position: Position | None
    lag_bytes: int | None
    replay_delay: float | None
    load: float | None
    latency: float | None
    fenced: bool
    last_transition: Transition | None


def vet_role(
    configured: ServerRole, result: ProbeResult, *, other_primary: str | None
) -> ProbeResult:
    """Check a probe result against the configured role (see the module docstring).

    `other_primary` is the elected primary if it is another server, else None. Returns `result`
    unchanged when the role is acceptable, else a WRONG_ROLE failure. Failed probes pass through.
    """
    if not result.ok or configured is ServerRole.AUTO:
        return result
    if configured is ServerRole.PRIMARY:
        acceptable = result.role is ObservedRole.PRIMARY
    elif result.role is ObservedRole.PRIMARY:
        acceptable = other_primary is None
    else:
        acceptable = result.role is ObservedRole.REPLICA
    return result if acceptable else ProbeResult.failed(ProbeFailure.WRONG_ROLE)


class _Entry:
    """Runtime state the monitor keeps for one server (identity stays in `Server`)."""

    __slots__ = (
        "health",
        "last_good",
        "last_latency",
        "last_transition",
        "rejecting_claim",
        "server",
        "wake",
    )

    def __init__(self, server: Server, health: ServerHealth) -> None:
        self.server = server
        self.health = health
        self.last_good: ProbeResult | None = None
        self.last_latency: float | None = None
        self.last_transition: Transition | None = None
        # True while this server's role claims are refused, so that the refusal is logged once.
        self.rejecting_claim = False
        # Set by poke() and by losing the primary; the probe loop's sleep ends when it is set.
        self.wake = asyncio.Event()


class HealthMonitor:
    """Probes every server of one cluster and keeps the elected primary and server states.

    Not thread-safe: every method runs on the event loop that runs `run()`.
    """

    def __init__(
        self,
        cluster_name: str,
        servers: Sequence[Server],
        prober: Prober,
        *,
        interval: float = 0.5,
        timeout: float = 1.0,
        rise: int = 2,
        fall: int = 3,
        fast_interval: float = 0.075,
        clock: Callable[[], float] = time.monotonic,
        epoch_name: str = "epoch",
        on_transition: Callable[[Transition], None] | None = None,
        on_latency: Callable[[str, float], None] | None = None,
    ) -> None:
        if not servers:
            raise ValueError(f"cluster {cluster_name}: a health monitor needs at least one server")
        names = [s.name for s in servers]
        if len(set(names)) != len(names):
            raise ValueError(f"cluster {cluster_name}: duplicate server names in {names}")
        for what, value in (
            ("interval", interval),
            ("timeout", timeout),
            ("fast_interval", fast_interval),
        ):
            if not value > 0:
                raise ValueError(f"{what} must be > 0, got {value!r}")
        self._on_latency = on_latency  # good probes' round trips (least_latency)
        self.cluster_name = cluster_name
        self._prober = prober
        self._interval = interval
        self._timeout = timeout
        self._fast_interval = fast_interval
        self._clock = clock
        self._epoch_name = epoch_name  # what the protocol calls it, for election reasons
        self._on_transition = on_transition
        # Role checks happen in vet_role, where they can see the election; ServerHealth's own
        # expected_role check cannot, so it is left unset.
        self._entries = {
            s.name: _Entry(s, ServerHealth(s.name, rise=rise, fall=fall)) for s in servers
        }
        self._election = PrimaryElection(None, (), "no probe has run yet")
        self._fenced: frozenset[str] = frozenset()
        self._primary_known = asyncio.Event()
        self._first_round_done = asyncio.Event()
        self._probed: set[str] = set()
        self._running = False
        # Bumped on every probe result, ban and unban: callers cache what they derive.
        self.version = 0

    # -- running ----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Probe every server until cancelled: one task per server, in one TaskGroup."""
        if self._running:
            raise RuntimeError(f"cluster {self.cluster_name}: health monitor is already running")
        self._running = True
        try:
            async with asyncio.TaskGroup() as tasks:
                for name in self._entries:
                    tasks.create_task(self._probe_loop(name), name=f"probe {name}")
        finally:
            self._running = False

    async def _probe_loop(self, name: str) -> None:
        entry = self._entries[name]
        while True:
            # A poke that arrives while the probe is in flight asks about a later moment than
            # the one this probe sees: it must cause one more probe, hence clear before probing.
            entry.wake.clear()
            result = await self._probe(entry.server)
            self.record(name, result)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.probe_delay(name)):
                    await entry.wake.wait()

    async def _probe(self, server: Server) -> ProbeResult:
        started = self._clock()
        try:
            async with asyncio.timeout(self._timeout):
                result = await self._prober(server)
        except TimeoutError:
            result = ProbeResult.failed(ProbeFailure.TIMEOUT)
        except Exception:
            # The Prober contract says it never raises; a bug there must not stop the probes of
            # every other server (the TaskGroup would cancel them), so it counts as a failure.
            log.exception("cluster %s: prober raised for %s", self.cluster_name, server.name)
            result = ProbeResult.failed(ProbeFailure.SERVER_ERROR)
        if result.latency is None:
            self._entries[server.name].last_latency = self._clock() - started
        return result

    def probe_delay(self, name: str) -> float:
        """Seconds the probe loop of `name` waits before its next probe (unless poked).

        `fast_interval` while no primary is elected (the promoted server must be found fast)
        and for any server in transition, as HAProxy's `fastinter`: one that is failing probes
        but not yet down (its outage must be confirmed fast: a dead primary holds up the
        failover, a dead replica keeps its place among the read candidates until then), and one
        that is down but answered its last probe (`rise` counts). `interval` otherwise.
        """
        health = self._entries[name].health
        if self._election.primary is None or health.state is HealthState.SUSPECT:
            return self._fast_interval
        if health.state is HealthState.DOWN and health.consecutive_ok > 0:
            return self._fast_interval
        return self._interval

    def poke(self, server_name: str) -> None:
        """Probe `server_name` now: live traffic saw a connection error or a telling SQLSTATE."""
        self._entries[server_name].wake.set()

    # -- accounting -------------------------------------------------------------------------------

    def record(self, name: str, result: ProbeResult) -> Transition | None:
        """Account for one probe result of `name` and re-elect the primary.

        The probe loops call this; it is public so that tests and tools can drive the monitor
        without running probes. Returns the health transition, if any.
        """
        entry = self._entries[name]
        primary = self._election.primary
        vetted = vet_role(
            entry.server.role, result, other_primary=primary if primary != name else None
        )
        if result.latency is not None:
            entry.last_latency = result.latency
        rejected = vetted is not result
        if rejected and not entry.rejecting_claim:
            log.warning(
                "cluster %s: %s (configured %s) reports role %s%s: counted as failed probes "
                "(%s) until that changes",
                self.cluster_name,
                name,
                entry.server.role.value,
                result.role.value if result.role else "none",
                f" while {primary} is the elected primary" if primary not in (None, name) else "",
                ProbeFailure.WRONG_ROLE.value,
            )
        entry.rejecting_claim = rejected
        transition = entry.health.on_probe(vetted, self._clock())
        if vetted.ok:
            entry.last_good = vetted
            if self._on_latency is not None and entry.last_latency is not None:
                self._on_latency(name, entry.last_latency)
        if transition is not None:
            self._report(entry, transition)
        self._reelect()
        self.version += 1
        if name not in self._probed:
            self._probed.add(name)
            if len(self._probed) == len(self._entries):
                self._first_round_done.set()
        return transition

    def ban(self, name: str) -> None:
        """Admin ban: `name` gets no traffic, whatever its probes say, until `unban`."""
        entry = self._entries[name]
        transition = entry.health.ban(self._clock())
        if transition is not None:
            self._report(entry, transition)
        self._reelect()
        self.version += 1

    def unban(self, name: str) -> None:
        """Lift an admin ban: `name` is usable again after its next good probe."""
        entry = self._entries[name]
        transition = entry.health.unban(self._clock())
        if transition is not None:
            self._report(entry, transition)
        self._reelect()
        entry.wake.set()
        self.version += 1

    def _report(self, entry: _Entry, transition: Transition) -> None:
        entry.last_transition = transition
        level = logging.WARNING if _is_downward(transition) else logging.INFO
        log.log(
            level,
            "cluster %s: server %s (%s) %s -> %s: %s%s",
            self.cluster_name,
            entry.server.name,
            entry.server.address,
            transition.old.value,
            transition.new.value,
            transition.reason.value,
            f" ({transition.failure.value})" if transition.failure else "",
        )
        if self._on_transition is not None:
            try:
                self._on_transition(transition)
            except Exception:
                log.exception("cluster %s: on_transition callback failed", self.cluster_name)

    def _reelect(self) -> None:
        views = [e.health.view() for e in self._entries.values() if e.health.usable]
        election = elect_primary(views, epoch_name=self._epoch_name)
        old = self._election
        self._election = election
        fenced = frozenset(election.fenced)
        for name in sorted(fenced - self._fenced):
            log.warning("cluster %s: fencing %s: %s", self.cluster_name, name, election.reason)
        for name in sorted(self._fenced - fenced):
            log.info("cluster %s: %s is no longer fenced", self.cluster_name, name)
        self._fenced = fenced
        if election.primary == old.primary:
            return
        if election.primary is None:
            log.warning(
                "cluster %s: no primary (was %s): %s; writes wait or fail until one is found",
                self.cluster_name,
                old.primary,
                election.reason,
            )
            self._primary_known.clear()
            # Every loop switches to the fast pace now, not after its current (slow) sleep.
            for entry in self._entries.values():
                entry.wake.set()
            return
        new = self._entries[election.primary].server
        if new.role is ServerRole.REPLICA:
            log.warning(
                "cluster %s: configured replica %s (%s) is now the primary: following a "
                "failover without a configuration change; update the configuration (%s)",
                self.cluster_name,
                new.name,
                new.address,
                election.reason,
            )
        else:
            log.info(
                "cluster %s: primary is %s (%s), was %s: %s",
                self.cluster_name,
                new.name,
                new.address,
                old.primary,
                election.reason,
            )
        self._primary_known.set()

    # -- queries ----------------------------------------------------------------------------------

    @property
    def primary(self) -> Server | None:
        """The elected primary, or None: writes must wait or fail."""
        name = self._election.primary
        return None if name is None else self._entries[name].server

    @property
    def election(self) -> PrimaryElection:
        """The last election outcome, with its reason (for logs and the admin console)."""
        return self._election

    def usable_replicas(self) -> list[Server]:
        """Usable servers that report the replica role, in configuration order."""
        return [
            e.server
            for e in self._entries.values()
            if e.health.usable
            and e.health.role is ObservedRole.REPLICA
            and e.server.name not in self._fenced
        ]

    def status(self) -> list[ServerStatus]:
        """A snapshot of every server, in configuration order."""
        return [self._status(e) for e in self._entries.values()]

    def server_status(self, name: str) -> ServerStatus:
        """A snapshot of one server; KeyError for an unknown name."""
        return self._status(self._entries[name])

    def _status(self, entry: _Entry) -> ServerStatus:
        health = entry.health
        good = entry.last_good
        position = good.position if good is not None else None
        fenced = entry.server.name in self._fenced
        lag: int | None = None
        delay: float | None = None
        if health.role is ObservedRole.REPLICA:
            delay = good.replay_delay if good is not None else None
            primary = self._election.primary
            primary_good = self._entries[primary].last_good if primary is not None else None
            primary_position = primary_good.position if primary_good is not None else None
            if primary_position is not None and position is not None:
                # Both positions come from probes taken at different moments: a replica can
                # look ahead of the primary by what was written in between (bytes_behind is
                # 0 then, never negative).
                lag = position.bytes_behind(primary_position)
        return ServerStatus(
            server=entry.server,
            state=health.state,
            usable=health.usable and not fenced,
            role=health.role,
            epoch=health.epoch,
            position=position,
            lag_bytes=lag,
            replay_delay=delay,
            load=good.load if good is not None else None,
            latency=entry.last_latency,
            fenced=fenced,
            last_transition=entry.last_transition,
        )

    # -- waiting ----------------------------------------------------------------------------------

    async def wait_primary(self, wait_limit: float) -> Server | None:
        """The primary, waiting up to `wait_limit` seconds for one to be elected (failover
        buffering: a write that arrives mid-failover waits rather than fails at once)."""
        if self._election.primary is None and wait_limit > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_limit):
                    await self._primary_known.wait()
        return self.primary

    async def wait_first_round(self, wait_limit: float) -> bool:
        """Wait until every server has had at least one probe result, at most `wait_limit`
        seconds; True if they all have (start-up waits so as not to refuse the first writes)."""
        if not self._first_round_done.is_set() and wait_limit > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_limit):
                    await self._first_round_done.wait()
        return self._first_round_done.is_set()
