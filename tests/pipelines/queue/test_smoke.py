"""The queue's stand-in training: it fails exactly when told to."""

from __future__ import annotations

import pytest

from pipelines.queue import smoke


def test_smoke_fails_when_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TBML_SMOKE_FAIL_ATTEMPTS", "2")
    monkeypatch.setenv("TBML_SMOKE_FAIL_PAIRS", "ETH")
    assert smoke.should_fail(pair="BTC", attempt=2)
    assert not smoke.should_fail(pair="BTC", attempt=3)
    assert smoke.should_fail(pair="eth", attempt=5)
    monkeypatch.setenv("TBML_SMOKE_FAIL", "1")
    assert smoke.should_fail(pair="BTC", attempt=9)


def test_untracked_smoke_exits_with_the_status_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TBML_SMOKE_TRACK", "0")
    monkeypatch.setenv("TBML_SMOKE_SECONDS", "0")
    args = ["--pair", "BTC", "--epochs", "2", "--batch_size", "32"]  # unknown args are accepted
    assert smoke.main(args) == 0
    monkeypatch.setenv("TBML_SMOKE_FAIL", "1")
    assert smoke.main(args) == smoke.EXIT_FAILED
