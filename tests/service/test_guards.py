"""The HTTP surface is safe by default: no open non-loopback bind, no foreign Origin or Host,
JSON bodies only, `Allow` on 405 (service/security.py, service/errors.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from service.app import create_app
from service.security import UnsafeBindError, is_loopback
from tests.service.conftest import LiveServer, make_settings
from tests.service.test_security import STATE_CHANGING

EVIL = "https://evil.example"


# --- the bind check ---------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.org", "10.0.0.1"])
def test_a_non_loopback_bind_without_a_key_is_refused_saying_how_to_set_one(
    tmp_path: Path, host: str
) -> None:
    with pytest.raises(UnsafeBindError) as caught:
        create_app(make_settings(tmp_path, None, host=host))

    message = str(caught.value)
    assert host in message
    assert "ML_API_KEY=$(openssl rand -hex 32)" in message
    assert "ML_ALLOW_UNAUTHENTICATED=true" in message


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"])
def test_loopback_binds_need_no_key(tmp_path: Path, host: str) -> None:
    assert is_loopback(host)
    create_app(make_settings(tmp_path, None, host=host))


def test_a_key_or_the_explicit_opt_out_allows_a_non_loopback_bind(tmp_path: Path) -> None:
    create_app(make_settings(tmp_path, None, host="0.0.0.0", api_key="k"))
    create_app(make_settings(tmp_path, None, host="0.0.0.0", allow_unauthenticated=True))


def test_an_opted_out_wildcard_bind_starts_and_serves(serve: Callable[..., LiveServer]) -> None:
    server = serve(host="0.0.0.0", allow_unauthenticated=True)

    assert server.client.get("/api/health").status_code == 200
    # A wildcard bind answers any Host name unless ML_ALLOWED_HOSTS says otherwise.
    assert server.client.get("/api/health", headers={"Host": "box.lan:3001"}).status_code == 200


@pytest.mark.parametrize("command", [["serve"], ["up", "--no-train"]])
def test_tbml_serve_and_up_on_0000_without_a_key_exit_with_the_message(
    tmp_path: Path, command: list[str]
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ML_", "HOST"))}
    env["ML_DATA_DIR"] = str(tmp_path / "data")  # were it to go on, nothing of the tree is touched
    env["ML_DATABASE_URL"] = f"sqlite:///{tmp_path / 'service.db'}"
    result = subprocess.run(
        [sys.executable, "-m", "tbml", *command, "--host", "0.0.0.0", "--port", "1"],
        cwd=tmp_path,  # no .env here
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 2, result.stderr[-2000:]
    assert "refusing to serve 0.0.0.0:1 without ML_API_KEY" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "service.db").exists()  # refused before anything was opened


# --- Origin -----------------------------------------------------------------------------------


def _snapshot(server: LiveServer) -> dict[str, Any]:
    queue = server.client.get("/api/training/queue").json()
    queue.pop("timestamp", None)
    for job in queue["queue"]["queued"]["jobs"]:
        job.pop("queuedFor")  # milliseconds since it was queued: moves with the clock
    backups = server.state.settings.data_dir / "backups"
    return {
        "queue": queue,
        "backups": sorted(p.name for p in backups.glob("*")) if backups.exists() else [],
        "history": server.state.history.count(pair="BTC"),
    }


def test_a_foreign_origin_is_refused_on_every_state_changing_route_and_changes_nothing(
    serve: Callable[..., LiveServer],
) -> None:
    server = serve()
    client = server.client
    job = client.post("/api/train/BTC/lstm").json()["jobId"]
    client.get("/api/predictions/BTC")
    server.state.history_writer.flush()
    before = _snapshot(server)
    routes = [*STATE_CHANGING, ("DELETE", f"/api/training/job/{job}")]

    for method, path in routes:
        for origin in (EVIL, "null", f"http://127.0.0.1:{server.port + 1}"):
            response = client.request(method, path, headers={"Origin": origin})
            assert response.status_code == 403, (method, path, origin)
            error = response.json()["error"]
            assert repr(origin) in error
            assert f"http://127.0.0.1:{server.port}" in error
            assert "ML_ALLOWED_ORIGINS" in error
    # The emergency-stop a web page would send: `fetch(url, {method: 'POST', mode: 'no-cors'})`.
    response = client.post(
        "/api/training/emergency-stop",
        headers={"Origin": EVIL, "Content-Type": "text/plain;charset=UTF-8"},
        content=b"",
    )
    assert response.status_code == 403
    response = client.post(
        "/api/storage/cleanup",
        headers={"Origin": EVIL, "Content-Type": "application/json"},
        json={"maxAgeHours": 0.0001},
    )
    assert response.status_code == 403
    assert _snapshot(server) == before


def test_the_services_own_origins_and_the_allowed_list_may_change_state(
    serve: Callable[..., LiveServer],
) -> None:
    server = serve(allowed_origins="https://dash.example.org/")
    client = server.client
    port = server.state.settings.port  # the configured port (the test binds a free one)

    for origin in (
        f"http://127.0.0.1:{server.port}",  # the request's own: scheme://Host
        f"http://127.0.0.1:{port}",
        f"http://localhost:{port}",
        f"http://[::1]:{port}",
        "https://dash.example.org",
    ):
        response = client.post("/api/training/resume", headers={"Origin": origin})
        assert response.status_code == 200, (origin, response.text)
    assert client.post("/api/training/resume", headers={"Origin": EVIL}).status_code == 403


def test_an_origin_that_only_begins_like_an_allowed_one_is_refused(
    serve: Callable[..., LiveServer],
) -> None:
    # Origins are compared whole: a prefix match would admit look-alike hosts and ports.
    server = serve(allowed_origins="https://dash.example.org")
    client = server.client
    port = server.state.settings.port

    for origin in (
        "https://dash.example.org.evil.com",
        "https://dash.example.org:8443",
        "http://dash.example.org",
        f"http://localhost:{port}1",
        f"http://127.0.0.1:{server.port}0",
        f"http://127.0.0.1:{port}.evil.com",
    ):
        response = client.post("/api/training/resume", headers={"Origin": origin})
        assert response.status_code == 403, (origin, response.text)
    assert (
        client.post("/api/training/resume", headers={"Origin": "https://dash.example.org"})
    ).status_code == 200


def test_reads_are_not_origin_checked(serve: Callable[..., LiveServer]) -> None:
    server = serve()

    assert server.client.get("/api/training/queue", headers={"Origin": EVIL}).status_code == 200


# --- Host -------------------------------------------------------------------------------------


def test_a_foreign_host_is_refused_on_every_route(serve: Callable[..., LiveServer]) -> None:
    server = serve()
    client = server.client
    before = _snapshot(server)

    for method, path in [("GET", "/api/health"), ("GET", "/metrics"), *STATE_CHANGING]:
        # DNS rebinding: the page's own name resolves to 127.0.0.1, so its Origin matches.
        headers = {
            "Host": f"evil.example:{server.port}",
            "Origin": f"http://evil.example:{server.port}",
        }
        response = client.request(method, path, headers=headers)
        assert response.status_code == 400, (method, path)
        body = response.json()
        assert body["status"] == 400
        assert "evil.example" in body["error"]
        assert "127.0.0.1" in body["error"]
        assert "ML_ALLOWED_HOSTS" in body["error"]
    assert _snapshot(server) == before


def test_the_loopback_names_are_this_services_hosts(serve: Callable[..., LiveServer]) -> None:
    server = serve()

    for host in ("127.0.0.1", "localhost", "[::1]"):
        headers = {"Host": f"{host}:{server.port}"}
        assert server.client.get("/api/health", headers=headers).status_code == 200, host


def test_allowed_hosts_replace_the_defaults(serve: Callable[..., LiveServer]) -> None:
    server = serve(allowed_hosts="api.example.org")

    assert server.client.get("/api/health", headers={"Host": "api.example.org"}).status_code == 200
    assert server.client.get("/api/health").status_code == 400


# --- Content-Type -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None]
)
def test_a_state_changing_body_that_is_not_json_is_415(
    serve: Callable[..., LiveServer], content_type: str | None
) -> None:
    server = serve()
    server.client.get("/api/predictions/BTC")
    server.state.history_writer.flush()
    headers = {"Content-Type": content_type} if content_type else {}
    request = server.client.build_request(
        "POST", "/api/storage/cleanup", content=b'{"maxAgeHours": 0.0001}', headers=headers
    )
    if content_type is None:
        request.headers.pop("Content-Type", None)

    response = server.client.send(request)

    assert response.status_code == 415
    assert "application/json" in response.json()["error"]
    assert server.state.history.count(pair="BTC") == 1


def test_json_bodies_and_empty_bodies_pass(serve: Callable[..., LiveServer]) -> None:
    client = serve().client

    assert client.post("/api/training/resume").status_code == 200
    headers = {"Content-Type": "application/json; charset=utf-8"}
    response = client.post(
        "/api/training/emergency-stop", content=b'{"reason": "x"}', headers=headers
    )
    assert response.status_code == 200


# --- 405 --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/api/training/job/BTC_lstm_1", "DELETE, GET"),
        ("POST", "/api/health", "GET"),
        ("GET", "/api/training/emergency-stop", "POST"),
        ("PATCH", "/api/predictions/BTC", "GET, POST"),
    ],
)
def test_405_names_every_allowed_method_in_allow(
    serve: Callable[..., LiveServer], method: str, path: str, allowed: str
) -> None:
    response = serve().client.request(method, path)

    assert response.status_code == 405
    assert response.headers["Allow"] == allowed
    assert response.json() == {
        "error": f"{method} is not allowed here: allowed are {allowed}",
        "status": 405,
    }
