"""Predictions: newest candles -> features -> production model -> the original's JSON body.

The request path does as little as possible. The candle store answers from memory after a
`stat` of its files; a prediction is cached per (pair, model, version, newest candle) and the
newest feature window per (pair, feature set, window length, newest candle), so a new candle or
a new production version is never answered from an old entry. On the event loop
(`answer_now`) a request is answered from the prediction cache, or, when only the prediction
expired, from the cached window with one ONNX call per model; parsing a changed candle file or
computing features happens in a worker thread (`predict`), where concurrent misses of one key
compute once. History rows go to a background writer, never to the database on the request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipelines.candles.store import CandlesNotFoundError, CandleStore
from pipelines.candles.timeframes import timeframe_delta
from pipelines.features.compute import latest_features
from pipelines.features.references import store_loader, with_references
from pipelines.features.spec import FeatureSpec, reference_pairs
from pipelines.lifecycle.signal import (
    HOLD,
    NO_MODEL,
    SMALL_MOVE,
    served_signal,
    small_move_words,
    stale_holds,
)
from pipelines.lifecycle.signal import UNPROVEN as UNPROVEN_HOLD
from pipelines.lifecycle.staleness import candle_stale, model_age_hours, model_stale
from pipelines.settings import Settings
from pipelines.signals import describe_probability
from pipelines.tracking import PRODUCTION_ALIAS
from service.caches import TTLCache
from service.model_cache import ModelCache, ServedModel
from service.signals import neutral_prediction

logger = logging.getLogger(__name__)

UNPROVEN_REASON = "does not beat its strongest baseline on its test window"


@dataclass(frozen=True)
class PredictionRecord:
    """What the history keeps of one computed prediction."""

    pair: str
    model_type: str
    model_version: str
    candle_time: pd.Timestamp
    horizon: int
    probability: float
    direction: str
    signal: str
    unproven: bool
    created_at: int  # epoch ms when it was computed
    # A challenger's prediction, scored in shadow: recorded, never served unasked.
    shadow: bool = False
    # The version's shipped logistic baseline on the same window (None: it ships none).
    baseline_probability: float | None = None


class InsufficientCandlesError(ValueError):
    """Too few candles for one full window of features."""


class NoChallengerError(LookupError):
    """`?alias=challenger` for a slot that has no challenger loaded."""


def epoch_ms(stamp: pd.Timestamp) -> int:
    """A timestamp as UTC epoch milliseconds, as every REST answer gives times."""
    return int(stamp.value // 1_000_000)


def now_ms() -> int:
    return int(time.time() * 1000)


def model_data_end(model: ServedModel) -> pd.Timestamp | None:
    """The newest candle a served version's training run saw (its `data_range` end)."""
    return _utc_time((model.bundle.metadata.get("data_range") or {}).get("end"))


def model_fit_end(model: ServedModel) -> pd.Timestamp | None:
    """The newest candle whose outcome the served version learnt (its metadata's `fit_end`)."""
    return _utc_time(model.bundle.metadata.get("fit_end"))


def model_validated_through(model: ServedModel) -> pd.Timestamp | None:
    """The last candle of a live comparison that kept the served version (its
    `tbml.validated_through` tag), or None."""
    through = model.validated_through_ms
    return None if through is None else pd.Timestamp(through, unit="ms", tz="UTC")


def _utc_time(value: object) -> pd.Timestamp | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        stamp = pd.Timestamp(value)
    except ValueError:
        return None
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


# The newest candle of each reference pair a model reads: (pair, _newest or None).
Marks = tuple[tuple[str, "tuple[int, int] | None"], ...]


def _newest(candles: pd.DataFrame) -> tuple[int, int]:
    # The newest candle's open time (ns) and the row count: a new candle changes both.
    return int(candles.index[-1].value), len(candles)


class Predictor:
    """Computes and caches predictions; knows nothing of HTTP."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: CandleStore,
        models: ModelCache,
        prediction_cache: TTLCache[dict[str, Any]],
        feature_cache: TTLCache[np.ndarray],
        record: Callable[[list[PredictionRecord]], None] | None = None,
        market_now_ms: Callable[[], int] | None = None,
    ) -> None:
        self.settings = settings
        # The market's clock (the exchange's, as the feed last measured it); staleness is
        # judged by it, so a replayed market is as fresh as its own clock says.
        self.market_now_ms = market_now_ms or now_ms
        self.step_ms = int(timeframe_delta(settings.timeframe).total_seconds() * 1000)
        # The newest answer per (pair, label): reused until a newer candle or another version
        # makes its key stale, however long ago it was computed (it cannot change meanwhile).
        self._latest: dict[tuple[str, str], tuple[tuple[Any, ...], dict[str, Any], float]] = {}
        self.store = store
        self._reference_loader = store_loader(store, settings.timeframe)
        self.models = models
        self.prediction_cache = prediction_cache
        self.feature_cache = feature_cache
        self._record = record
        self._flights: dict[Hashable, list[Any]] = {}
        self._flights_lock = threading.Lock()

    # --- public ---------------------------------------------------------------------------------

    def answer_now(
        self, *, pair: str, model_type: str, ensemble: bool, alias: str = PRODUCTION_ALIAS
    ) -> dict[str, Any] | None:
        """On the event loop: the cached answer, or one computed at once from cached features.

        Never reads a file, takes a lock that a computation holds, or computes features: what
        it may do costs a dictionary lookup, or an ONNX call per model when the newest
        features are cached (a new version, or a prediction whose 30 s ran out). Returns None
        when a worker thread must answer (`predict`), and then counts nothing.
        """
        candles = self.store.peek(pair, self.settings.timeframe)
        if candles is None:
            return None
        label = self._label(model_type, ensemble, alias)
        served = self._served(pair, model_type, ensemble, alias)
        marks = self._marks(pair, served, load=False)
        if marks is None:
            return None
        key = self._key(pair, label, served, candles, marks)
        hit = self.prediction_cache.get(key, count_miss=False)
        if hit is not None:
            return self.fresh({**hit.value, "cached": True, "cacheAge": hit.age_ms})
        pinned = self._pinned(pair, label, key)
        if pinned is not None:
            return pinned
        windows = self._cached_windows(pair, served, candles)
        if windows is None:
            return None
        self.prediction_cache.note(misses=1)
        self.feature_cache.note(hits=len(windows))
        body = self._answer(pair, model_type, ensemble, served, candles, windows, alias=alias)
        body["source"] = "store"
        self._store(pair, label, key, body)
        return self.fresh({**body, "cached": False, "cacheAge": 0})

    def predict(
        self, *, pair: str, model_type: str, ensemble: bool, alias: str = PRODUCTION_ALIAS
    ) -> dict[str, Any]:
        """The body of `GET /api/predictions/{pair}` without the per-request timing fields;
        `alias` challenger: the slot's challenger's (NoChallengerError when it has none).

        Blocking (it may parse a candle file and compute features): run it in a thread.
        """
        candles = self.store.load(pair, self.settings.timeframe)
        label = self._label(model_type, ensemble, alias)
        served = self._served(pair, model_type, ensemble, alias)
        key = self._key(pair, label, served, candles, self._loaded_marks(pair, served))
        hit = self.prediction_cache.get(key, count_miss=False)
        if hit is None:
            pinned = self._pinned(pair, label, key)
            if pinned is not None:
                return pinned
            self.prediction_cache.note(misses=1)
            with self._single_flight(key):
                # Another request may have computed it while this one waited.
                hit = self.prediction_cache.get(key, count_hit=False, count_miss=False)
                if hit is None:
                    windows = [
                        self._window(pair=pair, served=m, candles=candles, use_cache=True)
                        for m in served
                    ]
                    body = self._answer(
                        pair, model_type, ensemble, served, candles, windows, alias=alias
                    )
                    body["source"] = "store"
                    self._store(pair, label, key, body)
                    return self.fresh({**body, "cached": False, "cacheAge": 0})
        return self.fresh({**hit.value, "cached": True, "cacheAge": hit.age_ms})

    def latest(self, pair: str, model_type: str) -> dict[str, Any] | None:
        """The newest computed answer for `pair` and `model_type` (any candle), made fresh."""
        entry = self._latest.get((pair, model_type))
        if entry is None:
            return None
        _, body, computed = entry
        age = int((time.monotonic() - computed) * 1000)
        return self.fresh({**body, "cached": True, "cacheAge": age})

    def fresh(self, body: dict[str, Any]) -> dict[str, Any]:
        """`body` with its candle's age and staleness as of now (market clock); a stale
        candle or model holds the signal at HOLD unless ML_SERVE_STALE=true."""
        close = int(body["candleTime"]) + self.step_ms
        age = max(0, self.market_now_ms() - close)
        stale = candle_stale(
            candle_age_ms=age, timeframe_ms=self.step_ms, stale_after=self.settings.stale_after
        )
        out = {**body, "candleAgeMs": age, "stale": stale}
        out.setdefault("modelDataEnd", None)
        out.setdefault("modelAgeHours", None)
        out.setdefault("modelStale", False)
        if body.get("fallback"):
            return out
        why = []
        if stale:
            hours = age / 3_600_000
            why.append(
                f"the newest candle closed {hours:.1f} h ago, more than "
                f"{self.settings.stale_after:g} timeframes (ML_STALE_AFTER)"
            )
        if out["modelStale"]:
            why.append(
                f"the model's newest evidence (its training data's end, or the last candle live "
                f"candles validated it through) is {out['modelAgeHours']:.0f} h before the newest "
                f"candle, more than {self.settings.model_max_age_hours:g} h "
                "(ML_MODEL_MAX_AGE_HOURS)"
            )
        holds = stale_holds(
            rules=self.settings.signal_rules(), stale_candle=stale, stale_model=out["modelStale"]
        )
        # The stale reasons come first (`served_signal`'s order), the answer's own after them.
        out["holdReasons"] = [*holds, *body.get("holdReasons", [])]
        if holds:
            out["prediction"] = {**out["prediction"], "signal": HOLD}
            note = "stale: " + "; ".join(why) + "; signal held at HOLD (ML_SERVE_STALE=false)"
            out["reason"] = f"{out['reason']}; {note}" if out.get("reason") else note
        elif why:
            note = "stale: " + "; ".join(why)
            out["reason"] = f"{out['reason']}; {note}" if out.get("reason") else note
        return out

    @staticmethod
    def _label(model_type: str, ensemble: bool, alias: str = PRODUCTION_ALIAS) -> str:
        if ensemble:
            return "ensemble"
        return model_type if alias == PRODUCTION_ALIAS else f"{model_type}@{alias}"

    def _pinned(self, pair: str, label: str, key: tuple[Any, ...]) -> dict[str, Any] | None:
        entry = self._latest.get((pair, label))
        if entry is None or entry[0] != key:
            return None
        self.prediction_cache.note(hits=1)
        age = int((time.monotonic() - entry[2]) * 1000)
        return self.fresh({**entry[1], "cached": True, "cacheAge": age})

    def _store(self, pair: str, label: str, key: tuple[Any, ...], body: dict[str, Any]) -> None:
        self.prediction_cache.put(key, body)
        self._latest[(pair, label)] = (key, body, time.monotonic())

    def predict_candles(
        self, *, pair: str, model_type: str, ensemble: bool, candles: pd.DataFrame
    ) -> dict[str, Any]:
        """Predict from candles a client sent; never cached (the client owns the data) and never
        recorded: the history holds the service's own predictions, whose outcomes it can fill
        in, and a client posting candles must not be able to grow it without bound."""
        served = self._served(pair, model_type, ensemble)
        windows = [
            self._window(pair=pair, served=m, candles=candles, use_cache=False) for m in served
        ]
        body = self._answer(pair, model_type, ensemble, served, candles, windows, record=False)
        return self.fresh({**body, "source": "request", "cached": False, "cacheAge": 0})

    def predict_past(
        self,
        *,
        pair: str,
        model_type: str,
        candles: pd.DataFrame,
        alias: str = PRODUCTION_ALIAS,
    ) -> dict[str, Any]:
        """The prediction for the newest of `candles`, a prefix of the store's frame (a candle
        that arrived together with newer ones): recorded in the history like any of the
        service's own predictions, never cached (it is not the answer to `GET` any more)."""
        served = self._served(pair, model_type, False, alias)
        windows = [
            self._window(pair=pair, served=m, candles=candles, use_cache=False) for m in served
        ]
        body = self._answer(pair, model_type, False, served, candles, windows, alias=alias)
        return self.fresh({**body, "source": "store", "cached": False, "cacheAge": 0})

    def warm(self) -> int:
        """Read each served pair's candles and compute its newest window (at start-up), so the
        first request is answered from memory. Returns how many windows are ready."""
        ready = 0
        for model in self.models.all():
            try:
                candles = self.store.load(model.pair, self.settings.timeframe)
                self._window(pair=model.pair, served=model, candles=candles, use_cache=True)
            except Exception as exc:  # a request will report the problem in its own words
                logger.warning("could not prepare %s %s: %s", model.pair, model.model_type, exc)
                continue
            ready += 1
        return ready

    # --- internals ------------------------------------------------------------------------------

    @contextmanager
    def _single_flight(self, key: Hashable) -> Iterator[None]:
        """Serialise computations of one key; different keys run in parallel."""
        with self._flights_lock:
            entry = self._flights.get(key)
            if entry is None:
                entry = self._flights[key] = [threading.Lock(), 0]
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._flights_lock:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._flights[key]

    def _answer(
        self,
        pair: str,
        model_type: str,
        ensemble: bool,
        served: list[ServedModel],
        candles: pd.DataFrame,
        windows: list[np.ndarray],
        *,
        record: bool = True,
        alias: str = PRODUCTION_ALIAS,
    ) -> dict[str, Any]:
        label = "ensemble" if ensemble else model_type
        if not served and alias != PRODUCTION_ALIAS:
            raise NoChallengerError(f"{pair} has no {model_type} {alias} loaded")
        if not served:
            return self._fallback(
                pair=pair, model_type=label, ensemble=ensemble, newest=candles.index[-1]
            )
        return self._compute(
            pair=pair,
            label=label,
            served=served,
            windows=windows,
            newest=candles.index[-1],
            record=record,
        )

    def _served(
        self, pair: str, model_type: str, ensemble: bool, alias: str = PRODUCTION_ALIAS
    ) -> list[ServedModel]:
        if ensemble:
            return self.models.models_of(pair)
        if alias == PRODUCTION_ALIAS:
            model = self.models.get(pair, model_type)
        else:
            model = self.models.challenger(pair, model_type)
        return [] if model is None else [model]

    @staticmethod
    def _key(
        pair: str, label: str, served: list[ServedModel], candles: pd.DataFrame, marks: Marks
    ) -> tuple[Any, ...]:
        # Everything that makes an answer stale: the models' versions (and how far live candles
        # validated them: a model's age is part of the answer), the newest candle and the
        # newest candle of each reference pair a cross-pair model reads.
        versions = tuple((m.model_type, m.version, m.validated_through_ms) for m in served)
        return (pair, label, versions, _newest(candles), marks)

    @staticmethod
    def _window_key(
        pair: str, served: ServedModel, candles: pd.DataFrame, marks: Marks
    ) -> tuple[Any, ...]:
        # Models that share a feature set and window length share the window.
        bundle = served.bundle
        return (pair, bundle.spec.version, bundle.sequence_length, _newest(candles), marks)

    def _marks(self, pair: str, served: list[ServedModel], *, load: bool) -> Marks | None:
        """The newest candle of every other pair the served models' features read (an empty
        tuple for models of one pair). Without `load`, None when one is not in the store's
        memory (the caller must not read a file); with it, the file is read (None: no file)."""
        refs = sorted({r for m in served for r in reference_pairs(m.bundle.spec)} - {pair})
        marks: list[tuple[str, tuple[int, int] | None]] = []
        for ref in refs:
            frame = self.store.peek(ref, self.settings.timeframe)
            if frame is None:
                if not load:
                    return None
                try:
                    frame = self.store.load(ref, self.settings.timeframe)
                except CandlesNotFoundError:
                    marks.append((ref, None))
                    continue
            marks.append((ref, _newest(frame)))
        return tuple(marks)

    def _loaded_marks(self, pair: str, served: list[ServedModel]) -> Marks:
        marks = self._marks(pair, served, load=True)
        if marks is None:  # pragma: no cover - loading never answers None
            raise AssertionError("reference marks were not loaded")
        return marks

    def _cached_windows(
        self, pair: str, served: list[ServedModel], candles: pd.DataFrame
    ) -> list[np.ndarray] | None:
        """Every model's newest window if all are cached, else None (nothing counted)."""
        windows = []
        for model in served:
            marks = self._marks(pair, [model], load=False)
            if marks is None:
                return None
            hit = self.feature_cache.get(
                self._window_key(pair, model, candles, marks), count_hit=False, count_miss=False
            )
            if hit is None:
                return None
            windows.append(hit.value)
        return windows

    def _window(
        self, *, pair: str, served: ServedModel, candles: pd.DataFrame, use_cache: bool
    ) -> np.ndarray:
        spec: FeatureSpec = served.bundle.spec
        length = served.bundle.sequence_length
        key = None
        if use_cache:
            key = self._window_key(pair, served, candles, self._loaded_marks(pair, [served]))
            hit = self.feature_cache.get(key)
            if hit is not None:
                return hit.value
        window_candles = candles.iloc[-(spec.lookback + length) :]
        window_candles = with_references(
            window_candles, pair=pair, spec=spec, load=self._reference_loader
        )
        rows = latest_features(window_candles, rows=length, spec=spec).to_numpy(dtype=np.float64)
        if len(rows) < length or not np.isfinite(rows).all():
            raise InsufficientCandlesError(
                f"{len(candles)} candles give no complete window of {length} feature rows: "
                f"at least {spec.warmup + length} candles are needed "
                f"({spec.warmup} warm-up + {length} window)"
            )
        window = rows[np.newaxis, :, :]
        if key is not None:
            self.feature_cache.put(key, window)
        return window

    def _compute(
        self,
        *,
        pair: str,
        label: str,
        served: list[ServedModel],
        windows: list[np.ndarray],
        newest: pd.Timestamp,
        record: bool = True,
    ) -> dict[str, Any]:
        created = now_ms()
        rules = self.settings.signal_rules()
        probabilities: list[float] = []
        moves: list[float] = []
        records: list[PredictionRecord] = []
        for model, window in zip(served, windows, strict=True):
            p = float(model.predict_proba(window)[0])
            probabilities.append(p)
            found = model.bundle.move_proba(window)
            move = None if found is None else float(found[0])
            if move is not None:
                moves.append(move)
            baseline = model.bundle.baseline_proba(window) if record else None
            decided = served_signal(p, rules=rules, unproven=model.unproven, move=move)
            described = describe_probability(
                p,
                model_type=model.model_type,
                buy_threshold=rules.buy_threshold,
                sell_threshold=rules.sell_threshold,
                move=move,
                signal=decided.signal,
            )
            records.append(
                PredictionRecord(
                    pair=pair,
                    model_type=model.model_type,
                    model_version=model.version,
                    candle_time=newest,
                    horizon=model.bundle.horizon,
                    probability=p,
                    direction=described["direction"],
                    signal=described["signal"],
                    unproven=model.unproven,
                    created_at=created,
                    shadow=model.shadow,
                    baseline_probability=None if baseline is None else float(baseline[0]),
                )
            )
        unproven = [m for m in served if m.unproven]
        ensemble = label == "ensemble"
        mean = float(np.mean(probabilities))
        # An ensemble's magnitude: the mean of its members' forecasts (those that have one).
        move = float(np.mean(moves)) if moves else None
        answer = served_signal(mean, rules=rules, unproven=bool(unproven), move=move)
        body: dict[str, Any] = {
            "pair": pair,
            "prediction": describe_probability(
                mean,
                model_type=label,
                buy_threshold=rules.buy_threshold,
                sell_threshold=rules.sell_threshold,
                move=move,
                signal=answer.signal,
            ),
            "modelVersion": (
                {m.model_type: m.version for m in served} if ensemble else served[0].version
            ),
            "candleTime": epoch_ms(newest),
            "ensemble": ensemble,
            "fallback": False,
            "unproven": bool(unproven),
            "holdReasons": list(answer.held_by),
            **self._model_age(served, newest),
        }
        if any(m.shadow for m in served):
            # Asked for by name (`?alias=challenger`): what the challenger would answer.
            body["alias"] = served[0].alias
            body["shadow"] = True
        if ensemble:
            body["models"] = {
                m.model_type: {"prediction": round(p, 6), "version": m.version}
                for m, p in zip(served, probabilities, strict=True)
            }
        notes = []
        if unproven:
            which = ", ".join(f"{m.model_type} {m.alias} version {m.version}" for m in unproven)
            notes.append(
                f"{which}: {UNPROVEN_REASON}"
                + (
                    "; signal held at HOLD (ML_SERVE_UNPROVEN=false)"
                    if UNPROVEN_HOLD in answer.held_by
                    else ""
                )
            )
        if SMALL_MOVE in answer.held_by and move is not None:
            notes.append(small_move_words(move, rules))
        if notes:
            body["reason"] = "; ".join(notes)
        if record and self._record is not None:
            try:
                self._record(records)
            except Exception:  # losing a history row must not lose the answer
                logger.exception("could not store prediction history for %s", pair)
        return body

    def _model_age(self, served: list[ServedModel], newest: pd.Timestamp) -> dict[str, Any]:
        """Where the served versions' data ends and how old they are (the oldest of them): a
        version's age counts from its data end or, when later, the last candle live candles
        validated it through (`pipelines.lifecycle.staleness.model_age_hours`)."""
        ages = []
        for model in served:
            end = model_data_end(model)
            if end is None:
                continue
            hours = model_age_hours(
                newest=newest, data_end=end, validated_through=model_validated_through(model)
            )
            ages.append((hours, end))
        if not ages:
            return {"modelDataEnd": None, "modelAgeHours": None, "modelStale": False}
        hours, end = max(ages, key=lambda found: found[0])
        return {
            "modelDataEnd": epoch_ms(end),
            "modelAgeHours": round(hours, 2),
            "modelStale": model_stale(hours, max_age_hours=self.settings.model_max_age_hours),
        }

    def _fallback(
        self, *, pair: str, model_type: str, ensemble: bool, newest: pd.Timestamp
    ) -> dict[str, Any]:
        if ensemble:
            reason = f"no production model is loaded for {pair}"
        else:
            reason = self.models.status(pair, model_type).message
        return {
            "pair": pair,
            "prediction": neutral_prediction(model_type),
            "modelVersion": None,
            "candleTime": epoch_ms(newest),
            "ensemble": ensemble,
            "fallback": True,
            "unproven": False,
            "holdReasons": [NO_MODEL],
            "reason": reason,
        }
