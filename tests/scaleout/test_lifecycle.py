"""The lifecycle turns by itself: real processes, compressed time, no decision by the test.

A replay exchange (`tbml replay`) releases the real candles after a start point, one every
`INTERVAL_S` seconds, as if an hour passed. `tbml up` (the service with its scheduler, the feed
pointed at the replay, tiny real bootstrap trainings) runs beside it. The test only watches:
the WebSocket, the history, the queue, the registry. Nothing it requests decides anything.
"""

from __future__ import annotations

import itertools
import json
import threading
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
from websockets.sync.client import connect

from pipelines.candles.replay import prepare_replay_store
from pipelines.candles.validate import read_candle_file
from tests.conftest import BUNDLED, free_port
from tests.scaleout.conftest import BIN, Processes, answers, wait_for

INTERVAL_S = 2.0
HOUR_MS = 3_600_000
# Replayed candles available: enough for the bootstrap, a retraining and the checks after it.
REPLAYED = 400
RETRAIN_HOURS = 8
CHALLENGER_OUTCOMES = 3


def _environment(root: Path, *, exchange_url: str, port: int) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("ML_", "MLFLOW_"))}
    return {
        **env,
        "PORT": str(port),
        "ML_PAIRS": "BTC",
        # The LSTM's lifecycle: one served model type, so each candle is pushed once.
        "ML_ENABLED_MODELS": "lstm",
        "ML_DATA_DIR": str(root / "data"),
        "ML_BUNDLED_DATA_DIR": str(root / "ohlcv"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "ML_ARTIFACT_ROOT": str(root / "mlruns"),
        "ML_DATABASE_URL": f"sqlite:///{root / 'service.db'}",
        "ML_EXCHANGE_URL": exchange_url,
        "ML_FEED": "true",
        "ML_FEED_DELAY": "0",
        "ML_FEED_MAX_WAIT": "0.2",
        "ML_CANDLE_WATCH_INTERVAL": "100",
        "ML_OUTCOME_FILL_INTERVAL": "500",
        "ML_MODEL_REFRESH_INTERVAL": "1000",
        "ML_POLICY_INTERVAL": "1000",
        "ML_QUEUE_PROCESSING_INTERVAL": "500",
        "ML_TRAINING_COOLDOWN": "0",
        "ML_RETRAIN_INTERVAL_HOURS": str(RETRAIN_HOURS),
        # Tiny real trainings: one epoch of a small LSTM on the newest candles.
        "ML_BOOTSTRAP_EPOCHS": "1",
        "ML_BOOTSTRAP_MAX_ROWS": "1200",
        "ML_EPOCHS": "1",
        "ML_MAX_ROWS": "1200",
        "ML_SEQUENCE_LENGTH": "12",
        "ML_LSTM_UNITS": "8",
        "ML_LSTM_LAYERS": "1",
        # Promote whatever the gate scores (the point is the swap, not the model's skill). Each
        # version is refit on all but its newest ML_GATE_MIN_ROWS candles (ML_REFIT, the
        # default), which the gate compares it on where production never learnt them.
        "ML_PROMOTION_MARGIN": "-1",
        "ML_GATE_MIN_ROWS": "4",
        # A passed version is the challenger (ML_PROMOTION=shadow, the default), scored in
        # shadow until this many realised candles both versions predicted decide.
        "ML_CHALLENGER_MIN_OUTCOMES": str(CHALLENGER_OUTCOMES),
        "ML_CHALLENGER_INTERVAL": "500",
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }


class Stream:
    """A WebSocket client in a thread, keeping every message it receives."""

    def __init__(self, url: str) -> None:
        self.messages: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url,), daemon=True)
        self._thread.start()

    def _run(self, url: str) -> None:
        with connect(url, open_timeout=30) as ws:
            while not self._stop.is_set():
                try:
                    self.messages.append(json.loads(ws.recv(timeout=0.5)))
                except TimeoutError:
                    continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def test_new_candles_give_predictions_outcomes_a_policy_retraining_and_a_swap(
    processes: Processes, tmp_path: Path
) -> None:
    bundled = read_candle_file(BUNDLED / "BTC-USDT_1h.csv.gz")
    start = bundled.index[-REPLAYED]
    prepare_replay_store(BUNDLED, tmp_path / "ohlcv", pairs=["BTC"], start=start)
    known_end_ms = int((start - pd.Timedelta(hours=1)).value // 1_000_000)
    replay_port, port = free_port(), free_port()
    replay = processes.start(
        "replay",
        [
            str(BIN / "tbml"),
            "replay",
            "--port",
            str(replay_port),
            "--interval",
            str(INTERVAL_S),
            "--pairs",
            "BTC",
            "--start",
            start.isoformat(),
        ],
        # The replay serves the whole bundled series; the service knows it up to `start`.
        env={
            **_environment(tmp_path, exchange_url="", port=port),
            "ML_BUNDLED_DATA_DIR": str(BUNDLED),
        },
    )
    exchange_url = f"http://127.0.0.1:{replay_port}"
    wait_for(lambda: answers(f"{exchange_url}/api/v3/ping"), timeout=60, what="the replay")
    service = processes.start(
        "service",
        [str(BIN / "tbml"), "up"],
        env=_environment(tmp_path, exchange_url=exchange_url, port=port),
    )
    base = f"http://127.0.0.1:{port}"
    watch = [replay, service]
    wait_for(lambda: answers(f"{base}/livez"), timeout=300, what="the service", watch=watch)
    client = httpx.Client(base_url=base, timeout=30)
    try:

        def served_version() -> str | None:
            models = client.get("/api/health").json()["models"]["BTC"]["lstm"]
            return models["version"] if models["state"] == "loaded" else None

        first_version = wait_for(served_version, timeout=60, what="a served model", watch=watch)

        def caught_up() -> bool:
            # The candles released during the bootstrap arrive in one append; from then on the
            # feed takes each one as it closes.
            feed = client.get("/api/health").json()["feed"]["BTC"]
            return feed["state"] == "ok" and feed["lagMs"] is not None and feed["lagMs"] < HOUR_MS

        wait_for(caught_up, timeout=60, what="the feed caught up with the replay", watch=watch)
        stream = Stream(f"ws://127.0.0.1:{port}/ws/predictions?pairs=BTC")
        try:
            # A retraining asked for by the policy (new data since the bootstrap's data end),
            # trained on replayed candles, admitted as the challenger, scored in shadow,
            # promoted by the challenger policy and served, with no request from the test.
            def retrained() -> dict[str, Any] | None:
                queue = client.get("/api/training/queue").json()["queue"]
                for job in queue["history"]["recent"]:
                    if (
                        job["requestedBy"] in ("schedule", "stale")
                        and job["status"] == "succeeded"
                        and job.get("registeredVersion") not in (None, first_version)
                    ):
                        return dict(job)
                return None

            job = wait_for(retrained, timeout=420, what="a policy retraining", watch=watch)
            assert isinstance(job, dict)
            new_version = str(job["registeredVersion"])
            assert job["promotion"] == "challenger", job
            wait_for(
                lambda: served_version() == new_version,
                timeout=60,
                what=f"version {new_version} served",
                watch=watch,
            )
            # A few more candles under the new version.
            wait_for(
                lambda: sum(m["modelVersion"] == new_version for m in stream.messages) >= 3,
                timeout=60,
                what="predictions of the new version on the stream",
                watch=watch,
            )
        finally:
            stream.close()

        # The retraining trained on the replayed candles: its data ends after the known ones.
        assert job["dataEnd"] is not None
        assert job["dataEnd"] > known_end_ms
        from mlflow import MlflowClient

        tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
        registry = MlflowClient(tracking_uri=tracking, registry_uri=tracking)

        # Before it served, the challenger predicted in shadow: recorded, never pushed; the
        # policy promoted it on the realised candles both versions predicted.
        shadow = client.get(
            "/api/predictions/BTC/history", params={"limit": 1000, "alias": "challenger"}
        ).json()["predictions"]
        assert shadow, "no shadow prediction recorded"
        assert {r["modelVersion"] for r in shadow} == {new_version}
        assert all(r["shadow"] is True for r in shadow)
        pushed_before = {
            m["candleTime"] for m in stream.messages if m["modelVersion"] == new_version
        }
        assert {r["candleTime"] for r in shadow} - pushed_before, "shadow rows were pushed"
        tags = registry.get_model_version("BTC-lstm", new_version).tags
        assert tags["tbml.challenger_outcome"] == "promoted", tags
        assert int(tags["tbml.live_rows"]) >= CHALLENGER_OUTCOMES
        assert "not worse than production" in tags["tbml.challenger_reason"]
        aliases = registry.get_registered_model("BTC-lstm").aliases
        assert str(aliases.get("production")) == new_version
        assert "challenger" not in aliases
        run = registry.get_run(job["runId"])
        data_end = pd.Timestamp(run.data.tags["data_range"].split(" .. ")[1])
        assert int(data_end.value // 1_000_000) > known_end_ms

        # One pushed prediction per candle and served version, candles in order: N new candles
        # gave N predictions (the stream's first message is the latest at connection time).
        messages = stream.messages
        assert len(messages) >= 6
        keys = [(m["modelVersion"], m["candleTime"]) for m in messages]
        assert len(keys) == len(set(keys))
        for version in {first_version, new_version}:
            # Pushed after the connection (the first message, the latest prediction then, may be
            # older than a batch's earlier candles that were published just before it connected).
            times = sorted(t for v, t in keys[1:] if v == version)
            if len(times) > 1:
                # While one version is served, each newly closed candle gives one message, also
                # when several arrive in one append (a fetch after a stall longer than an hour).
                steps = {b - a for a, b in itertools.pairwise(times)}
                assert steps == {HOUR_MS}, steps
        # Each message says whether its candle is stale, by its age; a batch's earlier candles
        # (after a stall longer than ML_STALE_AFTER on a loaded machine) may be.
        for m in messages:
            assert m["stale"] is (m["candleAgeMs"] > 2 * HOUR_MS), m
        assert any(m["stale"] is False for m in messages)

        # The same predictions are in the history, once each, and the outcomes fill in.
        def history() -> list[dict[str, Any]]:
            rows: list[dict[str, Any]] = client.get(
                "/api/predictions/BTC/history", params={"limit": 1000}
            ).json()["predictions"]
            return rows

        rows = history()
        stored = {(r["modelVersion"], r["candleTime"]) for r in rows}
        assert len(stored) == len(rows)
        assert set(keys[1:]) <= stored
        newest = max(t for _, t in keys)
        wait_for(
            lambda: all(
                r["outcome"] is not None for r in history() if r["candleTime"] + HOUR_MS < newest
            ),
            timeout=30,
            what="outcomes of the passed candles",
            watch=watch,
        )
    finally:
        client.close()
