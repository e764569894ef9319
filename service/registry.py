"""What the serving process asks of the MLflow registry, without importing MLflow.

The registry poll runs every 30 s in every API process and needs three facts: which version
the `production` alias names, that version's tags and run, and the bundle files of its logged
pyfunc model (the version's source `models:/m-<id>`; the files are that model's `artifacts/`
folder, see `pipelines.pyfunc_model`).
MLflow's client costs about 70 MB of memory and 3 s of import in a process that otherwise
holds four small ONNX models, so the poll reads those facts directly:

- from a tracking server (`http(s)://`): MLflow's public REST API (the alias endpoint, the
  logged-model endpoint, and the artifact proxy of `mlflow server --serve-artifacts`);
- from a database store (`sqlite:///`, `postgresql://`, ...): one query on the registry's
  tables (`registered_model_aliases`, `model_versions`, `model_version_tags`), whose
  layout is pinned with the MLflow version in the lock file and checked against MLflow's own
  client by the tests.

Anything else (another artifact store, a schema this code does not recognise) goes through
`MlflowReader`, which imports MLflow on first use. Writes always go through MLflow.
"""

from __future__ import annotations

import json
import logging
import shutil
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

from pipelines.tracking import is_tracking_server
from pipelines.modelbundle import (
    METADATA_FILE,
    MODEL_FILE,
    PRODUCTION_ALIAS,
    PYFUNC_ARTIFACTS_DIR,
    SCALER_FILE,
    SPEC_FILE,
    logged_model_id,
)

logger = logging.getLogger(__name__)

BUNDLE_FILES = (MODEL_FILE, SCALER_FILE, SPEC_FILE, METADATA_FILE)
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

    def download_bundle(self, info: VersionInfo, dst: Path) -> Path:
        """Copy the bundle files of the version's logged model into `dst`; returns `dst`."""
        ...

    def summary(self) -> RegistrySummary:
        """Counts for `/api/storage/stats`."""
        ...

    def close(self) -> None:
        """Release pooled connections (a later call opens what it needs again)."""
        ...


def reader_for(tracking_uri: str) -> RegistryReader:
    """The cheapest reader that understands `tracking_uri`."""
    if is_tracking_server(tracking_uri):
        return RestReader(tracking_uri)
    scheme = tracking_uri.split(":", 1)[0]
    if scheme.split("+", 1)[0] in ("sqlite", "postgresql", "mysql", "mssql"):
        return SqlReader(tracking_uri)
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
        shutil.copyfile(source / name, dst / name)
    return dst


# --- database stores --------------------------------------------------------------------------


# `storage_location` is where MLflow resolved the version's source (`models:/m-<id>`) to when
# the version was created: the logged model's artifact location.
_PRODUCTION_SQL = text(
    "SELECT mv.version, mv.run_id, mv.source, mv.storage_location "
    "FROM registered_model_aliases a "
    "JOIN model_versions mv ON mv.name = a.name AND mv.version = a.version "
    "WHERE a.name = :name AND a.alias = :alias"
)
_TAGS_SQL = text("SELECT key, value FROM model_version_tags WHERE name = :name AND version = :v")


class SqlReader:
    """Reads the registry tables of a database-backed tracking store."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: Engine | None = None
        self._locations: dict[tuple[str, str], str | None] = {}
        self._fallback: MlflowReader | None = None

    def _connect(self) -> Engine:
        if self._engine is None:
            url = make_url(self.url)
            args: dict[str, Any] = {"timeout": 10} if url.drivername.startswith("sqlite") else {}
            self._engine = create_engine(url, connect_args=args, pool_pre_ping=True)
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def _mlflow(self, exc: Exception) -> MlflowReader:
        if self._fallback is None:
            logger.warning(
                "reading the registry tables failed (%s); using MLflow's client instead", exc
            )
            self._fallback = MlflowReader(self.url)
        return self._fallback

    def production(self, name: str) -> VersionInfo | None:
        if self._fallback is not None:
            return self._fallback.production(name)
        try:
            with self._connect().connect() as connection:
                rows = connection.execute(
                    _PRODUCTION_SQL, {"name": name, "alias": PRODUCTION_ALIAS}
                ).all()
                if not rows:
                    return None
                if len(rows) > 1:  # several workspaces hold the name: MLflow knows which
                    raise RegistryError(f"{len(rows)} rows for {name}@{PRODUCTION_ALIAS}")
                version, run_id, source, location = rows[0]
                tags: dict[str, str] = {
                    str(k): str(v)
                    for k, v in connection.execute(_TAGS_SQL, {"name": name, "v": int(version)})
                }
        except (SQLAlchemyError, RegistryError) as exc:
            if isinstance(exc, SQLAlchemyError) and _unreachable(exc):
                raise RegistryError(f"registry database unreachable: {exc}") from exc
            return self._mlflow(exc).production(name)
        self._locations[(name, str(version))] = location
        return VersionInfo(name=name, version=str(version), run_id=run_id, tags=tags, source=source)

    def download_bundle(self, info: VersionInfo, dst: Path) -> Path:
        location = self._locations.get((info.name, info.version))
        if location:
            copied = _copy_local_bundle(location, dst)
            if copied is not None:
                return copied
        return MlflowReader(self.url).download_bundle(info, dst)

    def summary(self) -> RegistrySummary:
        with self._connect().connect() as connection:
            models = connection.execute(text("SELECT COUNT(*) FROM registered_models")).scalar()
            versions = connection.execute(text("SELECT COUNT(*) FROM model_versions")).scalar()
            production = connection.execute(
                text("SELECT name, version FROM registered_model_aliases WHERE alias = :alias"),
                {"alias": PRODUCTION_ALIAS},
            ).all()
        return RegistrySummary(
            registered_models=int(models or 0),
            versions=int(versions or 0),
            production={str(n): str(v) for n, v in production},
        )


def _unreachable(exc: SQLAlchemyError) -> bool:
    """A connection failure (the store is down), as opposed to a query this code got wrong."""
    from sqlalchemy.exc import OperationalError

    message = str(exc).lower()
    return (
        isinstance(exc, OperationalError)
        and "no such table" not in message
        and ("locked" in message or "connect" in message or "unable to open" in message)
    )


# --- tracking server --------------------------------------------------------------------------


class RestReader:
    """Reads a tracking server through MLflow's REST API (`mlflow server`)."""

    def __init__(self, base_url: str) -> None:
        self.base = base_url.rstrip("/")

    def close(self) -> None:
        """Nothing to release: every request opens and closes its own connection."""

    def _get(self, path: str, **query: str) -> dict[str, Any]:
        url = f"{self.base}{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        try:
            with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:  # noqa: S310
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
        try:
            data = self._get(
                "/api/2.0/mlflow/registered-models/alias", name=name, alias=PRODUCTION_ALIAS
            )
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
                with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:  # noqa: S310
                    (dst / name).write_bytes(response.read())
            except (urllib.error.URLError, OSError) as exc:
                raise RegistryError(f"downloading {name} of {info.name}: {exc}") from exc
        return dst

    def summary(self) -> RegistrySummary:
        models: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            query = {"max_results": "1000"} | ({"page_token": token} if token else {})
            page = self._get("/api/2.0/mlflow/registered-models/search", **query)
            models.extend(page.get("registered_models", []))
            token = page.get("next_page_token")
            if not token:
                break
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


class _HttpError(Exception):
    def __init__(self, status: int, error_code: str, body: str) -> None:
        super().__init__(f"{status} {error_code}")
        self.status, self.error_code, self.body = status, error_code, body


# --- anything else ----------------------------------------------------------------------------


class MlflowReader:
    """MLflow's own client, imported on first use (other stores, and the fallbacks above)."""

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
        from pipelines.modelbundle import production_version

        client = self._get_client()
        try:
            version = production_version(client, name=name)
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

    def summary(self) -> RegistrySummary:
        from pipelines.modelbundle import production_version

        client = self._get_client()
        models = client.search_registered_models()
        versions = sum(len(client.search_model_versions(f"name='{m.name}'")) for m in models)
        production = {m.name: production_version(client, name=m.name) for m in models}
        return RegistrySummary(
            registered_models=len(models),
            versions=versions,
            production={k: v for k, v in production.items() if v is not None},
        )
