"""core.routing.decide: the primary unless the statement is known to be a read."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbbalancer.core.routing import RouteReason, SessionFacts, Target, decide
from dbbalancer.core.statement import (
    Classification,
    Reason,
    RouteHint,
    StatementKind,
    TxAction,
)

READ = Classification(StatementKind.READ, Reason.PLAIN_SELECT, read_only=True)
WRITE = Classification(StatementKind.WRITE, Reason.DML, read_only=False)
BEGIN = Classification(StatementKind.TRANSACTION, Reason.TX_CONTROL, False, tx=TxAction.BEGIN)
BEGIN_RO = Classification(
    StatementKind.TRANSACTION, Reason.TX_CONTROL, False, tx=TxAction.BEGIN, tx_read_only=True
)


def test_split_off_sends_everything_to_the_primary() -> None:
    for c in (READ, WRITE, BEGIN_RO):
        decision = decide(c, split=False)
        assert decision.target is Target.PRIMARY
        assert decision.reason is RouteReason.SPLIT_DISABLED


def test_reads_to_replicas_writes_to_primary() -> None:
    assert decide(READ, split=True).target is Target.REPLICA
    assert decide(WRITE, split=True).target is Target.PRIMARY
    assert decide(WRITE, split=True).reason is RouteReason.WRITE


def test_transactions() -> None:
    assert decide(BEGIN, split=True).target is Target.PRIMARY
    assert decide(BEGIN_RO, split=True).target is Target.REPLICA
    ro_to_primary = decide(BEGIN_RO, split=True, read_only_transactions_to_replica=False)
    assert ro_to_primary.target is Target.PRIMARY


def test_hints() -> None:
    hinted_read = Classification(
        StatementKind.READ, Reason.PLAIN_SELECT, True, hint=RouteHint.PRIMARY
    )
    assert decide(hinted_read, split=True).reason is RouteReason.HINT_PRIMARY
    hinted_write = Classification(StatementKind.WRITE, Reason.DML, False, hint=RouteHint.REPLICA)
    assert decide(hinted_write, split=True).target is Target.PRIMARY
    hinted_replica = Classification(
        StatementKind.READ, Reason.PLAIN_SELECT, True, hint=RouteHint.REPLICA
    )
    assert decide(hinted_replica, split=True, default_primary=True).target is Target.REPLICA


def test_user_default_primary() -> None:
    decision = decide(READ, split=True, default_primary=True)
    assert decision.target is Target.PRIMARY
    assert decision.reason is RouteReason.USER_DEFAULT_PRIMARY


@given(
    kind=st.sampled_from(StatementKind),
    hint=st.sampled_from([None, *RouteHint]),
    default_primary=st.booleans(),
    ro=st.booleans(),
)
def test_never_a_non_read_to_a_replica(
    kind: StatementKind, hint: RouteHint | None, default_primary: bool, ro: bool
) -> None:
    c = Classification(kind, Reason.UNKNOWN, read_only=False, hint=hint)
    decision = decide(
        c, split=True, default_primary=default_primary, read_only_transactions_to_replica=ro
    )
    assert decision.target is Target.PRIMARY


@pytest.mark.parametrize("reason", list(RouteReason))
def test_every_reason_has_a_readable_value(reason: RouteReason) -> None:
    assert reason.value
    assert reason.value == reason.value.strip()


AUTOCOMMIT_OFF = SessionFacts(autocommit=False)


def test_autocommit_off_keeps_reads_on_the_primary() -> None:
    # MySQL autocommit=0: a bare SELECT opens a transaction that may write later.
    decision = decide(READ, split=True, session=AUTOCOMMIT_OFF)
    assert decision.target is Target.PRIMARY
    assert decision.reason is RouteReason.AUTOCOMMIT_OFF
    hinted = dataclasses.replace(READ, hint=RouteHint.REPLICA)
    assert decide(hinted, split=True, session=AUTOCOMMIT_OFF).target is Target.PRIMARY


def test_autocommit_off_still_lets_a_read_only_transaction_go_to_a_replica() -> None:
    decision = decide(BEGIN_RO, split=True, session=AUTOCOMMIT_OFF)
    assert decision.target is Target.REPLICA


def test_a_pinned_session_runs_on_its_primary_connection() -> None:
    decision = decide(READ, split=True, session=SessionFacts(pinned=True))
    assert decision == decide(WRITE, split=True, session=SessionFacts(pinned=True))
    assert decision.target is Target.PRIMARY
    assert decision.reason is RouteReason.PINNED


def test_default_session_facts_change_nothing() -> None:
    for c in (READ, WRITE, BEGIN, BEGIN_RO):
        assert decide(c, split=True) == decide(c, split=True, session=SessionFacts())
