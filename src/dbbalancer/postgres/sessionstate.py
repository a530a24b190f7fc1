"""What one client has changed of its session, as transaction pooling must carry it over.

A client under transaction pooling runs each unit of work on whatever server connection is free,
so the settings it changed must follow it (they are replayed on every connection it takes, see
`params.py`), and state that cannot follow it (temp tables, WITH HOLD cursors, LISTEN, session
advisory locks, SQL PREPARE, LOAD, SET SESSION AUTHORIZATION) pins it to one connection until
that state is gone. Sequence state (currval/lastval) is tracked apart, in `sequences.py`.

The rule that keeps this exact: nothing is believed before the server has confirmed it. A
statement's effects are recorded as pending when it is sent, and settled when the unit of work
ends outside a transaction:
- with no error, no rollback and no failed transaction, the pending settings are what the server
  now has, and the pending unpins (DISCARD ALL, UNLISTEN *, CLOSE ALL, ...) took effect;
- otherwise the server may have kept part of it (ROLLBACK TO a savepoint, an error after a SET in
  a pipeline, a DISCARD ALL refused inside a transaction): the settings touched are read back
  from the server (`read_back`), and the pins stay, since a pin kept too long costs only
  pooling, while a pin dropped too early hands state to the next client.
Pins are taken when the statement is sent, for the same reason. Sans-IO.
"""

from __future__ import annotations

import itertools
import logging

from dbbalancer.core.statement import (
    Classification,
    PinReason,
    TxAction,
    UnpinEvent,
)
from dbbalancer.postgres.params import quote_literal, quote_name

log = logging.getLogger(__name__)

# Pins that end with a given event. Only events that end the state for certain unpin: a
# pg_advisory_unlock() may release a lock the session never held while another stays held, and
# CLOSE of one cursor says nothing of another WITH HOLD cursor, so those keep the pin until the
# all-clearing form (or the client's disconnect).
UNPINS: dict[UnpinEvent, frozenset[PinReason]] = {
    UnpinEvent.DISCARD_ALL: frozenset(PinReason),
    UnpinEvent.DISCARD_TEMP: frozenset((PinReason.TEMP_TABLE,)),
    UnpinEvent.UNLISTEN_ALL: frozenset((PinReason.LISTEN,)),
    UnpinEvent.ADVISORY_UNLOCK_ALL: frozenset((PinReason.ADVISORY_LOCK,)),
    UnpinEvent.CLOSE_ALL_CURSORS: frozenset((PinReason.WITH_HOLD_CURSOR,)),
    UnpinEvent.DEALLOCATE_ALL: frozenset((PinReason.SQL_PREPARE,)),
    UnpinEvent.RESET_SESSION_AUTHORIZATION: frozenset((PinReason.SESSION_AUTHORIZATION,)),
}

# Numbers the units whose parse context is their own (SessionState.transient), process-wide so
# that no two sessions ever share one.
_TRANSIENT_UNITS = itertools.count(1)
_ROLLBACKS = frozenset((TxAction.ROLLBACK, TxAction.ROLLBACK_TO, TxAction.ROLLBACK_PREPARED))


class SessionState:
    """One client's settings and pins (see the module docstring)."""

    __slots__ = (
        "_pending_unpins",
        "failed",
        "pending",
        "pinned_since_release",
        "pins",
        "rolled_back",
        "settings",
        "startup",
        "transient",
        "who",
    )

    def __init__(self, startup: dict[str, str], who: object = None) -> None:
        self.startup = dict(startup)  # from the StartupMessage: what RESET returns to
        self.settings = dict(startup)  # what the client's session has now, as the server stores it
        self.pending: list[tuple[str, str | None, bool]] = []  # (name, value, reset_all)
        self._pending_unpins: list[UnpinEvent] = []
        self.pins: dict[PinReason, int] = {}
        self.rolled_back = False  # a ROLLBACK (TO) was sent in this unit
        self.failed = False  # a ReadyForQuery said the transaction failed
        # The connection held now was pinned at some point: it is reset before it is pooled.
        self.pinned_since_release = False
        # A setting that parsing reads was changed in this unit (SET LOCAL, set_config(...,
        # true), a SET not settled yet): a number of this unit's own while so, else None.
        self.transient: int | None = None
        self.who = who

    def record(self, c: Classification) -> None:
        """A statement was sent to the server: note what it may change."""
        for pin in c.pins:
            self.pin(pin)
        self._pending_unpins.extend(c.unpins)
        if c.tx in _ROLLBACKS:
            self.rolled_back = True
        for change in c.settings:
            if self.transient is None and (
                change.reset_all or change.name.lower() in PARSE_SETTINGS
            ):
                self.transient = next(_TRANSIENT_UNITS)
            if not change.local:
                self.pending.append((change.name, change.value, change.reset_all))

    def pin(self, reason: PinReason) -> None:
        """Pin the client to the connection it holds, for `reason`."""
        if reason not in self.pins:
            log.info("%r: pinned to its server connection: %s", self.who, reason.value)
        self.pins[reason] = self.pins.get(reason, 0) + 1
        self.pinned_since_release = True

    @property
    def unsettled(self) -> bool:
        """Something of the unit is left to settle."""
        return bool(
            self.pending
            or self._pending_unpins
            or self.failed
            or self.rolled_back
            or self.transient is not None
        )

    def in_doubt(self, errors: int) -> bool:
        """After a unit with `errors` errors: may the server have kept only part of it?"""
        return self.failed or self.rolled_back or errors > 0

    def settle(self, doubt: bool) -> list[str] | None:
        """The unit of work ended outside a transaction: settle what it changed.

        Returns the setting names to read back from the server when in doubt (then `learn`
        takes the values), else None.
        """
        self.failed = False
        self.rolled_back = False
        self.transient = None
        unpins, self._pending_unpins = self._pending_unpins, []
        pending, self.pending = self.pending, []
        if not doubt:
            for event in unpins:
                for pin in UNPINS.get(event, frozenset()):
                    if self.pins.pop(pin, None) is not None:
                        log.info("%r: unpinned (%s)", self.who, event.value)
            for name, value, reset_all in pending:
                self._apply(name, value, reset_all)
            return None
        if not pending:
            return None
        names = dict.fromkeys(name for name, _, reset_all in pending if not reset_all)
        if any(reset_all for _, _, reset_all in pending):
            names.update(dict.fromkeys(self.settings))
            names.update(dict.fromkeys(self.startup))
        return list(names)

    def learn(self, names: list[str], values: list[str | None]) -> None:
        """The server's own values of `names` (None: no such setting)."""
        for name, value in zip(names, values, strict=True):
            if value is None:
                self.settings.pop(name, None)
            else:
                self.settings[name] = value

    def forget_pending(self) -> None:
        """The connection was lost: nothing sent in the unit counts."""
        self.pending.clear()
        self._pending_unpins.clear()
        self.failed = False
        self.rolled_back = False
        self.transient = None

    def _apply(self, name: str, value: str | None, reset_all: bool) -> None:
        if reset_all:
            self.settings = dict(self.startup)
        elif value is None:
            if name in self.startup:
                self.settings[name] = self.startup[name]
            else:
                self.settings.pop(name, None)
        else:
            self.settings[name] = value


# Settings that parse analysis reads: name resolution, the input of date/time/interval literals
# folded into constants, string-literal lexing, text-search defaults.
PARSE_SETTINGS: frozenset[str] = frozenset(
    (
        "search_path",
        "datestyle",
        "timezone",
        "intervalstyle",
        "timezone_abbreviations",
        "standard_conforming_strings",
        "backslash_quote",
        "default_text_search_config",
        "transform_null_equals",
        "array_nulls",
        "client_encoding",
    )
)


def parse_context(settings: dict[str, str]) -> str:
    """The values of `settings` that parse analysis depends on, as one string (names are
    case-insensitive; a later entry wins, as it does when the settings are replayed)."""
    found: dict[str, str] = {}
    for name, value in settings.items():
        lowered = name.lower()
        if lowered in PARSE_SETTINGS:
            found[lowered] = value
    return "\0".join(f"{name}={found[name]}" for name in sorted(found))


def read_back_query(names: list[str]) -> str:
    """A query whose one row holds the server's current value of each setting in `names`."""
    calls = []
    for name in names:
        quote_name(name)  # validates the name
        calls.append(f"pg_catalog.current_setting({quote_literal(name)}, true)")
    return "SELECT " + ", ".join(calls)
