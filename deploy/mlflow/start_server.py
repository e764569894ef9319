"""Start the authenticated MLflow tracking server with the deployment's users in place.

Usage (the image's entry point for the `mlflow` container in compose and Kubernetes):

    python /app/deploy/mlflow/start_server.py mlflow server --app-name basic-auth ...

Before it runs the command it writes MLflow's auth configuration (basic_auth.ini beside this
file, with the user store's URL from TBML_MLFLOW_AUTH_DATABASE_URI) to a private temporary
file and sets MLFLOW_AUTH_CONFIG_PATH to it, then makes sure the users `api` (reads the
registry) and `worker` (writes runs, versions and aliases) exist with the passwords given in
the environment: they are created on the first start and their passwords reset when the
environment says otherwise, so the Secret stays the one source of truth. MLflow itself creates
the admin user from MLFLOW_AUTH_ADMIN_PASSWORD.
"""

from __future__ import annotations

import configparser
import logging
import os
import sys
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

TEMPLATE = Path(__file__).with_name("basic_auth.ini")
DATABASE_VARIABLE = "TBML_MLFLOW_AUTH_DATABASE_URI"
# The users the API replicas and the worker log in as (MLFLOW_TRACKING_USERNAME there), each
# with the variable holding its password (their MLFLOW_TRACKING_PASSWORD).
USERS = {"api": "TBML_MLFLOW_API_PASSWORD", "worker": "TBML_MLFLOW_WORKER_PASSWORD"}
# Every variable this script reads, for the tests that check what deploy/ sets is read.
VARIABLES = frozenset({DATABASE_VARIABLE, *USERS.values()})


def required(name: str, environ: dict[str, str]) -> str:
    """The value of a required variable, or an exit that says how to set it."""
    value = environ.get(name, "")
    if not value:
        raise SystemExit(
            f"{name} is not set (or empty): the MLflow server's users need it; put it in the "
            "environment or the Secret (e.g. `openssl rand -hex 32` for a password)"
        )
    return value


def write_config(environ: dict[str, str], directory: Path) -> Path:
    """basic_auth.ini with the user store's URL filled in, readable by this user only."""
    config = configparser.ConfigParser()
    config.read(TEMPLATE)
    config["mlflow"]["database_uri"] = required(DATABASE_VARIABLE, environ)
    path = directory / "basic_auth.ini"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        config.write(handle)
    return path


def ensure_users(database_uri: str, passwords: dict[str, str]) -> None:
    """Create each user, or reset its password when it no longer matches."""
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore()
    store.init_db(database_uri)  # creates or migrates the user store's schema
    for username, password in passwords.items():
        if not store.has_user(username, use_primary=True):
            store.create_user(username, password, is_admin=False)
            logger.info("created MLflow user %s", username)
        elif not store.authenticate_user(username, password, use_primary=True):
            store.update_user(username, password=password)
            logger.info("reset the password of MLflow user %s", username)


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not argv:
        raise SystemExit("usage: start_server.py mlflow server --app-name basic-auth ...")
    environ = dict(os.environ)
    passwords = {user: required(variable, environ) for user, variable in USERS.items()}
    config = write_config(environ, Path(tempfile.mkdtemp(prefix="mlflow-auth-")))
    os.environ["MLFLOW_AUTH_CONFIG_PATH"] = str(config)
    ensure_users(environ[DATABASE_VARIABLE], passwords)
    os.execvp(argv[0], argv)  # noqa: S606 - the command is the container's own


if __name__ == "__main__":
    main(sys.argv[1:])
