"""A real identity provider's tokens: RS256/ES256 from a JWKS served on loopback.

The provider is a tiny ``http.server`` on a free port that publishes whatever keys the
test puts in it and counts how often it was asked; the migration server is the real app
with :class:`~backend_stub.settings.IdentitySettings` pointing at it.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from server_fixtures import TestClient

from backend_stub import Settings, create_app, issue_token
from backend_stub.__main__ import main
from backend_stub.identity import JwksVerifier
from backend_stub.problems import ApiError
from backend_stub.settings import DEV_JWT_SECRET, IdentitySettings
from sdk.contract import PROBLEM_CONTENT_TYPE

ISSUER = "https://idp.test/"
AUDIENCE = "migration-api"
DETECT = "/api/migration/alice/detect"


@dataclasses.dataclass
class Key:
    """A signing key of the provider: the private half and its public JWK."""

    kid: str
    algorithm: str
    private: Any

    @property
    def jwk(self) -> dict[str, Any]:
        family = jwt.algorithms.RSAAlgorithm if self.algorithm[0] in "RP" else None
        public = self.private.public_key()
        if family is None:
            jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(public))
        else:
            jwk = json.loads(family.to_jwk(public))
        return {**jwk, "kid": self.kid, "use": "sig", "alg": self.algorithm}

    def public_pem(self) -> bytes:
        return bytes(
            self.private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def sign(self, **overrides: Any) -> str:
        """A token for alice from this key; ``overrides`` change claims (``None`` drops)."""
        now = int(time.time())
        claims = {"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600}
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(claims, self.private, algorithm=self.algorithm, headers={"kid": self.kid})


@pytest.fixture(scope="module")
def rsa_key() -> Key:
    return Key("rsa-1", "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture(scope="module")
def rotated_key() -> Key:
    return Key("rsa-2", "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture(scope="module")
def ec_key() -> Key:
    return Key("ec-1", "ES256", ec.generate_private_key(ec.SECP256R1()))


class Provider:
    """The identity provider's JWKS endpoint on a loopback port."""

    def __init__(self) -> None:
        self.keys: list[Key] = []
        self.hits = 0
        self.status = 200
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.hits += 1
                body = json.dumps({"keys": [k.jwk for k in provider.keys]}).encode()
                self.send_response(provider.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()
        self.thread.join()

    def identity(self, **overrides: Any) -> IdentitySettings:
        values: dict[str, Any] = {"jwks_url": self.url, "issuer": ISSUER, "audience": (AUDIENCE,)}
        return IdentitySettings(**{**values, **overrides})


@pytest.fixture
def provider(rsa_key: Key, ec_key: Key) -> Iterator[Provider]:
    running = Provider()
    running.keys = [rsa_key, ec_key]
    try:
        yield running
    finally:
        running.close()


def serving(identity: IdentitySettings) -> TestClient:
    return TestClient(create_app(Settings(identity=identity)))


def detect(client: httpx.Client, token: str, path: str = DETECT) -> httpx.Response:
    return client.get(path, headers={"Authorization": f"Bearer {token}"})


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged_hs256(key: Key, secret: bytes) -> str:
    """An HS256 token naming ``key``'s kid, its MAC keyed with ``secret`` (PyJWT refuses
    to make one with a public key, which is the point)."""
    now = int(time.time())
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid}).encode())
    claims = {"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 600}
    payload = _b64(json.dumps(claims).encode())
    mac = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(mac)}"


def unsigned(key: Key) -> str:
    now = int(time.time())
    header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": key.kid}).encode())
    claims = {"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 600}
    return f"{header}.{_b64(json.dumps(claims).encode())}."


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_a_token_signed_by_the_providers_key_opens_the_users_endpoints(
    provider: Provider, rsa_key: Key, ec_key: Key, kind: str
) -> None:
    key = rsa_key if kind == "rsa" else ec_key
    with serving(provider.identity()) as client:
        answer = detect(client, key.sign())

    assert answer.status_code == 200, answer.text
    assert provider.hits == 1


def test_the_keys_are_fetched_once_and_reused_by_later_requests(
    provider: Provider, rsa_key: Key, ec_key: Key
) -> None:
    with serving(provider.identity()) as client:
        answers = [detect(client, key.sign()).status_code for key in (rsa_key, ec_key) * 3]

    assert answers == [200] * 6
    assert provider.hits == 1


def test_a_rotated_key_is_fetched_when_a_token_names_it_and_the_retired_key_stops_working(
    provider: Provider, rsa_key: Key, rotated_key: Key
) -> None:
    with serving(provider.identity(refetch_seconds=0)) as client:
        assert detect(client, rsa_key.sign()).status_code == 200
        provider.keys = [rotated_key]  # the provider rotates: the old key is withdrawn

        after = detect(client, rotated_key.sign())
        retired = detect(client, rsa_key.sign())

    assert after.status_code == 200, after.text
    assert provider.hits == 3  # first use, the new kid, the retired kid
    assert retired.status_code == 401
    assert "key the identity provider lacks" in retired.json()["detail"]


def test_made_up_key_ids_refetch_the_keys_at_most_once_per_interval(
    provider: Provider, rsa_key: Key
) -> None:
    clock = ManualClock()
    verifier = JwksVerifier(provider.identity(refetch_seconds=30), clock=clock)
    strangers = [dataclasses.replace(rsa_key, kid=f"made-up-{n}") for n in range(20)]

    refusals = []
    for stranger in strangers:
        with pytest.raises(ApiError) as refused:
            verifier.verify(stranger.sign())
        refusals.append(refused.value.status)
    fetched_in_the_flood = provider.hits
    clock.now += 30
    with pytest.raises(ApiError):
        verifier.verify(strangers[0].sign())

    assert refusals == [401] * 20
    assert fetched_in_the_flood == 2  # the first use, then one refetch for the unknown kids
    assert provider.hits == 3
    assert verifier.verify(rsa_key.sign()) == "alice"


def test_made_up_key_ids_while_the_provider_is_down_do_not_lock_out_known_keys(
    provider: Provider, rsa_key: Key
) -> None:
    clock = ManualClock()
    verifier = JwksVerifier(provider.identity(refetch_seconds=30), clock=clock)
    assert verifier.verify(rsa_key.sign()) == "alice"
    provider.status = 500
    clock.now += 30

    with pytest.raises(ApiError) as refused:
        verifier.verify(dataclasses.replace(rsa_key, kid="made-up").sign())

    assert refused.value.status == 503
    assert verifier.verify(rsa_key.sign()) == "alice"
    assert provider.hits == 2


def test_the_keys_are_fetched_again_when_the_cache_expires_so_a_withdrawn_key_stops_working(
    provider: Provider, rsa_key: Key, ec_key: Key
) -> None:
    clock = ManualClock()
    verifier = JwksVerifier(provider.identity(cache_seconds=600), clock=clock)
    assert verifier.verify(rsa_key.sign()) == "alice"
    provider.keys = [ec_key]  # the RSA key is withdrawn
    clock.now += 599
    still_cached = verifier.verify(rsa_key.sign())
    clock.now += 1

    with pytest.raises(ApiError) as refused:
        verifier.verify(rsa_key.sign())

    assert still_cached == "alice"
    assert refused.value.status == 401
    assert provider.hits == 2
    assert verifier.verify(ec_key.sign()) == "alice"


@dataclasses.dataclass(frozen=True)
class Ago:
    """A time claim ``seconds`` before the moment the token is signed (negative: after):
    computed when the test runs, never when the suite is collected minutes earlier."""

    seconds: int


def at_now(claims: dict[str, Any]) -> dict[str, Any]:
    now = int(time.time())
    return {k: now - v.seconds if isinstance(v, Ago) else v for k, v in claims.items()}


@pytest.mark.parametrize(
    ("overrides", "detail"),
    [
        pytest.param({"aud": "another-app"}, "another audience", id="wrong-audience"),
        pytest.param({"aud": None}, "'aud' claim", id="no-audience"),
        pytest.param({"iss": "https://evil.test/"}, "another issuer", id="wrong-issuer"),
        pytest.param({"iss": None}, "'iss' claim", id="no-issuer"),
        pytest.param({"exp": None}, "'exp' claim", id="no-expiry"),
        pytest.param({"sub": None}, "'sub' claim", id="no-subject"),
        pytest.param({"exp": Ago(31)}, "expired", id="expired-over-leeway"),
        pytest.param({"nbf": Ago(-120)}, "invalid", id="not-yet-valid"),
    ],
)
def test_a_token_with_the_wrong_claims_is_refused_with_401(
    provider: Provider, rsa_key: Key, overrides: dict[str, Any], detail: str
) -> None:
    with serving(provider.identity(leeway=30)) as client:
        answer = detect(client, rsa_key.sign(**at_now(overrides)))

    assert answer.status_code == 401
    assert answer.headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert answer.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert detail in answer.json()["detail"]


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"exp": Ago(20)}, id="expired-within-leeway"),
        pytest.param({"nbf": Ago(-20)}, id="valid-soon-within-leeway"),
        pytest.param({"aud": ["other-app", AUDIENCE]}, id="one-of-several-audiences"),
    ],
)
def test_a_token_within_the_leeway_or_naming_our_audience_among_others_is_accepted(
    provider: Provider, rsa_key: Key, overrides: dict[str, Any]
) -> None:
    with serving(provider.identity(leeway=30)) as client:
        answer = detect(client, rsa_key.sign(**at_now(overrides)))

    assert answer.status_code == 200, answer.text


def test_forged_and_confused_tokens_are_refused_without_asking_the_provider(
    provider: Provider, rsa_key: Key, ec_key: Key
) -> None:
    ps256 = dataclasses.replace(rsa_key, algorithm="PS256")
    forged = {
        "alg-none": unsigned(rsa_key),
        "hs256-keyed-with-the-public-key": forged_hs256(rsa_key, rsa_key.public_pem()),
        "hs256-with-the-dev-secret": forged_hs256(rsa_key, DEV_JWT_SECRET.encode()),
        "dev-token": issue_token("alice", DEV_JWT_SECRET),
        "algorithm-not-accepted": ps256.sign(),
        "garbage": "not-a-jwt",
    }
    with serving(provider.identity()) as client:
        answers = {kind: detect(client, token) for kind, token in forged.items()}

    assert {kind: a.status_code for kind, a in answers.items()} == dict.fromkeys(forged, 401)
    assert all(a.headers["content-type"] == PROBLEM_CONTENT_TYPE for a in answers.values())
    assert provider.hits == 0


def test_a_header_algorithm_that_does_not_match_its_key_is_refused(
    provider: Provider, rsa_key: Key, ec_key: Key
) -> None:
    # Signed by the EC key but claiming the RSA key's kid: the algorithm/key pair lies.
    liar = dataclasses.replace(ec_key, kid=rsa_key.kid)
    with serving(provider.identity()) as client:
        answer = detect(client, liar.sign())

    assert answer.status_code == 401
    assert "does not match its key" in answer.json()["detail"]


def test_a_token_signed_by_an_impostor_key_with_a_known_kid_is_refused(
    provider: Provider, rsa_key: Key
) -> None:
    impostor = Key(rsa_key.kid, "RS256", rsa.generate_private_key(65537, 2048))
    with serving(provider.identity()) as client:
        answer = detect(client, impostor.sign())

    assert answer.status_code == 401
    assert answer.json()["detail"] == "the bearer token is invalid: get a new one"


def test_a_valid_token_for_another_user_is_forbidden(provider: Provider, rsa_key: Key) -> None:
    with serving(provider.identity()) as client:
        answer = detect(client, rsa_key.sign(sub="bob"))

    assert answer.status_code == 403
    assert answer.json()["code"] == "forbidden"


def test_an_unreachable_jwks_answers_503_with_retry_after_and_is_not_hammered(
    provider: Provider, rsa_key: Key
) -> None:
    provider.status = 500
    clock = ManualClock()
    verifier = JwksVerifier(provider.identity(refetch_seconds=30), clock=clock)
    app = create_app(Settings(identity=provider.identity()))
    app.state.token_verifier = verifier  # the same verifier the app builds, with our clock

    with TestClient(app) as client:
        down = [detect(client, rsa_key.sign()) for _ in range(5)]
        asked_while_down = provider.hits
        provider.status = 200
        still_waiting = detect(client, rsa_key.sign())
        clock.now += 30
        back = detect(client, rsa_key.sign())

    assert [a.status_code for a in down] == [503] * 5
    assert down[0].headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert down[0].headers["retry-after"] == "30"
    assert "retry later" in down[0].json()["detail"]
    assert asked_while_down == 1
    assert still_waiting.status_code == 503
    assert back.status_code == 200, back.text


def test_a_jwks_on_a_closed_port_answers_503_not_500(rsa_key: Key) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    identity = IdentitySettings(
        jwks_url=f"http://127.0.0.1:{port}/jwks.json", issuer=ISSUER, audience=(AUDIENCE,)
    )
    with serving(identity) as client:
        answer = detect(client, rsa_key.sign())

    assert answer.status_code == 503
    assert answer.headers["content-type"] == PROBLEM_CONTENT_TYPE


ENV = {
    "MIGRATION_JWKS_URL": "https://idp.test/.well-known/jwks.json",
    "MIGRATION_JWT_ISSUER": ISSUER,
    "MIGRATION_JWT_AUDIENCE": AUDIENCE,
}


def test_the_identity_settings_come_from_the_environment() -> None:
    env = {
        **ENV,
        "MIGRATION_JWT_AUDIENCE": "a, b",
        "MIGRATION_JWT_ALGORITHMS": "ES256",
        "MIGRATION_JWT_LEEWAY": "5",
        "MIGRATION_JWKS_CACHE_SECONDS": "60",
        "MIGRATION_JWKS_REFETCH_SECONDS": "10",
        "MIGRATION_JWKS_TIMEOUT": "2.5",
    }

    identity = Settings.from_env(env).identity

    assert identity == IdentitySettings(
        jwks_url=ENV["MIGRATION_JWKS_URL"],
        issuer=ISSUER,
        audience=("a", "b"),
        algorithms=("ES256",),
        leeway=5,
        cache_seconds=60,
        refetch_seconds=10,
        timeout=2.5,
    )
    assert Settings.from_env({}).identity is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        pytest.param(
            {"MIGRATION_JWT_AUDIENCE": "a"}, "MIGRATION_JWKS_URL is not", id="audience-alone"
        ),
        pytest.param(
            {**ENV, "MIGRATION_JWT_ISSUER": ""}, "MIGRATION_JWT_ISSUER is needed", id="no-issuer"
        ),
        pytest.param(
            {**ENV, "MIGRATION_JWT_AUDIENCE": " "}, "MIGRATION_JWT_AUDIENCE is needed", id="no-aud"
        ),
        pytest.param(
            {**ENV, "MIGRATION_JWKS_URL": "http://idp.test/jwks"}, "https://", id="plain-http"
        ),
        pytest.param({**ENV, "MIGRATION_JWT_ALGORITHMS": "RS256,HS256"}, "ALGORITHMS", id="hs256"),
        pytest.param({**ENV, "MIGRATION_JWT_ALGORITHMS": "none"}, "ALGORITHMS", id="alg-none"),
        pytest.param({**ENV, "MIGRATION_JWT_LEEWAY": "soon"}, "must be a number", id="leeway"),
        pytest.param({**ENV, "MIGRATION_JWT_LEEWAY": "3600"}, "LEEWAY", id="leeway-too-big"),
        pytest.param({**ENV, "MIGRATION_JWKS_TIMEOUT": "0"}, "TIMEOUT", id="timeout"),
        pytest.param({**ENV, "MIGRATION_JWT_SECRET": "x" * 40}, "both set", id="secret-and-jwks"),
    ],
)
def test_bad_identity_settings_are_refused_with_a_message_naming_the_variable(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match="invalid MIGRATION_") as refused:
        Settings.from_env(env)

    assert message in str(refused.value)


def test_the_token_command_refuses_to_mint_when_an_identity_provider_is_configured(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in list(os.environ):
        if name.startswith("MIGRATION_"):
            monkeypatch.delenv(name)
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)

    status = main(["token", "alice"])

    assert status == 1
    assert "get one from the identity provider" in capsys.readouterr().err


def test_the_server_says_on_start_that_hs256_tokens_are_a_development_mode(
    tmp_path: Path,
) -> None:
    from test_server_process import serving as serving_process

    log = tmp_path / "stderr.log"
    with serving_process(tmp_path / "data", log):
        pass

    assert "WARNING backend_stub.identity development mode: bearer tokens are HS256" in (
        log.read_text()
    )
