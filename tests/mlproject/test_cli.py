"""The `tbml train/evaluate/promote` commands refuse bad input with a clear message."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tbml.cli import app


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--pair", "DOGE"], "unknown pair 'DOGE': allowed pairs are BTC, ETH, XMR, RVN"),
        (
            ["train", "--pair", "BTC", "--model-type", "forest"],
            "unknown model type 'forest': allowed model types are lstm, gru, cnn, transformer",
        ),
        (["train", "--pair", "BTC", "--epochs", "0"], "invalid epochs 0"),
        (["evaluate", "DOGE"], "unknown pair 'DOGE'"),
    ],
)
def test_bad_input_exits_2_with_the_allowed_values(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output


def test_register_flag_must_be_true_or_false() -> None:
    result = CliRunner().invoke(app, ["train", "--pair", "BTC", "--register", "maybe"])
    assert result.exit_code == 2
    assert "--register must be true or false, got 'maybe'" in result.output


def test_evaluate_needs_a_pair_or_all() -> None:
    result = CliRunner().invoke(app, ["evaluate"])
    assert result.exit_code == 2
    assert "name a PAIR or pass --all" in result.output
