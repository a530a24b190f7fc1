"""The unit-of-work machine of transaction and statement pooling, protocol-agnostic.

Under transaction pooling a client holds a server connection only for a unit of work: a
transaction, or one statement (one request cycle) outside a transaction. Everything that decides
when a unit starts, what waits, when output is held back, when a read is re-run, when the
connection is kept (pinned) and when it goes back to its pool lives in this module, as one table
in the style of h2's `stream.py` and of `core/health.py`: `TRANSITIONS` maps every
(state, event) pair to the effects to carry out, in order, and the next state. The table is
total: a pair that cannot happen is an explicit entry whose only effect is `Effect.IMPOSSIBLE`.

A protocol package drives it (PostgreSQL: `postgres/engine.py`). It turns what happens into
events (a client message of a kind, a connection offered by the pool, the last response owed
arriving with the server's transaction status, the connection breaking) and carries out the
effects (sending, holding output back, settling session state with hidden requests, releasing).
It keeps only wire work: framing, which response answers which request, statement renaming,
the text of hidden queries.

The next state is entered before the effects run, so an effect that raises a further event
(routing a batch offers a connection: `CONNECTED`; sending waiting frames raises their client
events) sees the state its rule led to.

How to read the pooling rules: find the state the session is in (`UnitState`, each with what
it means), then the event; the rule says what happens. The end of a unit is one event chosen by
`work_done`, whose precedence (transaction still open, then hidden read-back, then
read-your-writes position, then pins, then release) is the order the checks must run in.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

__all__ = [
    "CONNECTION_STATES",
    "HOLDS_OUTPUT",
    "RULES",
    "SENDS_FRAMES",
    "TRANSITIONS",
    "Effect",
    "UnitEvent",
    "UnitState",
    "UnitTableError",
    "rule",
    "work_done",
]


class UnitState(enum.IntEnum):
    """Where one client session stands in its unit of work (IntEnum: cheap to hash and index)."""

    IDLE = 0  # no connection, no checkout: frames wait until a batch is whole, then it is routed
    ACQUIRING = 1  # a checkout waits for a connection; frames wait
    ATTACHED = 2  # a connection runs the unit; frames go to it
    READING = 3  # attached; a replica read that may be re-run: frames recorded, output held
    HOLDING = 4  # attached; that read was sent whole: output held, frames wait for its end
    SEALED = 5  # attached; that read has answered the client: no re-run, frames wait for its end
    SETTLING = 6  # attached; hidden requests (read-back, position) are in flight; frames wait
    IN_TRANSACTION = 7  # attached; the server reported a transaction open; frames go to it
    PINNED = 8  # attached between units: session state keeps the connection; frames go to it
    SKIPPING = 9  # no connection: it was lost mid-pipeline; frames dropped up to the Sync
    CLOSED = 10  # the client is gone


class UnitEvent(enum.IntEnum):
    """What can happen to a session. Client messages are named by what they do to a batch."""

    # A client message ...
    FRAME = 0  # ... that continues a batch (extended protocol: Parse, Bind, Describe, Execute...)
    QUERY = 1  # ... a simple query: a whole request cycle
    SYNC = 2  # ... that ends an extended-protocol batch
    FLUSH = 3  # ... that asks for the answers so far without ending the batch
    OTHER = 4  # ... anything else that is not part of a batch (function call, COPY data)
    TERMINATE = 5  # ... saying goodbye
    # Routing and checkout.
    REFUSED = 6  # routing refused the unit (a transaction under statement pooling)
    CONNECTED = 7  # a connection is offered for the unit
    CONNECTED_READ = 8  # ... for a replica read that may be re-run elsewhere if it fails
    MUST_WAIT = 9  # no idle connection: the checkout waits
    NO_SERVER = 10  # the checkout failed (timeout, no server, the server refused)
    HOME_LOST = 11  # session pooling: the connection held for the session is gone
    # The server.
    ROWS_SENT = 12  # a row or a completion of the unit reached the client
    READ_ONLY_REFUSAL = 13  # a replica refused the read as a write (read-only transaction)
    LOST = 14  # the connection broke; the client is owed a ReadyForQuery
    LOST_MID_PIPELINE = 15  # the connection broke mid-pipeline (no ReadyForQuery owed)
    # Every request sent was answered (see `work_done` for which one).
    DONE_IN_TX = 16  # a transaction is open
    DONE_TX_LEFT_OPEN = 17  # a transaction is open under statement pooling
    DONE_READ_BACK = 18  # outside a transaction; what the server kept must be read back
    DONE_ASK_POSITION = 19  # outside a transaction; a write committed (read-your-writes)
    DONE_PINNED = 20  # outside a transaction; session state keeps the connection
    DONE_RELEASE = 21  # outside a transaction; the connection goes back to its pool
    DONE_RESET = 22  # ... after a reset: it held session state (pins) during this hold
    DONE_HOME = 23  # ... session pooling: it stays the session's, detached until the next unit
    # The client.
    CLOSE = 24  # the client's connection closed


class Effect(enum.IntEnum):
    """What the protocol driver does, in the order a rule lists them."""

    IMPOSSIBLE = 0  # the pair cannot happen: logged and otherwise ignored
    WAIT = 1  # the client message waits (reading from the client pauses if too many wait)
    WAIT_OR_ANSWER = 2  # answered without a server if it needs none and nothing waits; or waits
    ROUTE = 3  # route the batch that waits and check a connection out for it
    SEND = 4  # send the client message to the connection, rewritten as pooling requires
    RECORD = 5  # keep the client message, to re-run the read elsewhere
    FLUSH = 6  # write out what is buffered for the server and the client
    TERMINATE = 7  # close the client session (the client said goodbye)
    ANSWER_READY = 8  # answer the client's Sync as an idle server would
    REFUSE_UNIT = 9  # answer the unit's first request with an error; route what follows
    ATTACH = 10  # attach the offered connection: settings replayed, output marked
    SEND_BACKLOG = 11  # the messages that waited go in, each as its client event
    AWAIT_CONNECTION = 12  # wait for a connection in a task
    RESUME_READING = 13  # read from the client again
    FAIL_UNIT = 14  # no connection: error to the client, its batch skipped; route what follows
    RELEASE_UNUSED = 15  # the client left while a connection was on its way: give it back
    FATAL_LOST = 16  # the session's own connection is gone: tell the client, close it
    RERUN_ON_PRIMARY = 17  # learn the statement as a write; drop the connection; run it again
    RERUN_ELSEWHERE = 18  # drop the dead connection; run the read again on another server
    FAIL_LOST = 19  # the unit failed with its connection: error to the client; forget the unit
    ROLLBACK_AND_CLOSE = 20  # statement pooling: roll back the open transaction, close client
    LEARN = 21  # take in the answers of hidden requests (settings read back, the position)
    SETTLE = 22  # settle the session state the unit changed (may send a hidden read-back)
    ASK_POSITION = 23  # ask the primary's position after a write (hidden)
    KEEP = 24  # keep the connection between units (pinned)
    RELEASE = 25  # give the connection back to its pool
    RESET_AND_RELEASE = 26  # reset the connection, then give it back
    DETACH_HOME = 27  # session pooling: detach the session's connection until the next unit
    DRAIN = 28  # route what waits, if a batch is whole
    GIVE_BACK = 29  # the client is gone: give back (reset) or drop every connection it holds


class UnitTableError(LookupError):
    """A (state, event) pair is not in the transition table: a bug in this module."""


_S = UnitState
_E = UnitEvent
_F = Effect

Rule = tuple[tuple[Effect, ...], UnitState]

_NO: tuple[Effect, ...] = ()
_IMPOSSIBLE: tuple[Effect, ...] = (_F.IMPOSSIBLE,)
_CLIENT = (_E.FRAME, _E.QUERY, _E.SYNC, _E.FLUSH, _E.OTHER)
_BATCH_ENDS = (_E.QUERY, _E.SYNC, _E.FLUSH, _E.OTHER)
_ROUTING = (_E.REFUSED, _E.CONNECTED, _E.CONNECTED_READ, _E.MUST_WAIT, _E.NO_SERVER)
_DONE = (
    _E.DONE_IN_TX,
    _E.DONE_TX_LEFT_OPEN,
    _E.DONE_READ_BACK,
    _E.DONE_ASK_POSITION,
    _E.DONE_PINNED,
    _E.DONE_RELEASE,
    _E.DONE_RESET,
    _E.DONE_HOME,
)
_RELEASING = (_F.RELEASE, _F.RESET_AND_RELEASE, _F.DETACH_HOME)


def _impossible(state: UnitState, events: tuple[UnitEvent, ...]) -> dict[UnitEvent, Rule]:
    return {event: (_IMPOSSIBLE, state) for event in events}


def _done(*, waiting: bool) -> dict[UnitEvent, Rule]:
    """The end of the work in flight. `waiting`: client messages waited behind it; they belong
    to the unit if it goes on (transaction, pins), else they are routed on their own."""
    send: tuple[Effect, ...] = (_F.SEND_BACKLOG,) if waiting else ()
    settle = (_F.LEARN, _F.SETTLE)
    release_tail = (_F.RESUME_READING, _F.DRAIN)
    return {
        _E.DONE_IN_TX: (send, _S.IN_TRANSACTION),
        _E.DONE_TX_LEFT_OPEN: ((*send, _F.ROLLBACK_AND_CLOSE), _S.IN_TRANSACTION),
        _E.DONE_READ_BACK: (settle, _S.SETTLING),
        _E.DONE_ASK_POSITION: ((*settle, _F.ASK_POSITION), _S.SETTLING),
        _E.DONE_PINNED: ((*settle, _F.KEEP, *send), _S.PINNED),
        _E.DONE_RELEASE: ((*settle, _F.RELEASE, *release_tail), _S.IDLE),
        _E.DONE_RESET: ((*settle, _F.RESET_AND_RELEASE, *release_tail), _S.IDLE),
        _E.DONE_HOME: ((*settle, _F.DETACH_HOME, *release_tail), _S.IDLE),
    }


def _attached(
    state: UnitState, *, client: dict[UnitEvent, Rule], waiting: bool
) -> dict[UnitEvent, Rule]:
    """The rows shared by every state that holds a connection."""
    rerun = state is _S.READING or state is _S.HOLDING
    return {
        **client,
        _E.TERMINATE: ((_F.FLUSH, _F.TERMINATE), state),
        **_impossible(state, _ROUTING),
        _E.HOME_LOST: ((_F.FATAL_LOST,), _S.IDLE),
        _E.ROWS_SENT: (_NO, _S.SEALED) if rerun else (_NO, state),
        _E.READ_ONLY_REFUSAL: ((_F.RERUN_ON_PRIMARY,), _S.IDLE) if rerun else (_NO, state),
        _E.LOST: ((_F.RERUN_ELSEWHERE,), _S.IDLE) if rerun else ((_F.FAIL_LOST, _F.DRAIN), _S.IDLE),
        _E.LOST_MID_PIPELINE: (
            ((_F.RERUN_ELSEWHERE,), _S.IDLE)
            if rerun
            else ((_F.FAIL_LOST, _F.SEND_BACKLOG), _S.SKIPPING)
        ),
        **_done(waiting=waiting),
        _E.CLOSE: ((_F.GIVE_BACK,), _S.CLOSED),
    }


def _sending(next_state: UnitState) -> dict[UnitEvent, Rule]:
    return {event: ((_F.SEND,), next_state) for event in _CLIENT}


def _waiting(state: UnitState) -> dict[UnitEvent, Rule]:
    return {event: ((_F.WAIT,), state) for event in _CLIENT}


def _unattached(state: UnitState) -> dict[UnitEvent, Rule]:
    """The rows for server events in a state without a connection."""
    return {
        _E.ROWS_SENT: (_IMPOSSIBLE, state),
        _E.READ_ONLY_REFUSAL: (_IMPOSSIBLE, state),
        _E.LOST: (_IMPOSSIBLE, state),
        _E.LOST_MID_PIPELINE: (_IMPOSSIBLE, state),
        **_impossible(state, _DONE),
        _E.CLOSE: ((_F.GIVE_BACK,), _S.CLOSED),
    }


_ROWS: dict[UnitState, dict[UnitEvent, Rule]] = {
    _S.IDLE: {
        _E.FRAME: ((_F.WAIT_OR_ANSWER,), _S.IDLE),
        **{event: ((_F.WAIT_OR_ANSWER, _F.ROUTE), _S.IDLE) for event in _BATCH_ENDS},
        _E.TERMINATE: ((_F.TERMINATE,), _S.IDLE),
        _E.REFUSED: ((_F.REFUSE_UNIT, _F.DRAIN), _S.IDLE),
        _E.CONNECTED: ((_F.ATTACH, _F.SEND_BACKLOG), _S.ATTACHED),
        _E.CONNECTED_READ: ((_F.ATTACH, _F.SEND_BACKLOG), _S.READING),
        _E.MUST_WAIT: ((_F.AWAIT_CONNECTION,), _S.ACQUIRING),
        _E.NO_SERVER: (_IMPOSSIBLE, _S.IDLE),
        _E.HOME_LOST: ((_F.FATAL_LOST,), _S.IDLE),
        **_unattached(_S.IDLE),
    },
    _S.ACQUIRING: {
        **_waiting(_S.ACQUIRING),
        _E.TERMINATE: ((_F.TERMINATE,), _S.ACQUIRING),
        _E.REFUSED: (_IMPOSSIBLE, _S.ACQUIRING),
        _E.CONNECTED: ((_F.ATTACH, _F.SEND_BACKLOG, _F.RESUME_READING), _S.ATTACHED),
        _E.CONNECTED_READ: ((_F.ATTACH, _F.SEND_BACKLOG, _F.RESUME_READING), _S.READING),
        _E.MUST_WAIT: (_IMPOSSIBLE, _S.ACQUIRING),
        _E.NO_SERVER: ((_F.FAIL_UNIT,), _S.IDLE),
        _E.HOME_LOST: ((_F.FATAL_LOST,), _S.ACQUIRING),
        **_unattached(_S.ACQUIRING),
    },
    _S.ATTACHED: _attached(_S.ATTACHED, client=_sending(_S.ATTACHED), waiting=False),
    _S.READING: _attached(
        _S.READING,
        client={
            _E.FRAME: ((_F.RECORD, _F.SEND), _S.READING),
            _E.QUERY: ((_F.RECORD, _F.SEND), _S.HOLDING),
            _E.SYNC: ((_F.RECORD, _F.SEND), _S.HOLDING),
            # The client waits for what it asked so far: holding it back would withhold it.
            _E.FLUSH: ((_F.SEND,), _S.ATTACHED),
            _E.OTHER: ((_F.RECORD, _F.SEND), _S.READING),
        },
        waiting=True,
    ),
    _S.HOLDING: _attached(_S.HOLDING, client=_waiting(_S.HOLDING), waiting=True),
    _S.SEALED: _attached(_S.SEALED, client=_waiting(_S.SEALED), waiting=True),
    _S.SETTLING: _attached(_S.SETTLING, client=_waiting(_S.SETTLING), waiting=True),
    _S.IN_TRANSACTION: _attached(
        _S.IN_TRANSACTION, client=_sending(_S.IN_TRANSACTION), waiting=False
    ),
    _S.PINNED: _attached(_S.PINNED, client=_sending(_S.ATTACHED), waiting=False),
    _S.SKIPPING: {
        _E.FRAME: (_NO, _S.SKIPPING),
        _E.QUERY: (_NO, _S.SKIPPING),
        _E.SYNC: ((_F.ANSWER_READY,), _S.IDLE),
        _E.FLUSH: (_NO, _S.SKIPPING),
        _E.OTHER: (_NO, _S.SKIPPING),
        _E.TERMINATE: ((_F.TERMINATE,), _S.SKIPPING),
        # Routing runs only from IDLE.
        **_impossible(_S.SKIPPING, _ROUTING),
        _E.HOME_LOST: ((_F.FATAL_LOST,), _S.SKIPPING),
        **_unattached(_S.SKIPPING),
    },
    _S.CLOSED: {
        **{event: (_NO, _S.CLOSED) for event in _CLIENT},
        _E.TERMINATE: (_NO, _S.CLOSED),
        _E.REFUSED: (_IMPOSSIBLE, _S.CLOSED),
        # A checkout that was waiting when the client left.
        _E.CONNECTED: ((_F.RELEASE_UNUSED,), _S.CLOSED),
        _E.CONNECTED_READ: ((_F.RELEASE_UNUSED,), _S.CLOSED),
        _E.MUST_WAIT: (_IMPOSSIBLE, _S.CLOSED),
        _E.NO_SERVER: (_NO, _S.CLOSED),
        _E.HOME_LOST: (_NO, _S.CLOSED),
        _E.ROWS_SENT: (_NO, _S.CLOSED),
        _E.READ_ONLY_REFUSAL: (_NO, _S.CLOSED),
        _E.LOST: (_NO, _S.CLOSED),
        _E.LOST_MID_PIPELINE: (_NO, _S.CLOSED),
        **{event: (_NO, _S.CLOSED) for event in _DONE},
        _E.CLOSE: (_NO, _S.CLOSED),
    },
}

# (state, event) -> (effects in order, next state).
TRANSITIONS: Mapping[tuple[UnitState, UnitEvent], Rule] = MappingProxyType(
    {(state, event): row[event] for state, row in _ROWS.items() for event in row}
)


def _dense() -> tuple[tuple[Rule, ...], ...]:
    rows = []
    for state in UnitState:
        row = []
        for event in UnitEvent:
            found = TRANSITIONS.get((state, event))
            if found is None:
                raise UnitTableError(f"no transition for {event.name} in state {state.name}")
            row.append(found)
        rows.append(tuple(row))
    return tuple(rows)


# The same table indexed by state, then event (both small integers): what the driver reads on
# every message, without building a key.
RULES: tuple[tuple[Rule, ...], ...] = _dense()


def rule(state: UnitState, event: UnitEvent) -> Rule:
    """Look up (effects, next state) for `event` in `state`; see `TRANSITIONS`."""
    try:
        return TRANSITIONS[state, event]
    except KeyError:
        raise UnitTableError(f"no transition for {event.name} in state {state.name}") from None


# Derived from the table (a test checks): states in which a client message goes to the
# connection, states that hold a connection, states that hold the client's output back.
SENDS_FRAMES: frozenset[UnitState] = frozenset(
    state for state in UnitState if _F.SEND in TRANSITIONS[state, _E.QUERY][0]
)
CONNECTION_STATES: frozenset[UnitState] = frozenset(
    (
        _S.ATTACHED,
        _S.READING,
        _S.HOLDING,
        _S.SEALED,
        _S.SETTLING,
        _S.IN_TRANSACTION,
        _S.PINNED,
    )
)
HOLDS_OUTPUT: frozenset[UnitState] = frozenset((_S.READING, _S.HOLDING))
RELEASING_EFFECTS: frozenset[Effect] = frozenset(_RELEASING)


def work_done(
    *,
    in_transaction: bool,
    statement_mode: bool,
    read_back: bool,
    ask_position: bool,
    pinned: bool,
    home: bool,
    reset: bool,
) -> UnitEvent:
    """The event raised when every request sent was answered.

    `in_transaction`: the server reports a transaction open (or failed); `read_back`: settling
    the unit will send hidden requests (the unit left the server's state in doubt); `ask_position`:
    read-your-writes wants the primary's position after a write; `pinned`: session state keeps
    the connection; `home`: it is the session's own (session pooling); `reset`: it held session
    state since it was checked out. The order of the checks is the rule: the unit does not end
    inside a transaction; hidden requests come before the connection is kept or released.
    """
    if in_transaction:
        return _DONE_TX_LEFT_OPEN if statement_mode else _DONE_IN_TX
    if read_back:
        return _DONE_READ_BACK
    if ask_position:
        return _DONE_ASK_POSITION
    if pinned:
        return _DONE_PINNED
    if home:
        return _DONE_HOME
    return _DONE_RESET if reset else _DONE_RELEASE


# Module constants: compiled, a constant is read without an enum attribute lookup.
_DONE_TX_LEFT_OPEN: Final = UnitEvent.DONE_TX_LEFT_OPEN
_DONE_IN_TX: Final = UnitEvent.DONE_IN_TX
_DONE_READ_BACK: Final = UnitEvent.DONE_READ_BACK
_DONE_ASK_POSITION: Final = UnitEvent.DONE_ASK_POSITION
_DONE_PINNED: Final = UnitEvent.DONE_PINNED
_DONE_HOME: Final = UnitEvent.DONE_HOME
_DONE_RESET: Final = UnitEvent.DONE_RESET
_DONE_RELEASE: Final = UnitEvent.DONE_RELEASE
