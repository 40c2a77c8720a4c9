"""TLS in transit: `weflux serve` speaks TLS 1.2+ with AEAD suites only, and production
refuses plain-text URLs to the database, Redis and Meta on other hosts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from tests.fixtures.databases import DatabaseUrls
from tests.fixtures.live import free_port
from tests.fixtures.settings import PRODUCTION_MAIL, make_settings
from tests.fixtures.tls import CertificatePair, make_certificate
from weflux.config import ConfigError
from weflux.db import Database
from weflux.realtime.broker import Message, RedisBroker
from weflux.runtime import create_redis
from weflux.tls import (
    client_context,
    harden,
    plaintext_database_url,
    plaintext_redis_url,
    server_context,
)

# --- a real handshake against `weflux serve` ------------------------------------------

CBC_SUITES = "ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA:ECDHE-ECDSA-AES128-SHA"


def _client(cert: CertificatePair, *, low: ssl.TLSVersion, high: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cert.certfile)
    context.minimum_version = low
    context.maximum_version = high
    return context


def _handshake(port: int, context: ssl.SSLContext) -> tuple[str, str]:
    """(protocol, cipher) of a completed handshake; ssl.SSLError when it fails."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        cipher = tls.cipher()
        assert cipher is not None
        return str(tls.version()), cipher[0]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> CertificatePair:
    return make_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_server(
    certificate: CertificatePair, database_urls: DatabaseUrls, tmp_path: Path
) -> Iterator[int]:
    """`weflux serve --ssl-certfile … --ssl-keyfile …` as a real process; its port."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEFLUX_")} | {
        "WEFLUX_ENV": "test",
        "WEFLUX_DATABASE_URL": database_urls.app,
        "WEFLUX_DATABASE_MIGRATION_URL": database_urls.owner,
        "WEFLUX_JWT_SECRET": "x" * 40,
        "WEFLUX_ENCRYPTION_KEYS": "k1:" + "A" * 43 + "=",
        "WEFLUX_VAR_DIR": str(tmp_path / "var"),
    }
    command = [sys.executable, "-m", "weflux", "serve", "--port", str(port), "--no-worker"]
    command += [
        "--ssl-certfile",
        str(certificate.certfile),
        "--ssl-keyfile",
        str(certificate.keyfile),
    ]
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 120  # a cold start took 30-50 s under load
        while True:
            if process.poll() is not None:
                raise AssertionError(f"serve exited with {process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("serve did not listen in time") from None
                time.sleep(0.1)
        yield port
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


# The tests offer TLS 1.1 on purpose.
old_protocols = pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")


@contextlib.contextmanager
def one_shot_server(context: ssl.SSLContext) -> Iterator[int]:
    """A TLS server on a free port that accepts handshakes until the block ends."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = int(listener.getsockname()[1])
    done = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with contextlib.suppress(OSError), context.wrap_socket(conn, server_side=True):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        done.set()
        thread.join()
        listener.close()


@old_protocols
def test_the_client_can_speak_tls_1_1_and_cbc_where_a_server_allows_it(
    certificate: CertificatePair,
) -> None:
    """The control for the test below: its failures come from our policy, not the client.
    A permissive server completes TLS 1.1 and a CBC suite; the same context, hardened,
    refuses both."""
    permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    permissive.load_cert_chain(certificate.certfile, certificate.keyfile)
    permissive.minimum_version = ssl.TLSVersion.TLSv1_1
    permissive.set_ciphers("DEFAULT:@SECLEVEL=0")
    v11 = _client(certificate, low=ssl.TLSVersion.TLSv1_1, high=ssl.TLSVersion.TLSv1_1)
    v11.set_ciphers("DEFAULT:@SECLEVEL=0")
    cbc = _client(certificate, low=ssl.TLSVersion.TLSv1_2, high=ssl.TLSVersion.TLSv1_2)
    cbc.set_ciphers(CBC_SUITES)
    with one_shot_server(permissive) as port:
        assert _handshake(port, v11)[0] == "TLSv1.1"
        assert _handshake(port, cbc)[1] in CBC_SUITES.split(":")
    with one_shot_server(harden(permissive)) as port:
        for refused in (v11, cbc):
            with pytest.raises(ssl.SSLError):
                _handshake(port, refused)


@old_protocols
@pytest.mark.parametrize("dialect", ["sqlite"])
def test_weflux_serve_speaks_tls_1_2_and_1_3_with_aead_suites_only(
    tls_server: int, certificate: CertificatePair
) -> None:
    """Given `weflux serve` with a certificate the test made,
    when clients offer each protocol version and a CBC suite,
    then TLS 1.3 and 1.2 (AEAD) complete, TLS 1.1 and the CBC suite fail, and HTTPS
    answers carry HSTS."""
    v13 = _client(certificate, low=ssl.TLSVersion.TLSv1_3, high=ssl.TLSVersion.TLSv1_3)
    assert _handshake(tls_server, v13)[0] == "TLSv1.3"

    v12 = _client(certificate, low=ssl.TLSVersion.TLSv1_2, high=ssl.TLSVersion.TLSv1_2)
    protocol, cipher = _handshake(tls_server, v12)
    assert protocol == "TLSv1.2"
    assert "GCM" in cipher or "CHACHA20" in cipher

    # The client is willing (security level 0 lets OpenSSL offer TLS 1.1); the server is not.
    v11 = _client(certificate, low=ssl.TLSVersion.TLSv1_1, high=ssl.TLSVersion.TLSv1_1)
    v11.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError):
        _handshake(tls_server, v11)

    cbc = _client(certificate, low=ssl.TLSVersion.TLSv1_2, high=ssl.TLSVersion.TLSv1_2)
    cbc.set_ciphers(CBC_SUITES)
    with pytest.raises(ssl.SSLError):
        _handshake(tls_server, cbc)

    verify = _client(certificate, low=ssl.TLSVersion.TLSv1_2, high=ssl.TLSVersion.TLSv1_3)
    response = httpx.get(f"https://127.0.0.1:{tls_server}/healthz", verify=verify, timeout=5)
    assert response.status_code == 200
    assert response.headers["strict-transport-security"].startswith("max-age=")


def test_serve_refuses_half_a_certificate_pair(
    certificate: CertificatePair, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEFLUX_")}
    result = subprocess.run(
        [sys.executable, "-m", "weflux", "serve", "--ssl-certfile", str(certificate.certfile)],
        cwd=tmp_path,
        env=env | {"WEFLUX_ENV": "test", "WEFLUX_VAR_DIR": str(tmp_path / "var")},
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert b"--ssl-keyfile" in result.stderr


@old_protocols
def test_outbound_context_verifies_and_needs_tls_1_2(
    certificate: CertificatePair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The context of calls to Meta (and the rule SMTP follows): an unknown CA fails; the
    same server with its CA trusted succeeds; a server stuck at TLS 1.1 fails."""
    server = server_context(str(certificate.certfile), str(certificate.keyfile))
    with one_shot_server(server) as port:
        with pytest.raises(ssl.SSLCertVerificationError):
            _handshake(port, client_context())
        monkeypatch.setenv("SSL_CERT_FILE", str(certificate.certfile))
        assert _handshake(port, client_context())[0] in ("TLSv1.2", "TLSv1.3")
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    old.load_cert_chain(certificate.certfile, certificate.keyfile)
    old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    with one_shot_server(old) as port, pytest.raises(ssl.SSLError):
        _handshake(port, client_context())


# --- plain text refused in production ---------------------------------------------------


@pytest.mark.parametrize(
    ("url", "plaintext"),
    [
        ("redis://127.0.0.1:6379/0", False),
        ("redis://localhost:6379/0", False),
        ("redis://[::1]:6379/0", False),
        ("unix:///run/redis.sock", False),
        ("rediss://cache.internal:6380/0", False),
        ("redis://cache.internal:6379/0", True),
        ("redis://:secret@10.0.0.5:6379/0", True),
    ],
)
def test_plaintext_redis_urls(url: str, plaintext: bool) -> None:
    assert plaintext_redis_url(url) is plaintext


@pytest.mark.parametrize(
    ("url", "plaintext"),
    [
        ("sqlite+aiosqlite:///var/weflux.db", False),
        ("postgresql+asyncpg://app@127.0.0.1/weflux", False),
        ("postgresql+asyncpg://app@localhost/weflux", False),
        ("postgresql+asyncpg://app@/weflux?host=/run/postgresql", False),
        ("postgresql+asyncpg://app@db.internal/weflux?ssl=require", False),
        ("postgresql+asyncpg://app@db.internal/weflux?ssl=verify-full", False),
        ("postgresql+asyncpg://app@db.internal/weflux", True),
        ("postgresql+asyncpg://app@db.internal/weflux?ssl=prefer", True),
        ("postgresql+asyncpg://app@10.0.0.7:5432/weflux?ssl=disable", True),
    ],
)
def test_plaintext_database_urls(
    url: str, plaintext: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PGSSLMODE", raising=False)
    assert plaintext_database_url(url) is plaintext


def test_pgsslmode_in_the_environment_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGSSLMODE", "verify-full")
    assert not plaintext_database_url("postgresql+asyncpg://app@db.internal/weflux")


PRODUCTION = {"env": "production", **PRODUCTION_MAIL}


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"redis_url": "redis://cache.internal:6379/0"}, "WEFLUX_REDIS_URL"),
        ({"database_url": "postgresql+asyncpg://app@db.internal/weflux"}, "WEFLUX_DATABASE_URL"),
        (
            {
                "database_url": "postgresql+asyncpg://app@db.internal/weflux?ssl=require",
                "database_migration_url": "postgresql+asyncpg://owner@db.internal/weflux",
            },
            "WEFLUX_DATABASE_MIGRATION_URL",
        ),
        ({"meta_graph_url": "http://graph.example"}, "WEFLUX_META_GRAPH_URL"),
    ],
)
def test_production_refuses_plain_text_to_other_hosts_naming_the_variable(
    tmp_path: Path, overrides: dict[str, str], variable: str
) -> None:
    with pytest.raises(ConfigError, match=variable):
        make_settings(tmp_path, **PRODUCTION, **overrides)


def test_allow_insecure_transport_lets_a_trusted_network_through(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        **PRODUCTION,
        redis_url="redis://cache.internal:6379/0",
        database_url="postgresql+asyncpg://app@db.internal/weflux",
        allow_insecure_transport=True,
    )
    assert settings.redis_url == "redis://cache.internal:6379/0"
    # Meta is never exempt.
    with pytest.raises(ConfigError, match="WEFLUX_META_GRAPH_URL"):
        make_settings(
            tmp_path,
            **PRODUCTION,
            meta_graph_url="http://graph.example",
            allow_insecure_transport=True,
        )


def test_production_accepts_tls_urls(tmp_path: Path) -> None:
    make_settings(
        tmp_path,
        **PRODUCTION,
        redis_url="rediss://cache.internal:6380/0",
        database_url="postgresql+asyncpg://app@db.internal/weflux?ssl=verify-full",
        meta_graph_url="https://graph.facebook.com",
    )


def test_sslmode_is_refused_with_asyncpgs_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ssl=require"):
        make_settings(tmp_path, database_url="postgresql+asyncpg://app@db/weflux?sslmode=require")


# --- Redis over TLS ------------------------------------------------------------------


@pytest.fixture
def tls_redis(certificate: CertificatePair, tmp_path: Path) -> Iterator[int]:
    """A private redis-server speaking only TLS on a free port (skipped where the
    machine's redis-server has no `--tls-port`: then only the refusal logic is tested)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server on this machine: only the refusal logic is tested")
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            str(certificate.certfile),
            "--tls-key-file",
            str(certificate.keyfile),
            "--tls-ca-cert-file",
            str(certificate.certfile),
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            if process.poll() is not None:
                output = process.communicate()[0].decode(errors="replace")
                if "tls" in output.lower():
                    pytest.skip("redis-server lacks TLS support: only the refusal logic is tested")
                raise AssertionError(f"redis-server exited: {output[-500:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("redis-server did not listen in time") from None
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        try:
            process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


@pytest.mark.redis
async def test_rediss_urls_work_end_to_end_and_verify_the_server(
    tls_redis: int, certificate: CertificatePair
) -> None:
    """Given a redis-server that speaks only TLS,
    when the app's Redis client (and its broker) connect with `rediss://`,
    then commands and pub/sub work; without the CA the certificate is refused, and plain
    `redis://` to the TLS port gets nowhere."""
    url = f"rediss://127.0.0.1:{tls_redis}/0?ssl_ca_certs={certificate.certfile}"
    client = create_redis(url)
    try:
        assert await client.ping()
        await client.set("weflux:tls", "yes")
        assert await client.get("weflux:tls") == b"yes"
        broker = RedisBroker(client)
        await broker.start()
        try:
            await broker.wait_connected()
            received: asyncio.Queue[Message] = asyncio.Queue()
            await broker.subscribe("tls-test", received.put)
            await broker.publish("tls-test", {"over": "tls"})
            assert await asyncio.wait_for(received.get(), 5) == {"over": "tls"}
        finally:
            await broker.stop()
    finally:
        await client.aclose()

    unverified = create_redis(f"rediss://127.0.0.1:{tls_redis}/0")  # system CAs only
    try:
        with pytest.raises(RedisConnectionError, match="certificate verify failed"):
            await unverified.ping()
    finally:
        await unverified.aclose()
    plain = create_redis(f"redis://127.0.0.1:{tls_redis}/0")
    try:
        with pytest.raises(RedisError):
            await plain.ping()
    finally:
        await plain.aclose()


# --- PostgreSQL's ssl option ----------------------------------------------------------


@pytest.mark.parametrize("dialect", ["postgresql"])
async def test_the_postgresql_ssl_option_reaches_the_driver(database_urls: DatabaseUrls) -> None:
    """This machine's PostgreSQL has TLS off, so `ssl=require` must fail to connect (the
    option is honoured, never silently dropped) while the same URL without it connects.
    The encrypted path itself is asyncpg's: see docs/operations/tls.md."""
    separator = "&" if "?" in database_urls.app else "?"
    required = Database(f"{database_urls.app}{separator}ssl=require")
    try:
        with pytest.raises(ConnectionError, match="SSL"):
            await required.ping()
    finally:
        await required.dispose()
    plain = Database(database_urls.app)
    try:
        await plain.ping()
    finally:
        await plain.dispose()
