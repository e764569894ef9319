"""`ML_RETRAIN_INTERVAL_HOURS`: hours of new data per pair (`BTC=24,ETH=12`, JSON, or one
number for every pair); unnamed pairs get the default of 24 h."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pipelines.settings import DEFAULT_RETRAIN_INTERVAL_HOURS, Settings


def test_every_pair_retrains_every_24_hours_of_new_data_by_default() -> None:
    settings = Settings(_env_file=None)
    assert settings.retrain_interval_hours == {}
    assert DEFAULT_RETRAIN_INTERVAL_HOURS == 24.0
    assert [settings.retrain_interval_for(p) for p in settings.pairs] == [24.0] * 4


def test_pairs_and_hours_parse_from_text_and_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ML_RETRAIN_INTERVAL_HOURS", "btc=24, ETH=0.5")
    settings = Settings(_env_file=None)
    assert settings.retrain_interval_hours == {"BTC": 24.0, "ETH": 0.5}
    assert (settings.retrain_interval_for("eth"), settings.retrain_interval_for("XMR")) == (0.5, 24)
    monkeypatch.setenv("ML_RETRAIN_INTERVAL_HOURS", '{"XMR": 12}')
    assert Settings(_env_file=None).retrain_interval_hours == {"XMR": 12.0}


def test_a_bare_number_applies_to_every_pair(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ML_RETRAIN_INTERVAL_HOURS", "12")
    settings = Settings(_env_file=None)
    assert settings.retrain_interval_hours == {"BTC": 12.0, "ETH": 12.0, "XMR": 12.0, "RVN": 12.0}
    assert settings.retrain_interval_for("RVN") == 12.0


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("DOGE=1", "names pair 'DOGE': allowed pairs are BTC, ETH, XMR, RVN"),
        ("BTC=0", "expected hours > 0"),
        ("0", "expected hours > 0"),
        ("BTC=daily", "expected a number of hours"),
        ("BTC", "'BTC' is not PAIR=HOURS items"),
    ],
)
def test_bad_retraining_setting_is_refused(
    monkeypatch: pytest.MonkeyPatch, value: str, words: str
) -> None:
    monkeypatch.setenv("ML_RETRAIN_INTERVAL_HOURS", value)
    with pytest.raises(ValidationError, match=words):
        Settings(_env_file=None)
