"""The unit-of-work machine driven by a model session, with a fake clock and pool, no server.

`Model` carries out the effects of core/unitofwork.py the way a protocol engine does, on toy
connections: enough to follow pooling, pinning, re-runs, read-your-writes and statement mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dbbalancer.core.unitofwork import Effect, UnitEvent, UnitState, rule, work_done

E = UnitEvent
S = UnitState


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class ToyPool:
    idle: list[str]
    active: set[str] = field(default_factory=set)
    dropped: list[str] = field(default_factory=list)
    reset: list[str] = field(default_factory=list)
    waiters: list[Model] = field(default_factory=list)

    def checkout(self) -> str | None:
        if not self.idle:
            return None
        conn = self.idle.pop(0)
        self.active.add(conn)
        return conn

    def release(self, conn: str, *, reusable: bool = True) -> None:
        self.active.discard(conn)
        if not reusable:
            self.dropped.append(conn)
            return
        if self.waiters:
            waiter = self.waiters.pop(0)
            self.active.add(conn)
            waiter.offered(conn)
        else:
            self.idle.append(conn)


class Model:
    """A session: what a protocol engine does for each effect, on toy connections."""

    def __init__(self, pool: ToyPool, clock: Clock, *, replica: ToyPool | None = None) -> None:
        self.pool = pool
        self.replica = replica
        self.clock = clock
        self.state = S.IDLE
        self.conn: str | None = None
        self.offer: str | None = None
        self.read = False  # the waiting batch is a replica read
        self.backlog: list[str] = []
        self.sent: list[str] = []
        self.recorded: list[str] = []
        self.client: list[str] = []
        self.hidden: list[str] = []
        self.latencies: list[float] = []
        self.started = 0.0
        self.effects: list[Effect] = []
        self.statement_mode = False

    def fire(self, event: UnitEvent, message: str = "") -> None:
        effects, self.state = rule(self.state, event)
        self.effects.extend(effects)
        for effect in effects:
            self.do(effect, message)

    def client_message(self, event: UnitEvent, message: str, *, read: bool = False) -> None:
        self.read = read
        self.fire(event, message)

    def do(self, effect: Effect, message: str) -> None:
        if effect in (Effect.WAIT, Effect.WAIT_OR_ANSWER):
            self.backlog.append(message)
        elif effect in (Effect.ROUTE, Effect.DRAIN):
            if not self.backlog or self.state is not S.IDLE:
                return
            if self.statement_mode and self.backlog[0] == "BEGIN":
                self.fire(E.REFUSED)
                return
            pool = self.replica if self.read and self.replica is not None else self.pool
            conn = pool.checkout()
            if conn is None:
                pool.waiters.append(self)
                self.fire(E.MUST_WAIT)
            else:
                self.offered(conn)
        elif effect is Effect.ATTACH:
            self.conn, self.offer = self.offer, None
            self.started = self.clock()
        elif effect is Effect.SEND_BACKLOG:
            waiting, self.backlog = self.backlog, []
            for i, message in enumerate(waiting):
                if self.state not in (S.ATTACHED, S.READING, S.IN_TRANSACTION, S.PINNED):
                    self.backlog = waiting[i:]
                    break
                self.fire(E.QUERY, message)
        elif effect is Effect.SEND:
            self.sent.append(message)
        elif effect is Effect.RECORD:
            self.recorded.append(message)
        elif effect is Effect.ASK_POSITION:
            self.hidden.append("position")
        elif effect is Effect.ROLLBACK_AND_CLOSE:
            self.hidden.append("ROLLBACK")
        elif effect in (Effect.RELEASE, Effect.RESET_AND_RELEASE):
            assert self.conn is not None
            conn, self.conn = self.conn, None
            self.latencies.append(self.clock() - self.started)
            owner = self.pool if conn in self.pool.active else self.replica
            assert owner is not None
            pool = owner
            if effect is Effect.RESET_AND_RELEASE:
                pool.reset.append(conn)
            pool.release(conn)
        elif effect in (Effect.RERUN_ON_PRIMARY, Effect.RERUN_ELSEWHERE):
            assert self.conn is not None
            assert self.replica is not None
            conn, self.conn = self.conn, None
            self.replica.release(conn, reusable=False)
            self.backlog = self.recorded + self.backlog
            self.recorded = []
            pool = self.pool if effect is Effect.RERUN_ON_PRIMARY else self.replica
            got = pool.checkout()
            assert got is not None
            self.offer = got
            self.fire(E.CONNECTED)
        elif effect is Effect.FAIL_LOST:
            assert self.conn is not None
            self.pool.release(self.conn, reusable=False)
            self.conn = None
            self.client.append("error: connection lost")
        elif effect is Effect.REFUSE_UNIT:
            self.client.append("error: " + self.backlog.pop(0))

    def offered(self, conn: str) -> None:
        self.offer = conn
        self.fire(E.CONNECTED_READ if self.read else E.CONNECTED)

    def done(self, *, in_tx: bool = False, pinned: bool = False, **facts: bool) -> None:
        """The last response owed arrived (what `work_done` decides from)."""
        self.fire(
            work_done(
                in_transaction=in_tx,
                statement_mode=facts.get("statement_mode", False),
                read_back=facts.get("read_back", False),
                ask_position=facts.get("ask_position", False),
                pinned=pinned,
                home=False,
                reset=facts.get("reset", False),
            )
        )


def test_transaction_pooling_shares_one_connection_in_turn() -> None:
    clock = Clock()
    pool = ToyPool(idle=["c1"])
    a, b = Model(pool, clock), Model(pool, clock)
    a.client_message(E.QUERY, "BEGIN")
    assert (a.state, a.conn, a.sent) == (S.ATTACHED, "c1", ["BEGIN"])
    b.client_message(E.QUERY, "SELECT 1")
    assert b.state is S.ACQUIRING
    a.done(in_tx=True)
    assert a.state is S.IN_TRANSACTION
    a.client_message(E.QUERY, "COMMIT")
    clock.now = 2.5
    a.done()
    # a's connection went straight to b, whose waiting query was sent on it.
    assert (a.state, a.conn, a.latencies) == (S.IDLE, None, [2.5])
    assert (b.state, b.conn, b.sent) == (S.ATTACHED, "c1", ["SELECT 1"])
    b.done()
    assert pool.idle == ["c1"]
    assert not pool.active


def test_an_extended_batch_is_routed_once_its_sync_is_in() -> None:
    model = Model(ToyPool(idle=["c1"]), Clock())
    for message in ("Parse", "Bind", "Execute"):
        model.client_message(E.FRAME, message)
    assert (model.state, model.backlog) == (S.IDLE, ["Parse", "Bind", "Execute"])
    model.client_message(E.SYNC, "Sync")
    assert model.state is S.ATTACHED
    assert model.sent == ["Parse", "Bind", "Execute", "Sync"]


def test_pinned_session_keeps_its_connection_then_resets_it() -> None:
    pool = ToyPool(idle=["c1", "c2"])
    model = Model(pool, Clock())
    model.client_message(E.QUERY, "CREATE TEMP TABLE t ()")
    model.done(pinned=True)
    assert (model.state, model.conn) == (S.PINNED, "c1")
    model.client_message(E.QUERY, "SELECT * FROM t")
    assert (model.state, model.conn) == (S.ATTACHED, "c1")
    model.client_message(E.QUERY, "DISCARD ALL")
    model.done(reset=True)  # unpinned: it held session state, so it is reset
    assert model.state is S.IDLE
    assert pool.reset == ["c1"]


def test_a_replica_read_refused_as_read_only_is_rerun_on_the_primary() -> None:
    primary, replica = ToyPool(idle=["p1"]), ToyPool(idle=["r1", "r2"])
    model = Model(primary, Clock(), replica=replica)
    model.client_message(E.QUERY, "SELECT f()", read=True)
    assert (model.state, model.conn, model.recorded) == (S.HOLDING, "r1", ["SELECT f()"])
    model.client_message(E.QUERY, "SELECT 2")  # waits for the read to end
    assert model.backlog == ["SELECT 2"]
    model.fire(E.READ_ONLY_REFUSAL)
    assert replica.dropped == ["r1"]
    assert (model.state, model.conn) == (S.ATTACHED, "p1")
    assert model.sent == ["SELECT f()", "SELECT f()", "SELECT 2"]


def test_a_dead_replica_reruns_the_read_once_unless_rows_were_sent() -> None:
    primary, replica = ToyPool(idle=["p1"]), ToyPool(idle=["r1", "r2"])
    model = Model(primary, Clock(), replica=replica)
    model.client_message(E.QUERY, "SELECT 1", read=True)
    model.fire(E.LOST)
    assert (model.state, model.conn) == (S.ATTACHED, "r2")
    assert model.sent == ["SELECT 1", "SELECT 1"]
    # The re-run is not re-runnable: a second loss fails the unit.
    model.fire(E.LOST)
    assert model.state is S.IDLE
    assert model.client == ["error: connection lost"]

    model = Model(primary, Clock(), replica=ToyPool(idle=["r3"]))
    model.client_message(E.QUERY, "SELECT 1", read=True)
    model.fire(E.ROWS_SENT)
    assert model.state is S.SEALED
    model.fire(E.LOST)
    assert model.client == ["error: connection lost"]


def test_read_your_writes_asks_the_position_before_releasing() -> None:
    pool = ToyPool(idle=["c1"])
    model = Model(pool, Clock())
    model.client_message(E.QUERY, "INSERT ...")
    model.done(ask_position=True)
    assert (model.state, model.hidden, model.conn) == (S.SETTLING, ["position"], "c1")
    model.client_message(E.QUERY, "SELECT ...")  # waits for the answer
    assert model.backlog == ["SELECT ..."]
    model.done()
    assert (model.state, model.conn) == (S.ATTACHED, "c1")
    assert model.sent == ["INSERT ...", "SELECT ..."]  # routed anew once released


def test_statement_mode_refuses_a_transaction_and_rolls_back_one_left_open() -> None:
    model = Model(ToyPool(idle=["c1"]), Clock())
    model.statement_mode = True
    model.client_message(E.QUERY, "BEGIN")
    assert (model.state, model.client) == (S.IDLE, ["error: BEGIN"])
    model.client_message(E.QUERY, "SELECT 1")
    model.done(in_tx=True, statement_mode=True)
    assert model.hidden == ["ROLLBACK"]


def test_a_connection_lost_mid_pipeline_skips_to_the_sync() -> None:
    model = Model(ToyPool(idle=["c1"]), Clock())
    model.client_message(E.SYNC, "Sync")
    model.fire(E.LOST_MID_PIPELINE)
    assert model.state is S.SKIPPING
    model.client_message(E.FRAME, "Bind")
    model.client_message(E.FRAME, "Execute")
    assert model.state is S.SKIPPING
    model.fire(E.SYNC)
    assert model.state in (S.IDLE,)
    assert Effect.ANSWER_READY in model.effects
