"""Validation of enqueue requests: every refusal names the value and what is allowed."""

from __future__ import annotations

import pytest

from pipelines.queue.errors import QueueValidationError
from pipelines.queue.params import validate_params, validate_priority, validate_target

PAIRS = ["BTC", "ETH", "XMR", "RVN"]


def test_valid_params_are_converted_to_numbers() -> None:
    params = validate_params({"epochs": "5", "dropout": 0, "learning_rate": "0.01", "seed": 7.0})
    assert params == {"epochs": 5, "dropout": 0.0, "learning_rate": 0.01, "seed": 7}
    assert isinstance(params["dropout"], float)
    assert isinstance(params["seed"], int)


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"epochs": 0}, ["epochs", "0", "1 <= value <= 1000"]),
        ({"epochs": 1001}, ["epochs", "1001", "<= 1000"]),
        ({"epochs": 2.5}, ["epochs", "2.5", "an integer"]),
        ({"epochs": "many"}, ["epochs", "'many'", "an integer"]),
        ({"epochs": True}, ["epochs", "True"]),
        ({"dropout": 1.0}, ["dropout", "1.0", "< 1.0"]),
        ({"layers": 9}, ["layers", "9", "<= 8"]),
        ({"epoch": 3}, ["unknown training parameter 'epoch'", "epochs, batch_size"]),
    ],
)
def test_bad_params_are_refused_with_the_value_and_the_rule(
    params: dict[str, object], words: list[str]
) -> None:
    with pytest.raises(QueueValidationError) as caught:
        validate_params(params)
    for word in words:
        assert word in str(caught.value)


@pytest.mark.parametrize("value", [0, 11, "high", 2.5, None, True])
def test_priority_outside_one_to_ten_is_refused(value: object) -> None:
    with pytest.raises(QueueValidationError, match=r"priority .*1 \(highest\) to 10 \(lowest\)"):
        validate_priority(value)


def test_priority_bounds_are_accepted() -> None:
    assert validate_priority(1) == 1
    assert validate_priority("10") == 10


def test_target_is_normalised_and_checked() -> None:
    assert validate_target("btc/usdt", "LSTM", pairs=PAIRS) == ("BTC", "lstm")
    with pytest.raises(QueueValidationError, match=r"unknown pair 'DOGE'.*BTC, ETH, XMR, RVN"):
        validate_target("DOGE", "lstm", pairs=PAIRS)
    with pytest.raises(QueueValidationError, match=r"unknown model type 'xgboost'.*lstm, gru"):
        validate_target("BTC", "xgboost", pairs=PAIRS)
