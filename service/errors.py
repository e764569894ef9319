"""Errors as JSON with the words a user can act on: `{"error": ..., "status": ...}`."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from pipelines.pairs import InvalidNameError, MalformedNameError

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An error with an HTTP status, raised by routes and turned into JSON."""

    def __init__(self, status_code: int, message: str, **extra: object) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.extra = extra


def no_candles(exc: LookupError, *, pair: str, timeframe: str) -> ApiError:
    """404 for a pair without candles: the files it looked for go to the log, not the client."""
    logger.warning("%s", exc)
    return ApiError(
        404,
        f"no candles for {pair} at {timeframe} in the candle store (`tbml ingest --pair {pair}` "
        "fetches them; the service log names the files it looked for)",
    )


def _body(message: str, status_code: int, **extra: object) -> dict[str, object]:
    return {"error": message, "status": status_code, **extra}


# Tags of tagged unions (service.routes.predictions names its candle forms so): part of
# pydantic's error location, but not of the client's JSON.
UNION_TAGS = frozenset({"object", "row"})


def location(loc: tuple[int | str, ...] | list[int | str]) -> str:
    """`("body", "candles", 3, "object", "high")` -> `candles[3].high`."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part in ("body", "query", "path") and not text:
            continue
        elif part not in UNION_TAGS:
            text += f".{part}" if text else str(part)
    return text or "body"


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        value = err.get("input")
        shown = "" if isinstance(value, dict | list) or value is None else f" (got {_short(value)})"
        parts.append(f"{location(err.get('loc', ()))}: {err.get('msg', 'invalid')}{shown}")
    return "; ".join(parts) or "invalid request"


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> str:
    """Every method some route of the app answers on this path (Starlette's 405 names only the
    first matching route's, and included routers nest theirs)."""
    routes = request.app.router.routes
    allowed = [
        method
        for method in _METHODS
        if any(r.matches({**request.scope, "method": method})[0] is Match.FULL for r in routes)
    ]
    return ", ".join(allowed)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that give every error the same JSON shape."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(_body(exc.message, exc.status_code, **exc.extra), exc.status_code)

    @app.exception_handler(InvalidNameError)
    async def _invalid_name(request: Request, exc: InvalidNameError) -> JSONResponse:
        # Unknown pairs and model types are resources that do not exist here; a value that
        # cannot be a name at all (`../x`) is a malformed request.
        status = 422 if isinstance(exc, MalformedNameError) else 404
        return JSONResponse(_body(str(exc), status), status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(_body(_validation_message(exc), 422), 422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette logs the traceback; the client gets the same JSON shape, no internals.
        message = f"internal error ({type(exc).__name__}); the service log has the details"
        return JSONResponse(_body(message, 500), 500)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 405:
            allowed = allowed_methods(request)
            return JSONResponse(
                _body(f"{request.method} is not allowed here: allowed are {allowed}", 405),
                405,
                headers={"Allow": allowed},
            )
        # `Allow` on 405 (and any other header the exception carries) is part of the answer.
        return JSONResponse(
            _body(str(exc.detail), exc.status_code), exc.status_code, headers=exc.headers
        )
