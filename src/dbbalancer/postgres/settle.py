"""Hidden requests at the end of a unit: settling session state, and read-your-writes.

When a unit of work ends outside a transaction, what it changed of the session is settled
(`sessionstate.py`): if the server may have kept only part of it, the settings touched are read
back with a hidden query, and the statements a failed DISCARD/DEALLOCATE ALL would have dropped
are closed. After a write on the primary, read-your-writes asks the primary's WAL position, so
that the client's later reads go only to replicas that have replayed it. Each of these is a
hidden request the client never sees; the connection is kept until they are answered
(`core/unitofwork.py`: state SETTLING).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dbbalancer.core.routing import Target
from dbbalancer.postgres import codec
from dbbalancer.postgres.backend import ServerConnection
from dbbalancer.postgres.lsn import Lsn
from dbbalancer.postgres.params import python_codec
from dbbalancer.postgres.prepared import PreparedStatement, close_statement
from dbbalancer.postgres.responses import Request
from dbbalancer.postgres.sessionstate import read_back_query

if TYPE_CHECKING:
    from dbbalancer.postgres.checkout import Unit
    from dbbalancer.postgres.engine import Engine

SYNC = codec.Sync().encode()
# The primary's WAL position in bytes, asked right after a write commits (read-your-writes).
POSITION_QUERY = codec.Query("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").encode()


class Settler:
    """One client's hidden end-of-unit requests and what they answered."""

    __slots__ = (
        "doubt_statements",
        "engine",
        "min_position",
        "position_rows",
        "prepared_before",
        "read_back",
        "settings_rows",
    )

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # Server-side statements a DISCARD/DEALLOCATE ALL in flight may or may not have dropped.
        self.doubt_statements: list[str] = []
        self.prepared_before: dict[str, PreparedStatement] | None = None
        self.settings_rows: list[bytes] | None = None
        self.read_back: list[str] = []
        self.min_position: Lsn | None = None  # the primary's position after our last write
        self.position_rows: list[bytes] | None = None

    def doubt(self, unit: Unit | None) -> bool:
        """May the server have kept only part of what the unit sent?"""
        return self.engine.state.in_doubt(unit.errors if unit is not None else 0)

    def will_read_back(self, doubt: bool) -> bool:
        """`settle(doubt)` will send hidden requests."""
        return doubt and (bool(self.engine.state.pending) or bool(self.doubt_statements))

    def wants_position(self, unit: Unit | None) -> bool:
        """Read-your-writes: the unit wrote on the primary, and its position is not asked yet."""
        return (
            self.engine.read_your_writes
            and self.position_rows is None
            and unit is not None
            and unit.wrote
            and unit.decision.target is Target.PRIMARY
        )

    def learn(self, server: ServerConnection) -> None:
        """Take in the answers of hidden requests: settings read back, the position."""
        engine = self.engine
        rows = self.settings_rows
        if rows is not None:
            self.settings_rows = None
            names, self.read_back = self.read_back, []
            for data in rows:
                msg = codec.decode_backend(codec.parse_frame(data))
                if isinstance(msg, codec.DataRow) and len(msg.values) == len(names):
                    values = [None if v is None else bytes(v).decode() for v in msg.values]
                    engine.state.learn(names, values)
            engine.encoding = python_codec(engine.state.settings)
            server.applied = dict(engine.state.settings)
        rows = self.position_rows
        if rows is not None:
            self.position_rows = None
            for data in rows:
                msg = codec.decode_backend(codec.parse_frame(data))
                if isinstance(msg, codec.DataRow) and msg.values and msg.values[0] is not None:
                    position = Lsn(int(msg.values[0].split(b".")[0]))
                    if self.min_position is None or not self.min_position.covers(position):
                        self.min_position = position

    def settle(self, server: ServerConnection, unit: Unit | None) -> bool:
        """Settle the session state the unit changed (see sessionstate.py). True if hidden
        requests were sent to find out what the server kept."""
        engine = self.engine
        state = engine.state
        doubt = self.doubt(unit)
        if unit is not None:
            unit.errors = 0
        if not (state.unsettled or self.doubt_statements):
            return False
        sent = False
        changed = bool(state.pending)
        read_back = state.settle(doubt)
        if changed:
            engine.encoding = python_codec(state.settings)
        out = engine.to_server
        if read_back:
            self.read_back = read_back
            self.settings_rows = []
            out.append(codec.Query(read_back_query(read_back)).encode())
            server.tracker.expect(Request.QUERY, visible=False, capture=self.settings_rows)
            sent = True
        elif changed and not doubt:
            server.applied = dict(state.settings)
        if self.doubt_statements:
            if doubt:
                # A DISCARD/DEALLOCATE ALL may have failed: close what it would have dropped
                # (closing a statement that does not exist is no error).
                tracker = server.tracker
                for name in self.doubt_statements:
                    # One parsed again since is closed too: forget it.
                    server.statements.discard(name)
                    out.append(close_statement(name))
                    tracker.expect(Request.CLOSE, visible=False, tag=name)
                out.append(SYNC)
                tracker.expect(Request.SYNC, visible=False)
                sent = True
                if self.prepared_before is not None:
                    # ... and the client's own statements may still exist.
                    prepared = engine.rewriter.prepared
                    for name, stmt in self.prepared_before.items():
                        prepared.setdefault(name, stmt)
            self.doubt_statements.clear()
        self.prepared_before = None
        return sent

    def ask_position(self, server: ServerConnection, unit: Unit | None) -> None:
        """Read-your-writes: learn where the primary's WAL stands after this commit; the
        connection is released once the answer is in."""
        if unit is not None:
            unit.wrote = False
        self.position_rows = []
        self.engine.to_server.append(POSITION_QUERY)
        server.tracker.expect(Request.QUERY, visible=False, capture=self.position_rows)

    def drop_all_statements(self, server: ServerConnection | None) -> None:
        """DISCARD ALL or DEALLOCATE ALL is on its way: every prepared statement of the
        connection and of the client is gone once it runs. Later requests must not rely on them;
        if it fails after all, `settle` closes what it would have dropped."""
        rewriter = self.engine.rewriter
        if server is not None:
            self.doubt_statements.extend(server.statements.names())
            server.statements.clear()
            server.unnamed = None
        if self.prepared_before is None:
            self.prepared_before = dict(rewriter.prepared)
        rewriter.prepared.clear()
        rewriter.untracked.clear()

    def forget(self, *, lost: bool) -> None:
        """The unit's connection is gone: nothing it was sent counts (`lost`: nor do the hidden
        requests in flight)."""
        self.prepared_before = None
        self.doubt_statements.clear()
        if lost:
            self.position_rows = None
            self.settings_rows = None
