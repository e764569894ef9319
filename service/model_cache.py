"""The production models, hot in memory, swapped atomically when the registry's alias moves.

For every configured pair and model type the cache resolves the registry alias `production`,
downloads that version's bundle (ONNX export, scaler, feature spec), checks the feature-set
version against the running code, opens the ONNX session and runs one warm-up prediction. Only a
model that passed all of that is published, by replacing the whole mapping in one assignment, so
a request sees either the old model or the new one, never a half-loaded one. If a new version
fails to load, the old one keeps serving and the failure is reported in health.

A served version carries what staleness needs besides its bundle: the last candle a live
comparison validated it through (the `tbml.validated_through` tag, written when the challenger
policy promotes it or keeps it against a challenger). A slot whose `challenger` alias moved has
its production version's tags read again, so a mark written as a challenger is retired reaches
the served model without a reload.

A background thread polls the registry (every `ML_MODEL_REFRESH_INTERVAL`) and `trigger()` wakes
it at once (the training queue calls it when a training finishes).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.features.spec import FeatureSpecMismatchError, ensure_compatible
from pipelines.lifecycle.proof import UNPROVEN, proof_of
from pipelines.lifecycle.registry import validated_through_of
from pipelines.modelbundle import BundleError, ModelBundle
from pipelines.periodic import Chores
from pipelines.tracking import (
    CHALLENGER_ALIAS,
    PRODUCTION_ALIAS,
    TAG_CHALLENGER_SINCE,
    registered_model_name,
)
from service.registry_reader import RegistryReader, VersionInfo, reader_for

logger = logging.getLogger(__name__)

Key = tuple[str, str]
INDEX_FILE = "production.json"
REFRESH_CHORE = "model-refresh"


class RegistryUnreachableError(RuntimeError):
    """A registry poll could not reach the registry (the model-refresh chore failed)."""


def _prepare(
    bundle: ModelBundle,
    *,
    pair: str,
    model_type: str,
    name: str,
    version: str,
    unproven: bool,
    alias: str = PRODUCTION_ALIAS,
    since_ms: int | None = None,
    run_id: str | None = None,
    validated_through_ms: int | None = None,
) -> ServedModel:
    """Check a bundle and open it; raises if it cannot serve."""
    ensure_compatible(bundle.spec)
    # One prediction before publishing: opens the ONNX session and proves the file works.
    zeros = np.zeros((1, bundle.sequence_length, len(bundle.spec.names)), dtype=np.float32)
    probability = bundle.predict_proba(zeros, scaled=True)
    if probability.shape != (1,) or not np.isfinite(probability).all():
        raise ValueError(f"warm-up prediction gave {probability!r}")
    return ServedModel(
        pair=pair,
        model_type=model_type,
        name=name,
        version=version,
        bundle=bundle,
        unproven=unproven,
        loaded_at=time.time(),
        alias=alias,
        since_ms=since_ms,
        run_id=run_id,
        validated_through_ms=validated_through_ms,
    )


@dataclass(frozen=True)
class ServedModel:
    """One loaded version: production (served) or the challenger (scored in shadow)."""

    pair: str
    model_type: str
    name: str
    version: str
    bundle: ModelBundle
    unproven: bool
    loaded_at: float
    alias: str = PRODUCTION_ALIAS
    # A challenger's `tbml.challenger_since` tag: when the gate admitted it (epoch ms).
    since_ms: int | None = None
    run_id: str | None = None  # the training run that registered it
    # Its `tbml.validated_through` tag: live candles kept it through this candle (epoch ms).
    validated_through_ms: int | None = None

    @property
    def shadow(self) -> bool:
        """Whether its predictions are the challenger's: recorded, never served unasked."""
        return self.alias != PRODUCTION_ALIAS

    def predict_proba(self, windows: np.ndarray) -> np.ndarray:
        return self.bundle.predict_proba(windows)


@dataclass(frozen=True)
class SlotStatus:
    """What health reports for one pair and model type."""

    # loaded | no_production_model | refused | load_failed | registry_unreachable | not_enabled
    state: str
    version: str | None  # the version served now, if any
    message: str
    # The production version that was refused or failed to load (state refused / load_failed).
    failed_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "version": self.version,
            "failedVersion": self.failed_version,
            "message": self.message,
        }


class ModelCache:
    """Production models by (pair, model type); reads are lock-free dictionary lookups."""

    def __init__(
        self,
        *,
        tracking_uri: str,
        cache_dir: Path,
        slots: Iterable[Key],
        reader: RegistryReader | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.cache_dir = cache_dir
        self.slots: tuple[Key, ...] = tuple(slots)
        self.reader = reader or reader_for(tracking_uri)
        self._models: dict[Key, ServedModel] = {}
        # Each slot's challenger (`challenger` alias), loaded beside production.
        self._challengers: dict[Key, ServedModel] = {}
        # Each slot's `challenger` alias as the last registry search showed it: when it moves,
        # the slot's production tags are read again (a retired challenger validates production).
        self._challenger_alias: dict[Key, str | None] = {}
        # Why a slot's challenger could not be loaded (the message), while that lasts.
        self.challenger_errors: dict[Key, str] = {}
        self._status: dict[Key, SlotStatus] = {
            key: SlotStatus("no_production_model", None, "not checked yet") for key in self.slots
        }
        self._refresh_lock = threading.Lock()
        self._wake = threading.Event()
        # Versions whose load failed, so a broken version is logged with its traceback once
        # (it is retried at every refresh: the failure may be transient).
        self._failed: set[tuple[str, str]] = set()
        self.last_refresh: float | None = None
        self.refresh_count = 0
        self.swaps = 0

    # --- reads (request path) -----------------------------------------------------------------

    def get(self, pair: str, model_type: str) -> ServedModel | None:
        return self._models.get((pair, model_type))

    def challenger(self, pair: str, model_type: str) -> ServedModel | None:
        """The slot's challenger, scored in shadow, if one is loaded."""
        return self._challengers.get((pair, model_type))

    def challengers(self) -> list[ServedModel]:
        return [self._challengers[key] for key in sorted(self._challengers)]

    def models_of(self, pair: str) -> list[ServedModel]:
        return [m for (p, _), m in sorted(self._models.items()) if p == pair]

    def all(self) -> list[ServedModel]:
        return [self._models[key] for key in sorted(self._models)]

    def status(self, pair: str, model_type: str) -> SlotStatus:
        status = self._status.get((pair, model_type))
        if status is not None:
            return status
        served = sorted({m for _, m in self.slots})
        return SlotStatus(
            "not_enabled",
            None,
            f"{model_type} models are not served here (ML_ENABLED_MODELS: {', '.join(served)})",
        )

    def statuses(self) -> dict[Key, SlotStatus]:
        return dict(self._status)

    # --- refresh ------------------------------------------------------------------------------

    def refresh(self) -> list[ServedModel]:
        """Bring every slot to the registry's production version; returns the models swapped in."""
        with self._refresh_lock:
            swapped: list[ServedModel] = []
            try:
                # One search for every slot's aliases; a slot is asked about on its own only
                # when its production version changed (or the search failed).
                aliases: dict[str, dict[str, str]] | None = self.reader.alias_versions()
            except Exception as exc:
                logger.warning("model refresh: the registry search failed (%s); per slot", exc)
                aliases = None
            versions = (
                None
                if aliases is None
                else {n: a[PRODUCTION_ALIAS] for n, a in aliases.items() if PRODUCTION_ALIAS in a}
            )
            for key in self.slots:
                if versions is not None and self._unchanged(key, versions, aliases or {}):
                    continue
                loaded = self._refresh_slot(key)
                if loaded is not None:
                    swapped.append(loaded)
            if aliases is not None:  # without the search, the challengers stay as they are
                for key in self.slots:
                    name = registered_model_name(*key)
                    wanted = aliases.get(name, {}).get(CHALLENGER_ALIAS)
                    self._challenger_alias[key] = wanted
                    self._refresh_challenger(key, wanted)
            self.last_refresh = time.time()
            self.refresh_count += 1
            return swapped

    def _unchanged(
        self, key: Key, versions: dict[str, str], aliases: dict[str, dict[str, str]]
    ) -> bool:
        """Whether the search shows the slot's production version as the one served now and
        its challenger alias where it was (its status then stays as it is; a missing alias,
        another version or a moved challenger is looked at closely)."""
        current = self._models.get(key)
        name = registered_model_name(*key)
        status = self._status.get(key)
        if status is None:
            return False
        # The first search, or a moved challenger alias: read the production version's tags
        # (a local copy served at start, or a challenger decided elsewhere, may have changed
        # them).
        if key not in self._challenger_alias or self._challenger_alias[key] != aliases.get(
            name, {}
        ).get(CHALLENGER_ALIAS):
            return False
        if current is None:
            # Still no production version, and a refresh has said so already.
            return (
                name not in versions
                and status.state == "no_production_model"
                and self.refresh_count > 0
            )
        return (
            versions.get(name) == current.version
            and status.state == "loaded"
            and status.version == current.version
        )

    def _set_status(self, key: Key, status: SlotStatus) -> None:
        self._status = {**self._status, key: status}

    def _set_failed(
        self, key: Key, state: str, current: ServedModel | None, version: str, what: str
    ) -> None:
        """A version that will not serve: say why, and what serves instead."""
        still = f"; still serving version {current.version}" if current else ""
        self._set_status(
            key,
            SlotStatus(
                state,
                current.version if current else None,
                f"version {version} {what}{still}",
                failed_version=version,
            ),
        )

    def _refresh_slot(self, key: Key) -> ServedModel | None:
        pair, model_type = key
        name = registered_model_name(pair, model_type)
        current = self._models.get(key)
        try:
            info = self.reader.production(name)
        except Exception as exc:
            logger.warning("model refresh: cannot resolve %s@production: %s", name, exc)
            self._set_status(
                key,
                SlotStatus("registry_unreachable", current.version if current else None, str(exc)),
            )
            return None
        if info is None:
            if current is not None:
                logger.info("%s has no production version any more; no longer served", name)
                models = dict(self._models)
                models.pop(key, None)
                self._models = models
                self._write_index()
            self._set_status(
                key,
                SlotStatus(
                    "no_production_model", None, f"{name} has no version aliased production"
                ),
            )
            return None
        version = info.version
        if current is not None and current.version == version:
            validated = validated_through_of(info.tags)
            if validated != current.validated_through_ms:
                revalidated = replace(current, validated_through_ms=validated)
                self._models = {**self._models, key: revalidated}
                self._write_index()
            self._set_status(
                key, SlotStatus("loaded", version, f"serving {name} version {version}")
            )
            return None
        previous = self._status.get(key)
        if (
            previous is not None
            and previous.state == "refused"
            and previous.failed_version == version
        ):
            return None  # refused for good: the feature set will not change under us
        try:
            served = self._load(info, pair=pair, model_type=model_type)
        except FeatureSpecMismatchError as exc:
            logger.error("refusing %s version %s: %s", name, version, exc)
            self._set_failed(key, "refused", current, version, f"refused: {exc}")
            return None
        except Exception as exc:
            if (name, version) in self._failed:
                logger.warning("loading %s version %s failed again: %s", name, version, exc)
            else:
                logger.exception("loading %s version %s failed", name, version)
                self._failed.add((name, version))
            self._set_failed(key, "load_failed", current, version, f"failed to load: {exc}")
            return None
        self._models = {**self._models, key: served}
        self.swaps += 1
        self._write_index()
        self._set_status(key, SlotStatus("loaded", version, f"serving {name} version {version}"))
        logger.info(
            "serving %s version %s%s",
            name,
            version,
            f" (was {current.version})" if current else "",
        )
        return served

    def _refresh_challenger(self, key: Key, wanted: str | None) -> None:
        """Load the slot's challenger beside production, or drop it when the alias is gone."""
        current = self._challengers.get(key)
        if wanted is None or (key in self._models and self._models[key].version == wanted):
            if current is not None:
                logger.info("%s has no challenger any more", current.name)
                self._challengers = {k: m for k, m in self._challengers.items() if k != key}
            self.challenger_errors.pop(key, None)
            return
        if current is not None and current.version == wanted:
            return
        name = registered_model_name(*key)
        try:
            info = self.reader.aliased(name, CHALLENGER_ALIAS)
            if info is None:
                return  # moved since the search: the next refresh sees where
            served = self._load(info, pair=key[0], model_type=key[1], alias=CHALLENGER_ALIAS)
        except Exception as exc:
            if self.challenger_errors.get(key) is None:
                logger.warning("cannot load the challenger %s version %s: %s", name, wanted, exc)
            self.challenger_errors[key] = f"version {wanted} failed to load: {exc}"
            return
        self.challenger_errors.pop(key, None)
        self._challengers = {**self._challengers, key: served}
        logger.info("scoring %s version %s in shadow (challenger)", name, served.version)

    def _load(
        self,
        info: VersionInfo,
        *,
        pair: str,
        model_type: str,
        alias: str = PRODUCTION_ALIAS,
    ) -> ServedModel:
        bundle = self._fetch(info)
        unproven = proof_of(bundle.metadata) == UNPROVEN
        since = info.tags.get(TAG_CHALLENGER_SINCE)
        return _prepare(
            bundle,
            pair=pair,
            model_type=model_type,
            name=info.name,
            version=info.version,
            unproven=unproven,
            alias=alias,
            since_ms=int(since) if since and since.isdigit() else None,
            run_id=info.run_id,
            validated_through_ms=validated_through_of(info.tags),
        )

    def _fetch(self, info: VersionInfo) -> ModelBundle:
        """The version's bundle in the local copy, downloaded first if it is not complete there.

        A download goes to a staging folder beside its final place and is renamed into it only
        once complete, so a crash (or a replica sharing the folder) never sees half a bundle.
        """
        final = self.cache_dir / info.name / info.version
        try:
            return ModelBundle.load(final)
        except (BundleError, OSError, ValueError):
            pass
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{info.version}-", dir=final.parent))
        try:
            files = self.reader.download_bundle(info, staging)
            ModelBundle.load(files)  # complete and consistent before it takes the final name
            shutil.rmtree(final, ignore_errors=True)
            os.replace(files, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return ModelBundle.load(final)

    def prune_copies(self, *, keep: set[tuple[str, str]]) -> list[str]:
        """Delete the local copies of versions that are neither served nor in `keep`.

        Holds the refresh lock, so a copy that a refresh is downloading is never removed
        under it. Returns `name/version` of each removed copy.
        """
        removed: list[str] = []
        with self._refresh_lock:
            served = [*self._models.values(), *self._challengers.values()]
            keep = keep | {(m.name, m.version) for m in served}
            if not self.cache_dir.is_dir():
                return removed
            for name_dir in sorted(p for p in self.cache_dir.iterdir() if p.is_dir()):
                for version_dir in sorted(p for p in name_dir.iterdir() if p.is_dir()):
                    if (name_dir.name, version_dir.name) not in keep:
                        shutil.rmtree(version_dir, ignore_errors=True)
                        removed.append(f"{name_dir.name}/{version_dir.name}")
        return removed

    # --- local copy: serve at once on start, before the registry answers ----------------------

    @property
    def index_path(self) -> Path:
        return self.cache_dir / INDEX_FILE

    def _write_index(self) -> None:
        entries = {
            f"{pair}/{model_type}": {
                "name": m.name,
                "version": m.version,
                "dir": str(m.bundle.onnx_path.parent),
                "unproven": m.unproven,
                "validated_through_ms": m.validated_through_ms,
            }
            for (pair, model_type), m in self._models.items()
        }
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.index_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entries, indent=2, sort_keys=True))
        os.replace(tmp, self.index_path)

    def load_local(self) -> int:
        """Serve the versions that were production when this cache last refreshed.

        The registry stays the source of truth: the next refresh (started right after) swaps
        in whatever `production` points at now. Returns how many models were loaded.
        """
        try:
            entries = json.loads(self.index_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return 0
        loaded = 0
        for key in self.slots:
            entry = entries.get(f"{key[0]}/{key[1]}")
            if not entry or key in self._models:
                continue
            try:
                bundle = ModelBundle.load(Path(entry["dir"]))
                served = _prepare(
                    bundle,
                    pair=key[0],
                    model_type=key[1],
                    name=str(entry["name"]),
                    version=str(entry["version"]),
                    unproven=bool(entry["unproven"]),
                    validated_through_ms=entry.get("validated_through_ms"),
                )
            except Exception as exc:
                logger.info("local copy of %s not usable (%s); waiting for the registry", key, exc)
                continue
            self._models = {**self._models, key: served}
            self._set_status(
                key,
                SlotStatus(
                    "loaded",
                    served.version,
                    f"serving {served.name} version {served.version} from the local copy; "
                    "confirming with the registry",
                ),
            )
            loaded += 1
        return loaded

    # --- background polling -------------------------------------------------------------------

    def trigger(self) -> None:
        """Refresh now (called when a training finishes); returns at once.

        Before `start()` this only asks that the first refresh run as soon as it starts.
        """
        chores: Chores | None = getattr(self, "_chores", None)
        if chores is None:
            self._wake.set()
        else:
            chores.trigger(REFRESH_CHORE)

    def start(self, *, interval_s: float, chores: Chores) -> None:
        """Poll the registry every `interval_s`: the chore `model-refresh` of `chores`.

        A refresh that cannot reach the registry counts as a failure of the chore (health shows
        it, and it retries with backoff); the served models stay as they are meanwhile.
        """
        if getattr(self, "_chores", None) is not None:
            return
        self._chores: Chores | None = chores
        chores.add(REFRESH_CHORE, self._poll, interval_s=interval_s, run_now=self._wake.is_set())
        self._wake.clear()

    def _poll(self) -> None:
        self.refresh()
        unreachable = [
            f"{pair}-{kind}"
            for (pair, kind), status in self.statuses().items()
            if status.state == "registry_unreachable"
        ]
        if unreachable:
            raise RegistryUnreachableError(
                f"the registry did not answer for {', '.join(sorted(unreachable))}"
            )

    def stop(self) -> None:
        """Forget the chores (their owner shuts them down) and close the registry reader."""
        self._chores = None
        self.reader.close()
