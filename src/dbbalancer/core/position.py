"""Replication positions as the core sees them: opaque values that can cover one another.

A replication position says how much of the primary's change stream a server holds: written on a
primary, applied on a replica. The core needs two questions answered about it, and nothing more:

* `covers(other)`: does this server hold everything `other` stands for?  Read-your-writes asks
  it of a replica's position and the primary's position after a client's last commit.
* `bytes_behind(other)`: how far behind `other` is this one, in bytes, if the protocol can say?
  That feeds `ServerStatus.lag_bytes` and the optional bytes limit on replica lag.

Protocols differ in what a position is. PostgreSQL's WAL position (an LSN) is a byte offset into
one stream: totally ordered and subtractable (`dbbalancer.postgres.lsn.Lsn`). A MySQL GTID set
is only partially ordered: one set can contain another, neither can be subtracted, and two sets
may each hold a transaction the other lacks. So the core never orders, subtracts or compares
positions with `<`; it asks `covers`, and treats "cannot tell" as "not covered", which routes a
read-your-writes read to the primary rather than to a replica that may miss the write.

The neutral unit for lag limits is seconds (`ProbeResult.replay_delay`); a limit in bytes is a
PostgreSQL option, met only by replicas whose lag in bytes can be measured.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Position"]


class Position(Protocol):
    """A replication position supplied by a protocol package; immutable and hashable.

    Implementations must be value objects: equal positions compare equal and hash alike (the
    cluster caches the eligible replicas per (probe round, read-your-writes position)).
    """

    def covers(self, other: Position) -> bool:
        """True if a server at this position holds every change a server at `other` holds.

        Reflexive and transitive. False when the two cannot be compared (positions of another
        protocol or stream): callers treat that as "may be missing changes".
        """
        ...

    def bytes_behind(self, other: Position) -> int | None:
        """Bytes this position must still advance to cover `other`, never negative (0 when it
        already covers `other`); None when the protocol cannot measure that in bytes."""
        ...
