"""Set-up mistakes fail fast with a message saying what to check; they are never taken for
being offline. Each runs against a real socket on loopback: a plain-HTTP server contacted
with https://, a TLS server whose certificate no CA vouches for, a URL that is not the
migration server's. Plus the library's logging manners in an app that configured none."""

from __future__ import annotations

import contextlib
import datetime
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sdk_fixtures import learning_items, make_store

from sdk import (
    AutoState,
    ConfigurationError,
    EndpointError,
    MigrationError,
    OfflineError,
    RetryPolicy,
    auto_migrate,
)
from sdk._transport.http import Transport

TWO_TRIES = RetryPolicy(attempts=2, initial=0.0, max_delay=0.0, jitter=0.0)


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def serve(handle) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """Accept connections on a loopback port in a thread, each given to ``handle``."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    over = threading.Event()

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            if over.is_set():  # the connection that wakes this thread: the test is over
                conn.close()
                return
            # OSError: the client gave up on the handshake, as the test expects.
            with conn, contextlib.suppress(OSError):
                handle(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        # Closing the listener does not wake a thread blocked in accept(): a last
        # connection does.
        over.set()
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=10).close()
        thread.join(10)
        listener.close()
        assert not thread.is_alive()


@pytest.fixture
def self_signed_tls_server(tmp_path: Path) -> Iterator[str]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*self_signed_cert(tmp_path))

    def handshake(conn: socket.socket) -> None:
        with context.wrap_socket(conn, server_side=True):
            pass

    yield from serve(handshake)


@pytest.fixture
def hang_up_server() -> Iterator[str]:
    """Closes every connection at once: a network cut during the TLS handshake."""
    yield from serve(lambda conn: None)


def transport(url: str, sleeps: list[float]) -> Transport:
    return Transport.from_url(url, user_id="u1", token="t", retry=TWO_TRIES, sleep=sleeps.append)


def detect(t: Transport) -> None:
    t.detect(has_local_data=True, item_count=1, data_version=1, device_id="d1")


def test_https_to_a_plain_http_server_is_an_endpoint_error_at_the_first_try(live_server):
    sleeps: list[float] = []
    url = live_server.url.replace("http://", "https://")
    with transport(url, sleeps) as t, pytest.raises(EndpointError) as caught:
        detect(t)
    message = str(caught.value)
    assert "TLS connection" in message and "check the URL's scheme and port" in message
    assert isinstance(caught.value, ConfigurationError) and not caught.value.retryable
    assert sleeps == []


def test_a_certificate_no_trusted_ca_signed_is_an_endpoint_error_at_the_first_try(
    self_signed_tls_server,
):
    sleeps: list[float] = []
    with (
        transport(f"https://{self_signed_tls_server}", sleeps) as t,
        pytest.raises(EndpointError) as caught,
    ):
        detect(t)
    message = str(caught.value)
    assert "SSLCertVerificationError" in message and "self-signed certificate" in message
    assert "issued by a CA this device trusts" in message
    assert sleeps == []


def test_a_connection_cut_during_the_tls_handshake_stays_offline_and_is_retried(
    hang_up_server,
):
    sleeps: list[float] = []
    with transport(f"https://{hang_up_server}", sleeps) as t, pytest.raises(OfflineError):
        detect(t)
    assert sleeps == [0.0]  # retried once, as any network failure


def test_a_url_that_is_not_the_migration_servers_fails_detect_with_an_endpoint_error(
    live_server,
):
    sleeps: list[float] = []
    with (
        transport(f"{live_server.url}/v2", sleeps) as t,
        pytest.raises(EndpointError, match="not the migration server's address"),
    ):
        detect(t)
    assert sleeps == []


@pytest.mark.parametrize(
    ("server", "message"),
    [
        pytest.param("https", "TLS connection", id="https-to-plain-http"),
        pytest.param("wrong-path", "answered 404", id="wrong-base-url"),
    ],
)
def test_the_startup_hook_reports_a_setup_mistake_through_on_failure_instead_of_retrying(
    live_server, tmp_path, server, message
):
    url = {
        "https": live_server.url.replace("http://", "https://"),
        "wrong-path": f"{live_server.url}/api",
    }[server]
    failures: list[MigrationError] = []
    migration = auto_migrate(
        server=url,
        user_id="setup-mistake",
        token=live_server.token("setup-mistake"),
        store_path=make_store(tmp_path / "store.sqlite3", learning_items(3)),
        on_failure=failures.append,
    )
    try:
        assert migration.wait(timeout=30) is AutoState.FAILED
    finally:
        migration.stop()
    assert len(failures) == 1 and isinstance(failures[0], EndpointError)
    assert message in str(failures[0])
    assert migration.status.error is failures[0]


RETRY_WARNING = """
import socket, sys
{setup}
from sdk import OfflineError, RetryPolicy
from sdk._transport.http import Transport
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]  # closed once the block ends: connections are refused
policy = RetryPolicy(attempts=2, initial=0.0, max_delay=0.0, jitter=0.0)
with Transport.from_url(f"http://127.0.0.1:{{port}}", user_id="u1", token="t",
                        retry=policy) as t:
    try:
        t.status()
    except OfflineError:
        print("offline")
"""


@pytest.mark.parametrize(
    ("setup", "warned"),
    [
        pytest.param("", False, id="no-logging-configured"),
        pytest.param("import logging; logging.basicConfig()", True, id="app-configured-logging"),
    ],
)
def test_retry_warnings_reach_stderr_only_when_the_app_configured_logging(setup, warned):
    done = subprocess.run(
        [sys.executable, "-c", RETRY_WARNING.format(setup=setup)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout == "offline\n", done.stderr
    assert ("retrying in" in done.stderr) is warned, done.stderr
    if not warned:
        assert done.stderr == ""
