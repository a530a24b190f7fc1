"""Which server response belongs to which request, so the proxy can add and remove messages.

In transaction pooling the proxy sends messages of its own to a server (a Parse for a statement the
client prepared on another connection, a SET that brings the connection to the client's state) and
answers some client messages itself (a Parse the server already has, a Close of a statement it
keeps cached). The client must still see exactly the responses PostgreSQL would have sent, in
order. `ResponseTracker` keeps one token per request awaiting a response, in the order sent, and
decides for each server message whether the client sees it, following the protocol's rules
(section "Extended Query"): each request ends with a known message, an ErrorResponse in extended
mode makes the server skip everything up to the next Sync, and ReadyForQuery ends a Sync or a
simple Query. Sans-IO: frames in, bytes to forward out.
"""

from __future__ import annotations

import collections
import enum
from dataclasses import dataclass

from dbbalancer.postgres.codec import Frame


class Request(enum.Enum):
    """A request that the server will answer."""

    PARSE = "parse"
    BIND = "bind"
    DESCRIBE_STATEMENT = "describe statement"
    DESCRIBE_PORTAL = "describe portal"
    EXECUTE = "execute"
    CLOSE = "close"
    SYNC = "sync"
    QUERY = "query"  # a simple Query or a FunctionCall: answered up to ReadyForQuery


# The message that completes each request (ErrorResponse completes any of them).
_FINAL: dict[Request, frozenset[bytes]] = {
    Request.PARSE: frozenset((b"1",)),
    Request.BIND: frozenset((b"2",)),
    Request.DESCRIBE_STATEMENT: frozenset((b"T", b"n")),
    Request.DESCRIBE_PORTAL: frozenset((b"T", b"n")),
    Request.EXECUTE: frozenset((b"C", b"I", b"s")),
    Request.CLOSE: frozenset((b"3",)),
    Request.SYNC: frozenset((b"Z",)),
    Request.QUERY: frozenset((b"Z",)),
}

# Messages the server may send at any time; they go to whoever holds the connection.
_ASYNC = frozenset((b"N", b"A", b"S"))


@dataclass(slots=True)
class _Token:
    request: Request | None  # None: a synthetic response
    visible: bool
    synthetic: bytes | None = None
    # PARSE, CLOSE: the server-side statement name, to correct the record if it does not run
    tag: str | None = None
    capture: list[bytes] | None = None  # hidden QUERY: its DataRows are kept here

    @property
    def plain(self) -> bool:
        """A client request whose responses the client sees unchanged."""
        return self.visible and self.synthetic is None and self.capture is None


_ENDS_WITH_READY = (Request.SYNC, Request.QUERY)
# Tokens are never changed once made: the plain one of each request is shared.
_PLAIN_TOKENS = {request: _Token(request, True) for request in Request}


class ResponseTracker:
    """Tokens for the requests in flight on one server connection, oldest first."""

    __slots__ = ("_special", "_tokens", "failed_closes", "failed_parses", "ready_status")

    def __init__(self) -> None:
        self._tokens: collections.deque[_Token] = collections.deque()
        self._special = 0  # tokens in `_tokens` that are not plain
        # Server-side statements (the `tag` of a PARSE or CLOSE) whose Parse did not run, or
        # whose Close did not: the statement is missing, or still there, against the plan.
        self.failed_parses: list[str] = []
        self.failed_closes: list[str] = []
        self.ready_status: bytes | None = None

    def __len__(self) -> int:
        return len(self._tokens)

    @property
    def idle(self) -> bool:
        """Nothing is awaiting a response."""
        return not self._tokens

    @property
    def plain(self) -> bool:
        """Requests are in flight and all are the client's own, answered to it unchanged: the
        server's output may then be forwarded as it comes (see `finish_plain`)."""
        return self._special == 0 and bool(self._tokens)

    def describe(self) -> str:
        """The requests in flight, oldest first (diagnostics: `Engine.describe`)."""
        return " ".join(
            ("" if t.visible else "~") + (t.request.value if t.request else "synthetic")
            for t in self._tokens
        )

    def awaiting_ready(self) -> bool:
        """True if the client is owed a ReadyForQuery (it sent a Sync or a simple Query)."""
        return any(t.visible and t.request in (Request.SYNC, Request.QUERY) for t in self._tokens)

    def clear(self) -> None:
        """Forget everything (the connection is being dropped)."""
        self._tokens.clear()
        self._special = 0

    def _add(self, token: _Token) -> None:
        self._tokens.append(token)
        if not token.plain:
            self._special += 1

    def _pop(self) -> _Token:
        token = self._tokens.popleft()
        if not token.plain:
            self._special -= 1
        return token

    def finish_plain(self, status: bytes) -> None:
        """The server answered, in one piece and without an error, every request up to the
        oldest Sync or Query, ending with a ReadyForQuery of transaction status `status`.

        The caller forwarded those bytes unchanged, which is right only while `plain` holds, and
        checked that they hold no ErrorResponse and no asynchronous message other than notices:
        then each request's responses end with its final message and the tokens up to that Sync
        or Query are simply done, as `on_frame` would have found message by message.
        """
        tokens = self._tokens
        while tokens:
            if tokens.popleft().request in _ENDS_WITH_READY:
                break
        self.ready_status = status

    def expect(
        self,
        request: Request,
        *,
        visible: bool = True,
        tag: str | None = None,
        capture: list[bytes] | None = None,
    ) -> None:
        """A request was sent; `visible=False` hides its responses from the client, and
        `capture` collects the DataRow messages of a hidden query."""
        if visible and tag is None and capture is None:
            self._tokens.append(_PLAIN_TOKENS[request])  # plain: no count to keep
        else:
            self._add(_Token(request, visible, tag=tag, capture=capture))

    def synthesize(self, data: bytes, out: list[bytes]) -> None:
        """The proxy answers a request itself: `data` reaches the client in its turn."""
        if not self._tokens:
            out.append(data)
        else:
            self._add(_Token(None, True, synthetic=data))

    def on_frame(self, frame: Frame, out: list[bytes]) -> bool:
        """Handle one server message; append what the client sees to `out`.

        Returns True when the message was a ReadyForQuery (its status is in `ready_status`).
        """
        kind = frame.type
        tokens = self._tokens
        if not tokens:
            # Nothing requested: asynchronous traffic (NOTICE, NOTIFY, ParameterStatus).
            out.append(frame.data)
            return kind == b"Z"
        head = tokens[0]
        if kind in _ASYNC:
            if head.visible or kind == b"A":
                out.append(frame.data)
            return False
        if kind == b"E":
            # Errors always reach the client: even when the failed request was the proxy's own,
            # the client's next request fails with it and must learn why.
            out.append(frame.data)
            if head.request is Request.QUERY:
                return False
            # Extended protocol: the failed request and every message up to the next Sync did
            # not run (the server skips them).
            while tokens and tokens[0].request is not Request.SYNC:
                token = self._pop()
                if token.tag is not None:
                    if token.request is Request.PARSE:
                        self.failed_parses.append(token.tag)
                    elif token.request is Request.CLOSE:
                        self.failed_closes.append(token.tag)
            return False
        if head.visible:
            out.append(frame.data)
        elif kind == b"D" and head.capture is not None:
            head.capture.append(frame.data)
        if kind == b"Z":
            self.ready_status = frame.data[5:6]
            self._pop()
            self._flush_synthetic(out)
            return True
        if kind in _FINAL[head.request]:  # type: ignore[index]
            self._pop()
            self._flush_synthetic(out)
        return False

    def _flush_synthetic(self, out: list[bytes]) -> None:
        tokens = self._tokens
        while tokens and tokens[0].synthetic is not None:
            out.append(self._pop().synthetic)  # type: ignore[arg-type]
