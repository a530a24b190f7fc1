"""The engine's side of sequence state: where a client's currval()/lastval() can be answered.

`sequences.py` keeps the ledger (whose sequence state a connection holds); this module applies
it to one client's traffic: it prefers the connection that holds the client's sequence state at
checkout, sends the hidden DISCARD SEQUENCES the ledger asks for, and refuses a read of sequence
state that no connection can answer for the client, by having the server itself raise the error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dbbalancer.core.errors import ErrorCode
from dbbalancer.core.pool import Pool
from dbbalancer.core.routing import Target
from dbbalancer.core.statement import Classification, UnpinEvent
from dbbalancer.postgres import codec
from dbbalancer.postgres.backend import ServerConnection
from dbbalancer.postgres.codec import Frame
from dbbalancer.postgres.errors import sqlstate_of
from dbbalancer.postgres.params import quote_literal
from dbbalancer.postgres.responses import Request
from dbbalancer.postgres.sequences import SequenceState, Verdict

if TYPE_CHECKING:
    from dbbalancer.postgres.engine import Engine

SYNC = codec.Sync().encode()
# DISCARD SEQUENCES under a name of the proxy's own, in the extended protocol so that it can
# run anywhere in a client's pipeline without touching the unnamed statement or portal.
_CLEAR_NAME = "dbb_discard_sequences"
CLEAR_SEQUENCES = (
    codec.Close(b"S", _CLEAR_NAME).encode(),  # one left by an interrupted run is no error
    codec.Parse(_CLEAR_NAME, "DISCARD SEQUENCES").encode(),
    codec.Bind(_CLEAR_NAME, _CLEAR_NAME).encode(),
    codec.Execute(_CLEAR_NAME).encode(),
    codec.Close(b"S", _CLEAR_NAME).encode(),
)
_CLEAR_REQUESTS = (Request.CLOSE, Request.PARSE, Request.BIND, Request.EXECUTE, Request.CLOSE)
_REFUSAL_NAME = "dbb_refusal"
_SEQUENCE_REFUSAL = (
    "DO $dbb$BEGIN RAISE EXCEPTION USING ERRCODE = "
    + quote_literal(sqlstate_of(ErrorCode.SEQUENCE_STATE_UNAVAILABLE))
    + ", MESSAGE = "
    + quote_literal(
        "currval()/lastval() cannot be answered for this session: the server connection that "
        "ran its last nextval() has since served another client (transaction pooling)"
    )
    + ", HINT = "
    + quote_literal(
        "use INSERT ... RETURNING or SELECT nextval() to get the id, "
        'or pool_mode = "session" for this user'
    )
    + "; END$dbb$"
)
# Functions that answer from the session's sequence state, and that set it, as the classifier
# names them.
_SEQUENCE_STATE_READERS = frozenset(
    ("currval", "lastval", "pg_catalog.currval", "pg_catalog.lastval")
)
_SEQUENCE_STATE_WRITERS = frozenset(
    ("nextval", "setval", "pg_catalog.nextval", "pg_catalog.setval")
)


class SequenceKeeper:
    """One client's sequence state, as its engine sends statements (see the module docstring)."""

    __slots__ = ("engine", "home", "ledger", "pool")

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.ledger = SequenceState()
        # The connection that holds this client's sequence state, and the pool it goes back to.
        self.home: ServerConnection | None = None
        self.pool: Pool[ServerConnection] | None = None

    def take_home(self) -> tuple[ServerConnection, Pool[ServerConnection]] | None:
        """For a unit bound to the primary: the connection holding this client's sequence
        state, taken out of its pool, while nobody else has changed it."""
        seq = self.home
        if seq is None:
            return None
        pool = self.pool
        if (
            not self.ledger.owns(seq)
            or pool is None
            or seq.server != self.engine.cluster.runtime.primary()
        ):
            self.home = None
            return None
        if pool.take(seq):
            return seq, pool
        return None

    def check(self, server: ServerConnection, c: Classification, frame: Frame) -> bool:
        """May `c` run on `server` as far as sequence state goes (postgres/sequences.py)?
        currval()/lastval() run where they answer for this client, after a DISCARD SEQUENCES
        for a client that has no sequence state; otherwise they are refused, never answered
        with another client's number."""
        functions = c.functions
        if not any(name in _SEQUENCE_STATE_READERS for name in functions) or any(
            name in _SEQUENCE_STATE_WRITERS for name in functions
        ):
            return True  # nothing read, or read after its own nextval()/setval()
        verdict = self.ledger.before_read(server)
        if verdict is Verdict.CLEAR_FIRST:
            self.clear(server, sync=frame.type == b"Q")
        if verdict is not Verdict.REFUSE:
            self.note_home(server)
            return True
        self._raise_on_server(server, frame, _SEQUENCE_REFUSAL)
        return False

    def before_write(self, server: ServerConnection, *, query: bool) -> None:
        """A statement that may call nextval() goes to the primary connection `server`."""
        if self.ledger.before_write(server):
            self.clear(server, sync=query)
        self.note_home(server)

    def discarded(self, server: ServerConnection, c: Classification) -> None:
        """DISCARD SEQUENCES (or ALL) is on its way. Believed only where it cannot fail: not in
        a failed transaction, and DISCARD ALL only alone and outside a transaction."""
        status = server.tx_status
        if status == b"E":
            return
        if UnpinEvent.DISCARD_ALL in c.unpins and (status != b"I" or c.statements != 1):
            return
        unit = self.engine.unit
        if unit is not None and unit.decision.target is Target.PRIMARY:
            self.ledger.discarded(server)
            self.note_home(server)
        else:
            self.ledger.forget()  # cleared on a replica: no state left anywhere

    def _raise_on_server(self, server: ServerConnection, frame: Frame, raise_sql: str) -> None:
        """Run `raise_sql` (a DO block that raises the refusal) instead of the client's Query or
        Execute `frame`: the server itself fails the request, so a transaction it was in is
        aborted exactly as the statement's own error would have aborted it."""
        tracker = server.tracker
        out = self.engine.to_server
        if frame.type == b"Q":
            out.append(codec.Query(raise_sql).encode())
            tracker.expect(Request.QUERY)
            server.unnamed = None  # a simple query destroys the unnamed statement
            return
        for request, data in (
            (Request.CLOSE, codec.Close(b"S", _REFUSAL_NAME).encode()),
            (Request.PARSE, codec.Parse(_REFUSAL_NAME, raise_sql).encode()),
            (Request.BIND, codec.Bind(_REFUSAL_NAME, _REFUSAL_NAME).encode()),
        ):
            out.append(data)
            tracker.expect(request, visible=False)
        out.append(codec.Execute(_REFUSAL_NAME).encode())
        tracker.expect(Request.EXECUTE)

    def clear(self, server: ServerConnection, *, sync: bool) -> None:
        """DISCARD SEQUENCES on `server` before what is sent next (hidden). `sync`: a simple
        Query follows, so the hidden batch ends with its own Sync rather than leave an implicit
        transaction open under the Query."""
        if server.tx_status == b"E":
            # The failed transaction refuses it (and the statement that follows as well).
            self.ledger.could_not_clear(server)
            return
        tracker = server.tracker
        out = self.engine.to_server
        out.extend(CLEAR_SEQUENCES)
        for request in _CLEAR_REQUESTS:
            tracker.expect(request, visible=False)
        if sync:
            out.append(SYNC)
            tracker.expect(Request.SYNC, visible=False)

    def note_home(self, server: ServerConnection) -> None:
        unit = self.engine.unit
        if unit is not None and unit.decision.target is not Target.PRIMARY:
            return
        if self.ledger.owns(server):
            self.home = server
            self.pool = unit.pool if unit is not None else None
