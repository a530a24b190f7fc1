"""PostgreSQL's replication position: a WAL location (LSN) as a `core.position.Position`.

An LSN is a byte offset into the write-ahead log, shown as two hexadecimal halves ("16/B374D848",
manual section "pg_lsn Type"); `pg_lsn - '0/0'::pg_lsn` gives it as a number of bytes, which is
how the probe and the read-your-writes query ask for it. WAL is one stream whatever the timeline
(a promotion continues the byte count), so LSNs are totally ordered and their difference is the
lag in bytes that `pg_stat_replication` and `max_replica_lag = "16MB"` talk about.
"""

from __future__ import annotations

from dataclasses import dataclass

from dbbalancer.core.position import Position

__all__ = ["Lsn"]


@dataclass(frozen=True, slots=True, order=True)
class Lsn:
    """A WAL location, in bytes since 0/0. Ordered like `pg_lsn`."""

    offset: int

    def __post_init__(self) -> None:
        if self.offset < 0:
            raise ValueError(f"an LSN is never negative, got {self.offset!r}")

    def covers(self, other: Position) -> bool:
        """True if `other` is an LSN at or before this one; False for any other kind."""
        return isinstance(other, Lsn) and self.offset >= other.offset

    def bytes_behind(self, other: Position) -> int | None:
        """WAL bytes from this LSN up to `other` (0 if already past it); None if `other` is not
        an LSN."""
        if not isinstance(other, Lsn):
            return None
        return max(0, other.offset - self.offset)

    def __str__(self) -> str:
        # pg_lsn's own text form: high and low 32 bits in hex.
        return f"{self.offset >> 32:X}/{self.offset & 0xFFFFFFFF:X}"
