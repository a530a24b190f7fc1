"""Pure MySQL/MariaDB authentication maths: mysql_native_password, caching_sha2_password and
MariaDB's client_ed25519.

No I/O. Sections followed (MySQL Source Code Documentation, "Connection Phase":
"Authentication Methods"; MariaDB documentation, "Connection" and "Authentication Plugin -
mysql_native_password"):

* mysql_native_password: the client sends
  ``SHA1(password) XOR SHA1(nonce + SHA1(SHA1(password)))``; the server keeps
  ``SHA1(SHA1(password))`` (``mysql.user.authentication_string`` shows it as ``*`` and 40
  upper-case hex digits, what ``PASSWORD()`` returns) and checks that the SHA1 of
  ``response XOR SHA1(nonce + stored)`` is the stored value. An empty password is sent as an
  empty response. A successful check yields ``SHA1(password)``, enough for the proxy to answer
  another nonce (a server's) without knowing the password: see :func:`native_recover_stage1`.
* caching_sha2_password, fast path: the client sends
  ``SHA256(password) XOR SHA256(SHA256(SHA256(password)) + nonce)``; the server's cache holds
  ``SHA256(SHA256(password))``. Full path: over TLS the password travels in clear (NUL
  terminated); over plain TCP it is XORed with the nonce (repeated) and encrypted with the
  server's RSA public key, RSA-OAEP with SHA-1 (``RSA_PKCS1_OAEP_PADDING``), which needs the
  ``cryptography`` package (imported only when called).

* client_ed25519 (MariaDB, "Authentication Plugin - ed25519"), client side only: the server
  sends a 32-byte scramble and the client answers with the 64-byte Ed25519 signature of it
  (RFC 8032, section 5.1.6), under a key derived as Ed25519 derives it from a seed except that
  the hashed secret is the password's bytes, of any length: ``h = SHA512(password)``, the
  secret scalar ``a`` is ``h[:32]`` clamped, the nonce prefix is ``h[32:]``. The server stores
  the public key ``A = aB`` as 43 characters of unpadded base64 (what ``PASSWORD()`` gives in
  ``IDENTIFIED VIA ed25519 USING PASSWORD(...)``; :func:`ed25519_public_key`). Signatures
  verify as standard Ed25519 under ``A``. The curve arithmetic is libsodium's, through PyNaCl.

Secrets are compared with :func:`hmac.compare_digest`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from types import ModuleType
from typing import Any, Final

__all__ = [
    "CLIENT_ED25519",
    "ED25519_NONCE_LENGTH",
    "ED25519_SIGNATURE_LENGTH",
    "NONCE_LENGTH",
    "caching_sha2_decrypt_password",
    "caching_sha2_encrypt_password",
    "caching_sha2_scramble",
    "caching_sha2_stored",
    "caching_sha2_verify",
    "caching_sha2_xor_password",
    "ed25519_public_key",
    "ed25519_scramble",
    "native_password_hash",
    "native_recover_stage1",
    "native_scramble",
    "native_scramble_from_stage1",
    "native_stored_text",
    "native_verify",
    "parse_native_stored",
]

# Both servers send a 20-byte nonce (plus a NUL in the greeting and AuthSwitchRequest).
NONCE_LENGTH: Final = 20
# MariaDB's ed25519 plugin, client side: a 32-byte scramble (no NUL: any byte, the last one
# too), a 64-byte answer.
CLIENT_ED25519: Final = "client_ed25519"
ED25519_NONCE_LENGTH: Final = 32
ED25519_SIGNATURE_LENGTH: Final = 64
_HEX_UPPER: Final = frozenset("0123456789ABCDEF")


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _sha1(*parts: bytes) -> bytes:
    return hashlib.sha1(b"".join(parts)).digest()


def _sha256(*parts: bytes) -> bytes:
    return hashlib.sha256(b"".join(parts)).digest()


def _nonce(nonce: bytes) -> bytes:
    """The nonce without the NUL that ends it on the wire."""
    return nonce[:-1] if len(nonce) == NONCE_LENGTH + 1 and nonce.endswith(b"\0") else nonce


# --------------------------------------------------------------------------------------------
# mysql_native_password


def native_password_hash(password: str) -> bytes:
    """``SHA1(SHA1(password))``: what the server stores (20 bytes)."""
    return _sha1(_sha1(password.encode("utf-8")))


def native_stored_text(password: str) -> str:
    """The stored form as ``PASSWORD()`` prints it: ``*`` and 40 upper-case hex digits."""
    return "*" + native_password_hash(password).hex().upper()


def parse_native_stored(text: str) -> bytes:
    """The 20-byte hash from its ``*HEX`` text form; ValueError for anything else."""
    if len(text) != 41 or text[0] != "*" or not _HEX_UPPER.issuperset(text[1:].upper()):
        raise ValueError("a mysql_native_password hash is '*' followed by 40 hex digits")
    return bytes.fromhex(text[1:])


def native_scramble_from_stage1(stage1: bytes, nonce: bytes) -> bytes:
    """The client's response given ``SHA1(password)`` (``stage1``)."""
    return _xor(stage1, _sha1(_nonce(nonce), _sha1(stage1)))


def native_scramble(password: str, nonce: bytes) -> bytes:
    """The client's response to a mysql_native_password nonce (empty for an empty password)."""
    if not password:
        return b""
    return native_scramble_from_stage1(_sha1(password.encode("utf-8")), nonce)


def native_recover_stage1(response: bytes, nonce: bytes, stored: bytes) -> bytes | None:
    """``SHA1(password)`` if ``response`` is right for ``nonce`` and the stored hash, else None.

    An empty response never passes: an empty password is stored as the empty string, which
    :func:`native_verify` handles.
    """
    if len(response) != 20 or len(stored) != 20:
        return None
    stage1 = _xor(response, _sha1(_nonce(nonce), stored))
    if not hmac.compare_digest(_sha1(stage1), stored):
        return None
    return stage1


def native_verify(response: bytes, nonce: bytes, stored: bytes) -> bool:
    """Check a client's mysql_native_password response against the stored hash.

    ``stored`` empty means an empty password, which only an empty response matches.
    """
    if not stored:
        return response == b""
    return native_recover_stage1(response, nonce, stored) is not None


# --------------------------------------------------------------------------------------------
# caching_sha2_password


def caching_sha2_stored(password: str) -> bytes:
    """``SHA256(SHA256(password))``: what the server's cache holds for the fast path."""
    return _sha256(_sha256(password.encode("utf-8")))


def caching_sha2_scramble(password: str, nonce: bytes) -> bytes:
    """The client's fast-path response (empty for an empty password)."""
    if not password:
        return b""
    stage1 = _sha256(password.encode("utf-8"))
    return _xor(stage1, _sha256(_sha256(stage1), _nonce(nonce)))


def caching_sha2_verify(response: bytes, nonce: bytes, stored: bytes) -> bool:
    """Check a fast-path response against ``SHA256(SHA256(password))``."""
    if len(response) != 32 or len(stored) != 32:
        return False
    stage1 = _xor(response, _sha256(stored, _nonce(nonce)))
    return hmac.compare_digest(_sha256(stage1), stored)


def caching_sha2_xor_password(data: bytes, nonce: bytes) -> bytes:
    """``data XOR nonce`` with the nonce repeated: the client XORs ``password + NUL`` before RSA
    encryption; XORing the decrypted bytes again gives ``password + NUL`` back."""
    nonce = _nonce(nonce)
    if not nonce:
        raise ValueError("empty nonce")
    return bytes(b ^ nonce[i % len(nonce)] for i, b in enumerate(data))


def _oaep() -> Any:
    try:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "caching_sha2_password full authentication over RSA needs the 'cryptography' package"
        ) from exc
    # RSA_PKCS1_OAEP_PADDING: OAEP with SHA-1 and MGF1-SHA-1, no label.
    return padding.OAEP(
        mgf=padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None
    )


def caching_sha2_encrypt_password(password: str, nonce: bytes, public_key_pem: bytes) -> bytes:
    """The client's full-path answer over plain TCP: RSA-OAEP of the XORed password."""
    oaep = _oaep()
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    key = load_pem_public_key(public_key_pem)
    if not isinstance(key, RSAPublicKey):
        raise ValueError("caching_sha2_password needs an RSA public key")
    plaintext = caching_sha2_xor_password(password.encode("utf-8") + b"\0", nonce)
    return bytes(key.encrypt(plaintext, oaep))


def caching_sha2_decrypt_password(ciphertext: bytes, nonce: bytes, private_key_pem: bytes) -> str:
    """The server side of :func:`caching_sha2_encrypt_password`: the cleartext password."""
    oaep = _oaep()
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(private_key_pem, password=None)
    if not isinstance(key, RSAPrivateKey):
        raise ValueError("caching_sha2_password needs an RSA private key")
    data = caching_sha2_xor_password(bytes(key.decrypt(ciphertext, oaep)), nonce)
    if not data.endswith(b"\0"):
        raise ValueError("the decrypted password is not NUL-terminated")
    return data[:-1].decode("utf-8")


# --------------------------------------------------------------------------------------------
# client_ed25519 (MariaDB)


def _sodium() -> ModuleType:
    try:
        from nacl import bindings
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("MariaDB's client_ed25519 needs the 'pynacl' package") from exc
    return bindings


def _ed25519_secret(password: str) -> tuple[bytes, bytes]:
    """The secret scalar (clamped, reduced mod L) and the nonce prefix of a password's key."""
    digest = hashlib.sha512(password.encode("utf-8")).digest()
    scalar = bytearray(digest[:32])
    scalar[0] &= 0xF8  # a multiple of the cofactor 8
    scalar[31] &= 0x7F
    scalar[31] |= 0x40  # bit 254 set
    # Reducing mod L changes no multiple of the base point (its order is L) and keeps the
    # scalar arithmetic below in libsodium's range.
    reduced: bytes = _sodium().crypto_core_ed25519_scalar_reduce(bytes(scalar) + bytes(32))
    return reduced, digest[32:]


def _ed25519_reduce(*parts: bytes) -> bytes:
    """``SHA512(parts) mod L``, as a 32-byte little-endian scalar."""
    reduced: bytes = _sodium().crypto_core_ed25519_scalar_reduce(
        hashlib.sha512(b"".join(parts)).digest()
    )
    return reduced


def _ed25519_base(scalar: bytes) -> bytes:
    """``scalar * B``, encoded (32 bytes)."""
    point: bytes = _sodium().crypto_scalarmult_ed25519_base_noclamp(scalar)
    return point


def ed25519_public_key(password: str) -> str:
    """The public key the server stores for `password`: 43 characters of unpadded base64."""
    scalar, _ = _ed25519_secret(password)
    return base64.b64encode(_ed25519_base(scalar)).decode("ascii").rstrip("=")


def ed25519_scramble(password: str, nonce: bytes) -> bytes:
    """The client's answer to a client_ed25519 scramble: the 64-byte signature ``R || S``.

    `nonce` is the AuthSwitchRequest's whole plugin data (32 bytes; a last byte of 0 is part
    of it, not a terminator); ValueError for any other length.
    """
    if len(nonce) != ED25519_NONCE_LENGTH:
        raise ValueError(
            f"a client_ed25519 scramble has {ED25519_NONCE_LENGTH} bytes, not {len(nonce)}"
        )
    scalar, prefix = _ed25519_secret(password)
    public = _ed25519_base(scalar)
    r = _ed25519_reduce(prefix, nonce)
    big_r = _ed25519_base(r)
    k = _ed25519_reduce(big_r, public, nonce)
    sodium = _sodium()
    s: bytes = sodium.crypto_core_ed25519_scalar_add(
        r, sodium.crypto_core_ed25519_scalar_mul(k, scalar)
    )
    return big_r + s
