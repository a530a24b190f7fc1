"""Per-server health state machine and primary election, protocol-agnostic.

Everything that decides a server's health state lives in this module, as one table in the style
of h11's `_state.py` and h2's `stream.py`: `TRANSITIONS` maps every (state, event) pair to the next
state and the reason to report. The table is total: a pair that changes nothing is an explicit
no-op entry (next state == current state, reason None), so there is no "missing pair" at run time;
`next_state()` still raises `HealthTableError` for a pair that is absent, and a test checks that
none is.

Probe results are turned into events by counting consecutive good and bad probes, following
HAProxy's `rise`/`fall` health-check counters (`inter`, `rise`, `fall` server options):

    start -> SUSPECT (unknown: not usable until the first good probe)
    UP      --1 failure-->                       SUSPECT   (still usable: one blip is not an outage)
    SUSPECT --`fall` consecutive failures-->     DOWN      (counting the one that left UP)
    SUSPECT --good probe-->                      UP
    DOWN    --`rise` consecutive good probes-->  UP        (damps flapping after an outage)
    any     --admin ban-->                       BANNED    (probes are ignored while banned)
    BANNED  --admin unban-->                     SUSPECT   (counters and observed role reset)

Starting in SUSPECT rather than DOWN lets a freshly started balancer serve after one good probe
instead of waiting `rise` intervals, while still sending nothing to a server never seen up.

Time is injected: callers pass monotonic seconds as `now`; nothing here reads a clock. The probe
itself (what query, which protocol) lives in each protocol package; this module only sees a
neutral `ProbeResult`. The replication position is an opaque `core.position.Position` supplied
by the protocol; the epoch, when the protocol has one, is an integer that increases at every
promotion (PostgreSQL: the timeline). See `elect_primary` for how both are used, and what happens
without an epoch.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from dbbalancer.core.errors import SERVER_GOING_AWAY, ErrorClass
from dbbalancer.core.position import Position

__all__ = [
    "TRANSITIONS",
    "HealthEvent",
    "HealthState",
    "HealthTableError",
    "ObservedRole",
    "PrimaryElection",
    "ProbeFailure",
    "ProbeResult",
    "ServerHealth",
    "ServerView",
    "Transition",
    "TransitionReason",
    "elect_primary",
    "next_state",
]


class HealthState(enum.Enum):
    """Health of one server as routing sees it."""

    UP = "up"
    SUSPECT = "suspect"
    DOWN = "down"
    BANNED = "banned"  # by an admin; only an admin lifts it


class ProbeFailure(enum.Enum):
    """Why a health probe failed; shown in logs, admin output and metric labels."""

    TIMEOUT = "probe timeout"
    REFUSED = "connection refused"
    AUTH_FAILED = "authentication failed"
    WRONG_ROLE = "wrong role"
    CONNECTION_LOST = "connection lost"
    SERVER_ERROR = "server error"
    SHUTTING_DOWN = "server shutting down"
    # A replica whose replication is stopped, failed, or not set up: its data only gets staler.
    REPLICATION_STOPPED = "replication stopped"


def failure_of_server_error(error_class: ErrorClass | None) -> ProbeFailure:
    """A probe the server answered with an error of `error_class`."""
    if error_class is ErrorClass.AUTHENTICATION_FAILED:
        return ProbeFailure.AUTH_FAILED
    if error_class in SERVER_GOING_AWAY:
        return ProbeFailure.SHUTTING_DOWN
    return ProbeFailure.SERVER_ERROR


def failure_of_transport(
    exc: BaseException, closed: type[BaseException] = ConnectionError
) -> ProbeFailure:
    """A probe that failed below the protocol; `closed` is the protocol's own exception for a
    peer that closed the connection. Anything else is a server error."""
    if isinstance(exc, TimeoutError):
        return ProbeFailure.TIMEOUT
    if isinstance(exc, ConnectionRefusedError):
        return ProbeFailure.REFUSED
    if isinstance(exc, closed | ConnectionError):
        return ProbeFailure.CONNECTION_LOST
    if isinstance(exc, OSError):
        # Raised only while connecting (writes on an open transport do not raise): no route,
        # unknown host, network unreachable; to routing, the same as a refusal.
        return ProbeFailure.REFUSED
    return ProbeFailure.SERVER_ERROR


class ObservedRole(enum.Enum):
    """The role a server reported about itself in its last good probe."""

    PRIMARY = "primary"
    REPLICA = "replica"


class TransitionReason(enum.Enum):
    """Why a server changed health state."""

    PROBE_OK = "probe ok"
    PROBE_FAILED = "probe failed"
    RISE_REACHED = "rise reached"
    FALL_REACHED = "fall reached"
    BANNED_BY_ADMIN = "banned by admin"
    UNBANNED_BY_ADMIN = "unbanned by admin"


class HealthEvent(enum.Enum):
    """Inputs of the state machine. `ServerHealth` derives the probe events from its counters."""

    PROBE_OK = "probe ok"
    PROBE_OK_RISE_REACHED = "probe ok, rise reached"
    PROBE_FAILED = "probe failed"
    PROBE_FAILED_FALL_REACHED = "probe failed, fall reached"
    BAN = "ban"
    UNBAN = "unban"


class HealthTableError(LookupError):
    """A (state, event) pair is not in the transition table: a bug in this module."""


_S = HealthState
_E = HealthEvent
_R = TransitionReason

_Rule = tuple[HealthState, TransitionReason | None]

# (state, event) -> (next state, reason reported; None exactly when the state does not change).
TRANSITIONS: Mapping[tuple[HealthState, HealthEvent], _Rule] = MappingProxyType(
    {
        (_S.UP, _E.PROBE_OK): (_S.UP, None),
        (_S.UP, _E.PROBE_OK_RISE_REACHED): (_S.UP, None),
        (_S.UP, _E.PROBE_FAILED): (_S.SUSPECT, _R.PROBE_FAILED),
        (_S.UP, _E.PROBE_FAILED_FALL_REACHED): (_S.DOWN, _R.FALL_REACHED),  # fall == 1
        (_S.UP, _E.BAN): (_S.BANNED, _R.BANNED_BY_ADMIN),
        (_S.UP, _E.UNBAN): (_S.UP, None),
        (_S.SUSPECT, _E.PROBE_OK): (_S.UP, _R.PROBE_OK),
        (_S.SUSPECT, _E.PROBE_OK_RISE_REACHED): (_S.UP, _R.PROBE_OK),
        (_S.SUSPECT, _E.PROBE_FAILED): (_S.SUSPECT, None),
        (_S.SUSPECT, _E.PROBE_FAILED_FALL_REACHED): (_S.DOWN, _R.FALL_REACHED),
        (_S.SUSPECT, _E.BAN): (_S.BANNED, _R.BANNED_BY_ADMIN),
        (_S.SUSPECT, _E.UNBAN): (_S.SUSPECT, None),
        (_S.DOWN, _E.PROBE_OK): (_S.DOWN, None),
        (_S.DOWN, _E.PROBE_OK_RISE_REACHED): (_S.UP, _R.RISE_REACHED),
        (_S.DOWN, _E.PROBE_FAILED): (_S.DOWN, None),
        (_S.DOWN, _E.PROBE_FAILED_FALL_REACHED): (_S.DOWN, None),
        (_S.DOWN, _E.BAN): (_S.BANNED, _R.BANNED_BY_ADMIN),
        (_S.DOWN, _E.UNBAN): (_S.DOWN, None),
        (_S.BANNED, _E.PROBE_OK): (_S.BANNED, None),
        (_S.BANNED, _E.PROBE_OK_RISE_REACHED): (_S.BANNED, None),
        (_S.BANNED, _E.PROBE_FAILED): (_S.BANNED, None),
        (_S.BANNED, _E.PROBE_FAILED_FALL_REACHED): (_S.BANNED, None),
        (_S.BANNED, _E.BAN): (_S.BANNED, None),
        (_S.BANNED, _E.UNBAN): (_S.SUSPECT, _R.UNBANNED_BY_ADMIN),
    }
)


def next_state(state: HealthState, event: HealthEvent) -> _Rule:
    """Look up (next state, reason) for `event` in `state`; see `TRANSITIONS`."""
    try:
        return TRANSITIONS[state, event]
    except KeyError:
        raise HealthTableError(f"no transition for {event.name} in state {state.name}") from None


@dataclass(frozen=True, slots=True)
class Transition:
    """A reported change of health state, at monotonic time `at` (seconds)."""

    server: str
    old: HealthState
    new: HealthState
    reason: TransitionReason
    failure: ProbeFailure | None
    at: float


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What one health probe found, protocol-neutral.

    `ok` and `failure` must agree: a good probe has no failure, a failed one names it.
    `epoch` is the protocol's promotion counter if it has one (PostgreSQL: the timeline; see
    `elect_primary`), `position` the server's replication position (written on a primary,
    applied on a replica; see `core.position`), `replay_delay` the seconds since the last
    replayed change (replicas), `load` what the server reports about its own work, `latency`
    the probe's round trip in seconds.
    """

    ok: bool
    role: ObservedRole | None = None
    failure: ProbeFailure | None = None
    epoch: int | None = None
    position: Position | None = None
    replay_delay: float | None = None
    load: float | None = None
    latency: float | None = None

    def __post_init__(self) -> None:
        if self.ok and self.failure is not None:
            raise ValueError(f"a good probe cannot carry a failure ({self.failure.name})")
        if not self.ok and self.failure is None:
            raise ValueError("a failed probe must say why (failure=ProbeFailure...)")

    @classmethod
    def failed(cls, failure: ProbeFailure) -> ProbeResult:
        """A failed probe with its reason."""
        return cls(ok=False, failure=failure)


class ServerHealth:
    """Health of one server: counts consecutive good/bad probes and moves through `TRANSITIONS`.

    Starts in SUSPECT (unknown) and goes UP on the first good probe; see the module docstring for
    the whole graph. When `expected_role` is set (the server is configured as primary or replica
    rather than auto), a good probe reporting another role, or no role, counts as a failure with
    `ProbeFailure.WRONG_ROLE`: sending writes to a replica, or reads meant for a replica to a
    promoted primary, is what the check exists to prevent.
    """

    __slots__ = (
        "_changed_at",
        "_consecutive_failures",
        "_consecutive_ok",
        "_epoch",
        "_expected_role",
        "_fall",
        "_last_probe",
        "_rise",
        "_role",
        "_server",
        "_state",
        "_suspect_usable",
    )

    def __init__(
        self,
        server: str,
        *,
        rise: int = 2,
        fall: int = 3,
        expected_role: ObservedRole | None = None,
    ) -> None:
        if rise < 1:
            raise ValueError(f"rise must be >= 1, got {rise!r}")
        if fall < 1:
            raise ValueError(f"fall must be >= 1, got {fall!r}")
        self._server = server
        self._rise = rise
        self._fall = fall
        self._expected_role = expected_role
        self._state = HealthState.SUSPECT
        # SUSPECT entered from UP keeps serving; SUSPECT at start or after unban does not.
        self._suspect_usable = False
        self._consecutive_ok = 0
        self._consecutive_failures = 0
        self._last_probe: ProbeResult | None = None
        self._role: ObservedRole | None = None
        self._epoch: int | None = None
        self._changed_at: float | None = None

    @property
    def server(self) -> str:
        """The server's name."""
        return self._server

    @property
    def rise(self) -> int:
        """Consecutive good probes that bring a DOWN server back UP."""
        return self._rise

    @property
    def fall(self) -> int:
        """Consecutive failed probes that take a server DOWN."""
        return self._fall

    @property
    def expected_role(self) -> ObservedRole | None:
        """The configured role, or None for auto (any role accepted)."""
        return self._expected_role

    @property
    def state(self) -> HealthState:
        """Current health state."""
        return self._state

    @property
    def consecutive_ok(self) -> int:
        """Good probes in a row (0 after a failure, a ban or an unban)."""
        return self._consecutive_ok

    @property
    def consecutive_failures(self) -> int:
        """Failed probes in a row (0 after a good probe, a ban or an unban)."""
        return self._consecutive_failures

    @property
    def last_probe(self) -> ProbeResult | None:
        """The last probe result received, including while banned (for the admin console)."""
        return self._last_probe

    @property
    def role(self) -> ObservedRole | None:
        """The role reported by the last good probe; None until one, and again after an unban."""
        return self._role

    @property
    def epoch(self) -> int | None:
        """The epoch (PostgreSQL: timeline) reported by the last good probe that reported one."""
        return self._epoch

    @property
    def changed_at(self) -> float | None:
        """Monotonic time of the last state change; None while still in the initial state."""
        return self._changed_at

    @property
    def usable(self) -> bool:
        """Whether the server may receive traffic.

        UP is usable. SUSPECT is usable only when it came from UP: a single failed probe (a
        dropped packet, a slow checkpoint) should not cut every session, and `fall` exists to
        confirm an outage. Routing may still prefer UP servers. A SUSPECT server that was never
        seen up (start, unban) is not usable, nor are DOWN and BANNED.
        """
        if self._state is HealthState.UP:
            return True
        return self._state is HealthState.SUSPECT and self._suspect_usable

    def view(self) -> ServerView:
        """This server as `elect_primary` sees it."""
        return ServerView(key=self._server, state=self._state, role=self._role, epoch=self._epoch)

    def on_probe(self, result: ProbeResult, now: float) -> Transition | None:
        """Account for one probe result; return the transition, or None if the state stays."""
        self._last_probe = result
        failure = self._failure_of(result)
        # The event is derived the same way in every state; the table alone decides what it does.
        if failure is None:
            ok, bad = self._consecutive_ok + 1, 0
            event = HealthEvent.PROBE_OK_RISE_REACHED if ok >= self._rise else HealthEvent.PROBE_OK
        else:
            ok, bad = 0, self._consecutive_failures + 1
            event = (
                HealthEvent.PROBE_FAILED_FALL_REACHED
                if bad >= self._fall
                else HealthEvent.PROBE_FAILED
            )
        if self._state is not HealthState.BANNED:
            # Probes keep running while banned, for the admin console, but count for nothing:
            # stale history must not decide the state after an unban.
            self._consecutive_ok, self._consecutive_failures = ok, bad
            if failure is None:
                if result.role is not None:
                    self._role = result.role
                if result.epoch is not None:
                    self._epoch = result.epoch
        return self._apply(event, failure, now)

    def ban(self, now: float) -> Transition | None:
        """Admin ban: BANNED until `unban`, whatever the probes say. None if already banned."""
        return self._apply(HealthEvent.BAN, None, now)

    def unban(self, now: float) -> Transition | None:
        """Lift an admin ban: back to SUSPECT with nothing known. None if not banned."""
        return self._apply(HealthEvent.UNBAN, None, now)

    def _failure_of(self, result: ProbeResult) -> ProbeFailure | None:
        if not result.ok:
            # ProbeResult guarantees a failure on a failed probe; the fallback only serves mypy.
            return result.failure or ProbeFailure.SERVER_ERROR
        if self._expected_role is not None and result.role is not self._expected_role:
            return ProbeFailure.WRONG_ROLE
        return None

    def _apply(
        self, event: HealthEvent, failure: ProbeFailure | None, now: float
    ) -> Transition | None:
        old = self._state
        new, reason = next_state(old, event)
        if reason is None:
            return None
        self._state = new
        self._changed_at = now
        self._suspect_usable = new is HealthState.SUSPECT and old is HealthState.UP
        if event is HealthEvent.BAN or event is HealthEvent.UNBAN:
            self._consecutive_ok = 0
            self._consecutive_failures = 0
        if event is HealthEvent.UNBAN:
            # What we saw before the ban may be stale (a failover may have happened meanwhile);
            # elect_primary must not count a role nobody has confirmed since.
            self._role = None
            self._epoch = None
        return Transition(
            server=self._server, old=old, new=new, reason=reason, failure=failure, at=now
        )


@dataclass(frozen=True, slots=True)
class ServerView:
    """One server's health and last observed role, as input to `elect_primary`."""

    key: str
    state: HealthState
    role: ObservedRole | None
    epoch: int | None


@dataclass(frozen=True, slots=True)
class PrimaryElection:
    """Outcome of `elect_primary`.

    `primary` is the server to send writes to (None: refuse writes). `fenced` lists servers that
    claim to be primary but lost the election (split brain): they must get no traffic at all,
    since their data may diverge from the winner's. `reason` explains the outcome for logs.
    """

    primary: str | None
    fenced: tuple[str, ...]
    reason: str


# UP, and SUSPECT (which only carries a role when it came from UP; see ServerHealth.usable):
# one failed probe of the real primary must not hand the election to a stale rival.
_ELECTORS = frozenset({HealthState.UP, HealthState.SUSPECT})


def elect_primary(views: Sequence[ServerView], *, epoch_name: str = "epoch") -> PrimaryElection:
    """Choose the primary among usable servers that report the primary role.

    * No claimant: no primary (writes wait or fail).
    * Exactly one claimant: it is the primary, whatever its epoch (known or not).
    * Several claimants (split brain): the one with the highest epoch wins and the others are
      fenced. This follows PostgreSQL failover: a promotion starts a new, higher timeline, so
      an old primary that comes back after a failover is on a lower one. If the highest epoch
      is shared, or any claimant's epoch is unknown, nobody can tell which one is right: no
      primary (writes are refused) and every claimant is fenced.

    A protocol without an epoch (MySQL/MariaDB asynchronous replication, where a claimant is a
    writable server) never reports one, so the same rule reads: exactly one writable server is
    the primary; two or more is split brain, refused and fenced until one of them stops
    claiming (made read-only, demoted or stopped) or an admin bans it. That is the safest of
    the choices: picking one by replication position or by configuration order could send
    writes to the server that is about to be thrown away, and two writable servers may each
    hold transactions the other lacks, which no later election can merge. A refusal costs
    availability that an operator can restore; a wrong pick costs data. Configured roles still
    help before this point: `core.monitor.vet_role` refuses a configured replica's claim while
    another server is the elected primary, so such a claimant never reaches the election.

    `epoch_name` is what the protocol calls its epoch ("timeline"), used in the reason only.
    Duplicate keys are a caller bug.
    """
    keys = [view.key for view in views]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate server keys in election: {sorted(keys)}")
    claimants = sorted(
        (v for v in views if v.state in _ELECTORS and v.role is ObservedRole.PRIMARY),
        key=lambda v: v.key,
    )
    if not claimants:
        return PrimaryElection(None, (), "no usable server reports the primary role")
    if len(claimants) == 1:
        only = claimants[0]
        return PrimaryElection(only.key, (), f"{only.key} is the only primary")
    names = ", ".join(v.key for v in claimants)
    everyone = tuple(v.key for v in claimants)
    unknown = [v.key for v in claimants if v.epoch is None]
    if unknown:
        return PrimaryElection(
            None,
            everyone,
            f"split brain: {names} all claim primary and the {epoch_name} of "
            f"{', '.join(unknown)} is unknown; refusing writes",
        )
    top = max(v.epoch for v in claimants if v.epoch is not None)
    winners = [v for v in claimants if v.epoch == top]
    if len(winners) > 1:
        return PrimaryElection(
            None,
            everyone,
            f"split brain: {', '.join(v.key for v in winners)} all claim primary on "
            f"{epoch_name} {top}; refusing writes",
        )
    winner = winners[0]
    losers = tuple(v.key for v in claimants if v is not winner)
    return PrimaryElection(
        winner.key,
        losers,
        f"split brain: {winner.key} on {epoch_name} {top} wins over "
        + ", ".join(f"{v.key} ({epoch_name} {v.epoch})" for v in claimants if v is not winner),
    )
