"""MySQL's and MariaDB's replication positions (GTIDs) as `core.position.Position` values.

The two servers number transactions differently, and neither numbering is a byte offset:

* **MariaDB** (MariaDB Server documentation, "Global Transaction ID"): a GTID is
  ``domain-server_id-sequence``; ``@@gtid_current_pos``, ``@@gtid_binlog_pos`` and
  ``@@gtid_slave_pos`` hold at most one GTID per replication domain, the last one applied or
  written, as a comma-separated list (empty when nothing was replicated yet). Within a domain the
  sequence numbers grow (``gtid_strict_mode`` enforces it), so a server holds everything
  ``other`` holds when, for every domain of ``other``, it has the same domain with a sequence
  number at least as high. The server id says who wrote the event and takes no part in the
  comparison. :class:`MariaDbGtidPos`.
* **MySQL** (MySQL Reference Manual, "GTID Format and Storage", "GTID Sets"): a GTID is
  ``source_uuid:transaction_id`` (MySQL 8.3+ also ``source_uuid:tag:transaction_id``);
  ``@@gtid_executed`` is a GTID *set*: per UUID (and tag), intervals such as
  ``3E11FA47-71CA-11E1-9E33-C80AA9429562:1-5:7-9``. A set may have holes, so one server holds
  everything another holds exactly when its set is a superset. :class:`MySqlGtidSet`.

Both are only partially ordered and have no byte distance: `bytes_behind` is always None, and
a MySQL cluster's lag limit is in seconds (``Seconds_Behind_Master``; see `mysql.probe`).
`covers` between a MariaDB position and a MySQL set (or a PostgreSQL LSN) is False.

Parsing accepts the servers' own text (whitespace and the newlines ``@@gtid_executed`` puts
after its commas included) and raises ValueError naming the bad part; ``str()`` gives the
canonical text (sorted, intervals merged), which parses back to an equal value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from dbbalancer.core.position import Position

__all__ = ["MariaDbGtidPos", "MySqlGtidSet", "SidKey"]

_U32: Final = (1 << 32) - 1
_U64: Final = (1 << 64) - 1
# MySQL refuses transaction ids above 2^63 - 1 ("GTID Format and Storage").
_MAX_TRANSACTION: Final = (1 << 63) - 1
_DIGITS: Final = re.compile(r"[0-9]+")
_UUID: Final = re.compile(r"[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}")
_TAG: Final = re.compile(r"[a-z_][a-z0-9_]{0,31}")


def _number(text: str, what: str, limit: int, whole: str) -> int:
    if not _DIGITS.fullmatch(text):
        raise ValueError(f"{what} {text!r} is not a number in GTID {whole!r}")
    value = int(text)
    if value > limit:
        raise ValueError(f"{what} {value} is out of range (at most {limit}) in GTID {whole!r}")
    return value


def _elements(text: str, what: str) -> list[str]:
    """The comma-separated elements of `text`, stripped; none for blank text."""
    if not text.strip():
        return []
    parts = [raw.strip() for raw in text.split(",")]
    if not all(parts):
        raise ValueError(f"empty element in {what} {text!r}")
    return parts


# -------------------------------------------------------------------------------------------
# MariaDB


@dataclass(frozen=True, slots=True)
class MariaDbGtidPos:
    """A MariaDB GTID position: one ``(domain, server_id, sequence)`` per domain, sorted by
    domain. Build it with :meth:`parse`; an empty position covers only empty ones."""

    gtids: tuple[tuple[int, int, int], ...] = ()

    def __post_init__(self) -> None:
        domains = [domain for domain, _, _ in self.gtids]
        if domains != sorted(set(domains)):
            raise ValueError(
                f"a MariaDB GTID position has one GTID per domain, sorted by domain: {self.gtids}"
            )
        for domain, server_id, seq in self.gtids:
            if not (0 <= domain <= _U32 and 0 <= server_id <= _U32 and 0 <= seq <= _U64):
                raise ValueError(f"GTID {domain}-{server_id}-{seq} is out of range")

    @classmethod
    def parse(cls, text: str) -> MariaDbGtidPos:
        """Parse ``@@gtid_current_pos`` (or binlog/slave pos): ``0-1-42,1-2-7``; empty text is
        the empty position. Two GTIDs of one domain (as in ``@@gtid_binlog_state``) raise."""
        gtids: dict[int, tuple[int, int, int]] = {}
        for part in _elements(text, "MariaDB GTID position"):
            fields = part.split("-")
            if len(fields) != 3:
                raise ValueError(
                    f"{part!r} is not a MariaDB GTID (domain-server_id-sequence) in {text!r}"
                )
            domain = _number(fields[0], "domain", _U32, part)
            server_id = _number(fields[1], "server id", _U32, part)
            seq = _number(fields[2], "sequence number", _U64, part)
            if domain in gtids:
                raise ValueError(f"domain {domain} appears twice in MariaDB GTID position {text!r}")
            gtids[domain] = (domain, server_id, seq)
        return cls(tuple(gtids[d] for d in sorted(gtids)))

    def sequence(self, domain: int) -> int | None:
        """The sequence number this position holds for `domain`, None if it has none."""
        for d, _, seq in self.gtids:
            if d == domain:
                return seq
        return None

    def covers(self, other: Position) -> bool:
        """True if, for every domain of `other`, this position has that domain at a sequence
        number at least as high; False for any other kind of position."""
        if not isinstance(other, MariaDbGtidPos):
            return False
        mine = {domain: seq for domain, _, seq in self.gtids}
        for domain, _, seq in other.gtids:
            have = mine.get(domain)
            if have is None or have < seq:
                return False
        return True

    def bytes_behind(self, other: Position) -> int | None:
        """Always None: GTIDs count transactions, not bytes."""
        return None

    def __str__(self) -> str:
        return ",".join(f"{d}-{s}-{n}" for d, s, n in self.gtids)


# -------------------------------------------------------------------------------------------
# MySQL

#: A GTID source: the server UUID (lower case, with dashes) and a tag ("" for untagged GTIDs).
SidKey = tuple[str, str]


def _normalize_uuid(text: str, whole: str) -> str:
    lowered = text.lower()
    if not _UUID.fullmatch(lowered):
        raise ValueError(f"{text!r} is not a server UUID in GTID set {whole!r}")
    hexdigits = lowered.replace("-", "")
    return "-".join(
        (hexdigits[:8], hexdigits[8:12], hexdigits[12:16], hexdigits[16:20], hexdigits[20:])
    )


def _merge(intervals: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Sorted, overlapping and adjacent intervals joined (``1-5:6-9`` is ``1-9``)."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1] + 1:
            last_start, last_end = merged[-1]
            merged[-1] = (last_start, max(last_end, end))
        else:
            merged.append((start, end))
    return tuple(merged)


def _interval(text: str, whole: str) -> tuple[int, int]:
    first, sep, last = text.partition("-")
    start = _number(first.strip(), "transaction id", _MAX_TRANSACTION, whole)
    end = _number(last.strip(), "transaction id", _MAX_TRANSACTION, whole) if sep else start
    if start < 1:
        raise ValueError(f"transaction ids start at 1, not {start}, in GTID set {whole!r}")
    if end < start:
        raise ValueError(f"interval {text!r} ends before it starts in GTID set {whole!r}")
    return start, end


@dataclass(frozen=True, slots=True)
class MySqlGtidSet:
    """A MySQL GTID set: per source (UUID and tag), sorted disjoint inclusive intervals of
    transaction ids, non-adjacent (normalized the way the server prints them). Build it with
    :meth:`parse`; the empty set covers only empty sets."""

    sources: tuple[tuple[SidKey, tuple[tuple[int, int], ...]], ...] = ()

    def __post_init__(self) -> None:
        keys = [key for key, _ in self.sources]
        if keys != sorted(set(keys)):
            raise ValueError(f"GTID set sources must be unique and sorted: {keys}")
        for key, intervals in self.sources:
            if not intervals or _merge(list(intervals)) != intervals:
                raise ValueError(f"intervals of {key} are not normalized: {intervals}")
            if intervals[0][0] < 1 or intervals[-1][1] > _MAX_TRANSACTION:
                raise ValueError(f"intervals of {key} are out of range: {intervals}")

    @classmethod
    def parse(cls, text: str) -> MySqlGtidSet:
        """Parse ``@@gtid_executed``: ``uuid:1-5:7-9,uuid2:3``, tags as ``uuid:tag:1-5``
        (MySQL 8.3+); empty text is the empty set. Repeated sources and overlapping intervals
        are merged, as the server does."""
        found: dict[SidKey, list[tuple[int, int]]] = {}
        for part in _elements(text, "GTID set"):
            fields = [field.strip() for field in part.split(":")]
            uuid = _normalize_uuid(fields[0], text)
            if len(fields) < 2:
                raise ValueError(f"{part!r} has no transaction ids in GTID set {text!r}")
            tag = ""
            tag_has_ids = True
            for field in fields[1:]:
                if field[:1].isdigit():
                    found.setdefault((uuid, tag), []).append(_interval(field, text))
                    tag_has_ids = True
                    continue
                if not tag_has_ids:
                    raise ValueError(f"tag {tag!r} has no transaction ids in GTID set {text!r}")
                if not _TAG.fullmatch(field.lower()):
                    raise ValueError(f"{field!r} is neither an interval nor a tag in {text!r}")
                tag = field.lower()
                tag_has_ids = False
            if not tag_has_ids:
                raise ValueError(f"tag {tag!r} has no transaction ids in GTID set {text!r}")
        return cls(tuple((key, _merge(found[key])) for key in sorted(found)))

    def intervals(self, uuid: str, tag: str = "") -> tuple[tuple[int, int], ...]:
        """The intervals of one source (empty if the set has none of it)."""
        key = (_normalize_uuid(uuid, uuid), tag.lower())
        for source, intervals in self.sources:
            if source == key:
                return intervals
        return ()

    def covers(self, other: Position) -> bool:
        """True if this set contains every GTID of `other` (a superset); False for any other
        kind of position."""
        if not isinstance(other, MySqlGtidSet):
            return False
        mine = dict(self.sources)
        for key, wanted in other.sources:
            have = mine.get(key)
            if have is None or not _contains(have, wanted):
                return False
        return True

    def bytes_behind(self, other: Position) -> int | None:
        """Always None: GTIDs count transactions, not bytes."""
        return None

    def __str__(self) -> str:
        by_uuid: dict[str, list[str]] = {}
        for (uuid, tag), intervals in self.sources:
            parts = by_uuid.setdefault(uuid, [uuid])
            if tag:
                parts.append(tag)
            parts.extend(f"{a}" if a == b else f"{a}-{b}" for a, b in intervals)
        return ",".join(":".join(parts) for parts in by_uuid.values())


def _contains(have: tuple[tuple[int, int], ...], wanted: tuple[tuple[int, int], ...]) -> bool:
    """Both normalized: each wanted interval must lie inside one interval of `have` (merged
    intervals never touch, so it cannot straddle two)."""
    i = 0
    for start, end in wanted:
        while i < len(have) and have[i][1] < start:
            i += 1
        if i == len(have) or have[i][0] > start or have[i][1] < end:
            return False
    return True
