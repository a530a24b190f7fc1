"""Unit tests for the PostgreSQL protocol 3.0 codec (dbbalancer.postgres.codec)."""

from __future__ import annotations

import struct

import pytest

from dbbalancer.postgres import codec
from dbbalancer.postgres.codec import (
    AuthenticationCleartextPassword,
    AuthenticationMD5Password,
    AuthenticationOk,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    BackendKeyData,
    BackendMessage,
    BackendType,
    Bind,
    BindComplete,
    CancelRequest,
    Close,
    CloseComplete,
    CommandComplete,
    CopyBothResponse,
    CopyData,
    CopyDone,
    CopyFail,
    CopyInResponse,
    CopyOutResponse,
    DataRow,
    Describe,
    EmptyQueryResponse,
    ErrorResponse,
    Execute,
    FieldDescription,
    Flush,
    Frame,
    FrontendMessage,
    FrontendType,
    FunctionCall,
    FunctionCallResponse,
    GSSENCRequest,
    MessageReader,
    NegotiateProtocolVersion,
    NoData,
    NoticeResponse,
    NotificationResponse,
    ParameterDescription,
    ParameterStatus,
    Parse,
    ParseComplete,
    PasswordMessage,
    PortalSuspended,
    ProtocolError,
    Query,
    ReadyForQuery,
    RowDescription,
    SASLInitialResponse,
    SASLResponse,
    SSLRequest,
    StartupMessage,
    StartupReader,
    Sync,
    Terminate,
    decode_backend,
    decode_frontend,
    decode_sasl_initial_response,
    decode_sasl_response,
    error_response,
    notice_response,
    parse_frame,
)

FRONTEND_SAMPLES: list[FrontendMessage] = [
    Query("SELECT 1"),
    Query(""),
    Query("SELECT 'héllo ✓'"),
    Parse("", "SELECT $1", ()),
    Parse("s1", "INSERT INTO t VALUES ($1, $2)", (23, 4294967295)),
    Bind("", "", (), (), ()),
    Bind("p1", "s1", (0, 1), (b"42", None, b""), (1,)),
    Describe(b"S", "s1"),
    Describe(b"P", ""),
    Execute("", 0),
    Execute("p1", 100),
    Close(b"S", "s1"),
    Close(b"P", "p1"),
    Sync(),
    Flush(),
    Terminate(),
    CopyData(b"1\t2\n"),
    CopyData(b""),
    CopyDone(),
    CopyFail("client gave up"),
    FunctionCall(1598, (0,), (b"x", None), 1),
    FunctionCall(1, (), (), 0),
    PasswordMessage(b"md5abcdef"),
    PasswordMessage(b""),
]

BACKEND_SAMPLES: list[BackendMessage] = [
    AuthenticationOk(),
    AuthenticationCleartextPassword(),
    AuthenticationMD5Password(b"\x01\x02\x03\x04"),
    AuthenticationSASL(("SCRAM-SHA-256", "SCRAM-SHA-256-PLUS")),
    AuthenticationSASL(()),
    AuthenticationSASLContinue(b"r=abc,s=c2FsdA==,i=4096"),
    AuthenticationSASLFinal(b"v=xyz"),
    BackendKeyData(1234, 4294967295),
    ParameterStatus("server_version", "16.2"),
    ReadyForQuery(b"I"),
    ReadyForQuery(b"T"),
    ReadyForQuery(b"E"),
    RowDescription(()),
    RowDescription(
        (
            FieldDescription("id", 16384, 1, 23, 4, -1, 0),
            FieldDescription("naïve", 0, 0, 25, -1, -1, 1),
        )
    ),
    DataRow(()),
    DataRow((b"1", None, b"")),
    CommandComplete("SELECT 1"),
    EmptyQueryResponse(),
    ErrorResponse({"S": "ERROR", "V": "ERROR", "C": "42P01", "M": "relation does not exist"}),
    ErrorResponse({}),
    NoticeResponse({"S": "NOTICE", "C": "00000", "M": "hi"}),
    NotificationResponse(42, "chan", "payload"),
    ParseComplete(),
    BindComplete(),
    CloseComplete(),
    NoData(),
    ParameterDescription((23, 25, 4294967295)),
    ParameterDescription(()),
    PortalSuspended(),
    CopyInResponse(0, (0, 0)),
    CopyOutResponse(1, (1,)),
    CopyBothResponse(0, ()),
    CopyData(b"\x00\x01"),
    CopyDone(),
    NegotiateProtocolVersion(0, ("_pq_.foo",)),
    NegotiateProtocolVersion(196608, ()),
    FunctionCallResponse(b"result"),
    FunctionCallResponse(None),
]


def _frame(message: FrontendMessage | BackendMessage) -> Frame:
    return parse_frame(message.encode())


@pytest.mark.parametrize("message", FRONTEND_SAMPLES, ids=repr)
def test_frontend_round_trip(message: FrontendMessage) -> None:
    frame = _frame(message)
    assert frame.type == message.TYPE
    assert decode_frontend(frame) == message


@pytest.mark.parametrize("message", BACKEND_SAMPLES, ids=repr)
def test_backend_round_trip(message: BackendMessage) -> None:
    frame = _frame(message)
    assert frame.type == message.TYPE
    assert decode_backend(frame) == message


def test_every_message_class_is_sampled() -> None:
    classes = {type(m) for m in [*FRONTEND_SAMPLES, *BACKEND_SAMPLES]}
    classes |= {SASLInitialResponse, SASLResponse}  # decoded by their own functions, below
    exported = {
        obj
        for name in codec.__all__
        if isinstance(obj := getattr(codec, name), type) and hasattr(obj, "TYPE")
    }
    assert exported == classes


@pytest.mark.parametrize(
    "message",
    [
        SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=abc"),
        SASLInitialResponse("SCRAM-SHA-256", None),
        SASLInitialResponse("SCRAM-SHA-256", b""),
    ],
    ids=repr,
)
def test_sasl_initial_response_round_trip(message: SASLInitialResponse) -> None:
    assert decode_sasl_initial_response(_frame(message)) == message


def test_sasl_response_round_trip() -> None:
    message = SASLResponse(b"c=biws,r=abc,p=xyz")
    assert decode_sasl_response(_frame(message)) == message


def test_sasl_decoders_reject_other_types() -> None:
    with pytest.raises(ProtocolError):
        decode_sasl_response(_frame(Query("x")))
    with pytest.raises(ProtocolError):
        decode_sasl_initial_response(_frame(Query("x")))


def test_p_decodes_as_password_message_by_default() -> None:
    frame = _frame(SASLResponse(b"secret\0"))
    assert decode_frontend(frame) == PasswordMessage(b"secret")


# Known byte layouts, written out from the "Message Formats" section.


def test_ready_for_query_bytes() -> None:
    assert ReadyForQuery(b"I").encode() == b"Z\x00\x00\x00\x05I"


def test_query_bytes() -> None:
    assert Query("SELECT 1").encode() == b"Q\x00\x00\x00\x0dSELECT 1\x00"


def test_bind_bytes() -> None:
    expected = (
        b"B\x00\x00\x00\x1a"
        b"p\x00s\x00"
        b"\x00\x01\x00\x01"  # one parameter format: binary
        b"\x00\x02\x00\x00\x00\x02hi\xff\xff\xff\xff"  # two values: b"hi", NULL
        b"\x00\x00"  # no result formats
    )
    assert Bind("p", "s", (1,), (b"hi", None), ()).encode() == expected


def test_authentication_md5_bytes() -> None:
    encoded = AuthenticationMD5Password(b"abcd").encode()
    assert encoded == b"R\x00\x00\x00\x0c\x00\x00\x00\x05abcd"


def test_frame_body_and_data() -> None:
    frame = _frame(Query("x"))
    assert frame.data == b"Q\x00\x00\x00\x06x\x00"
    assert bytes(frame.body) == b"x\x00"


def test_error_response_helper() -> None:
    data = error_response("28P01", "bad password", detail="d", hint="h")
    msg = decode_backend(parse_frame(data))
    assert isinstance(msg, ErrorResponse)
    assert msg.fields == {
        "S": "FATAL",
        "V": "FATAL",
        "C": "28P01",
        "M": "bad password",
        "D": "d",
        "H": "h",
    }
    assert (msg.sqlstate, msg.message, msg.severity) == ("28P01", "bad password", "FATAL")
    assert data.startswith(b"E")
    assert data.endswith(b"h\x00\x00")


def test_notice_response_helper() -> None:
    msg = decode_backend(parse_frame(notice_response("01000", "careful", severity="WARNING")))
    assert isinstance(msg, NoticeResponse)
    assert set(msg.fields) == {"S", "V", "C", "M"}
    assert (msg.sqlstate, msg.message, msg.severity) == ("01000", "careful", "WARNING")


def test_severity_falls_back_to_localized_field() -> None:
    assert ErrorResponse({"S": "FEHLER"}).severity == "FEHLER"


def test_type_constants_match_classes() -> None:
    assert BackendType.READY_FOR_QUERY == ReadyForQuery.TYPE == b"Z"
    assert FrontendType.QUERY == Query.TYPE == b"Q"
    assert FrontendType.DESCRIBE == BackendType.DATA_ROW == b"D"


def test_encode_rejects_nul_in_strings() -> None:
    with pytest.raises(ValueError, match="NUL"):
        Query("a\0b").encode()


# MessageReader


def test_reader_splits_and_joins_messages() -> None:
    stream = Query("a").encode() + Sync().encode() + Query("bc").encode()
    reader = MessageReader()
    reader.feed(stream[:3])
    assert reader.next() is None
    reader.feed(stream[3:9])
    frames = list(reader)
    assert [f.data for f in frames] == [Query("a").encode()]
    reader.feed(stream[9:])
    assert [f.type for f in reader] == [b"S", b"Q"]
    assert reader.buffered == 0


def test_reader_rejects_huge_length_before_buffering() -> None:
    reader = MessageReader()
    reader.feed(b"Q" + struct.pack("!I", 2**31) + b"SEL")
    with pytest.raises(ProtocolError, match=str(2**31)) as info:
        reader.next()
    assert str(codec.DEFAULT_MAX_MESSAGE_LENGTH) in info.value.message
    assert info.value.sqlstate == "08P01"


@pytest.mark.parametrize("length", [0, 3])
def test_reader_rejects_length_below_four(length: int) -> None:
    reader = MessageReader()
    reader.feed(b"Q" + struct.pack("!I", length))
    with pytest.raises(ProtocolError, match="minimum"):
        reader.next()


def test_reader_max_length_can_change() -> None:
    reader = MessageReader(max_length=8)
    reader.feed(Query("SELECT 1").encode())
    with pytest.raises(ProtocolError, match="limit of 8"):
        reader.next()
    reader.max_length = 100
    assert reader.next() == Frame(b"Q", Query("SELECT 1").encode())


def test_reader_take_buffer() -> None:
    reader = MessageReader()
    reader.feed(Sync().encode() + b"Q\x00\x00")
    assert reader.next() == Frame(b"S", Sync().encode())
    assert reader.buffered == 3
    assert reader.take_buffer() == b"Q\x00\x00"
    assert reader.buffered == 0
    assert reader.next() is None


def test_reader_compacts_after_many_messages() -> None:
    one = DataRow((b"x" * 100,)).encode()
    reader = MessageReader()
    count = 0
    for _ in range(2000):
        # A partial message stays behind each time, so the buffer is never simply emptied.
        reader.feed(one + one[:3])
        count += len(list(reader))
        reader.feed(one[3:])
        count += len(list(reader))
    assert count == 4000
    assert reader.buffered == 0


def test_parse_frame_rejects_incomplete_and_extra() -> None:
    with pytest.raises(ProtocolError):
        parse_frame(Query("x").encode()[:-1])
    with pytest.raises(ProtocolError):
        parse_frame(Query("x").encode() + b"S")


# Malformed bodies


def _raw(type_: bytes, body: bytes) -> Frame:
    return Frame(type_, type_ + struct.pack("!I", len(body) + 4) + body)


@pytest.mark.parametrize(
    ("type_", "body"),
    [
        (b"Q", b"SELECT 1"),  # missing terminator
        (b"Q", b"SELECT 1\x00x"),  # trailing bytes
        (b"Q", b"\xff\xfe\x00"),  # invalid UTF-8
        (b"P", b"s\x00q\x00\x00\x02\x00\x00\x00\x17"),  # two types announced, one present
        (b"B", b"\x00\x00\x00\x00\x00\x01\x00\x00\x00\x05ab\x00\x00"),  # value too short
        (b"B", b"\x00\x00\x00\x00\x00\x01\xff\xff\xff\xfe\x00\x00"),  # length -2
        (b"D", b"X\x00"),  # bad Describe kind
        (b"C", b""),  # Close without kind
        (b"E", b"\x00\x00\x00"),  # Execute truncated
        (b"S", b"x"),  # Sync with a body
        (b"F", b"\x00\x00\x00\x01\x00\x00\x00\x00"),  # FunctionCall missing result format
        (b"p", b"pw"),  # password without terminator
        (b"p", b"pw\x00x\x00"),  # embedded NUL
        (b"?", b""),  # unknown type
    ],
)
def test_frontend_garbage(type_: bytes, body: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_frontend(_raw(type_, body))


@pytest.mark.parametrize(
    ("type_", "body"),
    [
        (b"R", b""),  # no subtype
        (b"R", b"\x00\x00\x00\x00x"),  # AuthenticationOk with trailing byte
        (b"R", b"\x00\x00\x00\x05ab"),  # short md5 salt
        (b"R", b"\x00\x00\x00\x0aSCRAM-SHA-256\x00"),  # SASL list not terminated
        (b"R", b"\x00\x00\x00\x07"),  # GSSAPI: unsupported
        (b"K", b"\x00\x00\x00\x01"),
        (b"Z", b"X"),  # bad transaction status
        (b"Z", b""),
        (b"T", b"\x00\x01"),  # one field announced, none present
        (b"T", b"\xff\xff" + b"\x00" * 19),  # huge count
        (b"D", b"\x00\x01\x00\x00\x00\x09abc"),
        (b"D", b"\x00\x01\x80\x00\x00\x00"),  # negative length other than -1
        (b"E", b"Mmessage\x00"),  # no final zero byte
        (b"E", b"M\xff\x00\x00"),  # invalid UTF-8
        (b"E", b"\x00\x00"),  # trailing byte
        (b"A", b"\x00\x00\x00\x01chan\x00"),  # missing payload
        (b"t", b"\x00\x02\x00\x00\x00\x17"),
        (b"G", b"\x00\x00\x05"),
        (b"v", b"\x00\x00\x00\x00\xff\xff\xff\xff"),  # negative option count
        (b"v", b"\x00\x00\x00\x00\x00\x00\x00\x02a\x00"),
        (b"V", b"\x00\x00\x00\x05ab"),
        (b"I", b"\x00"),
        (b"?", b""),
    ],
)
def test_backend_garbage(type_: bytes, body: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_backend(_raw(type_, body))


def test_unsupported_auth_method_is_feature_not_supported() -> None:
    with pytest.raises(ProtocolError) as info:
        decode_backend(_raw(b"R", b"\x00\x00\x00\x07"))
    assert info.value.sqlstate == "0A000"


# StartupReader


def _startup(**parameters: str) -> StartupMessage:
    return StartupMessage(codec.PROTOCOL_VERSION_3, parameters)


def test_startup_message_round_trip() -> None:
    message = _startup(user="alice", database="shop", application_name="tést")
    reader = StartupReader()
    reader.feed(message.encode())
    assert reader.next() == message
    assert reader.next() is None


def test_startup_message_bytes() -> None:
    expected = b"\x00\x00\x00\x12\x00\x03\x00\x00user\x00bob\x00\x00"
    assert _startup(user="bob").encode() == expected


def test_database_defaults_to_user() -> None:
    assert _startup(user="bob").database == "bob"
    assert _startup(user="bob", database="").database == "bob"
    assert _startup(user="bob", database="db").database == "db"


def test_ssl_request_then_startup_in_one_chunk() -> None:
    startup = _startup(user="bob")
    reader = StartupReader()
    reader.feed(SSLRequest().encode() + startup.encode() + Query("x").encode())
    assert reader.next() == SSLRequest()
    assert reader.next() == startup
    assert reader.take_buffer() == Query("x").encode()


def test_ssl_request_bytes() -> None:
    assert SSLRequest().encode() == b"\x00\x00\x00\x08\x04\xd2\x16\x2f"


def test_gssenc_request() -> None:
    reader = StartupReader()
    reader.feed(GSSENCRequest().encode())
    assert reader.next() == GSSENCRequest()


def test_cancel_request() -> None:
    reader = StartupReader()
    encoded = CancelRequest(4321, 0xDEADBEEF).encode()
    assert encoded == b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x10\xe1\xde\xad\xbe\xef"
    for i in range(len(encoded)):
        reader.feed(encoded[i : i + 1])
        result = reader.next()
        assert (result is None) == (i < len(encoded) - 1)
    assert result == CancelRequest(4321, 0xDEADBEEF)


def test_negative_cancel_key_is_sent_as_unsigned() -> None:
    assert CancelRequest(1, -1).encode() == CancelRequest(1, 0xFFFFFFFF).encode()


@pytest.mark.parametrize("length", [4, 7, 10_005, 2**31])
def test_startup_rejects_bad_length(length: int) -> None:
    reader = StartupReader()
    reader.feed(struct.pack("!II", length, codec.PROTOCOL_VERSION_3))
    with pytest.raises(ProtocolError, match="invalid length of startup packet"):
        reader.next()


def test_startup_accepts_maximum_length() -> None:
    value = "x" * (codec.MAX_STARTUP_LENGTH - 4 - len(b"user\0\0\0"))
    message = _startup(user=value)
    assert len(message.encode()) == codec.MAX_STARTUP_LENGTH + 4
    reader = StartupReader()
    reader.feed(message.encode())
    assert reader.next() == message


def test_protocol_2_is_rejected() -> None:
    reader = StartupReader()
    reader.feed(StartupMessage(2 << 16, {"user": "bob"}).encode())
    with pytest.raises(ProtocolError) as info:
        reader.next()
    assert info.value.sqlstate == "0A000"


def test_newer_minor_version_is_accepted() -> None:
    message = StartupMessage((3 << 16) | 2, {"user": "bob", "_pq_.x": "1"})
    reader = StartupReader()
    reader.feed(message.encode())
    result = reader.next()
    assert result == message
    assert isinstance(result, StartupMessage)
    assert (result.major, result.minor) == (3, 2)


def test_startup_requires_user() -> None:
    reader = StartupReader()
    reader.feed(_startup(database="x").encode())
    with pytest.raises(ProtocolError) as info:
        reader.next()
    assert info.value.sqlstate == "28000"


@pytest.mark.parametrize(
    "payload",
    [
        b"user\x00bob\x00",  # no final terminator
        b"user\x00bob\x00x\x00",  # name without value, no terminator
        b"user\x00bob\x00\x00\x00",  # extra terminator
        b"user\x00\xff\x00\x00",  # invalid UTF-8
        b"\x00bob\x00\x00",  # empty name
    ],
)
def test_startup_garbage(payload: bytes) -> None:
    packet = struct.pack("!II", 8 + len(payload), codec.PROTOCOL_VERSION_3) + payload
    reader = StartupReader()
    reader.feed(packet)
    with pytest.raises(ProtocolError):
        reader.next()


@pytest.mark.parametrize("code", [codec.SSL_REQUEST_CODE, codec.CANCEL_REQUEST_CODE])
def test_special_requests_need_exact_length(code: int) -> None:
    reader = StartupReader()
    reader.feed(struct.pack("!III", 12, code, 0))
    with pytest.raises(ProtocolError):
        reader.next()
