"""Transaction pooling's fast path for server output agrees with framing message by message.

`scan_plain` + `ResponseTracker.finish_plain` forward a chunk unchanged; `on_frame` per message is
the reference. For any batch of client requests and any protocol-valid answer to it, both must
forward the same bytes and leave the tracker in the same state, and the fast path must refuse
anything it cannot forward blindly (errors, status reports, a chunk that does not end a cycle).
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dbbalancer.postgres import codec
from dbbalancer.postgres.codec import parse_frame
from dbbalancer.postgres.responses import Request, ResponseTracker
from dbbalancer.postgres.stream import scan_plain

ROW_DESC = codec.RowDescription((codec.FieldDescription("x"),)).encode()
NO_DATA = codec.NoData().encode()
EMPTY = codec.EmptyQueryResponse().encode()
SUSPENDED = codec.PortalSuspended().encode()
NOTICE = codec.notice_response("00000", "hello")
ERROR = codec.error_response("42P01", "no such table", severity="ERROR")
PARAM = codec.ParameterStatus("TimeZone", "UTC").encode()

rows = st.lists(st.binary(max_size=40).map(lambda v: codec.DataRow((v, None)).encode()), max_size=4)
notices = st.lists(st.just(NOTICE), max_size=1)


@st.composite
def cycle(draw: st.DrawFn) -> tuple[list[Request], list[bytes]]:
    """One request cycle (a simple Query, or extended messages and a Sync) and its answer."""
    status = draw(st.sampled_from([b"I", b"T", b"E"]))
    ready = codec.ReadyForQuery(status).encode()
    if draw(st.booleans()):
        out: list[bytes] = []
        for _ in range(draw(st.integers(0, 3))):
            if draw(st.booleans()):
                out += [ROW_DESC, *draw(rows), codec.CommandComplete("SELECT 1").encode()]
            else:
                out.append(draw(st.sampled_from([EMPTY, codec.CommandComplete("SET").encode()])))
            out += draw(notices)
        return [Request.QUERY], [*out, ready]
    requests: list[Request] = []
    out = []
    for _ in range(draw(st.integers(0, 3))):
        step = draw(st.sampled_from(["parse", "bind", "describe", "execute", "close"]))
        if step == "parse":
            requests.append(Request.PARSE)
            out.append(codec.ParseComplete().encode())
        elif step == "bind":
            requests.append(Request.BIND)
            out.append(codec.BindComplete().encode())
        elif step == "describe":
            requests.append(Request.DESCRIBE_PORTAL)
            out.append(draw(st.sampled_from([ROW_DESC, NO_DATA])))
        elif step == "execute":
            requests.append(Request.EXECUTE)
            out += draw(rows)
            done = codec.CommandComplete("SELECT 2").encode()
            out.append(draw(st.sampled_from([done, SUSPENDED])))
        else:
            requests.append(Request.CLOSE)
            out.append(codec.CloseComplete().encode())
        out += draw(notices)
    return [*requests, Request.SYNC], [*out, ready]


def tracker_for(cycles: list[tuple[list[Request], list[bytes]]]) -> ResponseTracker:
    tracker = ResponseTracker()
    for requests, _ in cycles:
        for request in requests:
            tracker.expect(request)
    return tracker


def state(tracker: ResponseTracker) -> tuple[object, ...]:
    return (len(tracker), tracker.idle, tracker.plain, tracker.ready_status)


@given(st.lists(cycle(), min_size=1, max_size=3))
def test_fast_path_matches_framing(cycles: list[tuple[list[Request], list[bytes]]]) -> None:
    chunk = b"".join(cycles[0][1])
    fast, slow = tracker_for(cycles), tracker_for(cycles)
    assert fast.plain
    found = scan_plain(chunk, 1 << 20)
    assert found is not None
    status, has_rows = found
    fast.finish_plain(status)
    out: list[bytes] = []
    readies = sum(slow.on_frame(parse_frame(m), out) for m in cycles[0][1])
    assert readies == 1
    assert b"".join(out) == chunk
    assert state(fast) == state(slow)
    assert has_rows == any(m[:1] in (b"T", b"D") for m in cycles[0][1])


@given(st.lists(cycle(), min_size=2, max_size=3))
def test_two_cycles_in_one_chunk_are_framed(
    cycles: list[tuple[list[Request], list[bytes]]],
) -> None:
    chunk = b"".join(b"".join(answer) for _, answer in cycles)
    assert scan_plain(chunk, 1 << 20) is None


NOTIFY = codec.NotificationResponse(1, "c", "p").encode()


@given(cycle(), st.sampled_from([ERROR, PARAM, NOTIFY]), st.data())
def test_messages_that_need_reading_are_framed(
    one: tuple[list[Request], list[bytes]], extra: bytes, data: st.DataObject
) -> None:
    answer = one[1]
    at = data.draw(st.integers(0, len(answer) - 1))
    chunk = b"".join([*answer[:at], extra, *answer[at:]])
    assert scan_plain(chunk, 1 << 20) is None


@given(cycle(), st.data())
def test_a_cut_chunk_is_framed(one: tuple[list[Request], list[bytes]], data: st.DataObject) -> None:
    chunk = b"".join(one[1])
    cut = data.draw(st.integers(1, len(chunk) - 1))
    assert scan_plain(chunk[:cut], 1 << 20) is None


def test_hidden_or_synthetic_requests_turn_the_fast_path_off() -> None:
    tracker = ResponseTracker()
    assert not tracker.plain  # nothing in flight: output is asynchronous, framed
    tracker.expect(Request.QUERY, visible=False)
    tracker.expect(Request.QUERY)
    assert not tracker.plain
    out: list[bytes] = []
    for message in (codec.CommandComplete("SET").encode(), codec.ReadyForQuery(b"I").encode()):
        tracker.on_frame(parse_frame(message), out)
    assert tracker.plain
    tracker.synthesize(codec.ParseComplete().encode(), out)
    assert not tracker.plain
    tracker.clear()
    assert not tracker.plain
    assert tracker.idle


def test_a_lying_length_is_framed_not_trusted() -> None:
    ready = codec.ReadyForQuery(b"I").encode()
    assert scan_plain(b"D\x00\x00\x00\x02" + ready, 1 << 20) is None
    assert scan_plain(b"D\xff\xff\xff\xff" + ready, 1 << 20) is None
    big = codec.DataRow((b"x" * 100,)).encode()
    assert scan_plain(big + ready, 50) is None
    assert scan_plain(big + ready, 1 << 20) == (b"I", True)
