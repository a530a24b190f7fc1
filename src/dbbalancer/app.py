"""The composition root: config in, listeners and pools up, one TaskGroup, signals, drain.

`App.run()` starts one service per protocol the config's clusters use, built by the factory that
`SERVICES` registers for that protocol (see compose.py for what a service does). It owns every
task the balancer starts (client sessions, resets, the janitor) in a single asyncio.TaskGroup, so
nothing outlives it. SIGTERM/SIGINT stop accepting and close clients as they
become idle (at the latest after general.shutdown_timeout); SIGHUP re-reads and validates the
config file and never crashes the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from dbbalancer.compose import ClientLimits, ProtocolService, ServiceFactory, Spawn
from dbbalancer.config import Config, ConfigError, Protocol, load_config

if TYPE_CHECKING:
    from dbbalancer.mysql.service import MySqlService
    from dbbalancer.postgres.service import PostgresService

log = logging.getLogger(__name__)

JANITOR_INTERVAL = 1.0


def _postgres(config: Config, spawn: Spawn, limits: ClientLimits) -> ProtocolService:
    # Imported here so that a protocol's code loads only when a config uses it.
    from dbbalancer.postgres.service import PostgresService

    return PostgresService(config, spawn, limits)


def _mysql(config: Config, spawn: Spawn, limits: ClientLimits) -> ProtocolService:
    from dbbalancer.mysql.service import MySqlService

    return MySqlService(config, spawn, limits)


#: The protocols this version serves, and how to build each one's service.
SERVICES: Mapping[Protocol, ServiceFactory] = {
    Protocol.POSTGRES: _postgres,
    Protocol.MYSQL: _mysql,
}


def unserved_protocols(
    config: Config, services: Mapping[Protocol, ServiceFactory] = SERVICES
) -> dict[Protocol, list[str]]:
    """Clusters whose protocol no registered service serves, by protocol."""
    unserved: dict[Protocol, list[str]] = {}
    for cluster in config.clusters:
        if cluster.protocol not in services:
            unserved.setdefault(cluster.protocol, []).append(cluster.name)
    return unserved


class App:
    """One balancer instance."""

    def __init__(
        self,
        config: Config,
        *,
        config_path: Path | None = None,
        services: Mapping[Protocol, ServiceFactory] = SERVICES,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self._factories = services
        self._tg: asyncio.TaskGroup | None = None
        self._stop: asyncio.Event | None = None
        # One service per protocol the clusters use, and where each one listens.
        self.services: dict[Protocol, ProtocolService] = {}
        self.addresses: dict[Protocol, tuple[str, int]] = {}
        self.started = threading.Event()
        self._daemons: list[asyncio.Task[None]] = []

    @property
    def pg(self) -> PostgresService | None:
        """The PostgreSQL service while running (tests and tools inspect its clusters)."""
        return cast("PostgresService | None", self.services.get(Protocol.POSTGRES))

    @property
    def pg_address(self) -> tuple[str, int] | None:
        """Where the PostgreSQL listener is bound, once it is."""
        return self.addresses.get(Protocol.POSTGRES)

    @property
    def mysql(self) -> MySqlService | None:
        """The MySQL service while running (tests and tools inspect its clusters)."""
        return cast("MySqlService | None", self.services.get(Protocol.MYSQL))

    @property
    def mysql_address(self) -> tuple[str, int] | None:
        """Where the MySQL listener is bound, once it is."""
        return self.addresses.get(Protocol.MYSQL)

    def spawn(self, coro: Coroutine[Any, Any, None], *, daemon: bool = False) -> None:
        """Run `coro` inside the app's TaskGroup (it must handle its own errors).

        A daemon task (a health monitor) runs until shutdown cancels it.
        """
        if self._tg is None:
            coro.close()
            raise RuntimeError("the app is not running")
        task = self._tg.create_task(coro)
        if daemon:
            self._daemons.append(task)

    def request_stop(self) -> None:
        """Begin a graceful shutdown (safe to call from a signal handler)."""
        if self._stop is not None:
            self._stop.set()

    def reload(self) -> None:
        """Re-read and validate the config file; report, never crash (SIGHUP)."""
        if self.config_path is None:
            log.warning("reload requested, but the config did not come from a file")
            return
        try:
            load_config(self.config_path)
        except ConfigError as exc:
            log.error(
                "reload: %s is invalid; keeping the running config:\n%s", self.config_path, exc
            )
        except OSError as exc:
            log.error("reload: cannot read %s: %s", self.config_path, exc)
        else:
            log.info(
                "reload: %s is valid; changes take effect on restart for now", self.config_path
            )

    async def run(self, on_ready: Callable[[App], None] | None = None) -> None:
        """Serve until `request_stop()`."""
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        handlers = self._install_signals(loop)
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                self.services = self._build_services()
                for service in self.services.values():
                    await service.start()
                for protocol, service in self.services.items():
                    listen = self.config.listen.address(protocol)
                    if listen is not None:
                        address = await service.serve(listen.host, listen.port)
                        self.addresses[protocol] = address
                        log.info("listening for %s clients on %s:%d", service.title, *address)
                janitor = tg.create_task(self._janitor())
                self.started.set()
                if on_ready is not None:
                    on_ready(self)
                await self._stop.wait()
                log.info("shutting down: no new connections; closing clients as they go idle")
                await self._drain()
                janitor.cancel()
                for service in self.services.values():
                    await service.stop()
                self._cancel_daemons()
        finally:
            for sig in handlers:
                loop.remove_signal_handler(sig)
            self._tg = None

    def _build_services(self) -> dict[Protocol, ProtocolService]:
        """A service for every protocol some cluster uses; the client limits are shared."""
        unserved = unserved_protocols(self.config, self._factories)
        if unserved:
            names = ", ".join(p.value for p in unserved)
            raise ValueError(f"this version does not serve protocol {names}")
        limits = ClientLimits(self.config.general.max_client_connections)
        protocols = {cluster.protocol for cluster in self.config.clusters}
        return {
            protocol: factory(self.config, self.spawn, limits)
            for protocol, factory in self._factories.items()
            if protocol in protocols
        }

    def _cancel_daemons(self) -> None:
        """Cancel long-running tasks (health monitors) so the TaskGroup can finish."""
        for task in self._daemons:
            task.cancel()
        self._daemons.clear()

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> list[int]:
        if threading.current_thread() is not threading.main_thread():
            return []
        installed: list[int] = []
        for sig, action in (
            (signal.SIGTERM, self.request_stop),
            (signal.SIGINT, self.request_stop),
            (signal.SIGHUP, self.reload),
        ):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, action)
                installed.append(sig)
        return installed

    async def _janitor(self) -> None:
        while True:
            await asyncio.sleep(JANITOR_INTERVAL)
            for service in self.services.values():
                try:
                    await service.maintain()
                except Exception:
                    log.exception("janitor tick failed")

    async def _drain(self) -> None:
        """Stop every listener at once, then let each service close its clients by one deadline."""
        deadline = time.monotonic() + self.config.general.shutdown_timeout
        services = list(self.services.values())
        if len(services) == 1:
            await services[0].drain(deadline)
        else:
            await asyncio.gather(*(service.drain(deadline) for service in services))
