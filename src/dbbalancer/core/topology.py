"""Server identity and the cluster it belongs to.

Identity is immutable (a `Server` is a value: name, address, configured role, weight); runtime
state such as health, lag or counters lives elsewhere, keyed by the server's name.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ServerRole(enum.Enum):
    """The role a server was configured with; AUTO means: learn it from health probes."""

    PRIMARY = "primary"
    REPLICA = "replica"
    AUTO = "auto"


@dataclass(frozen=True, slots=True)
class Server:
    """One database server behind the balancer."""

    name: str
    host: str
    port: int
    role: ServerRole
    weight: float = 1.0

    @property
    def address(self) -> str:
        """host:port, with brackets around an IPv6 host."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"
