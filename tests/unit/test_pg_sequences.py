"""The sequence-state ledger (postgres/sequences.py): currval()/lastval() only where they answer
for the asking client."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from dbbalancer.postgres.sequences import SequenceState, Verdict


@dataclass
class Conn:
    seq_owner: object | None = None
    seq_dirty: bool = False


def test_a_client_that_never_wrote_gets_a_cleared_connection() -> None:
    conn = Conn(seq_dirty=True)  # another client's nextval() ran here
    assert SequenceState().before_read(conn) is Verdict.CLEAR_FIRST
    assert not conn.seq_dirty


def test_the_writes_connection_answers_until_another_client_writes_there() -> None:
    a, b, conn = SequenceState(), SequenceState(), Conn()
    assert not a.before_write(conn)  # clean connection: nothing to clear
    assert a.before_read(conn) is Verdict.RUN
    assert b.before_read(conn) is Verdict.CLEAR_FIRST  # b never wrote: a clean state for it
    # ... which discarded a's state: a must not be answered there any more.
    assert a.before_read(conn) is Verdict.REFUSE


def test_a_first_write_on_a_used_connection_clears_it_first() -> None:
    a, conn = SequenceState(), Conn(seq_dirty=True)
    assert a.before_write(conn)
    assert a.owns(conn)


def test_a_write_elsewhere_starts_afresh_there() -> None:
    a, one, two = SequenceState(), Conn(), Conn(seq_dirty=True)
    a.before_write(one)
    assert a.before_write(two)  # cleared first: it held another client's state
    assert a.before_read(two) is Verdict.RUN
    assert a.before_read(one) is Verdict.REFUSE  # not its home any more
    a.discarded(one)  # DISCARD SEQUENCES: a fresh start, as on a direct connection
    assert a.before_read(one) is Verdict.RUN


def test_a_lost_connection_takes_the_state_with_it() -> None:
    a, conn = SequenceState(), Conn()
    a.before_write(conn)
    a.lost_connection(conn)
    assert a.before_read(Conn()) is Verdict.REFUSE


# A model: each connection holds the clients whose nextval() may have run there since it was
# last cleared. The ledger must never let a read run where another client's state is.
@given(
    st.lists(
        st.tuples(
            st.integers(0, 2),  # client
            st.integers(0, 2),  # connection
            st.sampled_from(["write", "read", "discard"]),
        ),
        max_size=40,
    )
)
def test_a_read_never_runs_on_anything_but_the_clients_own_state(
    steps: list[tuple[int, int, str]],
) -> None:
    clients = [SequenceState() for _ in range(3)]
    conns = [Conn() for _ in range(3)]
    # What each connection really holds: the clients whose nextval() may be in its state.
    holds: list[set[int]] = [set() for _ in range(3)]
    wrote_anywhere: list[set[int]] = [set() for _ in range(3)]  # client -> connections
    for who, where, what in steps:
        client, conn = clients[who], conns[where]
        if what == "write":
            at_home = client.owns(conn)
            if client.before_write(conn):
                holds[where].clear()
            # Away from its home the client starts afresh here: the rest is forgotten.
            wrote_anywhere[who] = wrote_anywhere[who] | {where} if at_home else {where}
            holds[where].add(who)
        elif what == "discard":
            client.discarded(conn)
            holds[where].clear()
            wrote_anywhere[who] = set()
        else:
            verdict = client.before_read(conn)
            if verdict is Verdict.CLEAR_FIRST:
                holds[where].clear()
            if verdict is not Verdict.REFUSE:
                # Runs: the connection must hold exactly this client's whole state.
                assert holds[where] <= {who}
                assert wrote_anywhere[who] <= {where}
                if wrote_anywhere[who]:
                    assert holds[where] == {who}
