"""`connect_server`'s client_ed25519 login against a scripted server on loopback.

The scripted server greets with mysql_native_password and switches to client_ed25519 with a
scramble of its choosing, as MariaDB does for a user ``IDENTIFIED VIA ed25519``; it checks the
answer as MariaDB's server plugin does (an Ed25519 signature of the scramble under the stored
public key). Choosing the scramble covers what a real server gives only now and then: one whose
last byte is 0. tests/integration/test_mysql_ed25519.py logs in to a real MariaDB.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable

import nacl.exceptions
import nacl.signing
import pytest

from dbbalancer.core.topology import Server, ServerRole
from dbbalancer.mysql import auth
from dbbalancer.mysql.backend import ServerError, ServerUnavailable, connect_server
from dbbalancer.mysql.codec import (
    MYSQL_NATIVE_PASSWORD,
    AuthSwitchRequest,
    Capability,
    ErrPacket,
    HandshakeV10,
    OkPacket,
    Packet,
    PacketReader,
    encode_packets,
)

# What MariaDB stores for USING PASSWORD('secret') (see test_mysql_auth.ED25519_KEYS).
STORED = "ZIgUREUg5PVgQ6LskhXmO+eZLS0nC8be6HPjYWR4YJY"
CAPABILITIES = (
    Capability.LONG_PASSWORD
    | Capability.PROTOCOL_41
    | Capability.TRANSACTIONS
    | Capability.SECURE_CONNECTION
    | Capability.PLUGIN_AUTH
    | Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA
)
ACCESS_DENIED = ErrPacket(1045, "28000", "Access denied for user 'edu'@'localhost'")
NUL_ENDED = bytes(range(31, -1, -1))


async def _read(reader: asyncio.StreamReader, packets: PacketReader) -> Packet:
    for _ in range(100):
        packet = packets.next()
        if packet is not None:
            return packet
        data = await reader.read(65536)
        if not data:
            raise ConnectionError("the client closed the connection")
        packets.feed(data)
    raise AssertionError("no whole packet after 100 reads")


def _scripted(scramble: bytes, answers: list[bytes], plugin: str) -> Callable[..., Awaitable[None]]:
    """A server that switches to `plugin` with `scramble` and records the answer."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        packets = PacketReader(expected_sequence=None)
        greeting = HandshakeV10(
            server_version="5.5.5-10.11.6-MariaDB",
            connection_id=7,
            auth_plugin_data=b"01234567890123456789",
            capabilities=int(CAPABILITIES),
            charset=45,
            status_flags=2,
            auth_plugin_name=MYSQL_NATIVE_PASSWORD,
        )
        try:
            writer.write(encode_packets(greeting.encode(), 0)[0])
            response = await _read(reader, packets)
            switch = AuthSwitchRequest(plugin, scramble).encode()
            writer.write(encode_packets(switch, response.sequence_id + 1)[0])
            answer = await _read(reader, packets)
            answers.append(answer.payload)
            key = nacl.signing.VerifyKey(base64.b64decode(STORED + "="))
            try:
                key.verify(scramble, answer.payload)
                reply = OkPacket(status_flags=2).encode(int(CAPABILITIES))
            except (nacl.exceptions.BadSignatureError, ValueError):
                reply = ACCESS_DENIED.encode()
            writer.write(encode_packets(reply, answer.sequence_id + 1)[0])
            await writer.drain()
            await reader.read(65536)  # COM_QUIT or the close
        except ConnectionError:
            pass
        finally:
            writer.close()

    return serve


async def _login(
    scramble: bytes, password: str, answers: list[bytes], plugin: str = auth.CLIENT_ED25519
) -> None:
    server = await asyncio.start_server(_scripted(scramble, answers, plugin), "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        conn = await connect_server(
            Server("scripted", "127.0.0.1", port, ServerRole.AUTO),
            user="edu",
            password=password,
            database=None,
            connect_timeout=10.0,
            max_payload=1 << 20,
        )
        assert not conn.broken
        conn.close()
        await conn.wait_closed()


@pytest.mark.parametrize("scramble", [bytes(range(32)), NUL_ENDED], ids=["plain", "nul-ended"])
def test_ed25519_login_signs_the_whole_scramble(scramble: bytes) -> None:
    answers: list[bytes] = []
    asyncio.run(_login(scramble, "secret", answers))
    assert answers == [auth.ed25519_scramble("secret", scramble)]
    assert len(answers[0]) == auth.ED25519_SIGNATURE_LENGTH


def test_a_wrong_password_names_the_server_and_the_plugin() -> None:
    answers: list[bytes] = []
    with pytest.raises(ServerError) as refused:
        asyncio.run(_login(NUL_ENDED, "wrong", answers))
    assert refused.value.errno == 1045
    assert refused.value.message == (
        "server scripted refused the login as 'edu' with client_ed25519: "
        "Access denied for user 'edu'@'localhost'"
    )
    assert len(answers) == 1


def test_a_scramble_of_another_length_is_a_protocol_error() -> None:
    answers: list[bytes] = []
    with pytest.raises(
        ServerUnavailable, match=r"server scripted: a client_ed25519 scramble of 20"
    ):
        asyncio.run(_login(b"x" * 20, "secret", answers))
    assert answers == []


def test_another_plugin_is_refused_by_name() -> None:
    answers: list[bytes] = []
    with pytest.raises(ServerUnavailable, match="asks for authentication plugin 'dialog'"):
        asyncio.run(_login(b"Password: \0", "secret", answers, plugin="dialog"))
    assert answers == []
