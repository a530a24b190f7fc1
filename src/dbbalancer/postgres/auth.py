"""Pure PostgreSQL authentication maths: md5 and SCRAM-SHA-256. No I/O.

* md5: PostgreSQL documentation, "Password Authentication" and the AuthenticationMD5Password
  message: the client sends ``"md5" + md5_hex(md5_hex(password + user) + salt)``.
* SCRAM-SHA-256: RFC 5802 with the SHA-256 parameters of RFC 7677, as PostgreSQL profiles it
  ("SASL Authentication" in the protocol chapter): the user name in client-first-message is
  ignored (libpq sends it empty), no authorization identity, and no channel binding because we
  offer only ``SCRAM-SHA-256`` (not ``-PLUS``).
* Passwords are normalized with SASLprep (RFC 4013) before hashing, with PostgreSQL's fallback:
  a password that SASLprep rejects is used as its raw UTF-8 bytes (see
  :func:`prepare_scram_password`).

Secrets are compared with :func:`hmac.compare_digest`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import stringprep
import unicodedata
from dataclasses import dataclass
from typing import Final

__all__ = [
    "SCRAM_SHA_256",
    "AuthenticationFailed",
    "ScramClient",
    "ScramServer",
    "ScramVerifier",
    "is_md5_hash",
    "is_scram_verifier",
    "md5_password_hash",
    "md5_response",
    "md5_verify",
    "prepare_scram_password",
    "saslprep",
]

SCRAM_SHA_256: Final = "SCRAM-SHA-256"
_KEY_LEN: Final = 32  # SHA-256 output
# PostgreSQL's SCRAM_DEFAULT_SALT_LEN and SCRAM_RAW_NONCE_LEN.
_DEFAULT_SALT_LEN: Final = 16
_RAW_NONCE_LEN: Final = 18
_HEX_DIGITS: Final = frozenset("0123456789abcdef")


class AuthenticationFailed(Exception):
    """The peer's credentials or SASL messages were wrong.

    The proxy answers a client with SQLSTATE 28P01 and the usual 'password authentication failed'
    text; the exception message says what exactly went wrong, for the log only.
    """


# --------------------------------------------------------------------------------------------
# md5


def is_md5_hash(text: str) -> bool:
    """True for a stored md5 hash: ``md5`` followed by 32 lowercase hex digits (PostgreSQL's
    ``get_password_type`` test)."""
    return len(text) == 35 and text.startswith("md5") and _HEX_DIGITS.issuperset(text[3:])


def md5_password_hash(user: str, password: str) -> str:
    """The md5 form PostgreSQL stores: ``"md5" + md5_hex(password + user)``."""
    return "md5" + hashlib.md5((password + user).encode("utf-8")).hexdigest()


def md5_response(user: str, password: str, salt: bytes) -> bytes:
    """What a client answers to AuthenticationMD5Password (without the NUL terminator).

    ``password`` may be the plaintext or an already hashed ``md5...`` value, as PostgreSQL
    accepts either in ``pg_authid`` (a plaintext that looks exactly like an md5 hash is taken to
    be one).
    """
    inner = password[3:] if is_md5_hash(password) else md5_password_hash(user, password)[3:]
    return b"md5" + hashlib.md5(inner.encode("ascii") + salt).hexdigest().encode("ascii")


def md5_verify(stored: str, user: str, salt: bytes, response: bytes) -> bool:
    """Check a client's md5 response against a stored plaintext or md5 hash.

    A SCRAM verifier cannot answer an md5 challenge (PostgreSQL refuses the same way), so it
    never matches.
    """
    if is_scram_verifier(stored):
        return False
    return hmac.compare_digest(md5_response(user, stored, salt), response)


# --------------------------------------------------------------------------------------------
# SASLprep


def _in_prohibited_output(ch: str) -> bool:
    # RFC 4013 section 2.3 (tables C.1.2 and C.2.1-C.9) plus A.1: unassigned code points are
    # prohibited because passwords are "stored strings" (RFC 3454 section 7), as in PostgreSQL.
    return (
        stringprep.in_table_c12(ch)
        or stringprep.in_table_c21_c22(ch)
        or stringprep.in_table_c3(ch)
        or stringprep.in_table_c4(ch)
        or stringprep.in_table_c5(ch)
        or stringprep.in_table_c6(ch)
        or stringprep.in_table_c7(ch)
        or stringprep.in_table_c8(ch)
        or stringprep.in_table_c9(ch)
        or stringprep.in_table_a1(ch)
    )


def saslprep(text: str) -> str:
    """Normalize a string with the SASLprep profile of stringprep (RFC 4013).

    Mapping (non-ASCII spaces to U+0020, table B.1 to nothing), NFKC with the Unicode 3.2 tables
    stringprep is defined on, then prohibited-output, unassigned code point and bidirectional
    checks. Raises :class:`ValueError` if the string is not allowed.
    """
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch for ch in text if not stringprep.in_table_b1(ch)
    )
    normalized = unicodedata.ucd_3_2_0.normalize("NFKC", mapped)
    for ch in normalized:
        if _in_prohibited_output(ch):
            raise ValueError(f"SASLprep: prohibited character U+{ord(ch):04X}")
    # RFC 3454 section 6: a string with right-to-left characters may not contain left-to-right
    # ones and must start and end with a right-to-left character.
    if any(stringprep.in_table_d1(ch) for ch in normalized):
        if any(stringprep.in_table_d2(ch) for ch in normalized):
            raise ValueError("SASLprep: mixes right-to-left and left-to-right characters")
        if not (stringprep.in_table_d1(normalized[0]) and stringprep.in_table_d1(normalized[-1])):
            raise ValueError("SASLprep: right-to-left text must start and end right-to-left")
    return normalized


def prepare_scram_password(password: str) -> bytes:
    """The password bytes SCRAM hashes, as PostgreSQL computes them on both sides.

    PostgreSQL (``pg_saslprep`` in the server and libpq) applies SASLprep, and when the result is
    invalid (a prohibited character, bad bidirectional text, or a non-empty password that maps
    to nothing) it quietly uses the raw password instead, so that any password keeps working.
    We do the same, for the verifiers we build and for the logins we perform, so our hashes match
    what a real server and client compute.
    """
    try:
        prepared = saslprep(password)
    except ValueError:
        prepared = password
    if not prepared:
        prepared = password
    return prepared.encode("utf-8")


# --------------------------------------------------------------------------------------------
# SCRAM primitives (RFC 5802 section 3)


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.digest(key, message, "sha256")


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    """Strict base64 decoding; ValueError on anything else."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError(f"invalid base64: {text!r}") from exc


def _salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", prepare_scram_password(password), salt, iterations)


def _new_nonce() -> str:
    return _b64(os.urandom(_RAW_NONCE_LEN))


def _check_nonce(nonce: str) -> str:
    # RFC 5802 "printable": %x21-2B / %x2D-7E, i.e. visible ASCII except ','.
    if not nonce or any(not 0x21 <= ord(c) <= 0x7E or c == "," for c in nonce):
        raise ValueError(f"a SCRAM nonce must be printable ASCII without ',': {nonce!r}")
    return nonce


def _escape_username(name: str) -> str:
    return name.replace("=", "=3D").replace(",", "=2C")


@dataclass(frozen=True)
class ScramVerifier:
    """A stored SCRAM-SHA-256 secret, in PostgreSQL's ``pg_authid.rolpassword`` format
    ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`` (base64 fields)."""

    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    @classmethod
    def parse(cls, text: str) -> ScramVerifier:
        """Parse the stored form; :class:`ValueError` if it is not a valid verifier."""
        try:
            method, params, keys = text.split("$")
            iterations_text, salt_text = params.split(":")
            stored_text, server_text = keys.split(":")
        except ValueError:
            raise ValueError("not a SCRAM-SHA-256 verifier") from None
        if method != SCRAM_SHA_256:
            raise ValueError(f"unsupported SCRAM method {method!r}")
        if not (iterations_text.isascii() and iterations_text.isdigit()):
            raise ValueError(f"invalid SCRAM iteration count {iterations_text!r}")
        iterations = int(iterations_text)
        salt = _unb64(salt_text)
        stored_key = _unb64(stored_text)
        server_key = _unb64(server_text)
        if iterations < 1 or not salt:
            raise ValueError("a SCRAM verifier needs a salt and at least one iteration")
        if len(stored_key) != _KEY_LEN or len(server_key) != _KEY_LEN:
            raise ValueError("SCRAM-SHA-256 keys are 32 bytes")
        return cls(iterations, salt, stored_key, server_key)

    @classmethod
    def from_password(
        cls, password: str, *, salt: bytes | None = None, iterations: int = 4096
    ) -> ScramVerifier:
        """Build the verifier PostgreSQL would store for ``password`` (RFC 5802 section 3)."""
        if iterations < 1:
            raise ValueError("SCRAM needs at least one iteration")
        if salt is None:
            salt = os.urandom(_DEFAULT_SALT_LEN)
        salted = _salted_password(password, salt, iterations)
        client_key = _hmac(salted, b"Client Key")
        return cls(iterations, salt, _sha256(client_key), _hmac(salted, b"Server Key"))

    def to_string(self) -> str:
        """The stored form, as accepted by :meth:`parse` and by PostgreSQL."""
        return (
            f"{SCRAM_SHA_256}${self.iterations}:{_b64(self.salt)}"
            f"${_b64(self.stored_key)}:{_b64(self.server_key)}"
        )


def is_scram_verifier(text: str) -> bool:
    """True if ``text`` parses as a SCRAM-SHA-256 verifier."""
    try:
        ScramVerifier.parse(text)
    except ValueError:
        return False
    return True


def _split_attributes(message: str) -> list[tuple[str, str]]:
    """``a=value,b=value`` into pairs; every attribute is one letter (RFC 5802 section 5.1)."""
    pairs = []
    for part in message.split(","):
        if len(part) < 2 or part[1] != "=" or not ("a" <= part[0] <= "z" or "A" <= part[0] <= "Z"):
            raise AuthenticationFailed(f"malformed SCRAM attribute {part!r}")
        pairs.append((part[0], part[2:]))
    return pairs


def _decode_message(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise AuthenticationFailed(f"{what} is not valid UTF-8") from None


class ScramServer:
    """The server side of a SCRAM-SHA-256 exchange, checking a client against a verifier.

    Follows PostgreSQL's ``auth-scram.c`` profile: gs2 headers ``n,,`` and ``y,,`` are accepted
    (we advertise no channel binding), ``p=`` and an authorization identity are refused, the
    user name in client-first-message is ignored, and mandatory extensions (``m=``) are refused.
    After a successful exchange :attr:`client_key` holds the ClientKey the client proved it has,
    which lets the proxy log in to servers that store the same verifier (see
    :meth:`ScramClient.from_keys`).
    """

    def __init__(self, verifier: ScramVerifier, *, nonce: str | None = None) -> None:
        self._verifier = verifier
        self._server_nonce = _check_nonce(nonce) if nonce is not None else _new_nonce()
        self._gs2_header: str | None = None
        self._client_first_bare = ""
        self._server_first = ""
        self._nonce = ""
        self._done = False
        self.client_key: bytes | None = None

    @property
    def verifier(self) -> ScramVerifier:
        """The verifier the client is checked against."""
        return self._verifier

    def handle_client_first(self, data: bytes) -> bytes:
        """Take client-first-message (SASLInitialResponse data); return server-first-message."""
        if self._gs2_header is not None:
            raise AuthenticationFailed("client-first-message received twice")
        message = _decode_message(data, "client-first-message")
        parts = message.split(",", 2)
        if len(parts) != 3:
            raise AuthenticationFailed("malformed SCRAM client-first-message")
        flag, authzid, bare = parts
        if flag.startswith("p="):
            raise AuthenticationFailed("channel binding is not supported (use SCRAM-SHA-256)")
        if flag not in ("n", "y"):
            raise AuthenticationFailed(f"invalid SCRAM channel binding flag {flag!r}")
        if authzid:
            raise AuthenticationFailed("SCRAM authorization identities are not supported")
        attributes = _split_attributes(bare)
        if attributes[0][0] == "m":
            raise AuthenticationFailed("the client requires an unsupported SCRAM extension")
        if len(attributes) < 2 or attributes[0][0] != "n" or attributes[1][0] != "r":
            raise AuthenticationFailed("SCRAM client-first-message needs n= then r=")
        try:
            client_nonce = _check_nonce(attributes[1][1])
        except ValueError as exc:
            raise AuthenticationFailed(str(exc)) from None
        self._gs2_header = f"{flag},{authzid},"
        self._client_first_bare = bare
        self._nonce = client_nonce + self._server_nonce
        v = self._verifier
        self._server_first = f"r={self._nonce},s={_b64(v.salt)},i={v.iterations}"
        return self._server_first.encode("ascii")

    def handle_client_final(self, data: bytes) -> bytes:
        """Take client-final-message; verify the proof; return server-final-message."""
        if self._gs2_header is None or self._done:
            raise AuthenticationFailed("unexpected SCRAM client-final-message")
        self._done = True
        message = _decode_message(data, "client-final-message")
        without_proof, sep, proof_text = message.rpartition(",p=")
        if not sep:
            raise AuthenticationFailed("SCRAM client-final-message without a proof")
        attributes = _split_attributes(without_proof)
        if len(attributes) < 2 or attributes[0][0] != "c" or attributes[1][0] != "r":
            raise AuthenticationFailed("SCRAM client-final-message needs c= then r=")
        try:
            binding = _unb64(attributes[0][1])
            proof = _unb64(proof_text)
        except ValueError as exc:
            raise AuthenticationFailed(str(exc)) from None
        if binding != self._gs2_header.encode("ascii"):
            raise AuthenticationFailed("SCRAM channel binding does not match the gs2 header")
        if not hmac.compare_digest(attributes[1][1].encode("utf-8"), self._nonce.encode("ascii")):
            raise AuthenticationFailed("SCRAM nonce mismatch")
        if len(proof) != _KEY_LEN:
            raise AuthenticationFailed("SCRAM proof has the wrong length")
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        v = self._verifier
        client_key = _xor(proof, _hmac(v.stored_key, auth_message))
        if not hmac.compare_digest(_sha256(client_key), v.stored_key):
            raise AuthenticationFailed("SCRAM proof does not match the stored key")
        self.client_key = client_key
        return b"v=" + _b64(_hmac(v.server_key, auth_message)).encode("ascii")


class ScramClient:
    """The client side of SCRAM-SHA-256, used by the proxy to log in to servers.

    Like libpq it sends an empty user name (``n=``; the server takes the user from the startup
    packet) and the gs2 header ``n,,``. Build it from a password, or with :meth:`from_keys` from
    a ClientKey/ServerKey pair recovered by :class:`ScramServer` (pass-through login).
    """

    def __init__(self, password: str, *, nonce: str | None = None, user: str = "") -> None:
        self._password = password
        # (ClientKey, ServerKey) when logging in without the password.
        self._keys: tuple[bytes, bytes] | None = None
        self._nonce = _check_nonce(nonce) if nonce is not None else _new_nonce()
        self._client_first_bare = f"n={_escape_username(user)},r={self._nonce}"
        self._server_signature: bytes | None = None

    @classmethod
    def from_keys(
        cls, client_key: bytes, server_key: bytes, *, nonce: str | None = None
    ) -> ScramClient:
        """A client that proves knowledge of ``client_key`` without the password.

        This works only against a server whose verifier has the same salt and iteration count
        as the one the keys come from (the server's salt and iterations are then ignored).
        """
        client = cls("", nonce=nonce)
        client._keys = (client_key, server_key)
        return client

    def client_first(self) -> bytes:
        """client-first-message, the data of SASLInitialResponse."""
        return f"n,,{self._client_first_bare}".encode()

    def handle_server_first(self, data: bytes) -> bytes:
        """Take server-first-message (AuthenticationSASLContinue data); return
        client-final-message."""
        if self._server_signature is not None:
            raise AuthenticationFailed("server-first-message received twice")
        message = _decode_message(data, "server-first-message")
        attributes = _split_attributes(message)
        if attributes[0][0] == "m":
            raise AuthenticationFailed("the server requires an unsupported SCRAM extension")
        if len(attributes) < 3 or [a[0] for a in attributes[:3]] != ["r", "s", "i"]:
            raise AuthenticationFailed("SCRAM server-first-message needs r=, s= and i=")
        nonce, salt_text, iterations_text = (a[1] for a in attributes[:3])
        if len(nonce) <= len(self._nonce) or not nonce.startswith(self._nonce):
            raise AuthenticationFailed("SCRAM server nonce does not extend the client nonce")
        try:
            _check_nonce(nonce)
            salt = _unb64(salt_text)
        except ValueError as exc:
            raise AuthenticationFailed(str(exc)) from None
        if not salt:
            raise AuthenticationFailed("SCRAM salt is empty")
        if not (iterations_text.isascii() and iterations_text.isdigit()):
            raise AuthenticationFailed(f"invalid SCRAM iteration count {iterations_text!r}")
        iterations = int(iterations_text)
        if iterations < 1:
            raise AuthenticationFailed("SCRAM iteration count must be at least 1")

        if self._keys is None:
            salted = _salted_password(self._password, salt, iterations)
            client_key = _hmac(salted, b"Client Key")
            server_key = _hmac(salted, b"Server Key")
        else:
            client_key, server_key = self._keys
        without_proof = f"c={_b64(b'n,,')},r={nonce}"
        auth_message = f"{self._client_first_bare},{message},{without_proof}".encode()
        proof = _xor(client_key, _hmac(_sha256(client_key), auth_message))
        self._server_signature = _hmac(server_key, auth_message)
        return f"{without_proof},p={_b64(proof)}".encode("ascii")

    def verify_server_final(self, data: bytes) -> None:
        """Check server-final-message (AuthenticationSASLFinal data): the server must prove it
        knows the ServerKey; ``e=`` reports a server-side failure."""
        if self._server_signature is None:
            raise AuthenticationFailed("unexpected SCRAM server-final-message")
        message = _decode_message(data, "server-final-message")
        attributes = _split_attributes(message)
        kind, value = attributes[0]
        if kind == "e":
            raise AuthenticationFailed(f"SCRAM error from server: {value}")
        if kind != "v":
            raise AuthenticationFailed("SCRAM server-final-message needs v=")
        try:
            signature = _unb64(value)
        except ValueError as exc:
            raise AuthenticationFailed(str(exc)) from None
        if not hmac.compare_digest(signature, self._server_signature):
            raise AuthenticationFailed("SCRAM server signature mismatch")
