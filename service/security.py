"""The HTTP surface's guards: `ML_API_KEY`, the bind check, Host, Origin and Content-Type.

- `ML_API_KEY`: when set, every state-changing endpoint requires it in `X-API-Key`. The header
  is read through FastAPI's `APIKeyHeader`, so the OpenAPI document names the scheme on those
  routes; the check and its 401 answer are ours (`auto_error=False`), so a missing key and a
  wrong one get the same JSON error, and nothing is asked when no key is set.
- `check_bind`: no serving a non-loopback address without a key (unless
  `ML_ALLOW_UNAUTHENTICATED=true`); `create_app` calls it, so every start passes it.
- `GuardMiddleware`: a `Host` that is not one of the service's names answers 400 (DNS
  rebinding); a state-changing request from a foreign `Origin` answers 403 (a web page driving a
  local install), and one whose body is not JSON 415.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from typing import Annotated, Any

import orjson
from fastapi import Request, Security
from fastapi.security import APIKeyHeader

from pipelines.settings import Settings
from service.errors import ApiError

logger = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"
SCHEME_NAME = "ApiKey"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 - names, not a bind
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})

api_key_header = APIKeyHeader(
    name=API_KEY_HEADER,
    scheme_name=SCHEME_NAME,
    description="The value of ML_API_KEY; required by state-changing endpoints when it is set.",
    auto_error=False,
)


def require_api_key(
    request: Request, given: Annotated[str | None, Security(api_key_header)]
) -> None:
    """Dependency for state-changing routes; a no-op when no key is configured."""
    expected = request.app.state.settings.api_key
    if not expected:
        return
    if not hmac.compare_digest((given or "").encode(), expected.encode()):
        raise ApiError(
            401,
            "missing or wrong X-API-Key header: this endpoint changes state and ML_API_KEY is set",
        )


# --- the bind check ---------------------------------------------------------------------------


class UnsafeBindError(RuntimeError):
    """A non-loopback bind without `ML_API_KEY`."""


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_bind(settings: Settings) -> None:
    """Refuse to serve a non-loopback address with the state-changing routes open."""
    if is_loopback(settings.host) or settings.api_key or settings.allow_unauthenticated:
        if not is_loopback(settings.host) and not settings.api_key:
            logger.warning(
                "serving %s without ML_API_KEY (ML_ALLOW_UNAUTHENTICATED=true): anyone who "
                "reaches it can queue trainings, stop them and delete history",
                settings.host,
            )
        return
    raise UnsafeBindError(
        f"refusing to serve {settings.host}:{settings.port} without ML_API_KEY: anyone who "
        "reaches that address could queue trainings, stop them and delete history. Set a key "
        "(export ML_API_KEY=$(openssl rand -hex 32)) and send it in the X-API-Key header, bind "
        "a loopback address (HOST=127.0.0.1), or set ML_ALLOW_UNAUTHENTICATED=true if you mean "
        "to serve it open."
    )


# --- Host, Origin and Content-Type ------------------------------------------------------------


def _host_name(value: str) -> str:
    """`example.org:3001` -> `example.org`; `[::1]:3001` -> `::1`."""
    text = value.strip().lower()
    if text.startswith("["):
        return text[1 : text.find("]")] if "]" in text else text
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


def _origin_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class Guards:
    """What a request must match, worked out once from the settings."""

    def __init__(self, settings: Settings) -> None:
        bind = settings.host.strip().strip("[]").lower()
        self.any_host = not settings.allowed_hosts and bind in WILDCARD_HOSTS
        names = settings.allowed_hosts or [bind, *LOOPBACK_NAMES]
        self.hosts = frozenset(_host_name(name) if name.startswith("[") else name for name in names)
        own = {bind} | (set(LOOPBACK_NAMES) if is_loopback(bind) or self.any_host else set())
        port = settings.port
        self.origins = frozenset(
            {f"http://{_origin_host(name)}:{port}" for name in own - WILDCARD_HOSTS}
            | set(settings.allowed_origins)
        )

    def host_allowed(self, host: str | None) -> bool:
        if self.any_host:
            return True
        return host is not None and _host_name(host) in self.hosts

    def origin_allowed(self, origin: str, host: str | None) -> bool:
        text = origin.strip().rstrip("/").lower()
        if text in self.origins:
            return True
        # The request's own origin (its Host passed the check above): a page the service
        # serves may post to it.
        own = (host or "").strip().lower()
        return bool(own) and text in {f"http://{own}", f"https://{own}"}

    def describe_hosts(self) -> str:
        return ", ".join(sorted(self.hosts))

    def describe_origins(self, host: str | None) -> str:
        own = {f"http://{host.strip().lower()}"} if host else set()
        return ", ".join(sorted(self.origins | own))


def _json_media(value: str) -> bool:
    media = value.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


async def _refuse(send: Any, status: int, message: str) -> None:
    body = orjson.dumps({"error": message, "status": status})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class GuardMiddleware:
    """Host for every request; Origin and Content-Type for state-changing ones (pure ASGI)."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.guards = Guards(settings)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers: dict[str, str] = {}
        for name, value in scope.get("headers", ()):
            headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
        host = headers.get("host")
        guards = self.guards
        if not guards.host_allowed(host):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await _refuse(
                send,
                400,
                f"Host {host!r} is not one of this service's names: allowed are "
                f"{guards.describe_hosts()} (ML_ALLOWED_HOSTS)",
            )
            return
        if scope["type"] == "websocket":
            # A browser on a foreign page may open a WebSocket here (no CORS protects it):
            # only the service's own origin and ML_ALLOWED_ORIGINS may; clients without an
            # Origin (bots, curl) are not browsers and may.
            origin = headers.get("origin")
            if origin is not None and not guards.origin_allowed(origin, host):
                await send({"type": "websocket.close", "code": 1008})
                return
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            origin = headers.get("origin")
            if origin is not None and not guards.origin_allowed(origin, host):
                await _refuse(
                    send,
                    403,
                    f"Origin {origin!r} may not change state here: allowed origins are "
                    f"{guards.describe_origins(host)} (ML_ALLOWED_ORIGINS)",
                )
                return
            has_body = headers.get("content-length", "0").strip() not in ("", "0") or (
                "transfer-encoding" in headers
            )
            kind = headers.get("content-type")
            if has_body and not _json_media(kind or ""):
                await _refuse(
                    send,
                    415,
                    f"Content-Type {kind!r}: a request body must be JSON (application/json)",
                )
                return
        await self.app(scope, receive, send)


# --- the OpenAPI document ---------------------------------------------------------------------

_GUARD_RESPONSES = {
    "400": "The `Host` header is not one of the service's names (ML_ALLOWED_HOSTS).",
    "403": "The `Origin` header names a foreign origin (ML_ALLOWED_ORIGINS).",
    "413": "Request body too large (ML_MAX_BODY_BYTES).",
    "415": "The request body is not JSON (`Content-Type: application/json`).",
}


def document_guards(schema: dict[str, Any]) -> None:
    """Declare the middleware's answers on every operation they can reach."""
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    for item in schema.get("paths", {}).values():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            codes = ["400"] if method.upper() in SAFE_METHODS else list(_GUARD_RESPONSES)
            for code in codes:
                operation["responses"].setdefault(
                    code, {"description": _GUARD_RESPONSES[code], "content": error}
                )
