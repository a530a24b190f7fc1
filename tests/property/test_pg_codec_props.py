"""Property tests for the PostgreSQL codec: framing is independent of chunking, decoding
round-trips, and hostile input only ever raises ProtocolError."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbbalancer.postgres import codec
from dbbalancer.postgres.codec import (
    BackendMessage,
    Frame,
    FrontendMessage,
    MessageReader,
    ProtocolError,
    StartupReader,
    decode_backend,
    decode_frontend,
    decode_sasl_initial_response,
    decode_sasl_response,
)

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

texts = st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=16)
names = st.text(st.characters(codec="utf-8", exclude_characters="\0"), min_size=1, max_size=8)
blobs = st.binary(max_size=24)
values = st.none() | blobs
u32 = st.integers(0, 2**32 - 1)
i32 = st.integers(-(2**31), 2**31 - 1)
i16 = st.integers(-(2**15), 2**15 - 1)
i8 = st.integers(-128, 127)
kinds = st.sampled_from([b"S", b"P"])


def tuples(elements: st.SearchStrategy[object]) -> st.SearchStrategy[tuple[object, ...]]:
    return st.lists(elements, max_size=5).map(tuple)


frontend_messages: st.SearchStrategy[FrontendMessage] = st.one_of(
    st.builds(codec.Query, texts),
    st.builds(codec.Parse, texts, texts, tuples(u32)),
    st.builds(codec.Bind, texts, texts, tuples(i16), tuples(values), tuples(i16)),
    st.builds(codec.Describe, kinds, texts),
    st.builds(codec.Execute, texts, i32),
    st.builds(codec.Close, kinds, texts),
    st.just(codec.Sync()),
    st.just(codec.Flush()),
    st.just(codec.Terminate()),
    st.builds(codec.CopyData, blobs),
    st.just(codec.CopyDone()),
    st.builds(codec.CopyFail, texts),
    st.builds(codec.FunctionCall, u32, tuples(i16), tuples(values), i16),
    st.builds(codec.PasswordMessage, st.binary(max_size=24).map(lambda b: b.replace(b"\0", b""))),
)

field_descriptions = st.builds(codec.FieldDescription, texts, u32, i16, u32, i16, i32, i16)
error_fields = st.dictionaries(st.characters(min_codepoint=1, max_codepoint=255), texts, max_size=6)

backend_messages: st.SearchStrategy[BackendMessage] = st.one_of(
    st.just(codec.AuthenticationOk()),
    st.just(codec.AuthenticationCleartextPassword()),
    st.builds(codec.AuthenticationMD5Password, st.binary(min_size=4, max_size=4)),
    st.builds(codec.AuthenticationSASL, tuples(names)),
    st.builds(codec.AuthenticationSASLContinue, blobs),
    st.builds(codec.AuthenticationSASLFinal, blobs),
    st.builds(codec.BackendKeyData, u32, u32),
    st.builds(codec.ParameterStatus, texts, texts),
    st.builds(codec.ReadyForQuery, st.sampled_from([b"I", b"T", b"E"])),
    st.builds(codec.RowDescription, tuples(field_descriptions)),
    st.builds(codec.DataRow, tuples(values)),
    st.builds(codec.CommandComplete, texts),
    st.just(codec.EmptyQueryResponse()),
    st.builds(codec.ErrorResponse, error_fields),
    st.builds(codec.NoticeResponse, error_fields),
    st.builds(codec.NotificationResponse, u32, texts, texts),
    st.just(codec.ParseComplete()),
    st.just(codec.BindComplete()),
    st.just(codec.CloseComplete()),
    st.just(codec.NoData()),
    st.builds(codec.ParameterDescription, tuples(u32)),
    st.just(codec.PortalSuspended()),
    st.builds(codec.CopyInResponse, i8, tuples(i16)),
    st.builds(codec.CopyOutResponse, i8, tuples(i16)),
    st.builds(codec.CopyBothResponse, i8, tuples(i16)),
    st.builds(codec.CopyData, blobs),
    st.just(codec.CopyDone()),
    st.builds(codec.NegotiateProtocolVersion, i32, tuples(texts)),
    st.builds(codec.FunctionCallResponse, values),
)

any_messages = st.lists(frontend_messages | backend_messages, max_size=12)


def _frames(reader: MessageReader) -> list[Frame]:
    return list(reader)


@SETTINGS
@given(frontend_messages)
def test_frontend_round_trip(message: FrontendMessage) -> None:
    assert decode_frontend(codec.parse_frame(message.encode())) == message


@SETTINGS
@given(backend_messages)
def test_backend_round_trip(message: BackendMessage) -> None:
    assert decode_backend(codec.parse_frame(message.encode())) == message


@SETTINGS
@given(st.builds(codec.SASLInitialResponse, names, values), blobs)
def test_sasl_round_trip(initial: codec.SASLInitialResponse, data: bytes) -> None:
    assert decode_sasl_initial_response(codec.parse_frame(initial.encode())) == initial
    response = codec.SASLResponse(data)
    assert decode_sasl_response(codec.parse_frame(response.encode())) == response


@SETTINGS
@given(any_messages, st.data())
def test_chunking_does_not_change_frames(
    messages: list[FrontendMessage | BackendMessage], data: st.DataObject
) -> None:
    encoded = [m.encode() for m in messages]
    stream = b"".join(encoded)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    reader = MessageReader()
    frames: list[Frame] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        reader.feed(stream[start:cut])
        start = cut
        frames.extend(_frames(reader))
    assert [f.data for f in frames] == encoded
    assert [f.type for f in frames] == [e[:1] for e in encoded]
    assert reader.buffered == 0


@SETTINGS
@given(any_messages, st.data())
def test_frames_matches_feed_then_iterate(
    messages: list[FrontendMessage | BackendMessage], data: st.DataObject
) -> None:
    """`frames()` (with its no-copy path for a chunk that is one whole message) frames any
    chunking as feed() and iteration do, including at message boundaries."""
    encoded = [m.encode() for m in messages]
    stream = b"".join(encoded)
    boundaries = [sum(len(e) for e in encoded[:i]) for i in range(len(encoded) + 1)]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)) | st.sampled_from(boundaries))))
    reader = MessageReader()
    frames: list[Frame] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        frames.extend(reader.frames(stream[start:cut]))
        start = cut
    assert [f.data for f in frames] == encoded
    assert [f.type for f in frames] == [e[:1] for e in encoded]
    assert reader.buffered == 0


@SETTINGS
@given(st.binary(max_size=300), st.integers(4, 400))
def test_frames_checks_lengths_like_feed(junk: bytes, max_length: int) -> None:
    def run(take: Callable[[MessageReader], list[Frame]]) -> list[Frame] | str:
        try:
            return take(MessageReader(max_length=max_length))
        except ProtocolError as exc:
            return exc.message

    def fed(reader: MessageReader) -> list[Frame]:
        reader.feed(junk)
        return list(reader)

    assert run(lambda reader: reader.frames(junk)) == run(fed)


@SETTINGS
@given(any_messages)
def test_one_byte_feeds(messages: list[FrontendMessage | BackendMessage]) -> None:
    stream = b"".join(m.encode() for m in messages)
    reader = MessageReader()
    frames: list[Frame] = []
    for i in range(len(stream)):
        reader.feed(memoryview(stream)[i : i + 1])
        frames.extend(_frames(reader))
    whole = MessageReader()
    whole.feed(stream)
    assert frames == _frames(whole)
    assert len(frames) == len(messages)


def _decode_everything(frame: Frame) -> None:
    """Run every decoder over the frame; only ProtocolError may come out."""
    for decode in (decode_frontend, decode_backend, decode_sasl_initial_response):
        with contextlib.suppress(ProtocolError):
            decode(frame)
    if frame.type == b"p":
        decode_sasl_response(frame)


@SETTINGS
@given(st.binary(max_size=300), st.integers(4, 400))
def test_arbitrary_bytes_only_raise_protocol_error(junk: bytes, max_length: int) -> None:
    reader = MessageReader(max_length=max_length)
    reader.feed(junk)
    try:
        for frame in reader:
            _decode_everything(frame)
    except ProtocolError:
        pass


TYPE_BYTES = sorted(
    {
        value
        for cls in (codec.FrontendType, codec.BackendType)
        for name, value in vars(cls).items()
        if not name.startswith("_")
    }
)


@SETTINGS
@given(st.sampled_from([*TYPE_BYTES, b"?"]), st.binary(max_size=80))
def test_arbitrary_bodies_only_raise_protocol_error(type_: bytes, body: bytes) -> None:
    frame = Frame(type_, type_ + struct.pack("!I", len(body) + 4) + body)
    _decode_everything(frame)


@SETTINGS
@given(frontend_messages | backend_messages, st.data())
def test_corrupted_messages_only_raise_protocol_error(
    message: FrontendMessage | BackendMessage, data: st.DataObject
) -> None:
    body = bytearray(message.encode()[5:])
    if body:
        for _ in range(data.draw(st.integers(1, 3))):
            index = data.draw(st.integers(0, len(body) - 1))
            body[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(body)))
    body = body[:cut] + data.draw(st.binary(max_size=4))
    type_ = message.encode()[:1]
    _decode_everything(Frame(type_, type_ + struct.pack("!I", len(body) + 4) + bytes(body)))


@SETTINGS
@given(st.binary(max_size=200))
def test_startup_reader_arbitrary_bytes(junk: bytes) -> None:
    reader = StartupReader()
    reader.feed(junk)
    try:
        while reader.next() is not None:
            pass
    except ProtocolError:
        pass


@SETTINGS
@given(
    st.sampled_from(
        [
            codec.PROTOCOL_VERSION_3,
            (3 << 16) | 1,
            2 << 16,
            codec.SSL_REQUEST_CODE,
            codec.GSSENC_REQUEST_CODE,
            codec.CANCEL_REQUEST_CODE,
        ]
    )
    | u32,
    st.binary(max_size=60),
)
def test_startup_reader_arbitrary_payloads(code: int, payload: bytes) -> None:
    reader = StartupReader()
    reader.feed(struct.pack("!II", 8 + len(payload), code) + payload)
    try:
        packet = reader.next()
    except ProtocolError:
        return
    assert packet is not None
    assert reader.take_buffer() == b""


@SETTINGS
@given(st.dictionaries(names, texts, max_size=5), st.integers(0, 3), st.data())
def test_startup_message_round_trip_any_chunking(
    parameters: dict[str, str], minor: int, data: st.DataObject
) -> None:
    message = codec.StartupMessage((3 << 16) | minor, {**parameters, "user": "u"})
    stream = codec.SSLRequest().encode() + message.encode()
    cut = data.draw(st.integers(0, len(stream)))
    reader = StartupReader()
    reader.feed(stream[:cut])
    got = []
    while (packet := reader.next()) is not None:
        got.append(packet)
    reader.feed(stream[cut:])
    while (packet := reader.next()) is not None:
        got.append(packet)
    assert got == [codec.SSLRequest(), message]
