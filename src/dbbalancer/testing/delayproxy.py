"""A TCP relay on loopback that makes one server look slow (for tests of latency-aware balancing).

Everything the server sends back is held for `delay` seconds before it is passed on, so every
round trip through the relay (a query, a health probe, a login step) takes at least that much
longer. Bytes are relayed unchanged: the client talks to the server as if directly. Plain
threads, one pair per connection: the relay serves a handful of pool and probe connections.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable

from dbbalancer.testing.ports import LOOPBACK
from dbbalancer.testing.servers import StartStopContext


class DelayProxy(StartStopContext):
    """Listens on 127.0.0.1 (a free port) and relays every connection to `target`."""

    def __init__(self, target: tuple[str, int], delay: float) -> None:
        if delay < 0:
            raise ValueError(f"delay must be >= 0, got {delay!r}")
        self.target = target
        self.delay = delay
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()

    @property
    def port(self) -> int:
        """The port the relay listens on."""
        assert self._listener is not None, "the relay is not started"
        return int(self._listener.getsockname()[1])

    def address(self) -> str:
        """``host:port`` of the relay, the form dbbalancer's configuration uses."""
        return f"{LOOPBACK}:{self.port}"

    def start(self) -> DelayProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((LOOPBACK, 0))
        listener.listen(64)
        self._listener = listener
        self._spawn(self._accept_loop, "delayproxy accept")
        return self

    def stop(self) -> None:
        """Close the listener and every relayed connection; join the threads."""
        self._closed.set()
        with self._lock:
            sockets = [s for s in (self._listener, *self._sockets) if s is not None]
            threads = list(self._threads)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        for thread in threads:
            thread.join(5)

    def _spawn(self, target: Callable[..., None], name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._closed.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets += [client, upstream]
            self._spawn(self._pump, "delayproxy up", client, upstream, False)
            self._spawn(self._pump, "delayproxy down", upstream, client, True)

    def _pump(self, source: socket.socket, sink: socket.socket, delayed: bool) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if delayed and self.delay:
                    time.sleep(self.delay)
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
