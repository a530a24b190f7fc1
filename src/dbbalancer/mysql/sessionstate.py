"""What a MySQL client's session holds, so that transaction pooling can move it between server
connections (issue #12).

A `MySessionState` is told every command's classification and whether the server accepted it
(`apply`), and answers three questions:

* what to replay on a freshly checked-out connection (`replay_statements`): session variables
  the client set (SET [SESSION] x = literal, SET NAMES, ...) to values other than those the
  connections of its pool profile start with (`mysql/profile.py`), the current database and
  user variables (SET @x = <literal>, keeping integers, decimals, doubles, strings, binary
  strings and NULL), and the statement mode if the client switched it
  (`multi_statements_switch`);
* what must be read back at the end of the unit (`read_back_sql`): user variables the server
  computed (SELECT @x := ..., SET @x = expr, SELECT ... INTO @x), read with `SELECT @x, ...`
  and remembered as literals (`learn_read_back`);
* what keeps the client on its connection (`pin_reasons`): temporary tables, GET_LOCK, LOCK
  TABLES, SQL PREPARE, binary-protocol prepared statements (all of them without statement
  mapping; with it, those whose server statement holds a cursor or parameter data), an open XA
  branch, HANDLER, settings it cannot replay, `SET TRANSACTION` for the next transaction. Each
  pin is released when the state that caused it is gone. Autocommit off does not pin: it is
  replayed (`replay_sql`), so a client holds no connection between its transactions.

Nothing here touches a socket; the engine (`mysql/engine.py`) sends the text.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Final

from dbbalancer.core.statement import (
    Classification,
    PinReason,
    SettingChange,
    TxAction,
    UnpinEvent,
)
from dbbalancer.mysql.profile import CHARSET_SETTINGS, ProfileDefaults

__all__ = ["MySessionState", "literal_of", "quote_string"]

# Setting names kept apart: autocommit is `autocommit_off`, replayed last.
_NOT_REPLAYED: Final = frozenset({"autocommit"})
# What surely ends the transaction that `SET TRANSACTION` (next transaction only) was for, or
# discards it (the server clears it at any commit or rollback, even with no transaction open;
# an autocommitted statement on tables clears it too, which the text does not tell: the pin
# then lasts until one of these).
_ENDS_NEXT_TRANSACTION: Final = frozenset(
    {TxAction.COMMIT, TxAction.ROLLBACK, TxAction.COMMIT_AND_CHAIN, TxAction.ROLLBACK_AND_CHAIN}
)
# What SET SESSION TRANSACTION changed, replayed with that statement: the variable names differ
# between servers (MariaDB before 11.1 knows only tx_isolation and tx_read_only).
_TRANSACTION_SETTINGS: Final = frozenset({"transaction_isolation", "transaction_read_only"})
_NUMBER: Final = re.compile(r"-?\d+(\.\d+)?([eE][-+]?\d+)?")
_CREATE_TEMP: Final = re.compile(
    r"(?is)^\s*create\s+(?:or\s+replace\s+)?temporary\s+table\s+(?:if\s+not\s+exists\s+)?"
    r"((?:`[^`]+`|[\w$]+)(?:\s*\.\s*(?:`[^`]+`|[\w$]+))?)"
)
# Column types of a read-back (Protocol::ColumnType).
_INTEGER_TYPES: Final = frozenset({1, 2, 3, 8, 9})  # TINY SHORT LONG LONGLONG INT24
_DECIMAL_TYPES: Final = frozenset({0, 246})  # DECIMAL NEWDECIMAL
_FLOAT_TYPES: Final = frozenset({4, 5})  # FLOAT DOUBLE
_BINARY_CHARSET: Final = 63


def quote_string(text: str) -> str:
    """A string literal that reads the same under any sql_mode (hex, then converted)."""
    return f"CONVERT(X'{text.encode('utf-8').hex()}' USING utf8mb4)"


def literal_of(value: bytes | None, column_type: int, charset: int) -> str:
    """The SQL literal that gives a user variable back the value (and type) a read-back
    returned as text."""
    if value is None:
        return "NULL"
    if column_type in _INTEGER_TYPES or column_type in _DECIMAL_TYPES:
        text = value.decode("ascii")
        if _NUMBER.fullmatch(text):
            return text
    if column_type in _FLOAT_TYPES:
        text = value.decode("ascii")
        if _NUMBER.fullmatch(text):
            return text if "e" in text.lower() else f"{text}e0"
    if charset == _BINARY_CHARSET:
        return f"X'{value.hex()}'"
    return quote_string(value.decode("utf-8", "replace"))


def _setting_literal(value: str) -> str:
    return value if _NUMBER.fullmatch(value) else quote_string(value)


def _mode_dependent(literal: str) -> bool:
    """Whether a literal as the client wrote it may read differently under another sql_mode
    (a backslash: NO_BACKSLASH_ESCAPES; double quotes: ANSI_QUOTES): such a variable is read
    back from the server instead of replayed as written."""
    return "\\" in literal or '"' in literal or literal.strip() == "?"


def _name(raw: str) -> str:
    return "".join(part.strip().strip("`") for part in raw.split(".")).lower()


class MySessionState:
    """One client's session state (see the module docstring)."""

    def __init__(
        self,
        *,
        database: str,
        defaults: ProfileDefaults | None = None,
        multi_statements: bool = True,
    ) -> None:
        self.home_database = database
        self.database = database
        # What the connections of the client's pool profile start with (mysql/profile.py): a
        # setting that leaves them so is no change. None: nothing is known.
        self.defaults = defaults
        self.settings: dict[str, str] = {}
        self.variables: dict[str, str] = {}  # user variable -> SQL literal
        self.unknown_variables: set[str] = set()  # computed by the server: read back
        self.pins: Counter[tuple[PinReason, str]] = Counter()
        # Binary-protocol statements: id -> (classification, text), applied at each execute.
        self.statements: dict[int, tuple[Classification, str] | None] = {}
        # Every open statement pins (no statement mapping: max_prepared_statements = 0).
        self.statements_pin = True
        # Mapped statements whose server statement holds state of its own: (id, reason).
        self.statement_pins: set[tuple[int, str]] = set()
        self.autocommit_off = False
        # COM_SET_OPTION: the client's statement mode, and its connections' (the profile's).
        self.multi_statements_off = self.default_multi_statements_off = not multi_statements
        self.last_insert_id = 0

    # -- what the client did --------------------------------------------------------------

    def apply(self, c: Classification, sql: str, *, ok: bool) -> None:
        """Take in a COM_QUERY's effects once the server answered (`ok`: without ERR). A
        statement that failed changed nothing, except in a multi-statement string, where the
        statements before the failing one ran: what they did is not known exactly, so the
        client is pinned."""
        if not ok:
            if c.statements > 1 and (c.settings or c.user_variables or c.pins or c.unpins):
                self.pins[PinReason.UNTRACKED_SETTING, ""] += 1
            return
        parts = c.parts or (c,)
        texts = [sql] if len(parts) == 1 else [""] * len(parts)
        for part, text in zip(parts, texts, strict=True):
            self._apply_one(part, text)

    def _apply_one(self, c: Classification, sql: str) -> None:
        for setting in c.settings:
            self._setting(setting)
        if c.autocommit is not None:
            self.autocommit_off = not c.autocommit
        for variable in c.user_variables:
            name = variable.name.lower()
            if variable.value is None or _mode_dependent(variable.value):
                self.unknown_variables.add(name)
                self.variables.pop(name, None)
            else:
                self.variables[name] = variable.value
                self.unknown_variables.discard(name)
        if c.database is not None:
            self.database = c.database
        for pin in c.pins:
            target = ""
            if pin is PinReason.TEMP_TABLE:
                found = _CREATE_TEMP.match(sql)
                target = _name(found.group(1)) if found else "?"  # unnamed: never unpinned
            elif pin is PinReason.SQL_PREPARE:
                target = (c.prepared_name or "?").lower()
            elif pin is PinReason.DISTRIBUTED_TRANSACTION or pin is PinReason.OPEN_CURSOR:
                target = (c.target or "?").lower()
            key = (pin, target)
            if pin is PinReason.SQL_PREPARE or pin is PinReason.TEMP_TABLE:
                self.pins[key] = 1
            else:
                self.pins[key] += 1
        for unpin in c.unpins:
            self._unpin(unpin, c)
        if c.tx in _ENDS_NEXT_TRANSACTION:
            self._drop(PinReason.NEXT_TRANSACTION, None)

    def _setting(self, setting: SettingChange) -> None:
        if setting.name in _NOT_REPLAYED:
            return
        if setting.value is not None and setting.value.strip() == "?":
            # A prepared statement's parameter: the value is in the execute, not the text.
            self.pins[PinReason.UNTRACKED_SETTING, ""] += 1
            return
        if setting.name == "character_set_connection":
            # Setting the character set also sets its default collation (SET NAMES x after
            # SET NAMES x COLLATE y); a COLLATE in the same statement comes after it.
            self.settings.pop("collation_connection", None)
        if setting.value is None:  # DEFAULT: the pooled connection's value after a reset
            self.settings.pop(setting.name, None)
        else:
            self.settings[setting.name] = setting.value

    def _drop(self, reason: PinReason, target: str | None) -> None:
        if target is None:
            for key in [k for k in self.pins if k[0] is reason]:
                del self.pins[key]
            return
        key = (reason, target)
        if key in self.pins:
            self.pins[key] -= 1
            if self.pins[key] <= 0:
                del self.pins[key]

    def _unpin(self, unpin: UnpinEvent, c: Classification) -> None:
        target = c.target.lower() if c.target else None
        if unpin is UnpinEvent.DROP_TEMP_TABLE:
            if target is not None:
                self._drop(PinReason.TEMP_TABLE, _name(target))
        elif unpin is UnpinEvent.ADVISORY_UNLOCK:
            # GET_LOCK is counted (locks nest); RELEASE_LOCK undoes one.
            self._drop(PinReason.ADVISORY_LOCK, "")
        elif unpin is UnpinEvent.ADVISORY_UNLOCK_ALL:
            self._drop(PinReason.ADVISORY_LOCK, None)
        elif unpin is UnpinEvent.TABLE_UNLOCK_ALL:
            self._drop(PinReason.TABLE_LOCK, None)
        elif unpin is UnpinEvent.DEALLOCATE:
            name = (c.prepared_name or c.target or "").lower()
            if name:
                self._drop(PinReason.SQL_PREPARE, name)
        elif unpin is UnpinEvent.END_DISTRIBUTED_TRANSACTION:
            self._drop(PinReason.DISTRIBUTED_TRANSACTION, None)
        elif unpin is UnpinEvent.CLOSE_CURSOR and target is not None:
            self._drop(PinReason.OPEN_CURSOR, target)

    def init_db(self, database: str) -> None:
        """COM_INIT_DB succeeded."""
        self.database = database

    def prepared(self, statement_id: int, c: Classification | None = None, sql: str = "") -> None:
        """COM_STMT_PREPARE of `sql` (classified `c`) succeeded."""
        self.statements[statement_id] = None if c is None else (c, sql)

    def executed(self, statement_id: int, *, ok: bool) -> Classification | None:
        """COM_STMT_EXECUTE answered: the prepared statement's effects are taken in as a
        COM_QUERY's would be. Returns its classification (None for an unknown id)."""
        found = self.statements.get(statement_id)
        if found is None:
            return None
        c, sql = found
        self.apply(c, sql, ok=ok)
        return c

    def closed(self, statement_id: int) -> None:
        """COM_STMT_CLOSE."""
        self.statements.pop(statement_id, None)

    def reset(self) -> None:
        """COM_RESET_CONNECTION succeeded: the server forgot everything but the database."""
        self.settings.clear()
        self.variables.clear()
        self.unknown_variables.clear()
        self.pins.clear()
        self.statements.clear()
        self.statement_pins.clear()
        self.autocommit_off = False
        self.last_insert_id = 0

    # -- what pooling needs ---------------------------------------------------------------

    def pin_reasons(self) -> list[str]:
        """Why the client must keep its connection now (empty: it may go back)."""
        reasons = sorted(
            {reason.value for reason, _ in self.pins} | {why for _, why in self.statement_pins}
        )
        if self.statements and self.statements_pin:
            reasons.append("prepared_statement")
        return reasons

    @property
    def pinned(self) -> bool:
        """True while session state keeps the client on its connection."""
        return bool(self.pins or self.statement_pins or (self.statements and self.statements_pin))

    @property
    def dirty(self) -> bool:
        """True when a connection that ran this client's units differs from a pooled one."""
        return bool(
            self.variables
            or self.database != self.home_database
            or self.autocommit_off
            or self.multi_statements_off != self.default_multi_statements_off
            or (self.settings and self.changed_settings())
        )

    def changed_settings(self) -> dict[str, str]:
        """The settings that make the session differ from a pooled connection of its profile
        (a character set it already has is none), in the order they were made."""
        settings = self.settings
        charset = self.defaults.charset if self.defaults is not None else None
        if charset is None or not any(name in settings for name in CHARSET_SETTINGS):
            return settings
        same = charset.unchanged(settings)
        return {k: v for k, v in settings.items() if k not in same}

    def settles(self, c: Classification) -> bool:
        """Whether `c`, applied, left the connection as it logged in although it changes
        settings: a single statement whose only effects are character-set settings with
        values (SET NAMES, SET character_set_client = ...) that the session's connections
        already have, or autocommit turned on where connections start with it on. Such a
        statement is exactly tracked, so its connection needs no reset."""
        defaults = self.defaults.charset if self.defaults is not None else None
        if defaults is None or (c.parts and len(c.parts) != 1):
            return False
        for setting in c.settings:
            if setting.name == "autocommit":
                if not (c.autocommit is True and defaults.autocommit):
                    return False
            elif setting.name not in CHARSET_SETTINGS or setting.value is None:
                return False
        return (
            bool(c.settings)
            and not (c.user_variables or c.database is not None or c.pins or c.unpins)
            and not any(name in self.changed_settings() for name in CHARSET_SETTINGS)
        )

    def replay_statements(self) -> list[str]:
        """The statements that give a reset pooled connection of the client's profile this
        session (the statement mode aside: `multi_statements_switch`)."""
        parts: list[str] = []
        if self.database != self.home_database:
            parts.append("USE `" + self.database.replace("`", "``") + "`")
        settings = self.changed_settings() if self.settings else self.settings
        plain = {k: v for k, v in settings.items() if k not in _TRANSACTION_SETTINGS}
        if plain:
            parts.append(
                "SET "
                + ", ".join(
                    f"SESSION {name} = {_setting_literal(value)}" for name, value in plain.items()
                )
            )
        characteristics = []
        isolation = settings.get("transaction_isolation")
        if isolation is not None:
            characteristics.append("ISOLATION LEVEL " + isolation.replace("-", " ").upper())
        read_only = settings.get("transaction_read_only")
        if read_only is not None:
            characteristics.append("READ ONLY" if read_only == "ON" else "READ WRITE")
        if characteristics:
            parts.append("SET SESSION TRANSACTION " + ", ".join(characteristics))
        if self.autocommit_off:
            # Between transactions the client holds no connection: each transaction of its
            # starts on one given autocommit off again (and reset when it goes back).
            parts.append("SET SESSION autocommit = 0")
        if self.variables:
            parts.append(
                "SET "
                + ", ".join(
                    f"@`{name.replace('`', '``')}` = {value}"
                    for name, value in self.variables.items()
                )
            )
        return parts

    def replay_sql(self) -> str | None:
        """`replay_statements` as one multi-statement string (None: nothing to replay)."""
        parts = self.replay_statements()
        return "; ".join(parts) if parts else None

    def multi_statements_switch(self) -> bool | None:
        """The statement mode to switch a connection of the profile to for this client (True:
        multi-statements on), or None when it has the client's already."""
        if self.multi_statements_off == self.default_multi_statements_off:
            return None
        return not self.multi_statements_off

    def read_back_sql(self) -> str | None:
        """The hidden SELECT that reads the user variables the server computed, or None."""
        if not self.unknown_variables:
            return None
        names = sorted(self.unknown_variables)
        return "SELECT " + ", ".join(f"@`{n.replace('`', '``')}`" for n in names)

    def learn_read_back(self, values: list[tuple[str, str]]) -> None:
        """Remember the read-back variables' values as (name, literal)."""
        for name, literal in values:
            self.variables[name] = literal
            self.unknown_variables.discard(name)
