"""`/.well-known/security.txt` (RFC 9116) and the policy it points at."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.fixtures.app import ClientFactory
from tests.fixtures.settings import PRODUCTION_MAIL
from weflux.api.disclosure import expires, render_security_txt

pytestmark = pytest.mark.usefixtures("dialect")


def fields(body: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in body.splitlines():
        name, _, value = line.partition(": ")
        found.setdefault(name, []).append(value)
    return found


async def test_security_txt_names_contact_expiry_policy_and_language(
    client: httpx.AsyncClient,
) -> None:
    """Given the defaults, when anyone (no token) asks for security.txt,
    then it is plain text with the required Contact and Expires (under a year ahead),
    the Policy, and English as the preferred language."""
    response = await client.get("/.well-known/security.txt")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    found = fields(response.text)
    assert found["Contact"] == ["mailto:security@serves.in"]
    assert found["Preferred-Languages"] == ["en"]
    expiry = datetime.fromisoformat(found["Expires"][0])
    now = datetime.now(UTC)
    assert now + timedelta(days=150) < expiry < now + timedelta(days=365)
    assert found["Policy"] == ["http://testserver/.well-known/security-policy"]
    assert response.headers["cache-control"] == "no-cache"  # named after the Host header

    policy = await client.get("/.well-known/security-policy")
    assert policy.status_code == 200
    for commitment in ("48 hours", "7 days", "credit"):
        assert commitment in policy.text


async def test_security_txt_uses_the_configured_contact_and_policy(
    make_client: ClientFactory,
) -> None:
    async with make_client(
        security_contact="https://example.com/report",
        security_policy_url="https://example.com/security-policy",
    ) as client:
        response = await client.get("/.well-known/security.txt")
    found = fields(response.text)
    assert response.headers["cache-control"] == "public, max-age=86400"
    assert found["Contact"] == ["https://example.com/report"]
    assert found["Policy"] == ["https://example.com/security-policy"]


def test_expiry_is_midnight_utc_180_days_ahead() -> None:
    now = datetime(2026, 12, 5, 15, 30, tzinfo=UTC)
    assert expires(now) == datetime(2027, 6, 3, tzinfo=UTC)
    body = render_security_txt("mailto:a@b.example", "https://b.example/p", now)
    assert "Expires: 2027-06-03T00:00:00Z\n" in body


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("security_contact", "security@serves.in"),
        ("security_contact", "http://example.com/report"),
        ("security_policy_url", "http://example.com/policy"),
    ],
)
async def test_bad_contact_or_policy_is_refused(
    make_client: ClientFactory, name: str, value: str
) -> None:
    with pytest.raises(ValueError, match="RFC 9116"):
        async with make_client(**{name: value}):
            pass


@pytest.mark.parametrize(
    ("env", "base_url", "policy"),
    [
        # Behind a proxy that terminates TLS the app hears plain HTTP
        ("production", "http://api.example", "https://api.example/.well-known/security-policy"),
        ("production", "https://api.example", "https://api.example/.well-known/security-policy"),
        # A check from the machine itself, and development, follow the request
        (
            "production",
            "http://127.0.0.1:8000",
            "http://127.0.0.1:8000/.well-known/security-policy",
        ),
        ("production", "http://localhost", "http://localhost/.well-known/security-policy"),
        ("test", "http://api.example", "http://api.example/.well-known/security-policy"),
    ],
)
async def test_in_production_the_policy_url_is_https_unless_asked_locally(
    make_client: ClientFactory, env: str, base_url: str, policy: str
) -> None:
    """Given no WEFLUX_SECURITY_POLICY_URL, when security.txt is asked for,
    then in production its Policy is https (production is served over TLS, as its HSTS
    says, often by a proxy that speaks plain HTTP to the app) unless the request came to
    this machine's own name; elsewhere it follows the request's scheme."""
    extra = {"env": "production", **PRODUCTION_MAIL} if env == "production" else {}
    async with make_client(base_url=base_url, **extra) as client:
        response = await client.get("/.well-known/security.txt")
    assert response.status_code == 200, response.text
    assert fields(response.text)["Policy"] == [policy]
