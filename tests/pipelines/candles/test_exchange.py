"""Opening a ccxt exchange for ingestion: names, spot markets only, URL override."""

from __future__ import annotations

import pytest

from pipelines.candles.exchange import IngestInputError, open_exchange, split_pair


def test_pair_is_split_into_upper_case_base_and_quote() -> None:
    assert split_pair(" btc/usdt ") == ("BTC", "USDT")


@pytest.mark.parametrize("pair", ["BTC", "BTC-USDT", "BTC/USDT/X", "B/USDT", "BTC/US DT", ""])
def test_malformed_pair_is_refused_naming_it(pair: str) -> None:
    with pytest.raises(IngestInputError, match=rf"^malformed pair {pair!r}: expected"):
        split_pair(pair)


def test_api_url_replaces_every_host_and_keeps_the_paths() -> None:
    client = open_exchange("binance", api_url="http://127.0.0.1:9/mirror/")
    try:
        api = client.urls["api"]
        assert api["public"] == "http://127.0.0.1:9/mirror/api/v3"
        assert api["fapiPublic"] == "http://127.0.0.1:9/mirror/fapi/v1"
        assert all(url.startswith("http://127.0.0.1:9/mirror/") for url in api.values())
    finally:
        client.close()


def test_only_spot_markets_are_loaded() -> None:
    client = open_exchange("binance")
    try:
        assert client.options["fetchMarkets"]["types"] == ["spot"]
    finally:
        client.close()


def test_unknown_exchange_lists_the_ccxt_ids() -> None:
    with pytest.raises(IngestInputError) as caught:
        open_exchange("krakn")

    message = str(caught.value)
    assert message.startswith("unknown exchange 'krakn' (did you mean kraken")
    assert "binance, " in message
    assert "okx" in message
