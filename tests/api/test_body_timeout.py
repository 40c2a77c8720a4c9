"""A request body that does not arrive in time ends in 408 and a closed connection.

Against a real `weflux serve` (uvicorn has no body timeout of its own), with raw
sockets: a client that declares more than it sends, one that drips its body a byte at
a time, and one refused before its body was read, never hold their connection; other
requests are served meanwhile.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.fixtures.live import free_port

BODY_TIMEOUT_SECONDS = 2
GENEROUS = 20.0  # seconds: the bound on any wait here, far above the configured timeout
STALLED = (
    b"POST /auth/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
    b"Content-Length: 100\r\n\r\n" + b'{"email": "a@example.com"'[:24]
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """`weflux serve` (development defaults) with WEFLUX_REQUEST_BODY_TIMEOUT=2s."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEFLUX_")}
    env["WEFLUX_REQUEST_BODY_TIMEOUT"] = f"{BODY_TIMEOUT_SECONDS}s"
    process = subprocess.Popen(
        [sys.executable, "-m", "weflux", "serve", "--port", str(port)],
        cwd=tmp_path_factory.mktemp("serve"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120  # a cold start took 30-50 s under load
        while True:
            assert process.poll() is None, "the server exited"
            assert time.monotonic() < deadline, "the server did not start"
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        yield port
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _connect(port: int) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", port), timeout=GENEROUS)
    connection.settimeout(GENEROUS)
    return connection


def _answer_then_close(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or GENEROUS passes)."""
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    return received


def test_a_body_shorter_than_declared_is_answered_408_and_closed(server: int) -> None:
    """Given a client that declares 100 bytes and sends 24,
    when the body timeout passes, then it is answered 408 and its connection closed,
    and other requests were served meanwhile."""
    with _connect(server) as stalled:
        stalled.sendall(STALLED)
        for _ in range(3):
            assert httpx.get(f"http://127.0.0.1:{server}/healthz", timeout=5).status_code == 200
        answer = _answer_then_close(stalled)  # within GENEROUS: the socket's own timeout
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"connection: close" in answer.lower()
    assert b'"code":"TIMEOUT"' in answer


def test_a_body_dripped_a_byte_at_a_time_is_cut_at_the_timeout(server: int) -> None:
    """Given a client that sends its body one byte every 0.2 s (each read is quick,
    the whole is slow), when the timeout passes, then it is answered 408 and closed."""
    with _connect(server) as dripping:
        head, _, body = STALLED.partition(b"\r\n\r\n")
        dripping.sendall(head + b"\r\n\r\n")
        answer = b""
        for byte in (body + b"x" * 100)[:99]:
            try:
                dripping.sendall(bytes([byte]))
            except OSError:
                break
            dripping.settimeout(0.2)
            try:
                answer += dripping.recv(65536)
            except TimeoutError:
                continue
            if answer:
                break
        dripping.settimeout(GENEROUS)
        answer += _answer_then_close(dripping)
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_an_answer_before_the_body_closes_the_connection(server: int) -> None:
    """Given a POST /graphql without a token whose body never completes,
    when it is refused (401) before its body is read, then the connection is closed
    rather than left waiting for the rest of the body."""
    with _connect(server) as refused:
        refused.sendall(STALLED.replace(b"/auth/login", b"/graphql"))
        answer = _answer_then_close(refused)
    assert answer.startswith(b"HTTP/1.1 401 ")
    assert b"connection: close" in answer.lower()
