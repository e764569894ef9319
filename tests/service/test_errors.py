"""Errors: locations as the client wrote them (`candles[3].high`), and JSON even for a 500."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import text

from pipelines.db import write_session
from service.errors import location
from tests.service.conftest import LiveServer


@pytest.mark.parametrize(
    ("loc", "text"),
    [
        (("body", "candles", 3, "object", "high"), "candles[3].high"),
        (("body", "candles", 3, "row", 4), "candles[3][4]"),
        (("query", "limit"), "limit"),
        (("body",), "body"),
        (("body", "maxAgeHours"), "maxAgeHours"),
    ],
)
def test_location_reads_like_the_json_path(loc: tuple[int | str, ...], text: str) -> None:
    assert location(loc) == text


def test_an_unexpected_failure_is_a_json_500_without_internals(
    serve: Callable[..., LiveServer],
) -> None:
    server = serve()
    with write_session(server.state.settings.database_url) as session:
        session.execute(text("DROP TABLE prediction_history"))

    response = server.client.get("/api/predictions/BTC/history")

    assert response.status_code == 500
    assert response.json() == {
        "error": "internal error (OperationalError); the service log has the details",
        "status": 500,
    }
