"""Vulnerability disclosure: `/.well-known/security.txt` (RFC 9116) and our policy.

- `Contact:` is `WEFLUX_SECURITY_CONTACT` (a `mailto:`, `https:` or `tel:` URI).
- `Expires:` is 180 days ahead of the request, at midnight UTC: always under a year
  (RFC 9116 §2.5.5) without anyone having to remember to bump it; the contact itself is
  reviewed with the deployment's configuration.
- `Policy:` is `WEFLUX_SECURITY_POLICY_URL`, or this app's own
  `/.well-known/security-policy`, which serves the commitments of SECURITY.md. Built from
  the request, it is `https://` in production, which is served over TLS (its HSTS says
  so), often by a proxy that speaks plain HTTP to the app: only a request to this
  machine's own name (localhost, a loopback address) keeps `http://` there.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

from starlette.datastructures import URL
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from weflux.mail.url import is_loopback
from weflux.runtime import runtime_of

EXPIRES_AFTER = timedelta(days=180)
POLICY_PATH = "/.well-known/security-policy"
CACHE_CONTROL = "public, max-age=86400"

# The commitments of SECURITY.md at the repository's root: keep the two alike.
POLICY = """\
Weflux vulnerability disclosure policy

How to report: write to the contact in /.well-known/security.txt. Describe the issue,
how to reproduce it and its impact as you see it. Please do not access, change or
delete data that is not yours, do not degrade the service for others, and give us a
reasonable time to fix the issue before you publish it.

What we commit to:
- We acknowledge your report within 48 hours.
- We send you a status update (our assessment and the plan) within 7 days, and keep you
  informed until the issue is fixed.
- We credit you in the fix's release notes and advisory, if you wish, under the name you
  choose.
- We will not pursue legal action against research done in good faith within this
  policy.
"""


def expires(now: datetime) -> datetime:
    """The `Expires:` of a security.txt served at `now`."""
    return datetime.combine((now + EXPIRES_AFTER).date(), time(0), tzinfo=UTC)


def render_security_txt(contact: str, policy_url: str, now: datetime) -> str:
    """The body of security.txt (RFC 9116)."""
    return (
        f"Contact: {contact}\n"
        f"Expires: {expires(now).strftime('%Y-%m-%dT%H:%M:%SZ')}\n"
        f"Policy: {policy_url}\n"
        "Preferred-Languages: en\n"
    )


def own_policy_url(request: Request, production: bool) -> URL:
    """The URL of this app's policy, as the request reached it (https in production)."""
    url = request.url_for("security_policy")
    if production and url.scheme == "http" and not is_loopback(url.hostname or ""):
        return url.replace(scheme="https")
    return url


async def security_txt(request: Request) -> PlainTextResponse:
    """RFC 9116's security contact."""
    settings = runtime_of(request).settings
    if settings.security_policy_url is not None:
        policy_url, cache = settings.security_policy_url, CACHE_CONTROL
    else:
        # Built from the request's Host: a shared cache must not keep it for other hosts.
        policy_url, cache = str(own_policy_url(request, settings.is_production)), "no-cache"
    body = render_security_txt(settings.security_contact, policy_url, datetime.now(UTC))
    return PlainTextResponse(body, headers={"Cache-Control": cache})


async def security_policy(request: Request) -> PlainTextResponse:
    """The disclosure policy security.txt points at."""
    return PlainTextResponse(POLICY, headers={"Cache-Control": CACHE_CONTROL})


routes = [
    Route("/.well-known/security.txt", security_txt, methods=["GET"]),
    Route(POLICY_PATH, security_policy, methods=["GET"], name="security_policy"),
]
