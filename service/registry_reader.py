"""What serving reads from the MLflow registry: through MLflow's public API only.

The registry poll runs every 30 s in every API process and needs three facts: which version
the `production` alias names, that version's tags and run, and the bundle files of its logged
pyfunc model (the version's source `models:/m-<id>`; the files are that model's `artifacts/`
folder, see `pipelines.pyfunc_model`). Two readers, both on MLflow's public interfaces and
never on its internal tables:

- `RestReader`, for a tracking server (`http(s)://`): MLflow's REST API (the alias endpoint,
  the logged-model endpoint, the artifact proxy of `mlflow server --serve-artifacts`), with
  `urllib`, so an API replica that reads a server needs no MLflow import at all (about 90 MiB
  and a second of start-up: docs/model-format.md#what-reading-the-registry-costs). It sends
  the `MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD` credentials as MLflow's client
  does, for a server behind MLflow's basic-auth app.
- `MlflowReader`, for every other store (`sqlite:///`, `postgresql://`, ...): MLflow's client,
  imported on first use. The service starts from its local model copies and polls the
  registry in a background thread, so that import never sits on the request path.

Writes always go through MLflow, in the training process.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pipelines.modelbundle import (
    BUNDLE_FILES,
    OPTIONAL_FILES,
    PYFUNC_ARTIFACTS_DIR,
    logged_model_id,
)
from pipelines.tracking import PRODUCTION_ALIAS, is_tracking_server

logger = logging.getLogger(__name__)

HTTP_TIMEOUT_S = 10.0


class RegistryError(RuntimeError):
    """The registry could not be read (unreachable, or an answer this code cannot use)."""


@dataclass(frozen=True)
class VersionInfo:
    """A registered version as the serving side needs it."""

    name: str
    version: str
    run_id: str | None
    tags: dict[str, str] = field(default_factory=dict)
    # The version's source: `models:/m-<id>`, the logged pyfunc model whose artifacts serve.
    source: str | None = None


@dataclass(frozen=True)
class RegistrySummary:
    registered_models: int
    versions: int
    production: dict[str, str]


class RegistryReader(Protocol):
    def production(self, name: str) -> VersionInfo | None:
        """The version behind `name@production`, or None when there is none."""
        ...

    def aliased(self, name: str, alias: str) -> VersionInfo | None:
        """The version behind `name@alias`, or None when there is none."""
        ...

    def alias_versions(self) -> dict[str, dict[str, str]]:
        """Every registered model's aliases (`production`, `challenger`) and their versions,
        by name, in one search (paged): a steady refresh asks this once instead of once per
        slot."""
        ...

    def production_versions(self) -> dict[str, str]:
        """Every registered model's `production` version, by name (from `alias_versions`)."""
        ...

    def download_bundle(self, info: VersionInfo, dst: Path) -> Path:
        """Copy the bundle files of the version's logged model into `dst`; returns `dst`."""
        ...

    def latest_metrics(self, run_id: str) -> dict[str, tuple[int, float]]:
        """A run's metrics as last logged: key -> (step, value)."""
        ...

    def summary(self) -> RegistrySummary:
        """Counts for `/api/storage/stats`."""
        ...

    def close(self) -> None:
        """Release pooled connections (a later call opens what it needs again)."""
        ...


def reader_for(tracking_uri: str) -> RegistryReader:
    """The reader of `tracking_uri`: REST for a tracking server, MLflow's client otherwise."""
    if is_tracking_server(tracking_uri):
        return RestReader(tracking_uri)
    return MlflowReader(tracking_uri)


def _copy_local_bundle(model_location: str, dst: Path) -> Path | None:
    """Copy `<model_location>/artifacts/*` when the model's files are local; None otherwise.

    `model_location` is the logged model's artifact location (the pyfunc model directory).
    """
    parsed = urllib.parse.urlparse(model_location)
    if parsed.scheme not in ("file", ""):
        return None
    source = Path(urllib.parse.unquote(parsed.path)) / PYFUNC_ARTIFACTS_DIR
    dst.mkdir(parents=True, exist_ok=True)
    for name in BUNDLE_FILES:
        if name in OPTIONAL_FILES and not (source / name).exists():
            continue  # a version from before the file existed
        shutil.copyfile(source / name, dst / name)
    return dst


# --- tracking server --------------------------------------------------------------------------


class RestReader:
    """Reads a tracking server through MLflow's REST API (`mlflow server`)."""

    def __init__(self, base_url: str) -> None:
        self.base = base_url.rstrip("/")

    def close(self) -> None:
        """Nothing to release: every request opens and closes its own connection."""

    def _open(self, url: str) -> Any:
        request = urllib.request.Request(url, headers=_auth_headers())  # noqa: S310
        return urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S)  # noqa: S310

    def _get(self, path: str, **query: str) -> dict[str, Any]:
        url = f"{self.base}{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        try:
            with self._open(url) as response:
                return dict(json.load(response))
        except urllib.error.HTTPError as exc:
            body = exc.read().decode("utf-8", "replace")
            try:
                code = json.loads(body).get("error_code", "")
            except ValueError:
                code = ""
            raise _HttpError(exc.code, str(code), body) from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise RegistryError(f"tracking server {self.base} unreachable: {exc}") from exc

    def production(self, name: str) -> VersionInfo | None:
        return self.aliased(name, PRODUCTION_ALIAS)

    def aliased(self, name: str, alias: str) -> VersionInfo | None:
        try:
            data = self._get("/api/2.0/mlflow/registered-models/alias", name=name, alias=alias)
        except _HttpError as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise RegistryError(f"tracking server answered {exc.status}: {exc.body}") from exc
        version = data["model_version"]
        tags = {t["key"]: t.get("value", "") for t in version.get("tags", [])}
        return VersionInfo(
            name=name,
            version=str(version["version"]),
            run_id=version.get("run_id"),
            tags=tags,
            source=version.get("source"),
        )

    def download_bundle(self, info: VersionInfo, dst: Path) -> Path:
        model_id = logged_model_id(info.source)
        if model_id is None:
            raise RegistryError(
                f"{info.name} version {info.version} comes from {info.source!r}, not from a "
                "logged pyfunc model (models:/m-...), so it has no bundle"
            )
        try:
            model = self._get(f"/api/2.0/mlflow/logged-models/{urllib.parse.quote(model_id)}")
        except _HttpError as exc:
            raise RegistryError(f"logged model {model_id}: {exc.status} {exc.body}") from exc
        location = str(model["model"]["info"]["artifact_uri"])
        prefix = "mlflow-artifacts:"
        if not location.startswith(prefix):
            copied = _copy_local_bundle(location, dst)
            if copied is not None:
                return copied
            return MlflowReader(self.base).download_bundle(info, dst)
        # mlflow-artifacts:/<path> or mlflow-artifacts://host/<path>: the path is what counts.
        path = urllib.parse.urlparse(location).path.strip("/")
        dst.mkdir(parents=True, exist_ok=True)
        for name in BUNDLE_FILES:
            quoted = urllib.parse.quote(f"{path}/{PYFUNC_ARTIFACTS_DIR}/{name}")
            url = f"{self.base}/api/2.0/mlflow-artifacts/artifacts/{quoted}"
            try:
                with self._open(url) as response:
                    (dst / name).write_bytes(response.read())
            except urllib.error.HTTPError as exc:
                if exc.code == 404 and name in OPTIONAL_FILES:
                    continue  # a version from before the file existed
                raise RegistryError(f"downloading {name} of {info.name}: {exc}") from exc
            except (urllib.error.URLError, OSError) as exc:
                raise RegistryError(f"downloading {name} of {info.name}: {exc}") from exc
        return dst

    def latest_metrics(self, run_id: str) -> dict[str, tuple[int, float]]:
        try:
            data = self._get("/api/2.0/mlflow/runs/get", run_id=run_id)
        except _HttpError as exc:
            raise RegistryError(f"run {run_id}: {exc.status} {exc.body}") from exc
        metrics = data.get("run", {}).get("data", {}).get("metrics", [])
        return {
            str(m["key"]): (int(m.get("step", 0) or 0), float(m["value"]))
            for m in metrics
            if "key" in m and "value" in m
        }

    def _registered_models(self) -> list[dict[str, Any]]:
        models: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            query = {"max_results": "1000"} | ({"page_token": token} if token else {})
            try:
                page = self._get("/api/2.0/mlflow/registered-models/search", **query)
            except _HttpError as exc:
                raise RegistryError(f"tracking server answered {exc.status}: {exc.body}") from exc
            models.extend(page.get("registered_models", []))
            token = page.get("next_page_token")
            if not token:
                return models

    def alias_versions(self) -> dict[str, dict[str, str]]:
        return {
            str(model["name"]): {
                str(alias["alias"]): str(alias["version"]) for alias in model.get("aliases", [])
            }
            for model in self._registered_models()
        }

    def production_versions(self) -> dict[str, str]:
        return _production_of(self.alias_versions())

    def summary(self) -> RegistrySummary:
        models = self._registered_models()
        versions = 0
        production: dict[str, str] = {}
        for model in models:
            name = model["name"]
            page = self._get("/api/2.0/mlflow/model-versions/search", filter=f"name='{name}'")
            versions += len(page.get("model_versions", []))
            for alias in model.get("aliases", []):
                if alias.get("alias") == PRODUCTION_ALIAS:
                    production[name] = str(alias["version"])
        return RegistrySummary(
            registered_models=len(models), versions=versions, production=production
        )


def _production_of(aliases: dict[str, dict[str, str]]) -> dict[str, str]:
    return {
        name: found[PRODUCTION_ALIAS]
        for name, found in aliases.items()
        if PRODUCTION_ALIAS in found
    }


def _auth_headers() -> dict[str, str]:
    """Basic auth from MLflow's own variables, as its client sends them (a server behind
    MLflow's basic-auth app); no header without them."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if not user or password is None:
        return {}
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return {"Authorization": f"Basic {token}"}


class _HttpError(Exception):
    def __init__(self, status: int, error_code: str, body: str) -> None:
        super().__init__(f"{status} {error_code}")
        self.status, self.error_code, self.body = status, error_code, body


# --- anything else ----------------------------------------------------------------------------


class MlflowReader:
    """MLflow's own client, imported on first use (database and file stores)."""

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self._client: Any = None

    def close(self) -> None:
        """Nothing to release here: MLflow keeps its stores' engines for the process."""

    def _get_client(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(
                tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri
            )
        return self._client

    def production(self, name: str) -> VersionInfo | None:
        return self.aliased(name, PRODUCTION_ALIAS)

    def aliased(self, name: str, alias: str) -> VersionInfo | None:
        from pipelines.tracking import aliased_version

        client = self._get_client()
        try:
            version = aliased_version(client, name=name, alias=alias)
        except Exception as exc:
            raise RegistryError(f"registry unreachable: {exc}") from exc
        if version is None:
            return None
        model_version = client.get_model_version(name, version)
        return VersionInfo(
            name=name,
            version=version,
            run_id=model_version.run_id,
            tags=dict(model_version.tags or {}),
            source=model_version.source,
        )

    def download_bundle(self, info: VersionInfo, dst: Path) -> Path:
        from pipelines.modelbundle import download_bundle

        bundle = download_bundle(self._get_client(), name=info.name, version=info.version, dst=dst)
        return bundle.onnx_path.parent

    def latest_metrics(self, run_id: str) -> dict[str, tuple[int, float]]:
        client = self._get_client()
        try:
            values = dict(client.get_run(run_id).data.metrics)
            found = {key: (0, float(value)) for key, value in values.items()}
            for key in ("loss", "refit_loss"):  # the per-epoch series: their steps count
                if key in values:
                    history = client.get_metric_history(run_id, key)
                    if history:
                        last = max(history, key=lambda m: (m.step, m.timestamp))
                        found[key] = (int(last.step), float(last.value))
        except Exception as exc:
            raise RegistryError(f"run {run_id}: {exc}") from exc
        return found

    def _registered_models(self) -> list[Any]:
        client = self._get_client()
        models: list[Any] = []
        token: str | None = None
        while True:
            page = client.search_registered_models(max_results=1000, page_token=token)
            models.extend(page)
            token = page.token
            if not token:
                return models

    def alias_versions(self) -> dict[str, dict[str, str]]:
        try:
            models = self._registered_models()
        except Exception as exc:
            raise RegistryError(f"registry unreachable: {exc}") from exc
        return {str(m.name): {str(a): str(v) for a, v in (m.aliases or {}).items()} for m in models}

    def production_versions(self) -> dict[str, str]:
        return _production_of(self.alias_versions())

    def summary(self) -> RegistrySummary:
        client = self._get_client()
        models = self._registered_models()
        versions = sum(len(client.search_model_versions(f"name='{m.name}'")) for m in models)
        production = {
            str(m.name): str(m.aliases[PRODUCTION_ALIAS])
            for m in models
            if PRODUCTION_ALIAS in (m.aliases or {})
        }
        return RegistrySummary(
            registered_models=len(models), versions=versions, production=production
        )
