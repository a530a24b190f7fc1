"""Pool profiles of MySQL server connections: what a client negotiated at login that its server
connections must share, and what those connections start with (issue #12).

Pooled server connections are shared between clients, and a few things a client chooses in its
HandshakeResponse41 change what the server answers or how a session starts. Rather than
switching them on each connection for each unit of work (COM_SET_OPTION, SET NAMES) and back
(COM_RESET_CONNECTION), the proxy keeps the server connections of each combination apart: core
`Cluster` pools are per (user, profile, server), and a connection of a profile logs in with the
profile's flags and collation. A profile is one of at most 2 x 2 x 8 = 32 combinations:

* ``found_rows``: CLIENT_FOUND_ROWS (an UPDATE's affected rows are the rows matched); it
  survives a reset and changes answers, so it was a profile before the others;
* ``no_multi_statements``: a client without CLIENT_MULTI_STATEMENTS (PyMySQL's default) gets
  connections that log in without it, so ``a; b`` fails with 1064 as it would on the server,
  with no COM_SET_OPTION per unit;
* the collation of the handshake, when it is one of `COLLATIONS` and not the default
  (utf8mb4_general_ci): the connection logs in with it, which sets character_set_client,
  _connection, _results and collation_connection as the client's own login would; MariaDB
  keeps them across COM_RESET_CONNECTION. Other ids get the default, as before.

`ConnectionDefaults` are the character-set variables (and autocommit mode) a connection has
right after its login, read from the server once per connection, as the collation that ``SET
NAMES <its character set>`` gives differs between servers and versions; `ProfileDefaults` keeps
them per pool, so that a client's ``SET NAMES`` that changes nothing on its connections
(PyMySQL's ``SET NAMES utf8mb4``, mysql-connector's ``SET NAMES 'utf8mb4' COLLATE
'utf8mb4_general_ci'``) is no session state, and neither is ``SET autocommit = 1`` where it
is on already.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from dbbalancer.mysql.codec import Capability

__all__ = [
    "CHARSET_SETTINGS",
    "COLLATIONS",
    "DEFAULT_COLLATION",
    "ConnectionDefaults",
    "PoolProfile",
    "ProfileDefaults",
]

# utf8mb4_general_ci: what pooled connections log in with unless the profile says otherwise
# (what MariaDB greets with).
DEFAULT_COLLATION: Final = 45
# Collation ids clients send in their handshake -> (character set, collation) of the
# connections of their profile. Other ids keep the default (a server, too, falls back to its
# default for an id it does not know).
COLLATIONS: Final[dict[int, tuple[str, str]]] = {
    8: ("latin1", "latin1_swedish_ci"),
    33: ("utf8mb3", "utf8mb3_general_ci"),
    45: ("utf8mb4", "utf8mb4_general_ci"),
    46: ("utf8mb4", "utf8mb4_bin"),
    63: ("binary", "binary"),
    83: ("utf8mb3", "utf8mb3_bin"),
    192: ("utf8mb3", "utf8mb3_unicode_ci"),
    224: ("utf8mb4", "utf8mb4_unicode_ci"),
    # MySQL 8's default utf8mb4_0900_ai_ci: MariaDB before 11.4 knows no such collation (and
    # after a COM_RESET_CONNECTION falls back to latin1 for an id it does not know).
    255: ("utf8mb4", "utf8mb4_general_ci"),
}
# The collation id a connection logs in with, by collation name (the profile's component).
_LOGIN_IDS: Final = {name: cid for cid, (_, name) in COLLATIONS.items() if cid != 255}
_FOUND_ROWS: Final = "found_rows"
_NO_MULTI_STATEMENTS: Final = "no_multi_statements"
# Session variables a login's collation sets (and SET NAMES).
CHARSET_SETTINGS: Final = (
    "character_set_client",
    "character_set_connection",
    "character_set_results",
    "collation_connection",
)
# These two set each other (a character set sets its default collation, a collation its set).
_CONNECTION_PAIR: Final = ("character_set_connection", "collation_connection")


@dataclass(frozen=True, slots=True)
class PoolProfile:
    """What a client's server connections share with it (see the module docstring)."""

    found_rows: bool = False
    multi_statements: bool = True
    collation: int = DEFAULT_COLLATION

    @classmethod
    def of(cls, capabilities: int, collation: int = DEFAULT_COLLATION) -> PoolProfile:
        """The profile of a client that negotiated `capabilities` with handshake `collation`."""
        known = COLLATIONS.get(collation)
        return cls(
            found_rows=bool(capabilities & Capability.FOUND_ROWS),
            multi_statements=bool(capabilities & Capability.MULTI_STATEMENTS),
            collation=_LOGIN_IDS[known[1]] if known is not None else DEFAULT_COLLATION,
        )

    @property
    def name(self) -> str:
        """The profile as core pools know it ("" for the default), e.g.
        ``found_rows,no_multi_statements,utf8mb4_bin``."""
        parts = []
        if self.found_rows:
            parts.append(_FOUND_ROWS)
        if not self.multi_statements:
            parts.append(_NO_MULTI_STATEMENTS)
        if self.collation != DEFAULT_COLLATION:
            parts.append(COLLATIONS[self.collation][1])
        return ",".join(parts)

    @classmethod
    def parse(cls, name: str) -> PoolProfile:
        """The profile `name` names; ValueError for a name `PoolProfile.name` never gives."""
        found_rows, multi, collation = False, True, DEFAULT_COLLATION
        for part in filter(None, name.split(",")):
            if part == _FOUND_ROWS:
                found_rows = True
            elif part == _NO_MULTI_STATEMENTS:
                multi = False
            elif part in _LOGIN_IDS:
                collation = _LOGIN_IDS[part]
            else:
                raise ValueError(f"unknown MySQL pool profile part {part!r} in {name!r}")
        return cls(found_rows, multi, collation)

    def capabilities(self, base: Capability) -> Capability:
        """The client flags its server connections ask for, from the pool's `base` set."""
        flags = base | Capability.FOUND_ROWS if self.found_rows else base & ~Capability.FOUND_ROWS
        if not self.multi_statements:
            flags &= ~Capability.MULTI_STATEMENTS
        return flags

    @property
    def charset(self) -> str:
        """The character set of the profile's collation."""
        return COLLATIONS[self.collation][0]


@dataclass(frozen=True, slots=True)
class ConnectionDefaults:
    """A pooled connection's character-set variables and autocommit mode after its login (and
    after a COM_RESET_CONNECTION), and the collation `SET NAMES <its character set>` (without
    COLLATE) gives on its server."""

    character_set_client: str
    character_set_connection: str
    character_set_results: str
    collation_connection: str
    names_collation: str
    autocommit: bool

    @property
    def charset(self) -> str:
        """The connection character set."""
        return self.character_set_connection

    @staticmethod
    def query(charset: str) -> str:
        """The SELECT that reads them on a connection whose character set is `charset`."""
        return (
            "SELECT @@character_set_client, @@character_set_connection, "
            "@@character_set_results, @@collation_connection, "
            f"COLLATION(CONVERT('' USING {charset})), @@autocommit"
        )

    @classmethod
    def from_row(cls, row: tuple[bytes | None, ...]) -> ConnectionDefaults | None:
        """From the row `query` returned (None when a value is missing)."""
        if len(row) != 6 or any(value is None for value in row):
            return None
        values = [value.decode("utf-8", "replace").lower() for value in row if value is not None]
        client, connection, results, collation, names = values[:5]
        return cls(client, connection, results, collation, names, autocommit=values[5] == "1")

    def unchanged(self, settings: Mapping[str, str]) -> frozenset[str]:
        """The character-set settings of `settings` (a session's, in the order they were
        made, as MySessionState keeps them) that leave the connection as it logged in: they
        need no replay. character_set_connection and collation_connection set each other, so
        they count together: the session's collation is the last one set, else the one
        `SET NAMES` / character_set_connection gives (known for the connection's own
        character set only)."""
        same: set[str] = set()
        for name in ("character_set_client", "character_set_results"):
            value = settings.get(name)
            if value is not None and value.lower() == getattr(self, name):
                same.add(name)
        charset = settings.get("character_set_connection")
        collation = settings.get("collation_connection")
        if collation is None and charset is not None and charset.lower() == self.charset:
            collation = self.names_collation
        if (
            collation is not None
            and collation.lower() == self.collation_connection
            and (charset is None or charset.lower() == self.charset)
        ):
            same.update(
                n for n in ("character_set_connection", "collation_connection") if n in settings
            )
        return frozenset(same)


class ProfileDefaults:
    """What every connection of one pool starts with, learned as connections open: unknown
    (None) until the first one reports, and unknown again for good once two disagree (servers
    of one cluster configured differently), so that nothing is then taken for unchanged."""

    __slots__ = ("charset", "conflicting")

    def __init__(self) -> None:
        self.charset: ConnectionDefaults | None = None
        self.conflicting = False

    def learn(self, found: ConnectionDefaults | None) -> None:
        """A new connection of the pool reported `found` (None: it could not tell)."""
        if self.conflicting:
            return
        if found is None or (self.charset is not None and found != self.charset):
            self.conflicting = True
            self.charset = None
            return
        self.charset = found
