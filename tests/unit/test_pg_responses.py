"""ResponseTracker: which server responses the client sees, in which order."""

from __future__ import annotations

from dbbalancer.postgres import codec
from dbbalancer.postgres.codec import parse_frame
from dbbalancer.postgres.responses import Request, ResponseTracker

PARSE_COMPLETE = codec.ParseComplete().encode()
BIND_COMPLETE = codec.BindComplete().encode()
CLOSE_COMPLETE = codec.CloseComplete().encode()
NO_DATA = codec.NoData().encode()
READY = codec.ReadyForQuery(b"I").encode()
ROW_DESC = codec.RowDescription((codec.FieldDescription("x"),)).encode()
ROW = codec.DataRow((b"1",)).encode()
DONE = codec.CommandComplete("SELECT 1").encode()
SET_DONE = codec.CommandComplete("SET").encode()
ERROR = codec.error_response("42P01", "no such table", severity="ERROR")
NOTICE = codec.notice_response("00000", "hello")
PARAM = codec.ParameterStatus("application_name", "x").encode()


def feed(tracker: ResponseTracker, *messages: bytes) -> tuple[list[bytes], int]:
    out: list[bytes] = []
    readies = 0
    for data in messages:
        if tracker.on_frame(parse_frame(data), out):
            readies += 1
    return out, readies


def test_simple_query_passes_through() -> None:
    tracker = ResponseTracker()
    tracker.expect(Request.QUERY)
    out, readies = feed(tracker, ROW_DESC, ROW, DONE, READY)
    assert out == [ROW_DESC, ROW, DONE, READY]
    assert readies == 1
    assert tracker.idle
    assert tracker.ready_status == b"I"


def test_hidden_query_is_swallowed_then_client_query_forwarded() -> None:
    tracker = ResponseTracker()
    tracker.expect(Request.QUERY, visible=False)  # the proxy's SET
    tracker.expect(Request.QUERY)
    out, readies = feed(tracker, PARAM, SET_DONE, READY, ROW_DESC, ROW, DONE, READY)
    assert out == [ROW_DESC, ROW, DONE, READY]
    assert readies == 2


def test_hidden_parse_before_client_bind() -> None:
    tracker = ResponseTracker()
    tracker.expect(Request.PARSE, visible=False, tag="dbb_1")
    tracker.expect(Request.BIND)
    tracker.expect(Request.EXECUTE)
    tracker.expect(Request.SYNC)
    out, _ = feed(tracker, PARSE_COMPLETE, BIND_COMPLETE, ROW, DONE, READY)
    assert out == [BIND_COMPLETE, ROW, DONE, READY]
    assert tracker.failed_parses == []


def test_synthetic_parse_complete_keeps_its_place() -> None:
    tracker = ResponseTracker()
    early: list[bytes] = []
    tracker.expect(Request.BIND)  # an earlier request still in flight
    tracker.synthesize(PARSE_COMPLETE, early)
    assert early == []  # not before the BindComplete it follows
    tracker.expect(Request.SYNC)
    out, _ = feed(tracker, BIND_COMPLETE, READY)
    assert out == [BIND_COMPLETE, PARSE_COMPLETE, READY]


def test_synthetic_with_nothing_in_flight_goes_out_at_once() -> None:
    tracker = ResponseTracker()
    out: list[bytes] = []
    tracker.synthesize(CLOSE_COMPLETE, out)
    assert out == [CLOSE_COMPLETE]


def test_error_skips_to_sync_and_drops_synthetic_responses() -> None:
    tracker = ResponseTracker()
    tracker.expect(Request.PARSE, visible=False, tag="dbb_bad")
    tracker.expect(Request.BIND)
    sink: list[bytes] = []
    tracker.synthesize(PARSE_COMPLETE, sink)
    tracker.expect(Request.EXECUTE)
    tracker.expect(Request.SYNC)
    out, readies = feed(tracker, ERROR, READY)
    # The hidden Parse failed: the client still learns why its Bind did not run.
    assert out == [ERROR, READY]
    assert readies == 1
    assert tracker.failed_parses == ["dbb_bad"]
    assert tracker.idle


def test_statements_skipped_after_an_error_are_reported() -> None:
    """A Parse or Close that the server skipped after an earlier error did not run: the proxy's
    record of the connection's statements must hear of it (the statement is missing, or is
    still there)."""
    tracker = ResponseTracker()
    tracker.expect(Request.BIND)  # fails
    tracker.expect(Request.CLOSE, visible=False, tag="dbb_evicted")
    tracker.expect(Request.PARSE, visible=False, tag="dbb_new")
    tracker.expect(Request.PARSE, visible=True, tag="dbb_client")
    tracker.expect(Request.EXECUTE)
    tracker.expect(Request.SYNC)
    out, readies = feed(tracker, ERROR, READY)
    assert out == [ERROR, READY]
    assert readies == 1
    assert tracker.failed_parses == ["dbb_new", "dbb_client"]
    assert tracker.failed_closes == ["dbb_evicted"]
    assert tracker.idle


def test_error_in_simple_query_waits_for_ready() -> None:
    tracker = ResponseTracker()
    tracker.expect(Request.QUERY)
    out, readies = feed(tracker, ERROR, READY)
    assert out == [ERROR, READY]
    assert readies == 1


def test_describe_statement_ends_with_row_description_or_no_data() -> None:
    tracker = ResponseTracker()
    tracker.expect(Request.DESCRIBE_STATEMENT)
    tracker.expect(Request.DESCRIBE_STATEMENT, visible=False)
    tracker.expect(Request.SYNC)
    param_desc = codec.ParameterDescription((23,)).encode()
    out, _ = feed(tracker, param_desc, ROW_DESC, param_desc, NO_DATA, READY)
    assert out == [param_desc, ROW_DESC, READY]


def test_notices_follow_the_head_request_and_notifications_always_pass() -> None:
    tracker = ResponseTracker()
    tracker.expect(Request.QUERY, visible=False)
    notify = codec.NotificationResponse(1, "ch", "p").encode()
    out, _ = feed(tracker, NOTICE, notify, SET_DONE, READY)
    assert out == [notify]
    out, readies = feed(tracker, NOTICE)  # nothing in flight: asynchronous, to the client
    assert out == [NOTICE]
    assert readies == 0


def test_copy_out_within_execute() -> None:
    tracker = ResponseTracker()
    tracker.expect(Request.EXECUTE)
    tracker.expect(Request.SYNC)
    copy_out = codec.CopyOutResponse(0, (0,)).encode()
    data = codec.CopyData(b"1\n").encode()
    copy_done = codec.CopyDone().encode()
    out, _ = feed(tracker, copy_out, data, copy_done, codec.CommandComplete("COPY 1").encode())
    assert len(out) == 4
    assert len(tracker) == 1  # only the Sync left


def test_hidden_query_rows_can_be_captured() -> None:
    tracker = ResponseTracker()
    rows: list[bytes] = []
    tracker.expect(Request.QUERY, visible=False, capture=rows)
    out, readies = feed(tracker, ROW_DESC, ROW, DONE, READY)
    assert out == []
    assert readies == 1
    assert rows == [ROW]
