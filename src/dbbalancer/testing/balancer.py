"""Run a balancer on its own event loop in a background thread (demo, tests, benchmarks)."""

from __future__ import annotations

import asyncio
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import uvloop

from dbbalancer.app import App
from dbbalancer.config import Config
from dbbalancer.testing.servers import StartStopContext

T = TypeVar("T")


class BalancerThread(StartStopContext):
    """An App serving in a daemon thread; `stop()` drains it and joins the thread."""

    def __init__(self, config: Config, *, config_path: Path | None = None) -> None:
        self.app = App(config, config_path=config_path)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self, timeout: float = 15.0) -> BalancerThread:
        """Start serving; raise if the balancer is not listening within `timeout`."""
        loop_ready = threading.Event()

        def serve() -> None:
            try:
                with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                    self._loop = runner.get_loop()
                    loop_ready.set()
                    runner.run(self.app.run())
            except BaseException as exc:
                self._error = exc
                loop_ready.set()
                self.app.started.set()

        self._thread = threading.Thread(target=serve, name="dbbalancer", daemon=True)
        self._thread.start()
        loop_ready.wait(timeout)
        if not self.app.started.wait(timeout) or self._error is not None:
            raise RuntimeError(f"the balancer did not start: {self._error!r}")
        return self

    @property
    def pg_address(self) -> tuple[str, int]:
        """Where the PostgreSQL listener is bound."""
        if self.app.pg_address is None:
            raise RuntimeError("the balancer has no PostgreSQL listener")
        return self.app.pg_address

    def call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """Run `fn` on the balancer's loop thread and return its result (for inspection)."""
        assert self._loop is not None
        done = threading.Event()
        box: list[T] = []

        def run() -> None:
            box.append(fn())
            done.set()

        self._loop.call_soon_threadsafe(run)
        if not done.wait(timeout):
            raise TimeoutError("the balancer's loop did not answer")
        return box[0]

    def describe(self) -> str:
        """What every client session and pool is doing, and where the loop thread stands: the
        report a test prints when a client is stuck."""
        lines: list[str] = []

        def snapshot() -> list[str]:
            out: list[str] = []
            service = self.app.pg
            if service is None:
                return out
            for session in list(service.sessions):
                engine = session.engine
                out.append(f"{session!r}: " + (engine.describe() if engine else "no engine"))
            for cluster in service.clusters():
                for pool in cluster.runtime.pools():
                    out.append(f"pool {pool.stats()}")
            return out

        try:
            lines.extend(self.call(snapshot, timeout=5.0))
        except TimeoutError:
            lines.append("the balancer's loop did not answer within 5 s (busy or blocked)")
        thread = self._thread
        frame = sys._current_frames().get(thread.ident) if thread and thread.ident else None
        if frame is not None:
            lines.append("balancer thread:")
            lines.extend(line.rstrip() for line in traceback.format_stack(frame)[-12:])
        return "\n".join(lines)

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful stop; idempotent."""
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self.app.request_stop)
            self._thread.join(timeout)
        if self._error is not None:
            raise RuntimeError("the balancer failed") from self._error
