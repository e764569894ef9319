"""Dependencies of the routes, as `Annotated` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from pipelines.pairs import MalformedNameError, check_model_type, check_pair
from service.errors import ApiError
from service.security import require_api_key
from service.state import ServiceState


def get_state(request: Request) -> ServiceState:
    state: ServiceState | None = getattr(request.app.state, "service", None)
    if state is None:
        raise ApiError(503, "the service is starting; try again in a moment")
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]
ApiKeyDep = Depends(require_api_key)


def valid_pair(state: ServiceState, pair: str) -> str:
    """A configured pair: malformed -> 422, not configured -> 404 (both name what is allowed)."""
    try:
        return check_pair(pair, state.settings.pairs)
    except MalformedNameError as exc:
        raise ApiError(422, str(exc)) from exc


def valid_model_type(state: ServiceState, model: str | None) -> str:
    """`?model=`: one of the model types; the first enabled one when absent."""
    if model is None:
        return state.settings.enabled_models[0]
    try:
        return check_model_type(model)
    except ValueError as exc:
        raise ApiError(422, str(exc)) from exc
