"""A base asyncio Protocol that hands complete frames to a coroutine during set-up phases.

Login and internal queries are sequential conversations and read best as coroutines; the hot path
(forwarding) must not pay for a coroutine per message. Subclasses therefore switch between
"conversation" mode, where `data_received` queues frames for `next_frame()`, and a forwarding mode
they implement themselves.
"""

from __future__ import annotations

import asyncio
import collections
from typing import cast

from dbbalancer.postgres.codec import Frame, MessageReader, ProtocolError


class ConnectionClosed(Exception):
    """The peer closed the connection while a frame was awaited."""


class FramedProtocol(asyncio.Protocol):
    """Transport bookkeeping, flow control hooks and an awaitable frame queue."""

    def __init__(self, max_length: int) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = MessageReader(max_length)
        self._frames: collections.deque[Frame] = collections.deque()
        self._frame_waiter: asyncio.Future[None] | None = None
        self._failure: BaseException | None = None
        self.closed = False
        self._closed_waiter: asyncio.Future[None] | None = None
        self._reading_paused = False

    # -- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self._closed_waiter = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._failure is None:
            self._failure = ConnectionClosed("connection closed by peer")
        self._wake()
        if self._closed_waiter is not None and not self._closed_waiter.done():
            self._closed_waiter.set_result(None)

    # -- conversation mode ----------------------------------------------------------------------

    def queue_data(self, data: bytes | bytearray | memoryview) -> None:
        """Frame `data` and queue the frames for `next_frame()`; a framing error is kept."""
        try:
            self.reader.feed(data)
            self._frames.extend(self.reader)
        except ProtocolError as exc:
            self._failure = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._frame_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next_frame(self) -> Frame:
        """Wait for the next complete frame; raises ProtocolError or ConnectionClosed."""
        while not self._frames:
            if self._failure is not None:
                raise self._failure
            self._frame_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._frame_waiter
            finally:
                self._frame_waiter = None
        return self._frames.popleft()

    def take_queued(self) -> list[Frame]:
        """Remove and return frames queued but not yet consumed (when switching modes)."""
        frames = list(self._frames)
        self._frames.clear()
        return frames

    async def wait_closed(self) -> None:
        """Wait until the connection is lost."""
        if self._closed_waiter is not None:
            await asyncio.shield(self._closed_waiter)

    def pause_reading(self) -> None:
        """Stop reading from the peer (flow control: the other side is behind)."""
        if not self._reading_paused and self.transport is not None:
            if not self.transport.is_closing():
                self.transport.pause_reading()
            self._reading_paused = True

    def resume_reading(self) -> None:
        """Read from the peer again."""
        if self._reading_paused and self.transport is not None:
            if not self.transport.is_closing():
                self.transport.resume_reading()
            self._reading_paused = False

    def write(self, data: bytes) -> None:
        """Write unless the transport is closing."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def abort(self) -> None:
        """Close at once, dropping unsent data."""
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        """Close after flushing what was written."""
        if self.transport is not None:
            self.transport.close()
