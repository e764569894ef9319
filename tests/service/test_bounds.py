"""What one client may hold of `tbml serve`, measured on a real `tbml serve` process on loopback:
its memory against large WebSocket messages, its sockets against half-sent requests, `/livez`
while every connection is taken. The server runs under `ulimit -n 256`, with small bounds so that
each attack is cheap to mount; no model is trained (the answers are the neutral fallback)."""

from __future__ import annotations

import base64
import contextlib
import os
import resource
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from pipelines.settings import Settings
from service.bounds import (
    FD_HEADROOM,
    LIVENESS_PATH,
    MAX_HEADER_BYTES,
    PROBE_RESERVE,
    admission,
    connection_limit,
)
from tests.conftest import BUNDLED, free_port

MAX_CONNECTIONS = 48
WS_MAX_CONNECTIONS = 32
HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 3.0
KEEPALIVE_TIMEOUT_S = 2
WS_MAX_FRAME_BYTES = 4096
FD_LIMIT = 256


@dataclass
class Server:
    """A `tbml serve` child process: its pid, port and log."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path
    quiet_sockets: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def status(self, key: str) -> int:
        """A `/proc/<pid>/status` figure in kB (VmRSS, VmHWM)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {key} in /proc/{self.process.pid}/status")

    def sockets(self) -> int:
        fds = Path(f"/proc/{self.process.pid}/fd")
        count = 0
        for fd in fds.iterdir():
            try:
                count += os.readlink(fd).startswith("socket:")
            except OSError:
                continue  # closed while listed
        return count

    def get(self, path: str) -> httpx.Response:
        """One request on a fresh connection."""
        return httpx.get(self.url + path, timeout=10)

    def settle(self) -> None:
        """Wait until the previous test's connections are gone."""
        deadline = time.monotonic() + 15
        while self.sockets() > self.quiet_sockets + 2:
            assert time.monotonic() < deadline, f"{self.sockets()} sockets still open"
            time.sleep(0.1)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def _limit_files() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("bounded")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ML_", "MLFLOW_", "HOST"))}
    env.update(
        {
            "ML_DATA_DIR": str(root / "data"),
            "ML_BUNDLED_DATA_DIR": str(BUNDLED),
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
            "ML_ARTIFACT_ROOT": str(root / "mlruns"),
            "ML_DATABASE_URL": f"sqlite:///{root / 'service.db'}",
            "ML_ENABLED_MODELS": "lstm",
            "ML_FEED": "false",
            "ML_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
            "ML_WS_MAX_CONNECTIONS": str(WS_MAX_CONNECTIONS),
            "ML_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
            "ML_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
            "ML_KEEPALIVE_TIMEOUT_S": str(KEEPALIVE_TIMEOUT_S),
            "ML_WS_MAX_FRAME_BYTES": str(WS_MAX_FRAME_BYTES),
        }
    )
    port = free_port()
    log = root / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "tbml", "serve", "--port", str(port), "--no-scheduler"],
            cwd=root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_limit_files,
        )
    running = Server(process, port, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, running.tail()
            try:
                if running.get(LIVENESS_PATH).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, running.tail()
            time.sleep(0.2)
        # Warm every path the attacks take, so that what they cost is not first-use memory.
        assert running.get("/api/predictions/BTC").status_code == 200
        with connect(f"ws://127.0.0.1:{port}/ws/predictions", open_timeout=10) as ws:
            ws.send(b"x" * (WS_MAX_FRAME_BYTES + 1))
            with contextlib.suppress(ConnectionClosed, TimeoutError):
                ws.recv(timeout=2)
        time.sleep(0.5)
        running.quiet_sockets = running.sockets()
        yield running
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class PeakRss:
    """The server's peak resident memory from `start` on: the kernel's high-water mark, reset
    at start (`/proc/<pid>/clear_refs`), or a 2 ms sampling where that cannot be reset."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.samples: list[int] = []
        self.stop = threading.Event()
        try:
            Path(f"/proc/{server.process.pid}/clear_refs").write_text("5")
            self.reset = True
        except OSError:
            self.reset = False
        self.before = server.status("VmRSS")
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.stop.is_set():
            self.samples.append(self.server.status("VmRSS"))
            time.sleep(0.002)

    def peak(self) -> int:
        self.stop.set()
        self.thread.join()
        sampled = max(self.samples, default=self.before)
        return max(sampled, self.server.status("VmHWM")) if self.reset else sampled


def _send_large_message(port: int, size: int) -> None:
    """Open `/ws/predictions` and send one binary message of `size` bytes, streamed in 64 KiB
    chunks (so that 30 clients cost this process little), until the server stops reading."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            f"GET /ws/predictions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)
            assert chunk, answer
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 101"), answer
        # FIN + binary, masked, 64-bit length; a zero mask leaves the payload as sent.
        header = bytes([0x82, 0x80 | 127]) + struct.pack("!Q", size) + bytes(4)
        payload = bytes(64 * 1024)
        try:
            sock.sendall(header)
            for start in range(0, size, len(payload)):
                sock.sendall(payload[: size - start])
            time.sleep(0.5)  # what the server holds, it holds now
        except OSError:
            pass  # the server closed the connection: what a bound does


@pytest.mark.slow
def test_large_websocket_messages_leave_the_servers_memory_where_it_was(server: Server) -> None:
    server.settle()
    clients, size = 30, 8_000_000  # 240 MB in all, were it buffered
    peak = PeakRss(server)
    threads = [
        threading.Thread(target=_send_large_message, args=(server.port, size))
        for _ in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    highest = peak.peak()

    assert highest <= 1.10 * peak.before, (
        f"peak RSS {highest} kB against {peak.before} kB before {clients} clients sent "
        f"{size} bytes each"
    )
    assert server.get(LIVENESS_PATH).status_code == 200


@pytest.mark.slow
def test_a_message_over_the_limit_closes_the_stream_with_1009_one_at_it_is_dropped(
    server: Server,
) -> None:
    server.settle()
    with connect(f"ws://127.0.0.1:{server.port}/ws/predictions", open_timeout=10) as ws:
        ws.send(b"x" * WS_MAX_FRAME_BYTES)
        with pytest.raises(TimeoutError):
            ws.recv(timeout=0.5)  # read and dropped; the stream stays open
        ws.send("y" * (WS_MAX_FRAME_BYTES + 1))
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
    assert ws.protocol.close_rcvd is not None
    assert ws.protocol.close_rcvd.code == 1009


@pytest.mark.slow
def test_half_sent_request_headers_are_closed_within_the_header_timeout(server: Server) -> None:
    server.settle()
    started = time.monotonic()
    # More half-sent requests than the server may hold files (ulimit -n 256).
    attackers = []
    for _ in range(300):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(b"GET /api/predictions/BTC HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        attackers.append(sock)

    # Each new connection closed the oldest half-sent one: the service answers at once.
    assert server.get(LIVENESS_PATH).status_code == 200
    assert server.get("/api/predictions/BTC").status_code == 200
    held = server.sockets() - server.quiet_sockets
    assert held <= MAX_CONNECTIONS + PROBE_RESERVE, held

    closed: dict[socket.socket, tuple[float, bytes]] = {}
    while len(closed) < len(attackers) and time.monotonic() - started < HEADER_TIMEOUT_S + 3:
        readable, _, _ = select.select([s for s in attackers if s not in closed], [], [], 0.1)
        for sock in readable:
            try:
                answer = sock.recv(4096)
            except OSError:
                answer = b""
            closed[sock] = (time.monotonic() - started, answer)
    try:
        assert len(closed) == len(attackers), f"{len(attackers) - len(closed)} still open"
        times = sorted(at for at, _ in closed.values())
        # The last ones were closed by the header timeout, none held past it.
        assert times[-1] <= HEADER_TIMEOUT_S + 1.5, times[-5:]
        assert times[-1] >= HEADER_TIMEOUT_S * 0.9, times[-5:]
        answers = {answer.split(b"\r\n", 1)[0] for _, answer in closed.values()}
        assert answers <= {b"", b"HTTP/1.1 408 Request Timeout"}, answers
    finally:
        for sock in attackers:
            sock.close()
    assert server.get(LIVENESS_PATH).status_code == 200


@pytest.mark.slow
def test_with_every_connection_busy_livez_still_answers_and_the_rest_is_503(
    server: Server,
) -> None:
    server.settle()
    started = time.monotonic()
    # Requests whose body never comes: each holds a connection the app is working on.
    busy = []
    for _ in range(MAX_CONNECTIONS):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(
            b"POST /api/predictions/BTC HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b'Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"candles": ['
        )
        busy.append(sock)
    try:
        time.sleep(0.3)
        assert server.get(LIVENESS_PATH).status_code == 200
        refused = server.get("/api/predictions/BTC")
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert "ML_MAX_CONNECTIONS" in refused.json()["error"]
        assert server.get(LIVENESS_PATH).status_code == 200

        # The bodies' deadline frees them; then everything answers again.
        for sock in busy:
            sock.settimeout(BODY_TIMEOUT_S + 3 - (time.monotonic() - started))
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(4096) == b""
        assert time.monotonic() - started <= BODY_TIMEOUT_S + 2
    finally:
        for sock in busy:
            sock.close()
    assert server.get("/api/predictions/BTC").status_code == 200


@pytest.mark.slow
def test_request_headers_over_the_limit_are_refused_with_431(server: Server) -> None:
    server.settle()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        try:
            for _ in range(4 * MAX_HEADER_BYTES // 4096):
                sock.sendall(b"a" * 4096)
        except OSError:
            pass
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert f"over {MAX_HEADER_BYTES} bytes".encode() in answer


@pytest.mark.slow
def test_keep_alive_pipelining_and_bodies_work_and_idle_connections_close(
    server: Server,
) -> None:
    server.settle()
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for _ in range(3):
            assert client.get(LIVENESS_PATH).status_code == 200
        posted = client.post("/api/predictions/BTC", json={"candles": []})
        assert posted.status_code == 422  # read whole and judged: too few candles
        assert client.get(LIVENESS_PATH).status_code == 200

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        request = f"GET {LIVENESS_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
        sock.sendall(request * 2)
        received = b""
        answered = time.monotonic()
        while received.count(b"HTTP/1.1 200") < 2:
            chunk = sock.recv(4096)
            assert chunk, received
            received += chunk
            answered = time.monotonic()
        sock.settimeout(KEEPALIVE_TIMEOUT_S + 3)
        assert sock.recv(4096) == b""  # idle past the keep-alive timeout: closed
        assert time.monotonic() - answered <= KEEPALIVE_TIMEOUT_S + 1.5


# --- the rules, without a server ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("regular", "waiting", "oldest_is_probe", "probes", "expected"),
    [
        (48, 0, False, 0, ("regular", False)),  # at the limit, the new one included
        (49, 5, False, 0, ("regular", True)),  # the oldest waiting one makes room
        (49, 5, True, 3, ("probe", True)),  # ... a waiting probe makes room for a probe
        (49, 0, False, 0, ("probe", False)),  # all busy: `/livez` only
        (49, 0, False, PROBE_RESERVE, (None, False)),  # and not even that
    ],
)
def test_a_new_connection_takes_a_free_slot_then_a_waiting_ones_then_a_probe_slot(
    regular: int,
    waiting: int,
    oldest_is_probe: bool,
    probes: int,
    expected: tuple[str | None, bool],
) -> None:
    assert (
        admission(
            regular=regular,
            limit=48,
            waiting=waiting,
            oldest_waiting_is_probe=oldest_is_probe,
            probes=probes,
        )
        == expected
    )


def test_the_connection_limit_fits_the_open_file_limit() -> None:
    assert connection_limit(200, None) == 200
    assert connection_limit(200, 20_000) == 200
    assert connection_limit(200, 256) == 256 - FD_HEADROOM - PROBE_RESERVE
    assert connection_limit(200, 10) == 1


def _settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


def test_the_connection_limit_leaves_room_beside_every_stream_client() -> None:
    assert _settings().max_connections == 200
    assert _settings(ws_max_connections=500).max_connections == 600
    assert _settings(ws_max_connections=10, max_connections=11).max_connections == 11
    with pytest.raises(ValidationError, match=r"ML_MAX_CONNECTIONS \(100\) must exceed"):
        _settings(max_connections=100)
