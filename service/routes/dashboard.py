"""`/dashboard`: the operator's page (plain HTML, CSS and one script from `service/dashboard/`).

The page calls the REST API and `/ws/predictions` of the same origin; nothing is fetched from
anywhere else (its Content-Security-Policy says so to the browser). `GET /` redirects to it:
the original service answered nothing at `/`, so no client depends on it. The HTML and static
routes stay out of the OpenAPI document; `GET /dashboard/config.json`, what the page needs to
know of the settings, is documented.
"""

from __future__ import annotations

import time
from functools import cache
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import Field

from pipelines.settings import MODEL_TYPES
from service.errors import ApiError
from service.schemas import Schema, errors

router = APIRouter(tags=["dashboard"])

# How often the page reads the queue and the feed (the predictions come on the WebSocket).
REFRESH_INTERVAL_MS = 5_000
# The files under service/dashboard/static/ and their media types: nothing else is served.
STATIC_FILES = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
_PACKAGE = "service.dashboard"


@cache
def _read(name: str) -> bytes:
    return resources.files(_PACKAGE).joinpath(name).read_bytes()


def _policy(request: Request) -> str:
    # The page's own script and style only; its fetches and WebSocket go to this host.
    host = request.headers.get("host", "")
    sockets = f" ws://{host} wss://{host}" if host else ""
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src 'self'{sockets}; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


def _headers(request: Request) -> dict[str, str]:
    return {
        "Content-Security-Policy": _policy(request),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }


@router.get("/", include_in_schema=False)
async def root() -> RedirectResponse:
    """The dashboard is the service's front page."""
    return RedirectResponse("/dashboard", status_code=307)


@router.get("/dashboard", include_in_schema=False)
async def dashboard(request: Request) -> Response:
    """The page."""
    return Response(
        _read("index.html"), media_type="text/html; charset=utf-8", headers=_headers(request)
    )


@router.get("/dashboard/static/{name}", include_in_schema=False)
async def static(request: Request, name: str) -> Response:
    """The page's script and style sheet."""
    media = STATIC_FILES.get(name)
    if media is None:
        raise ApiError(404, f"no dashboard file {name!r}: there are {', '.join(STATIC_FILES)}")
    return Response(_read(f"static/{name}"), media_type=media, headers=_headers(request))


class DashboardConfig(Schema):
    """What the dashboard needs to know of the service's settings."""

    pairs: list[str]
    model_types: list[str] = Field(description="Every model type a training may ask for.")
    enabled_models: list[str] = Field(description="The model types the service serves.")
    api_key_required: bool = Field(description="State-changing routes need `X-API-Key`.")
    mlflow_ui_url: str = Field(description="Base URL of the MLflow UI (ML_MLFLOW_UI_URL).")
    refresh_interval_ms: int = Field(description="How often the page reads queue and feed.")
    timestamp: int


@router.get("/dashboard/config.json", response_model=DashboardConfig, responses=errors())
async def config(request: Request) -> dict[str, Any]:
    """The dashboard's settings: pairs, model types, whether a key is needed, the MLflow UI."""
    settings = request.app.state.settings
    return {
        "pairs": list(settings.pairs),
        "modelTypes": list(MODEL_TYPES),
        "enabledModels": list(settings.enabled_models),
        "apiKeyRequired": bool(settings.api_key),
        "mlflowUiUrl": settings.mlflow_ui_url,
        "refreshIntervalMs": REFRESH_INTERVAL_MS,
        "timestamp": int(time.time() * 1000),
    }
