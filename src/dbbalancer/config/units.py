"""Values with units in the configuration file: durations, sizes, addresses and lag limits.

Durations and sizes always carry their unit in the file ("5s", "16MB"), as Odyssey and PgDog
ask, because a bare ``5`` could mean seconds or milliseconds depending on which proxy the
operator used last. The one exception is ``0``, which means "off" for every duration.

Sizes use binary multiples (``kB`` = ``KB`` = ``KiB`` = 1024 bytes), the way PostgreSQL's own
``postgresql.conf`` reads memory units. Addresses follow the URI host syntax of RFC 3986
section 3.2.2: an IPv6 literal is written in brackets, ``[::1]:6432``.

Every parser raises :class:`UnitError` (a ``ValueError``) carrying a message and a hint, so the
config loader can report both parts separately.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass
from decimal import Decimal

__all__ = [
    "DURATION_UNITS",
    "SIZE_UNITS",
    "Address",
    "LagLimit",
    "UnitError",
    "format_duration",
    "format_size",
    "looks_like_size",
    "parse_address",
    "parse_duration",
    "parse_lag_limit",
    "parse_size",
]

DURATION_HINT = "write '5s' or '500ms'"
SIZE_HINT = "write a size such as '512B', '16kB', '16MB' or '1GB'"
ADDRESS_HINT = "write it as 'host:port', e.g. '127.0.0.1:6432' or '[::1]:6432'"

#: Duration suffixes, lower case only: ``"5M"`` would look like five megabytes.
DURATION_UNITS: dict[str, Decimal] = {
    "us": Decimal("0.000001"),
    "ms": Decimal("0.001"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
    "d": Decimal(86400),
}

#: Size suffixes, matched case-insensitively; decimal-looking ``kB``/``MB``/``GB`` are binary
#: multiples, as in PostgreSQL's configuration.
SIZE_UNITS: dict[str, int] = {
    "b": 1,
    "kb": 1024,
    "kib": 1024,
    "mb": 1024**2,
    "mib": 1024**2,
    "gb": 1024**3,
    "gib": 1024**3,
    "tb": 1024**4,
    "tib": 1024**4,
}

_NUMBER_UNIT = re.compile(r"\s*([+-]?)(\d+(?:\.\d+)?|\.\d+)\s*([A-Za-zµ]*)\s*")
_PORT = re.compile(r"\d{1,5}")
_HOSTNAME_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


class UnitError(ValueError):
    """A value that does not parse; ``message`` says what is wrong, ``hint`` how to fix it."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(f"{message}; {hint}")
        self.message = message
        self.hint = hint


@dataclass(frozen=True, slots=True)
class Address:
    """A TCP endpoint. ``str()`` brackets IPv6 literals as RFC 3986 section 3.2.2 requires."""

    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class LagLimit:
    """How far behind the primary a replica may be and still serve reads.

    ``max_seconds`` compares with replay delay (PostgreSQL
    ``now() - pg_last_xact_replay_timestamp()``, MySQL ``Seconds_Behind_Source``); ``max_bytes``
    with WAL distance (``pg_wal_lsn_diff``). ``None`` means that dimension is not limited.
    """

    max_seconds: float | None = None
    max_bytes: int | None = None

    def __str__(self) -> str:
        parts = []
        if self.max_seconds is not None:
            parts.append(format_duration(self.max_seconds))
        if self.max_bytes is not None:
            parts.append(format_size(self.max_bytes))
        return " and ".join(parts) if parts else "unlimited"


def _split(text: str, what: str, hint: str) -> tuple[str, Decimal, str]:
    """Split ``text`` into (sign, number, unit) or raise a UnitError that names ``what``."""
    match = _NUMBER_UNIT.fullmatch(text)
    if match is None:
        raise UnitError(f"{text!r} is not a {what}", hint)
    sign, number, unit = match.groups()
    return sign, Decimal(number), unit


def parse_duration(text: str) -> float:
    """Parse a duration such as ``"500ms"``, ``"1.5s"``, ``"2m"`` or ``"250us"`` into seconds.

    ``"0"`` alone is accepted (every duration uses 0 for "off"); any other bare number is rejected
    because its unit would be a guess.
    """
    if not isinstance(text, str):
        raise UnitError(f"{text!r} is not a duration", DURATION_HINT)
    sign, number, unit = _split(text, "duration", DURATION_HINT)
    if sign == "-" and number != 0:
        raise UnitError(f"{text!r} is negative; durations cannot be", "write 0 or a positive value")
    if not unit:
        if number == 0:
            return 0.0
        raise UnitError(f"{text!r} has no unit", DURATION_HINT)
    multiplier = DURATION_UNITS.get(unit)
    if multiplier is None:
        units = ", ".join(DURATION_UNITS)
        raise UnitError(f"{text!r} has an unknown unit {unit!r}", f"use one of: {units}")
    seconds = float(number * multiplier)
    if not math.isfinite(seconds):
        raise UnitError(f"{text!r} is too large", DURATION_HINT)
    return seconds


def parse_size(text: str | int) -> int:
    """Parse a size such as ``"512B"``, ``"16kB"``, ``"16MiB"`` or ``"1GB"`` into bytes.

    A bare integer (TOML ``4096`` or ``"4096"``) is a number of bytes; ``kB``, ``KB`` and ``KiB``
    all mean 1024 bytes.
    """
    if isinstance(text, bool) or not isinstance(text, int | str):
        raise UnitError(f"{text!r} is not a size", SIZE_HINT)
    if isinstance(text, int):
        if text < 0:
            raise UnitError(f"{text} is negative; sizes cannot be", SIZE_HINT)
        return text
    sign, number, unit = _split(text, "size", SIZE_HINT)
    if sign == "-" and number != 0:
        raise UnitError(f"{text!r} is negative; sizes cannot be", SIZE_HINT)
    multiplier = SIZE_UNITS.get(unit.lower(), 0) if unit else 1
    if multiplier == 0:
        units = "B, kB, KiB, MB, MiB, GB, GiB, TB, TiB"
        raise UnitError(f"{text!r} has an unknown unit {unit!r}", f"use one of: {units}")
    size = number * multiplier
    if size != size.to_integral_value():
        raise UnitError(f"{text!r} is not a whole number of bytes", SIZE_HINT)
    return int(size)


def looks_like_size(text: str) -> bool:
    """Tell a size (``"16MB"``) from a duration (``"1s"``) by its unit, for ``max_replica_lag``."""
    match = _NUMBER_UNIT.fullmatch(text)
    return match is not None and match.group(3).lower() in SIZE_UNITS


def parse_lag_limit(value: str | int | list[str] | tuple[str, ...]) -> LagLimit:
    """Parse ``max_replica_lag``: a duration (``"1s"``), a size (``"16MB"``) or an array of both.

    The empty array means "no limit". ``0`` is a duration: only a replica with no replay delay
    qualifies.
    """
    items: list[str | int]
    if isinstance(value, list | tuple):
        items = list(value)
    elif isinstance(value, str | int) and not isinstance(value, bool):
        items = [value]
    else:
        raise UnitError(
            f"{value!r} is not a lag limit", "write a duration ('1s'), or a size ('16MB')"
        )
    seconds: float | None = None
    size: int | None = None
    for item in items:
        if isinstance(item, str) and looks_like_size(item):
            if size is not None:
                raise UnitError("two sizes given", "give at most one size and one duration")
            size = parse_size(item)
        elif item == 0 and isinstance(item, int) and not isinstance(item, bool):
            if seconds is not None:
                raise UnitError("two durations given", "give at most one size and one duration")
            seconds = 0.0
        elif isinstance(item, str):
            if seconds is not None:
                raise UnitError("two durations given", "give at most one size and one duration")
            seconds = parse_duration(item)
        else:
            raise UnitError(
                f"{item!r} is not a lag limit", "write a duration ('1s') or a size ('16MB')"
            )
    return LagLimit(max_seconds=seconds, max_bytes=size)


def _check_host(host: str, port: str, text: str) -> None:
    """Accept an IPv4 literal or an RFC 1123 host name; anything else gets a precise error."""
    if not host:
        raise UnitError(f"{text!r} has no host", ADDRESS_HINT)
    if ":" in host:
        raise UnitError(
            f"{text!r} has an IPv6 host without brackets",
            f"put the IPv6 address in brackets: '[{host}]:{port}'",
        )
    labels = host.rstrip(".").split(".")
    if len(host) > 253 or not all(_HOSTNAME_LABEL.fullmatch(label) for label in labels):
        raise UnitError(f"{text!r} has an invalid host name {host!r}", ADDRESS_HINT)


def parse_address(text: str, *, allow_port_zero: bool = False) -> Address:
    """Parse ``"127.0.0.1:6432"``, ``"localhost:6432"`` or ``"[::1]:6432"`` into an Address.

    Port 0 ("any free port") is accepted only with ``allow_port_zero`` — for listen addresses,
    where the kernel picks the port; a server cannot be reached on port 0.
    """
    if not isinstance(text, str):
        raise UnitError(f"{text!r} is not an address", ADDRESS_HINT)
    text = text.strip()
    if text.startswith("["):
        close = text.find("]")
        if close == -1 or text[close + 1 : close + 2] != ":":
            raise UnitError(f"{text!r} is not an address", ADDRESS_HINT)
        host, port_text = text[1:close], text[close + 2 :]
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise UnitError(
                f"{text!r} has an invalid IPv6 address {host!r}", ADDRESS_HINT
            ) from None
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise UnitError(f"{text!r} has no port", ADDRESS_HINT)
        _check_host(host, port_text, text)
    if not _PORT.fullmatch(port_text):
        raise UnitError(f"{text!r} has an invalid port {port_text!r}", "use a port from 1 to 65535")
    port = int(port_text)
    lowest = 0 if allow_port_zero else 1
    if not lowest <= port <= 65535:
        raise UnitError(
            f"{text!r} has port {port} out of range", f"use a port from {lowest} to 65535"
        )
    return Address(host=host, port=port)


def format_duration(seconds: float) -> str:
    """Render seconds the way the file would say them (``1.5`` -> ``"1500ms"``); round-trips."""
    if seconds == 0:
        return "0s"
    value = Decimal(repr(seconds))
    for unit in ("d", "h", "m", "s", "ms", "us"):
        scaled = value / DURATION_UNITS[unit]
        if scaled == scaled.to_integral_value() and abs(scaled) >= 1:
            return f"{int(scaled)}{unit}"
    return f"{value.normalize():f}s"


def format_size(size: int) -> str:
    """Render bytes with the largest binary unit that divides them (``16777216`` -> ``"16MB"``)."""
    for unit, multiplier in (("TB", 1024**4), ("GB", 1024**3), ("MB", 1024**2), ("kB", 1024)):
        if size and size % multiplier == 0:
            return f"{size // multiplier}{unit}"
    return f"{size}B"
