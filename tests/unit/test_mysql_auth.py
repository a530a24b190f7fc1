"""Unit tests for mysql/auth.py.

Oracles: the stored hash MariaDB itself computes (``SELECT PASSWORD('secret')`` in the recorded
session, tests/data/mysql_session.json), the ed25519 public keys MariaDB stored for
``IDENTIFIED VIA ed25519 USING PASSWORD(...)`` (ED25519_KEYS), standard Ed25519 verification
(PyNaCl's, which is the check MariaDB's server makes) and PyMySQL's client-side scrambles (a dev
dependency, called here, never copied).
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import nacl.exceptions
import nacl.signing
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


# -- client_ed25519 -----------------------------------------------------------------------------

# MariaDB 10.11 (Debian 12), auth_ed25519 installed: ``CREATE USER ... IDENTIFIED VIA ed25519
# USING PASSWORD('<password>')`` over a utf8mb4 connection, then
# ``JSON_VALUE(Priv, '$.authentication_string')`` from mysql.global_priv (for 'secret' also
# what the plugin's ed25519_password('secret') returns).
ED25519_KEYS = {
    "secret": "ZIgUREUg5PVgQ6LskhXmO+eZLS0nC8be6HPjYWR4YJY",
    "p\u00e4ssw\u00f6rd": "3AcJUN7vR2AnAzs/McwNtGs2GDbHzL5YqZoIOPw62V0",
    "x" * 100: "UdhomqEdOtHyENpx97aeneL7yr8EYvVvlNWoAEJEyZg",
    "app": "A6JsKXS3kEXnObMR3UnBsXJpYq9wDTms6ThPMr/0Eyw",
}
ED25519_NONCES = [
    bytes(range(32)),
    bytes(range(31, -1, -1)),  # ends with a 0 byte, which is data, not a terminator
    hashlib.sha256(b"scramble").digest(),
]


def _verify_key(stored: str) -> nacl.signing.VerifyKey:
    return nacl.signing.VerifyKey(base64.b64decode(stored + "="))


@pytest.mark.parametrize(("password", "stored"), ED25519_KEYS.items(), ids=range(4))
def test_ed25519_public_key_matches_the_server(password: str, stored: str) -> None:
    assert auth.ed25519_public_key(password) == stored
    assert len(stored) == 43


@pytest.mark.parametrize(("password", "stored"), ED25519_KEYS.items(), ids=range(4))
@pytest.mark.parametrize("nonce", ED25519_NONCES, ids=["up", "down-nul", "hash"])
def test_ed25519_scramble_verifies_under_the_stored_key(
    password: str, stored: str, nonce: bytes
) -> None:
    signature = auth.ed25519_scramble(password, nonce)
    assert len(signature) == auth.ED25519_SIGNATURE_LENGTH
    # The server's check: an Ed25519 signature of the scramble under the stored public key.
    assert _verify_key(stored).verify(nonce, signature) == nonce
    assert signature == pymysql_auth.ed25519_password(password.encode(), nonce)
    # Ed25519 signatures are deterministic.
    assert auth.ed25519_scramble(password, nonce) == signature


def test_ed25519_scramble_refuses_what_is_wrong() -> None:
    nonce = ED25519_NONCES[1]
    key = _verify_key(ED25519_KEYS["secret"])
    with pytest.raises(nacl.exceptions.BadSignatureError):
        key.verify(nonce, auth.ed25519_scramble("Secret", nonce))
    with pytest.raises(nacl.exceptions.BadSignatureError):
        # The NUL that ends the scramble belongs to it: signing without it is another message.
        key.verify(nonce, auth.ed25519_scramble("secret", nonce[:-1] + b"\1"))
    for wrong in (nonce[:-1], nonce + b"\0", NONCES[0]):
        with pytest.raises(ValueError, match="32 bytes"):
            auth.ed25519_scramble("secret", wrong)


def test_ed25519_empty_password_still_signs() -> None:
    # MariaDB's client signs with the key of the empty password too (SHA-512 of no bytes).
    nonce = ED25519_NONCES[0]
    signature = auth.ed25519_scramble("", nonce)
    assert _verify_key(auth.ed25519_public_key("")).verify(nonce, signature) == nonce
