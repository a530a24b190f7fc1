"""The composition root: config in, listeners and pools up, one TaskGroup, signals, drain.

`App.run()` owns every task the balancer starts (client sessions, resets, the janitor) in a single
asyncio.TaskGroup, so nothing outlives it. SIGTERM/SIGINT stop accepting and close clients as they
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
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from dbbalancer.config import Config, ConfigError, load_config
from dbbalancer.postgres.service import PostgresService

log = logging.getLogger(__name__)

JANITOR_INTERVAL = 1.0


class App:
    """One balancer instance."""

    def __init__(self, config: Config, *, config_path: Path | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self._tg: asyncio.TaskGroup | None = None
        self._stop: asyncio.Event | None = None
        self.pg: PostgresService | None = None
        self.pg_address: tuple[str, int] | None = None
        self.started = threading.Event()
        self._daemons: list[asyncio.Task[None]] = []

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
                self.pg = PostgresService(self.config, self.spawn)
                await self.pg.start_monitors()
                listen = self.config.listen.postgres
                if listen is not None and self.pg.clusters():
                    server = await self.pg.start(listen.host, listen.port)
                    sockname = server.sockets[0].getsockname()
                    self.pg_address = (sockname[0], sockname[1])
                    log.info("listening for PostgreSQL clients on %s:%d", *self.pg_address)
                janitor = tg.create_task(self._janitor())
                self.started.set()
                if on_ready is not None:
                    on_ready(self)
                await self._stop.wait()
                log.info("shutting down: no new connections; closing clients as they go idle")
                await self._drain()
                janitor.cancel()
                await self.pg.close_probes()
                self._cancel_daemons()
        finally:
            for sig in handlers:
                loop.remove_signal_handler(sig)
            self._tg = None

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
            if self.pg is not None:
                try:
                    await self.pg.maintain()
                except Exception:
                    log.exception("janitor tick failed")

    async def _drain(self) -> None:
        pg = self.pg
        if pg is None:
            return
        if pg.server is not None:
            pg.server.close()
        deadline = time.monotonic() + self.config.general.shutdown_timeout
        while pg.sessions and time.monotonic() < deadline:
            pg.close_idle_sessions()
            if not pg.sessions:
                break
            await asyncio.sleep(0.05)
        pg.close_all_sessions()
        pg.close()
