"""`ML_API_KEY`: when set, every state-changing endpoint requires it in `X-API-Key`.

The header is read through FastAPI's `APIKeyHeader`, so the OpenAPI document names the
scheme on those routes; the check and its 401 answer are ours (`auto_error=False`), so a
missing key and a wrong one get the same JSON error, and nothing is asked when no key is set.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import APIKeyHeader

from service.errors import ApiError

API_KEY_HEADER = "X-API-Key"
SCHEME_NAME = "ApiKey"

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
