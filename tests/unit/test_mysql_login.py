"""The proxy's side of a MySQL client login (mysql/login.py), packet by packet, with the client
side computed by mysql/auth.py (itself checked against PyMySQL and a real server)."""

from __future__ import annotations

import functools

import pytest

from dbbalancer.config import AuthMethod, UserConfig
from dbbalancer.mysql import auth
from dbbalancer.mysql.codec import (
    CACHING_SHA2_PASSWORD,
    FAST_AUTH_SUCCESS,
    MYSQL_NATIVE_PASSWORD,
    PERFORM_FULL_AUTHENTICATION,
    AuthMoreData,
    AuthSwitchRequest,
    Capability,
    ComChangeUser,
    ErrPacket,
    HandshakeResponse41,
    HandshakeV10,
    ProtocolError,
    SslRequest,
)
from dbbalancer.mysql.login import OFFERED_CAPABILITIES, ClientLogin, LoginState, Reply, RsaKeys

NONCE = bytes(range(1, 21))
CLIENT_CAPS = (
    Capability.PROTOCOL_41
    | Capability.SECURE_CONNECTION
    | Capability.PLUGIN_AUTH
    | Capability.CONNECT_WITH_DB
    | Capability.MULTI_STATEMENTS
    | Capability.DEPRECATE_EOF  # not offered: must not survive negotiation
)
USERS = {
    "native": UserConfig(name="native", password="pw", auth=AuthMethod.MYSQL_NATIVE_PASSWORD),
    "sha2": UserConfig(name="sha2", password="pw", auth=AuthMethod.CACHING_SHA2_PASSWORD),
    "pg": UserConfig(name="pg", password="pw"),  # scram-sha-256: native for MySQL clients
    "open": UserConfig(name="open", password="pw", auth=AuthMethod.TRUST),
    "empty": UserConfig(name="empty", password="", auth=AuthMethod.MYSQL_NATIVE_PASSWORD),
    "hashed": UserConfig(
        name="hashed", password="md5" + "0" * 32, auth=AuthMethod.MD5, server_password="x"
    ),
}


@functools.cache
def keys() -> RsaKeys:
    return RsaKeys(1024)  # small: only the exchange is under test


def login() -> ClientLogin:
    return ClientLogin(
        users=USERS.get,
        rsa_keys=keys,
        server_version="10.11.6-MariaDB-dbbalancer",
        connection_id=7,
        peer_host="10.0.0.1",
        nonce=NONCE,
    )


def response(user: str, data: bytes, plugin: str = MYSQL_NATIVE_PASSWORD) -> bytes:
    return HandshakeResponse41(
        capabilities=CLIENT_CAPS,
        max_packet_size=1 << 24,
        charset=45,
        username=user,
        auth_response=data,
        database="app",
        auth_plugin_name=plugin,
    ).encode()


def error_of(reply: Reply) -> ErrPacket:
    assert reply.refused
    assert reply.accepted is None
    return ErrPacket.decode(reply.packets[-1])


def test_greeting_offers_the_proxy_capabilities_and_the_nonce() -> None:
    greeting = HandshakeV10.decode(login().greeting())
    assert greeting.auth_plugin_data == NONCE
    assert greeting.capabilities == OFFERED_CAPABILITIES
    assert greeting.server_version == "10.11.6-MariaDB-dbbalancer"
    assert greeting.connection_id == 7
    assert greeting.auth_plugin_name == MYSQL_NATIVE_PASSWORD
    assert not greeting.capabilities & (Capability.SSL | Capability.DEPRECATE_EOF)


def test_native_password_accepted_in_one_round() -> None:
    machine = login()
    reply = machine.receive(response("native", auth.native_scramble("pw", NONCE)))
    assert reply.accepted is not None
    assert reply.accepted.user.name == "native"
    assert reply.accepted.database == "app"
    assert reply.accepted.capabilities == CLIENT_CAPS & OFFERED_CAPABILITIES
    assert reply.packets[-1][:1] == b"\x00"
    assert machine.state is LoginState.DONE


@pytest.mark.parametrize("user", ["native", "pg", "nobody"])
def test_wrong_password_or_unknown_user_is_access_denied(user: str) -> None:
    err = error_of(login().receive(response(user, auth.native_scramble("wrong", NONCE))))
    assert (err.errno, err.sqlstate) == (1045, "28000")
    assert err.message == f"Access denied for user '{user}'@'10.0.0.1' (using password: YES)"


def test_empty_password() -> None:
    assert login().receive(response("empty", b"")).accepted is not None
    err = error_of(login().receive(response("native", b"")))
    assert err.message.endswith("(using password: NO)")


def test_a_postgres_hash_cannot_check_a_mysql_password() -> None:
    reply = login().receive(response("hashed", auth.native_scramble("x", NONCE)))
    assert error_of(reply).errno == 1045


def test_trust_needs_no_password() -> None:
    assert login().receive(response("open", b"whatever")).accepted is not None


def test_auth_switch_then_caching_sha2_fast_path() -> None:
    machine = login()
    first = machine.receive(response("sha2", auth.native_scramble("pw", NONCE)))
    switch = AuthSwitchRequest.decode(first.packets[0])
    assert (switch.plugin_name, switch.nonce) == (CACHING_SHA2_PASSWORD, NONCE)
    assert machine.state is LoginState.SWITCHED
    done = machine.receive(auth.caching_sha2_scramble("pw", switch.nonce))
    assert done.accepted is not None
    assert done.packets[0] == AuthMoreData(FAST_AUTH_SUCCESS).encode()


def test_native_client_of_a_sha2_user_without_plugin_auth_is_switched() -> None:
    machine = login()
    reply = machine.receive(
        response("sha2", auth.caching_sha2_scramble("pw", NONCE), CACHING_SHA2_PASSWORD)
    )
    assert reply.accepted is not None  # no switch needed: same plugin


def full_auth(machine: ClientLogin, user: str = "sha2") -> None:
    reply = machine.receive(response(user, b"\x01" * 32, CACHING_SHA2_PASSWORD))
    assert reply.packets == (AuthMoreData(PERFORM_FULL_AUTHENTICATION).encode(),)
    assert machine.state is LoginState.FULL_AUTH


def test_caching_sha2_full_path_over_rsa() -> None:
    machine = login()
    full_auth(machine)
    key = machine.receive(b"\x02")
    pem = AuthMoreData.decode(key.packets[0]).data
    assert pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    done = machine.receive(auth.caching_sha2_encrypt_password("pw", NONCE, pem))
    assert done.accepted is not None


def test_caching_sha2_full_path_wrong_password() -> None:
    machine = login()
    full_auth(machine)
    encrypted = auth.caching_sha2_encrypt_password("wrong", NONCE, keys().public_pem)
    assert error_of(machine.receive(encrypted)).errno == 1045


def test_caching_sha2_full_path_refuses_a_cleartext_password() -> None:
    machine = login()
    full_auth(machine)
    assert error_of(machine.receive(b"pw\0")).errno == 1045
    assert machine.failure is not None
    assert "without RSA" in machine.failure


def test_unknown_user_runs_the_full_exchange_and_fails_alike() -> None:
    machine = login()
    full_auth(machine, "ghost")
    encrypted = auth.caching_sha2_encrypt_password("pw", NONCE, keys().public_pem)
    err = error_of(machine.receive(encrypted))
    assert err.message.startswith("Access denied for user 'ghost'")


def test_ssl_request_is_refused_clearly() -> None:
    caps = CLIENT_CAPS | Capability.SSL
    err = error_of(login().receive(SslRequest(caps, 1 << 24, 45).encode()))
    assert "TLS" in err.message


@pytest.mark.parametrize(
    "payload",
    [b"", b"\x00\x02", b"garbage", b"\xff" * 40, response("native", b"x")[:36]],
)
def test_malformed_responses_raise_protocol_errors(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        login().receive(payload)


def test_no_packet_after_the_end() -> None:
    machine = login()
    machine.receive(response("native", auth.native_scramble("pw", NONCE)))
    with pytest.raises(ProtocolError):
        machine.receive(b"\x03SELECT 1")


def test_change_user_reauthenticates() -> None:
    machine = login()
    machine.receive(response("native", auth.native_scramble("pw", NONCE)))
    command = ComChangeUser("sha2", auth.native_scramble("pw", NONCE), "app", 45, "")
    switch = machine.change_user(command)
    assert AuthSwitchRequest.decode(switch.packets[0]).plugin_name == CACHING_SHA2_PASSWORD
    done = machine.receive(auth.caching_sha2_scramble("pw", NONCE))
    assert done.accepted is not None
    assert done.accepted.user.name == "sha2"
    wrong = ComChangeUser("native", auth.native_scramble("nope", NONCE), "app")
    assert error_of(machine.change_user(wrong)).errno == 1045


def test_found_rows_clients_have_a_pool_profile_of_their_own() -> None:
    from dbbalancer.mysql.codec import Capability
    from dbbalancer.mysql.login import OFFERED_CAPABILITIES, pool_profile, profile_capabilities

    assert OFFERED_CAPABILITIES & Capability.FOUND_ROWS
    assert not OFFERED_CAPABILITIES & Capability.IGNORE_SPACE
    assert pool_profile(int(OFFERED_CAPABILITIES & ~Capability.FOUND_ROWS)) == ""
    found_rows = Capability.FOUND_ROWS | Capability.PROTOCOL_41 | Capability.MULTI_STATEMENTS
    assert pool_profile(int(found_rows)) == "found_rows"
    assert profile_capabilities("found_rows") == Capability.FOUND_ROWS
    assert profile_capabilities("") == Capability(0)
