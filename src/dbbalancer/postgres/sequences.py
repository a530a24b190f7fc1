"""Whose sequence state a pooled server connection holds, so currval() and lastval() are never
answered with another client's number.

PostgreSQL keeps, per session, the last value nextval() returned for each sequence (what
currval(seq) answers) and the last one overall (lastval()). Under transaction pooling a server
session serves many clients, so that state is whoever ran there last, and PgBouncer returns
another client's id. Any statement that is not a read may call nextval() without naming it
(an INSERT into a serial or identity column), so the proxy cannot see the calls; it can only
know where they may have run.

The rule kept here: currval()/lastval() run only on a connection whose sequence state is this
client's alone. A connection is the client's (`home`) once the client ran a statement that may
call nextval() there after the connection was cleared (new, reset, or DISCARD SEQUENCES first).
The client's units go back to its home while it is still its own; when a write lands elsewhere,
that connection is cleared and becomes the home, and what the client left on the old one is
forgotten (a later currval() of a sequence it used only there fails as "not yet defined"). A
client that never wrote has no sequence state at all, which a DISCARD SEQUENCES gives it on any
connection. A read anywhere else is refused, never answered with another client's number.

Sans-IO: the engine asks, and sends the DISCARD SEQUENCES this module asks for.
"""

from __future__ import annotations

import enum
from typing import Protocol


class SequenceHolder(Protocol):
    """A server connection as far as sequence state goes."""

    seq_owner: object | None  # the SequenceState whose whole state it holds, if any
    seq_dirty: bool  # some statement that may have called nextval() ran since it was clean


class Verdict(enum.Enum):
    """What to do before a statement that reads currval()/lastval() runs."""

    RUN = "run"
    CLEAR_FIRST = "clear_first"  # DISCARD SEQUENCES first: the client has no sequence state
    REFUSE = "refuse"


class SequenceState:
    """Where one client's sequence state lives (see the module docstring)."""

    __slots__ = ("home", "lost")

    def __init__(self) -> None:
        self.home: SequenceHolder | None = None  # the connection that holds all of it
        self.lost = False  # it is spread over connections (or mixed with another's)

    @property
    def clean(self) -> bool:
        """The client has run nothing that may have called nextval() (since DISCARD)."""
        return self.home is None and not self.lost

    def owns(self, conn: SequenceHolder) -> bool:
        """`conn` holds this client's whole sequence state."""
        return self.home is conn and conn.seq_owner is self

    def before_write(self, conn: SequenceHolder) -> bool:
        """A statement that may call nextval() is about to run on `conn`. True if `conn` must be
        cleared with DISCARD SEQUENCES first.

        On a connection that is not the client's own, the client starts afresh there: the
        connection is cleared, and what the client's earlier statements left elsewhere is
        forgotten. From then on currval()/lastval() answer for what it runs there; a sequence
        it used only before fails as "not yet defined" (an error, never another client's
        number, and never stale)."""
        if self.owns(conn):
            conn.seq_dirty = True
            return False
        self._give_up()
        self.lost = False
        self.home = conn
        conn.seq_owner = self
        clear = conn.seq_dirty
        conn.seq_dirty = True
        return clear

    def before_read(self, conn: SequenceHolder) -> Verdict:
        """A statement reading currval()/lastval() (and calling no nextval()) is about to run."""
        if self.owns(conn):
            return Verdict.RUN
        if not self.clean:
            return Verdict.REFUSE
        self.home = conn
        conn.seq_owner = self
        if conn.seq_dirty:
            conn.seq_dirty = False
            return Verdict.CLEAR_FIRST
        return Verdict.RUN

    def discarded(self, conn: SequenceHolder) -> None:
        """The client cleared its sequence state on `conn` (DISCARD SEQUENCES or ALL)."""
        self._give_up()
        self.lost = False
        self.home = conn
        conn.seq_owner = self
        conn.seq_dirty = False

    def forget(self) -> None:
        """The client cleared its sequence state where no other client's was (a replica)."""
        self._give_up()
        self.lost = False

    def could_not_clear(self, conn: SequenceHolder) -> None:
        """The DISCARD SEQUENCES asked for could not be sent: `conn` is not this client's."""
        if conn.seq_owner is self:
            conn.seq_owner = None
        self.home = None
        self.lost = True

    def lost_connection(self, conn: SequenceHolder) -> None:
        """`conn` broke: what it held is gone."""
        if self.home is conn:
            self.home = None
            self.lost = True

    def _give_up(self) -> None:
        home = self.home
        if home is not None and home.seq_owner is self:
            home.seq_owner = None
        self.home = None
        self.lost = True
