"""The scheduled-retraining setting: `BTC=24,ETH=12`, JSON, or off."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pipelines.settings import Settings


def test_retraining_is_off_by_default() -> None:
    assert Settings(_env_file=None).retrain_interval_hours == {}


def test_pairs_and_hours_parse_from_text_and_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ML_RETRAIN_INTERVAL_HOURS", "btc=24, ETH=0.5")
    assert Settings(_env_file=None).retrain_interval_hours == {"BTC": 24.0, "ETH": 0.5}
    monkeypatch.setenv("ML_RETRAIN_INTERVAL_HOURS", '{"XMR": 12}')
    assert Settings(_env_file=None).retrain_interval_hours == {"XMR": 12.0}


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("DOGE=1", "names pair 'DOGE': allowed pairs are BTC, ETH, XMR, RVN"),
        ("BTC=0", "expected hours > 0"),
        ("BTC=daily", "expected a number of hours"),
        ("BTC", "is not PAIR=HOURS"),
    ],
)
def test_bad_retraining_setting_is_refused(
    monkeypatch: pytest.MonkeyPatch, value: str, words: str
) -> None:
    monkeypatch.setenv("ML_RETRAIN_INTERVAL_HOURS", value)
    with pytest.raises(ValidationError, match=words):
        Settings(_env_file=None)
