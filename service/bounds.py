"""What one client may hold of `tbml serve`: a connection, time to send a request, header bytes.

uvicorn bounds none of these by itself: it arms no timer before a connection's first response, so
a client that sends half its headers keeps its socket for ever; httptools buffers a header of any
length; and its `limit_concurrency` answers 503 to every request once reached, `/livez` included.
`BoundedProtocol` is uvicorn's httptools protocol with one deadline per connection and a guard
shared by the server's connections:

- request headers must arrive within ML_HEADER_TIMEOUT_S (else 408 and close), a request body
  within ML_BODY_TIMEOUT_S of its headers, the next request within ML_KEEPALIVE_TIMEOUT_S;
  headers over MAX_HEADER_BYTES answer 431;
- at most ML_MAX_CONNECTIONS connections (HTTP and WebSocket) are open. One more closes the
  oldest connection still waiting for a request (idle or half-sent) and takes its place; when
  every connection is busy, up to PROBE_RESERVE more are answered `/livez` only (anything else:
  503), and beyond them a connection is closed at once. The limit is lowered to fit the
  process's file descriptors (`connection_limit`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

if TYPE_CHECKING:
    from pipelines.settings import Settings

logger = logging.getLogger(__name__)

# Answered on a connection over the limit, so that a liveness probe tells "busy" from "dead".
LIVENESS_PATH = "/livez"
# Connections over ML_MAX_CONNECTIONS that may still ask for LIVENESS_PATH, and how long they
# have to send their request (a probe sends it at once).
PROBE_RESERVE = 8
PROBE_TIMEOUT_S = 1.0
# Request line and headers of one request at most (h11's default is 16 KiB, nginx's 32 KiB).
MAX_HEADER_BYTES = 64 * 1024
# File descriptors the process needs besides its client sockets: SQLite files, the MLflow
# store, model files, pipes, the event loop, the listening socket.
FD_HEADROOM = 64
# The limit's warning is logged at most this often.
WARN_EVERY_S = 60.0

Slot = Literal["regular", "probe"]
Phase = Literal["headers", "body", "done", "idle", "upgraded"]


@dataclass(frozen=True)
class Bounds:
    """The bounds one server applies (`Bounds.from_settings`)."""

    max_connections: int
    header_timeout_s: float
    body_timeout_s: float
    keepalive_timeout_s: int
    ws_max_frame_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings, *, fd_limit: int | None) -> Bounds:
        return cls(
            max_connections=connection_limit(settings.max_connections, fd_limit),
            header_timeout_s=settings.header_timeout_s,
            body_timeout_s=settings.body_timeout_s,
            keepalive_timeout_s=settings.keepalive_timeout_s,
            ws_max_frame_bytes=settings.ws_max_frame_bytes,
        )


def connection_limit(configured: int, fd_limit: int | None) -> int:
    """ML_MAX_CONNECTIONS, lowered so that the connections, the probe reserve and FD_HEADROOM fit
    under `fd_limit` (the soft RLIMIT_NOFILE; None: unlimited)."""
    if fd_limit is None:
        return configured
    return max(1, min(configured, fd_limit - FD_HEADROOM - PROBE_RESERVE))


def raise_fd_limit(connections: int) -> int | None:
    """Raise the soft RLIMIT_NOFILE towards what `connections` need, as far as the hard limit
    allows; return the soft limit then (None: unlimited)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = connections + PROBE_RESERVE + FD_HEADROOM
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as error:
            logger.warning("could not raise the open-file limit to %d: %s", target, error)
    return None if soft == resource.RLIM_INFINITY else soft


def admission(
    *, regular: int, limit: int, waiting: int, oldest_waiting_is_probe: bool, probes: int
) -> tuple[Slot | None, bool]:
    """The slot a new connection gets (None: closed at once) and whether the oldest connection
    waiting for a request is closed to make room.

    `regular` counts the open connections outside the probe reserve, the new one included.
    """
    if regular <= limit:
        return "regular", False
    if waiting:
        return ("probe" if oldest_waiting_is_probe else "regular"), True
    if probes < PROBE_RESERVE:
        return "probe", False
    return None, False


class ConnectionGuard:
    """One server's connections as the bounds see them: who waits for a request (oldest first),
    who holds a probe slot, who is being closed."""

    def __init__(self, bounds: Bounds) -> None:
        self.bounds = bounds
        self.waiting: OrderedDict[BoundedProtocol, None] = OrderedDict()
        self.probes: set[BoundedProtocol] = set()
        self.closing: set[BoundedProtocol] = set()
        self._warned_at = -WARN_EVERY_S

    def admit(self, newcomer: BoundedProtocol, open_connections: int) -> Slot | None:
        """Admit `newcomer` (already among the `open_connections`), closing the oldest waiting
        connection when that makes room."""
        oldest = next(iter(self.waiting), None)
        slot, evict = admission(
            regular=open_connections - len(self.closing) - len(self.probes),
            limit=self.bounds.max_connections,
            waiting=len(self.waiting),
            oldest_waiting_is_probe=oldest in self.probes,
            probes=len(self.probes),
        )
        if evict and oldest is not None:
            self.close(oldest)
        if slot is None:
            self.close(newcomer)
        elif slot == "probe":
            self.probes.add(newcomer)
        if slot != "regular" or evict:
            self._warn(evicted=evict)
        return slot

    def wait(self, protocol: BoundedProtocol) -> None:
        """`protocol` waits for a request: the newest that may be closed to make room."""
        self.waiting[protocol] = None
        self.waiting.move_to_end(protocol)

    def busy(self, protocol: BoundedProtocol) -> None:
        self.waiting.pop(protocol, None)

    def close(self, protocol: BoundedProtocol) -> None:
        self.forget(protocol)
        self.closing.add(protocol)
        protocol.transport.close()

    def forget(self, protocol: BoundedProtocol) -> None:
        self.waiting.pop(protocol, None)
        self.probes.discard(protocol)
        self.closing.discard(protocol)

    def _warn(self, *, evicted: bool) -> None:
        now = time.monotonic()
        if now - self._warned_at < WARN_EVERY_S:
            return
        self._warned_at = now
        logger.warning(
            "%d connections open (ML_MAX_CONNECTIONS): %s",
            self.bounds.max_connections,
            "closing the oldest idle or half-sent one for each new one"
            if evicted
            else f"every one is busy; new ones get {LIVENESS_PATH} only, other requests 503",
        )


def _error(status: int, reason: str, message: str, *extra: tuple[bytes, bytes]) -> bytes:
    """A whole HTTP/1.1 response with the service's JSON error body; the connection closes."""
    body = json.dumps({"error": message, "status": status}).encode()
    head = [
        f"HTTP/1.1 {status} {reason}".encode(),
        b"content-type: application/json",
        b"content-length: " + str(len(body)).encode(),
        b"connection: close",
        *(name + b": " + value for name, value in extra),
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def _busy_message(limit: int) -> str:
    return (
        f"{limit} connections are open (ML_MAX_CONNECTIONS): only {LIVENESS_PATH} is answered "
        "until one closes; retry shortly"
    )


def probe_only(app: Any, limit: int) -> Any:
    """`app` for LIVENESS_PATH, then the connection closes; 503 for anything else."""

    async def guarded(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == LIVENESS_PATH:

            async def send_then_close(message: Any) -> None:
                if message["type"] == "http.response.start":
                    headers = [*message.get("headers", ()), (b"connection", b"close")]
                    message = {**message, "headers": headers}
                await send(message)

            await app(scope, receive, send_then_close)
            return
        body = json.dumps({"error": _busy_message(limit), "status": 503}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", b"1"),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return guarded


class BoundedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline per connection and the server's guard."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        if not isinstance(config, BoundedConfig):
            raise TypeError("BoundedProtocol serves a BoundedConfig only")
        self.guard = config.guard
        self.bounds = config.guard.bounds
        self.phase: Phase = "headers"
        self.header_bytes = 0
        self.deadline: asyncio.TimerHandle | None = None
        self.probe = False

    # --- the connection ---------------------------------------------------------------------

    def connection_made(  # type: ignore[override]
        self, transport: asyncio.Transport
    ) -> None:
        super().connection_made(transport)
        slot = self.guard.admit(self, len(self.connections))
        if slot is None:
            self.phase = "done"
            return
        if slot == "probe":
            self.probe = True
            self.app = probe_only(self.app, self.bounds.max_connections)
        self._expect("headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        self.guard.forget(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.phase == "headers" and not self.transport.is_closing():
            # Still no whole request line and headers after this chunk: what httptools holds.
            self.header_bytes += len(data)
            if self.header_bytes > MAX_HEADER_BYTES:
                self._answer_and_close(
                    431,
                    "Request Header Fields Too Large",
                    f"request line and headers over {MAX_HEADER_BYTES} bytes",
                )

    def handle_websocket_upgrade(self) -> None:
        self._cancel_deadline()
        if self.probe:
            self._answer_and_close(
                503, "Service Unavailable", _busy_message(self.bounds.max_connections)
            )
            return
        self.phase = "upgraded"
        self.guard.forget(self)
        super().handle_websocket_upgrade()

    # --- httptools' callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.phase != "headers":
            self._expect("headers")

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._expect("body")

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self.phase == "upgraded":
            return
        if self.cycle is not None and self.cycle.response_complete and not self.pipeline:
            self._expect("idle")
        else:
            self._expect("done")

    def on_response_complete(self) -> None:
        super().on_response_complete()
        answered = self.cycle is None or self.cycle.response_complete
        if self.transport.is_closing() or self.pipeline or not answered:
            return  # closing, or the next pipelined request is under way
        if self.phase == "done":
            self._expect("idle")
        elif self.phase == "headers":
            self.guard.wait(self)  # a next request half-sent meanwhile, on its own deadline

    # --- deadlines ----------------------------------------------------------------------------

    def _expect(self, phase: Phase) -> None:
        """Enter `phase` and arm its deadline. A connection that waits for a request, with no
        response under way, is one that may be closed to make room."""
        self.phase = phase
        self._cancel_deadline()
        answered = self.cycle is None or self.cycle.response_complete
        if phase == "idle" or (phase == "headers" and answered):
            self.guard.wait(self)
        else:
            self.guard.busy(self)
        if phase == "headers":
            self.header_bytes = 0
            timeout = PROBE_TIMEOUT_S if self.probe else self.bounds.header_timeout_s
        elif phase == "body":
            timeout = self.bounds.body_timeout_s
        elif phase == "idle":
            timeout = float(self.bounds.keepalive_timeout_s)
        else:
            return
        self.deadline = self.loop.call_later(timeout, self._deadline_passed)

    def _cancel_deadline(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _deadline_passed(self) -> None:
        self.deadline = None
        if self.transport.is_closing():
            return
        logger.debug("closing %s: no whole %s in time", self.client, self.phase)
        if self.phase == "headers" and (self.cycle is None or self.cycle.response_complete):
            self._answer_and_close(
                408, "Request Timeout", "the request headers did not arrive in time"
            )
        else:
            # The body's reader is the app, which sees the disconnect; idle: nothing to say.
            self.guard.close(self)

    def _answer_and_close(self, status: int, reason: str, message: str) -> None:
        self._cancel_deadline()
        self.phase = "done"
        self.transport.write(_error(status, reason, message, (b"retry-after", b"1")))
        self.guard.close(self)


class BoundedConfig(uvicorn.Config):
    """uvicorn's Config serving `BoundedProtocol`, with the guard its connections share."""

    def __init__(self, app: Any, *, bounds: Bounds, **kwargs: Any) -> None:
        super().__init__(
            app,
            http=BoundedProtocol,
            ws_max_size=bounds.ws_max_frame_bytes,
            timeout_keep_alive=bounds.keepalive_timeout_s,
            **kwargs,
        )
        self.guard = ConnectionGuard(bounds)


def server_config(app: Any, settings: Settings, **kwargs: Any) -> BoundedConfig:
    """uvicorn's Config for `app` on `settings`' address with the settings' bounds; `kwargs`
    go to uvicorn (log_level, access_log, ...)."""
    fd_limit = raise_fd_limit(settings.max_connections)
    bounds = Bounds.from_settings(settings, fd_limit=fd_limit)
    if bounds.max_connections < settings.max_connections:
        logger.warning(
            "ML_MAX_CONNECTIONS=%d does not fit the open-file limit (%s, ulimit -n): at most %d "
            "connections are served (raise ulimit -n to serve more)",
            settings.max_connections,
            fd_limit,
            bounds.max_connections,
        )
    return BoundedConfig(app, bounds=bounds, host=settings.host, port=settings.port, **kwargs)
