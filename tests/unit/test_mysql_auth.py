"""Unit tests for mysql/auth.py.

Oracles: the stored hash MariaDB itself computes (``SELECT PASSWORD('secret')`` in the recorded
session, tests/data/mysql_session.json) and PyMySQL's client-side scrambles (a dev dependency,
called here, never copied).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from pymysql import _auth as pymysql_auth

from dbbalancer.mysql import auth

RECORD = json.loads((Path(__file__).parent.parent / "data" / "mysql_session.json").read_text())
NONCES = [
    bytes.fromhex(RECORD["bad_login"]["nonce"]),
    b"m/A71.4X?rC8,s$SV7Nd",
    bytes(range(1, 21)),
]
PASSWORDS = ["secret", "p\u00e4ssw\u00f6rd", "x" * 80, " "]


def _server_password_result() -> str:
    query = b"\x03SELECT PASSWORD('secret')".hex()
    (exchange,) = [e for e in RECORD["classic_eof"]["exchanges"] if e["command"] == query]
    row = bytes.fromhex(exchange["responses"][3])
    return row[1:].decode("ascii")


def test_native_stored_text_matches_the_server() -> None:
    assert auth.native_stored_text("secret") == _server_password_result()
    assert auth.parse_native_stored(_server_password_result()) == auth.native_password_hash(
        "secret"
    )


@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize("nonce", NONCES)
def test_native_scramble_matches_pymysql(password: str, nonce: bytes) -> None:
    expected = pymysql_auth.scramble_native_password(password.encode(), nonce)
    assert auth.native_scramble(password, nonce) == expected
    # The nonce may be passed with the NUL that ends it on the wire.
    assert auth.native_scramble(password, nonce + b"\0") == expected


@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize("nonce", NONCES)
def test_native_verify_and_recover(password: str, nonce: bytes) -> None:
    stored = auth.native_password_hash(password)
    response = auth.native_scramble(password, nonce)
    assert auth.native_verify(response, nonce, stored)
    stage1 = auth.native_recover_stage1(response, nonce, stored)
    assert stage1 == hashlib.sha1(password.encode()).digest()
    # What a proxy does with it: answer a server's nonce for the same user.
    other = bytes(reversed(nonce))
    assert auth.native_scramble_from_stage1(stage1, other) == auth.native_scramble(password, other)
    assert not auth.native_verify(auth.native_scramble(password + "!", nonce), nonce, stored)
    assert not auth.native_verify(response, other, stored)
    assert not auth.native_verify(b"", nonce, stored)


def test_native_empty_password() -> None:
    assert auth.native_scramble("", NONCES[0]) == b""
    assert auth.native_verify(b"", NONCES[0], b"")
    assert not auth.native_verify(b"x" * 20, NONCES[0], b"")


def test_parse_native_stored_refuses_other_text() -> None:
    for text in ("", "*ABC", "14E65567ABDB5135D0CFD9A70B3032C179A49EE7", "*" + "G" * 40):
        with pytest.raises(ValueError, match="40 hex digits"):
            auth.parse_native_stored(text)


@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize("nonce", NONCES)
def test_caching_sha2_scramble_matches_pymysql(password: str, nonce: bytes) -> None:
    expected = pymysql_auth.scramble_caching_sha2(password.encode(), nonce)
    assert auth.caching_sha2_scramble(password, nonce) == expected


@pytest.mark.parametrize("nonce", NONCES)
def test_caching_sha2_verify(nonce: bytes) -> None:
    stored = auth.caching_sha2_stored("secret")
    response = auth.caching_sha2_scramble("secret", nonce)
    assert len(response) == 32
    assert auth.caching_sha2_verify(response, nonce, stored)
    assert not auth.caching_sha2_verify(auth.caching_sha2_scramble("Secret", nonce), nonce, stored)
    assert not auth.caching_sha2_verify(response[:-1], nonce, stored)
    assert auth.caching_sha2_scramble("", nonce) == b""


def test_caching_sha2_xor_is_its_own_inverse() -> None:
    nonce = NONCES[0]
    data = b"a longer password than the twenty-byte nonce\0"
    mixed = auth.caching_sha2_xor_password(data, nonce)
    assert mixed != data
    assert mixed[:20] == bytes(a ^ b for a, b in zip(data, nonce, strict=False))
    assert auth.caching_sha2_xor_password(mixed, nonce) == data
    with pytest.raises(ValueError, match="empty nonce"):
        auth.caching_sha2_xor_password(data, b"")


def test_caching_sha2_rsa_round_trip() -> None:
    # cryptography is optional (not a declared dependency yet): the RSA path is tested where
    # it is installed.
    pytest.importorskip("cryptography")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    nonce = NONCES[1]
    ciphertext = auth.caching_sha2_encrypt_password("s\u00e9cret", nonce, public_pem)
    assert auth.caching_sha2_decrypt_password(ciphertext, nonce, private_pem) == "s\u00e9cret"
    expected = pymysql_auth.sha2_rsa_encrypt(b"s\xc3\xa9cret", nonce, public_pem)
    # OAEP is randomised: compare what PyMySQL's ciphertext decrypts to.
    assert auth.caching_sha2_decrypt_password(expected, nonce, private_pem) == "s\u00e9cret"
