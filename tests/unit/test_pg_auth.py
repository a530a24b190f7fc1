"""Unit tests for PostgreSQL md5 and SCRAM-SHA-256 maths (dbbalancer.postgres.auth)."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from dbbalancer.postgres.auth import (
    AuthenticationFailed,
    ScramClient,
    ScramServer,
    ScramVerifier,
    is_md5_hash,
    is_scram_verifier,
    md5_password_hash,
    md5_response,
    md5_verify,
    prepare_scram_password,
    saslprep,
)

# RFC 7677 section 3: SCRAM-SHA-256 example exchange.
RFC_PASSWORD = "pencil"
RFC_CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_NONCE_PART = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
RFC_CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def _rfc_verifier() -> ScramVerifier:
    return ScramVerifier.from_password(RFC_PASSWORD, salt=RFC_SALT, iterations=4096)


def test_verifier_keys_match_a_hand_computation() -> None:
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", RFC_SALT, 4096)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    verifier = _rfc_verifier()
    assert verifier.stored_key == hashlib.sha256(client_key).digest()
    assert verifier.server_key == hmac.new(salted, b"Server Key", "sha256").digest()
    assert (verifier.iterations, verifier.salt) == (4096, RFC_SALT)


def test_server_on_rfc_7677_messages() -> None:
    server = ScramServer(_rfc_verifier(), nonce=RFC_SERVER_NONCE_PART)
    assert server.handle_client_first(RFC_CLIENT_FIRST) == RFC_SERVER_FIRST
    assert server.handle_client_final(RFC_CLIENT_FINAL) == RFC_SERVER_FINAL
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", RFC_SALT, 4096)
    assert server.client_key == hmac.new(salted, b"Client Key", "sha256").digest()


def test_client_on_rfc_7677_messages() -> None:
    client = ScramClient(RFC_PASSWORD, nonce=RFC_CLIENT_NONCE, user="user")
    assert client.client_first() == RFC_CLIENT_FIRST
    assert client.handle_server_first(RFC_SERVER_FIRST) == RFC_CLIENT_FINAL
    client.verify_server_final(RFC_SERVER_FINAL)


def test_client_sends_empty_user_name_like_libpq() -> None:
    assert ScramClient("pw", nonce="abc").client_first() == b"n,,n=,r=abc"


def test_client_escapes_user_name() -> None:
    assert ScramClient("pw", nonce="abc", user="a=b,c").client_first() == b"n,,n=a=3Db=2Cc,r=abc"


def test_round_trip_between_client_and_server() -> None:
    verifier = ScramVerifier.from_password("correct horse")
    server = ScramServer(verifier)
    client = ScramClient("correct horse")
    server_first = server.handle_client_first(client.client_first())
    server_final = server.handle_client_final(client.handle_server_first(server_first))
    client.verify_server_final(server_final)
    assert server.client_key is not None


def test_wrong_password_fails() -> None:
    server = ScramServer(ScramVerifier.from_password("right"))
    client = ScramClient("wrong")
    server_first = server.handle_client_first(client.client_first())
    with pytest.raises(AuthenticationFailed, match="proof"):
        server.handle_client_final(client.handle_server_first(server_first))
    assert server.client_key is None


def test_pass_through_login_with_recovered_client_key() -> None:
    verifier = ScramVerifier.from_password("s3cret")
    front = ScramServer(verifier)
    user_client = ScramClient("s3cret")
    front.handle_client_final(
        user_client.handle_server_first(front.handle_client_first(user_client.client_first()))
    )
    assert front.client_key is not None

    # The proxy now logs in to a server that stores the same verifier, without the password.
    back = ScramServer(verifier)
    proxy = ScramClient.from_keys(front.client_key, verifier.server_key)
    final = back.handle_client_final(
        proxy.handle_server_first(back.handle_client_first(proxy.client_first()))
    )
    proxy.verify_server_final(final)


def _hand_client_final(gs2_header: bytes, bare: str, server_first: bytes) -> bytes:
    """A client-final-message computed from RFC 5802 section 3 with hashlib/hmac only."""
    nonce = server_first.decode().split(",")[0][2:]
    without_proof = f"c={base64.b64encode(gs2_header).decode()},r={nonce}"
    auth_message = f"{bare},{server_first.decode()},{without_proof}".encode()
    salted = hashlib.pbkdf2_hmac("sha256", RFC_PASSWORD.encode(), RFC_SALT, 4096)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    signature = hmac.new(hashlib.sha256(client_key).digest(), auth_message, "sha256").digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()


def test_server_accepts_y_flag_with_matching_binding() -> None:
    server = ScramServer(_rfc_verifier(), nonce="srv")
    server_first = server.handle_client_first(b"y,,n=,r=cli")
    final = _hand_client_final(b"y,,", "n=,r=cli", server_first)
    assert final.startswith(b"c=eSws,")
    assert server.handle_client_final(final).startswith(b"v=")


def test_server_rejects_binding_that_differs_from_gs2_header() -> None:
    server = ScramServer(_rfc_verifier(), nonce="srv")
    server_first = server.handle_client_first(b"y,,n=,r=cli")
    # The client said "y,," but signs "n,," (base64 "biws").
    with pytest.raises(AuthenticationFailed, match="binding"):
        server.handle_client_final(_hand_client_final(b"n,,", "n=,r=cli", server_first))


@pytest.mark.parametrize(
    "message",
    [
        b"p=tls-server-end-point,,n=,r=abc",  # channel binding
        b"n,a=admin,n=,r=abc",  # authorization identity
        b"x,,n=,r=abc",  # bad flag
        b"n,,m=ext,n=,r=abc",  # mandatory extension
        b"n,,r=abc",  # no user attribute
        b"n,,n=,r=",  # empty nonce
        b"n,,n=,r=a,b",  # garbage attribute
        b"n,,n=,r=\x7f",  # unprintable nonce
        b"n,,n=,r=\xff",  # not UTF-8
        b"n,n=,r=abc",  # truncated gs2 header
    ],
)
def test_server_rejects_bad_client_first(message: bytes) -> None:
    with pytest.raises(AuthenticationFailed):
        ScramServer(_rfc_verifier()).handle_client_first(message)


@pytest.mark.parametrize(
    "message",
    [
        RFC_CLIENT_FINAL.replace(b"r=rOpr", b"r=xOpr"),  # nonce mismatch
        RFC_CLIENT_FINAL.replace(b"p=dHzb", b"p=dHzc"),  # wrong proof
        RFC_CLIENT_FINAL.replace(b"c=biws", b"c=eSws"),  # binding mismatch
        RFC_CLIENT_FINAL.split(b",p=")[0],  # no proof
        RFC_CLIENT_FINAL.replace(b"p=dHzb", b"p=!!!"),  # not base64
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=AAAA",  # short proof
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=AAAA",  # no c=
    ],
)
def test_server_rejects_bad_client_final(message: bytes) -> None:
    server = ScramServer(_rfc_verifier(), nonce=RFC_SERVER_NONCE_PART)
    server.handle_client_first(RFC_CLIENT_FIRST)
    with pytest.raises(AuthenticationFailed):
        server.handle_client_final(message)
    assert server.client_key is None


def test_server_rejects_out_of_order_messages() -> None:
    server = ScramServer(_rfc_verifier(), nonce=RFC_SERVER_NONCE_PART)
    with pytest.raises(AuthenticationFailed):
        server.handle_client_final(RFC_CLIENT_FINAL)
    server.handle_client_first(RFC_CLIENT_FIRST)
    with pytest.raises(AuthenticationFailed):
        server.handle_client_first(RFC_CLIENT_FIRST)
    server.handle_client_final(RFC_CLIENT_FINAL)
    with pytest.raises(AuthenticationFailed):
        server.handle_client_final(RFC_CLIENT_FINAL)


@pytest.mark.parametrize(
    "message",
    [
        b"r=someoneelse,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",  # nonce not ours
        b"r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",  # nonce not extended
        b"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0",  # no iterations
        b"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=-1",
        b"r=rOprNGfwEbeRWgbNEkqOxyz,s=not*base64,i=4096",
        b"r=rOprNGfwEbeRWgbNEkqOxyz,s=,i=4096",  # empty salt
        b"r=rOprNGfwEbeRWgbNEkqOxyz,i=4096",  # no salt
        b"m=ext,r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        b"e=other-error",
    ],
)
def test_client_rejects_bad_server_first(message: bytes) -> None:
    client = ScramClient(RFC_PASSWORD, nonce=RFC_CLIENT_NONCE)
    client.client_first()
    with pytest.raises(AuthenticationFailed):
        client.handle_server_first(message)


def test_client_rejects_bad_server_signature() -> None:
    client = ScramClient(RFC_PASSWORD, nonce=RFC_CLIENT_NONCE, user="user")
    client.handle_server_first(RFC_SERVER_FIRST)
    with pytest.raises(AuthenticationFailed, match="signature"):
        client.verify_server_final(RFC_SERVER_FINAL.replace(b"v=6", b"v=7"))


def test_client_reports_server_error() -> None:
    client = ScramClient(RFC_PASSWORD, nonce=RFC_CLIENT_NONCE, user="user")
    client.handle_server_first(RFC_SERVER_FIRST)
    with pytest.raises(AuthenticationFailed, match="invalid-proof"):
        client.verify_server_final(b"e=invalid-proof")


def test_client_rejects_server_final_before_server_first() -> None:
    with pytest.raises(AuthenticationFailed):
        ScramClient("pw").verify_server_final(RFC_SERVER_FINAL)


# Verifier format


def test_verifier_to_string_and_parse_round_trip() -> None:
    verifier = _rfc_verifier()
    text = verifier.to_string()
    assert text == (
        "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"
        + base64.b64encode(verifier.stored_key).decode()
        + ":"
        + base64.b64encode(verifier.server_key).decode()
    )
    assert ScramVerifier.parse(text) == verifier
    assert is_scram_verifier(text)


def test_from_password_uses_random_salt() -> None:
    a = ScramVerifier.from_password("pw")
    b = ScramVerifier.from_password("pw")
    assert len(a.salt) == 16
    assert a.salt != b.salt
    assert a.iterations == 4096


@pytest.mark.parametrize(
    "text",
    [
        "",
        "secret",
        "md5" + "0" * 32,
        "SCRAM-SHA-1$4096:c2FsdA==$" + "A" * 44 + ":" + "A" * 44,
        "SCRAM-SHA-256$0:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$x:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA",  # keys too short
        "SCRAM-SHA-256$4096:***$" + "A" * 43 + "=:" + "A" * 43 + "=",
        "SCRAM-SHA-256$4096:$" + "A" * 43 + "=:" + "A" * 43 + "=",  # empty salt
        "SCRAM-SHA-256$4096:c2FsdA==$" + "A" * 43 + "=",
        "SCRAM-SHA-256$4096$c2FsdA==$x:y",
    ],
)
def test_parse_rejects_junk(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case is junk in its own way
        ScramVerifier.parse(text)
    assert not is_scram_verifier(text)


def test_valid_verifier_shape_is_accepted() -> None:
    text = "SCRAM-SHA-256$4096:c2FsdA==$" + "A" * 43 + "=:" + "A" * 43 + "="
    assert ScramVerifier.parse(text).stored_key == bytes(32)


# md5


def test_md5_password_hash() -> None:
    expected = "md5" + hashlib.md5(b"secretpostgres").hexdigest()
    assert md5_password_hash("postgres", "secret") == expected
    assert is_md5_hash(expected)


def test_md5_response_by_hand() -> None:
    salt = b"\x01\x02\x03\x04"
    inner = hashlib.md5(b"secret" + b"bob").hexdigest()
    expected = b"md5" + hashlib.md5(inner.encode() + salt).hexdigest().encode()
    assert md5_response("bob", "secret", salt) == expected
    # The stored hash answers the challenge just as well as the plaintext.
    assert md5_response("bob", md5_password_hash("bob", "secret"), salt) == expected


def test_md5_known_values() -> None:
    # The widely published pg_authid entry for user "postgres" with password "postgres".
    assert md5_password_hash("postgres", "postgres") == "md53175bce1d3201d16594cebf9d7eb3f9d"
    # Frozen value, so that a change in how the salt is applied cannot pass unnoticed.
    assert md5_response("user", "pencil", b"salt") == b"md5d3d9bcccbaa2fb5234570d4d0f22b055"


def test_md5_verify() -> None:
    salt = b"abcd"
    response = md5_response("bob", "secret", salt)
    assert md5_verify("secret", "bob", salt, response)
    assert md5_verify(md5_password_hash("bob", "secret"), "bob", salt, response)
    assert not md5_verify("Secret", "bob", salt, response)
    assert not md5_verify("secret", "alice", salt, response)
    assert not md5_verify("secret", "bob", b"abce", response)
    assert not md5_verify(ScramVerifier.from_password("secret").to_string(), "bob", salt, response)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("md5" + "0123456789abcdef" * 2, True),
        ("md5" + "0123456789ABCDEF" * 2, False),  # PostgreSQL wants lowercase hex
        ("md5" + "0" * 31, False),
        ("md6" + "0" * 32, False),
        ("secret", False),
    ],
)
def test_is_md5_hash(text: str, expected: bool) -> None:
    assert is_md5_hash(text) is expected


# SASLprep (RFC 4013 section 3 examples)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I\u00adX", "IX"),  # soft hyphen mapped to nothing
        ("user", "user"),
        ("USER", "USER"),
        ("\u00aa", "a"),  # NFKC
        ("\u2168", "IX"),  # NFKC
        ("a\u00a0b", "a b"),  # non-ASCII space mapped to space
        ("\u0627\u0628", "\u0627\u0628"),  # right-to-left only
    ],
)
def test_saslprep(text: str, expected: str) -> None:
    assert saslprep(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "\u0007",  # ASCII control
        "\u0627\u0031",  # RandALCat not at both ends
        "\u0627a\u0628",  # mixes right-to-left and left-to-right
        "a\ue000",  # private use
        "a\u0221",  # unassigned in Unicode 3.2
    ],
)
def test_saslprep_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="SASLprep"):
        saslprep(text)


@pytest.mark.parametrize(
    ("password", "expected"),
    [
        ("pencil", b"pencil"),
        ("I\u00adX", b"IX"),
        ("\u2168", b"IX"),
        ("bell\u0007", b"bell\x07"),  # invalid: the raw password is used, as PostgreSQL does
        ("\u00ad", "\u00ad".encode()),  # maps to nothing: raw password
        ("", b""),
    ],
)
def test_prepare_scram_password(password: str, expected: bytes) -> None:
    assert prepare_scram_password(password) == expected


def test_verifier_and_client_agree_on_normalized_passwords() -> None:
    # A verifier made from the composed form accepts a client typing the NFKC-equivalent.
    server = ScramServer(ScramVerifier.from_password("\u2168"))
    client = ScramClient("IX")
    server_first = server.handle_client_first(client.client_first())
    client.verify_server_final(server.handle_client_final(client.handle_server_first(server_first)))
