"""`ML_API_KEY`: when set, every state-changing endpoint requires it in `X-API-Key`."""

from __future__ import annotations

import hmac

from fastapi import Request

from service.errors import ApiError


def require_api_key(request: Request) -> None:
    """Dependency for state-changing routes; a no-op when no key is configured."""
    expected = request.app.state.settings.api_key
    if not expected:
        return
    given = request.headers.get("x-api-key", "")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise ApiError(
            401,
            "missing or wrong X-API-Key header: this endpoint changes state and ML_API_KEY is set",
        )
