"""`GET /api/features/{pair}`: the newest candle's features, cached per newest candle."""

from __future__ import annotations

from collections.abc import Callable

from pipelines.features.spec import default_spec
from tests.service.conftest import LiveServer, bundled_candles


def test_features_of_the_newest_candle_are_named_by_the_spec_and_cached(
    serve: Callable[..., LiveServer],
) -> None:
    server = serve()
    first = server.client.get("/api/features/BTC").json()
    second = server.client.get("/api/features/BTC").json()

    spec = default_spec()
    assert first["featureCount"] == len(spec.names)
    assert list(first["features"]) == list(spec.names)
    assert first["featureSetVersion"] == spec.version
    assert first["candleTime"] == bundled_candles("BTC").index[-1].value // 1_000_000
    assert all(isinstance(v, float) for v in first["features"].values())
    assert first["cached"] is False
    assert second["cached"] is True
    assert second["features"] == first["features"]
