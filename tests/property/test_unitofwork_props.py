"""The unit-of-work table (core/unitofwork.py): every pair, and random walks through it."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from dbbalancer.core.unitofwork import (
    CONNECTION_STATES,
    HOLDS_OUTPUT,
    RELEASING_EFFECTS,
    RULES,
    SENDS_FRAMES,
    TRANSITIONS,
    Effect,
    UnitEvent,
    UnitState,
    rule,
    work_done,
)

PAIRS = list(itertools.product(UnitState, UnitEvent))
RELEASE_EVENTS = {UnitEvent.DONE_RELEASE, UnitEvent.DONE_RESET, UnitEvent.DONE_HOME}
# Effects after which the session holds no connection.
LETS_GO = RELEASING_EFFECTS | {
    Effect.FAIL_LOST,
    Effect.RERUN_ON_PRIMARY,
    Effect.RERUN_ELSEWHERE,
    Effect.FATAL_LOST,
    Effect.GIVE_BACK,
}


def test_the_table_is_total() -> None:
    assert len(TRANSITIONS) == len(UnitState) * len(UnitEvent)
    for state, event in PAIRS:
        assert rule(state, event) == RULES[state][event]  # equal: mypyc re-boxes tuples


def test_impossible_pairs_change_nothing() -> None:
    for state, event in PAIRS:
        effects, after = rule(state, event)
        if Effect.IMPOSSIBLE in effects:
            assert effects == (Effect.IMPOSSIBLE,)
            assert after is state


def test_a_connection_is_released_only_when_everything_was_answered() -> None:
    """Released, reset or detached only on the events that `work_done` raises with nothing in
    flight, not pinned, nothing left to ask; never from a state without a connection."""
    for state, event in PAIRS:
        effects, after = rule(state, event)
        if RELEASING_EFFECTS & set(effects):
            assert event in RELEASE_EVENTS, (state, event)
            assert state in CONNECTION_STATES
            assert after is UnitState.IDLE


def test_pinned_connections_are_kept() -> None:
    for state in CONNECTION_STATES:
        effects, after = rule(state, UnitEvent.DONE_PINNED)
        assert Effect.KEEP in effects
        assert not RELEASING_EFFECTS & set(effects)
        assert after is UnitState.PINNED
    for state in UnitState:
        for event in UnitEvent:
            if Effect.KEEP in rule(state, event)[0]:
                assert event is UnitEvent.DONE_PINNED


def test_hidden_requests_keep_the_connection() -> None:
    """A read-back or a position query in flight: the unit waits in SETTLING."""
    for state in CONNECTION_STATES:
        for event in (UnitEvent.DONE_READ_BACK, UnitEvent.DONE_ASK_POSITION):
            effects, after = rule(state, event)
            assert after is UnitState.SETTLING
            assert not RELEASING_EFFECTS & set(effects)
    for event in (UnitEvent.QUERY, UnitEvent.SYNC, UnitEvent.FRAME):
        assert rule(UnitState.SETTLING, event)[0] == (Effect.WAIT,)


def test_only_a_read_the_client_saw_nothing_of_is_rerun() -> None:
    """Re-runs happen only while output is held back (READING, HOLDING); those states are
    entered only from a replica read's checkout (CONNECTED_READ) or from each other, so a unit
    that may have written (routed to the primary: CONNECTED) is never re-run on a replica."""
    for state, event in PAIRS:
        effects, after = rule(state, event)
        if Effect.RERUN_ELSEWHERE in effects or Effect.RERUN_ON_PRIMARY in effects:
            assert state in HOLDS_OUTPUT
        if after in HOLDS_OUTPUT and state not in HOLDS_OUTPUT:
            assert event is UnitEvent.CONNECTED_READ
        if Effect.RECORD in effects:
            assert state is UnitState.READING


def test_derived_sets() -> None:
    assert HOLDS_OUTPUT <= CONNECTION_STATES
    assert SENDS_FRAMES <= CONNECTION_STATES
    assert {UnitState.ATTACHED, UnitState.IN_TRANSACTION, UnitState.PINNED} <= SENDS_FRAMES
    for state in UnitState:
        sends = Effect.SEND in rule(state, UnitEvent.QUERY)[0]
        assert sends == (state in SENDS_FRAMES)


def test_a_closed_session_stays_closed() -> None:
    for event in UnitEvent:
        effects, after = rule(UnitState.CLOSED, event)
        assert after is UnitState.CLOSED
        assert not RELEASING_EFFECTS & set(effects)
    for state in UnitState:
        assert rule(state, UnitEvent.CLOSE)[1] is UnitState.CLOSED


@given(
    in_transaction=st.booleans(),
    statement_mode=st.booleans(),
    read_back=st.booleans(),
    ask_position=st.booleans(),
    pinned=st.booleans(),
    home=st.booleans(),
    reset=st.booleans(),
)
def test_work_done_precedence(
    in_transaction: bool,
    statement_mode: bool,
    read_back: bool,
    ask_position: bool,
    pinned: bool,
    home: bool,
    reset: bool,
) -> None:
    event = work_done(
        in_transaction=in_transaction,
        statement_mode=statement_mode,
        read_back=read_back,
        ask_position=ask_position,
        pinned=pinned,
        home=home,
        reset=reset,
    )
    if in_transaction:
        assert event in (UnitEvent.DONE_IN_TX, UnitEvent.DONE_TX_LEFT_OPEN)
        assert (event is UnitEvent.DONE_TX_LEFT_OPEN) == statement_mode
    elif read_back or ask_position or pinned:
        assert event not in RELEASE_EVENTS
    else:
        assert event in RELEASE_EVENTS
    if event in RELEASE_EVENTS:
        assert not pinned
        assert not read_back
        assert not ask_position
        assert not in_transaction


@given(st.lists(st.sampled_from(list(UnitEvent)), max_size=60))
def test_random_walks_keep_the_connection_bookkeeping(events: list[UnitEvent]) -> None:
    """Feed any events: a connection is attached only when none is held, sent to only while
    held, and the state says whether one is held."""
    state = UnitState.IDLE
    held = False
    for event in events:
        effects, after = RULES[state][event]
        if Effect.IMPOSSIBLE in effects:
            assert after is state
            continue
        for effect in effects:
            if effect is Effect.ATTACH:
                assert not held
                held = True
            elif effect in (Effect.SEND, Effect.RECORD, Effect.SETTLE, Effect.ASK_POSITION):
                assert held
            elif effect in LETS_GO:
                if effect is not Effect.GIVE_BACK and effect is not Effect.FATAL_LOST:
                    assert held
                held = False
        state = after
        if state is not UnitState.CLOSED:
            assert held == (state in CONNECTION_STATES), (event, state)
        else:
            assert not held
