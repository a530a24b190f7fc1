"""Function volatility learnt from the primary's catalog (pg_proc.provolatile).

A SELECT that calls a function may write (a plpgsql function that INSERTs is just a function to
the parser), so the classifier sends such SELECTs to the primary unless the function is known to
be immutable or stable. This module reads pg_proc on the primary, keeps the worst volatility of
each name over its overloads and schemas ('v' > 's' > 'i', which is also their sort order), hands
the lookup to the cluster's classifier, and refreshes it on a timer and soon after DDL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from dbbalancer.core.topology import Server
from dbbalancer.postgres import codec
from dbbalancer.postgres.backend import ServerConnection, connect_server
from dbbalancer.postgres.classify import Classifier

log = logging.getLogger(__name__)

# One row per (schema, name): the worst volatility over the overloads.
VOLATILITY_QUERY = (
    "SELECT n.nspname, p.proname, max(p.provolatile::text) "
    "FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace "
    "GROUP BY 1, 2"
)

REFRESH_INTERVAL = 60.0


def build_lookup(rows: list[tuple[str, str, str]]) -> dict[str, str]:
    """Map 'name' and 'schema.name' to the worst volatility ('v' > 's' > 'i')."""
    table: dict[str, str] = {}
    for schema, name, volatility in rows:
        for key in (name, f"{schema}.{name}"):
            if volatility > table.get(key, ""):
                table[key] = volatility
    return table


class VolatilityLoader:
    """Keeps one cluster's classifier supplied with function volatility from the primary."""

    def __init__(
        self,
        classifier: Classifier,
        primary: Callable[[], Server | None],
        *,
        user: str,
        password: str | None,
        database: str,
        connect_timeout: float,
        interval: float = REFRESH_INTERVAL,
    ) -> None:
        self._classifier = classifier
        self._primary = primary
        self._user = user
        self._password = password
        self._database = database
        self._connect_timeout = connect_timeout
        self._interval = interval
        self._wake = asyncio.Event()
        self.loaded = asyncio.Event()
        self.functions = 0

    def poke(self) -> None:
        """Reload soon (DDL was seen: a function may have been created or replaced)."""
        self._wake.set()

    async def load_once(self) -> bool:
        """Read pg_proc from the primary and install the lookup; False if it could not."""
        server = self._primary()
        if server is None:
            return False
        conn: ServerConnection | None = None
        try:
            conn = await connect_server(
                server,
                user=self._user,
                password=self._password,
                database=self._database,
                connect_timeout=self._connect_timeout,
                max_length=64 * 1024 * 1024,
                parameters={"application_name": "dbbalancer-catalog"},
            )
            messages = await conn.simple_query(VOLATILITY_QUERY)
        except Exception as exc:
            log.warning("cannot read function volatility from %s: %s", server.name, exc)
            return False
        finally:
            if conn is not None:
                conn.write(codec.Terminate().encode())
                conn.close()
        rows = []
        for msg in messages:
            if isinstance(msg, codec.DataRow) and len(msg.values) == 3:
                schema, name, volatility = (v.decode() if v else "" for v in msg.values)
                rows.append((schema.lower(), name.lower(), volatility))
        table = build_lookup(rows)
        self._classifier.set_volatility(table.get)
        self.functions = len(rows)
        self.loaded.set()
        log.debug("learnt the volatility of %d functions from %s", len(rows), server.name)
        return True

    async def run(self) -> None:
        """Load now, then on every interval or poke (cancel to stop)."""
        while True:
            ok = await self.load_once()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval if ok else min(self._interval, 1.0)):
                    await self._wake.wait()
            # A burst of DDL (a migration) causes one reload, not one per statement.
            await asyncio.sleep(0.2)
