"""Where a unit of work goes: the primary or a replica, and why.

`decide()` is pure: a statement's classification plus the session's facts in, a `Decision` (a
target and an enum reason) out. The reason shows in debug logs, the admin console and metric
labels. The rule that matters most: anything that is not known to be a read goes to the primary.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from dbbalancer.core.statement import Classification, RouteHint, StatementKind, TxAction


class Target(enum.Enum):
    """Which kind of server should run the work."""

    PRIMARY = "primary"
    REPLICA = "replica"


class RouteReason(enum.Enum):
    """Why a unit of work went where it went."""

    SPLIT_DISABLED = "read_write_split is off"
    WRITE = "not a read"
    READ = "read"
    READ_ONLY_TRANSACTION = "read-only transaction"
    TRANSACTION = "read-write transaction"
    HINT_PRIMARY = "hint: primary"
    HINT_REPLICA = "hint: replica"
    USER_DEFAULT_PRIMARY = "user default_route = primary"
    PINNED = "session pinned to its server"
    AUTOCOMMIT_OFF = "autocommit is off: every statement opens a transaction"
    SESSION_STATE = "keeps session state: pins to the primary"
    REMEMBERED_WRITE = "replica refused it before (read-only)"
    NO_REPLICA = "no eligible replica"
    OWN_WRITES = "read-your-writes: replicas behind this session's last write"


@dataclass(frozen=True, slots=True)
class Decision:
    """A routing decision."""

    target: Target
    reason: RouteReason


PRIMARY_SPLIT_OFF = Decision(Target.PRIMARY, RouteReason.SPLIT_DISABLED)


@dataclass(frozen=True, slots=True)
class SessionFacts:
    """What the session's own state says about where its next unit may run.

    `decide` is asked only where a unit starts, outside any transaction: "in a transaction" is
    that unit's business (it stays where it began), not a routing input.
    """

    autocommit: bool = True  # False (MySQL autocommit=0): a plain statement opens a transaction
    pinned: bool = False  # the session holds state on one connection: it runs there


AUTOCOMMIT = SessionFacts()
PINNED_SESSION = Decision(Target.PRIMARY, RouteReason.PINNED)


def decide(
    c: Classification,
    *,
    split: bool,
    default_primary: bool = False,
    read_only_transactions_to_replica: bool = True,
    session: SessionFacts = AUTOCOMMIT,
) -> Decision:
    """Route the first statement of a unit of work (outside any transaction).

    A transaction goes wholly to the primary unless it starts read-only (BEGIN READ ONLY), when it
    goes to one replica for its whole length. A replica hint never moves a non-read off the
    primary. `default_primary` is the user's `default_route = "primary"`: reads then go to the
    primary unless hinted to a replica. A statement that creates session state the client will
    be pinned to (a temp table, a WITH HOLD cursor, SQL PREPARE, ...) goes to the primary, so the
    pin never keeps a later write from running. A pinned session's units run on its pinned
    connection, a primary one. With autocommit off, a plain statement opens a transaction that
    may write later: only `START TRANSACTION READ ONLY` may leave the primary (not a replica hint).
    """
    if not split:
        return PRIMARY_SPLIT_OFF
    if session.pinned:
        return PINNED_SESSION
    if c.hint is RouteHint.PRIMARY:
        return Decision(Target.PRIMARY, RouteReason.HINT_PRIMARY)
    if c.pins:
        # A pinned session runs everything on its pinned connection, writes included: only the
        # primary can take them.
        return Decision(Target.PRIMARY, RouteReason.SESSION_STATE)
    if c.kind is StatementKind.TRANSACTION and c.tx is TxAction.BEGIN:
        if c.tx_read_only and read_only_transactions_to_replica:
            return Decision(Target.REPLICA, RouteReason.READ_ONLY_TRANSACTION)
        return Decision(Target.PRIMARY, RouteReason.TRANSACTION)
    if not session.autocommit:
        return Decision(Target.PRIMARY, RouteReason.AUTOCOMMIT_OFF)
    if not c.read_only:
        return Decision(Target.PRIMARY, RouteReason.WRITE)
    if c.hint is RouteHint.REPLICA:
        return Decision(Target.REPLICA, RouteReason.HINT_REPLICA)
    if default_primary:
        return Decision(Target.PRIMARY, RouteReason.USER_DEFAULT_PRIMARY)
    return Decision(Target.REPLICA, RouteReason.READ)
