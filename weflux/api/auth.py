"""`/auth/*`: sign-up and its confirmation, login and its second factor, refresh, logout,
re-authentication, workspace switching, invitation acceptance."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from weflux.api.validation import parse, read_json
from weflux.auth.tokens import bearer_token
from weflux.client_ip import request_meta
from weflux.emails import check_email
from weflux.errors import (
    BadUserInput,
    RateLimited,
    Unauthenticated,
    WefluxError,
    wefluxerror_response,
)
from weflux.ids import decode_global_id, encode_global_id
from weflux.mail.mailer import send_quietly
from weflux.runtime import Runtime, runtime_of
from weflux.services import auth as auth_service
from weflux.services import members as member_service
from weflux.services import signup as signup_service
from weflux.services import two_factor as two_factor_service
from weflux.services.audit import RequestMeta
from weflux.services.sessions import TokenPair
from weflux.throttle.ratelimit import RateLimiter, per_ip

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
# Long enough for any passphrase; the policy (12..72 bytes) answers with a clear reason.
Password = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
Email = Annotated[str, StringConstraints(min_length=3, max_length=320)]
Token = Annotated[str, StringConstraints(min_length=1, max_length=4096)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=False)


class SignupBody(_Body):
    organization_name: Name = Field(alias="organizationName")
    name: Name
    email: Email
    password: Password


class SignupConfirmBody(_Body):
    token: Token


class LoginBody(_Body):
    email: Email
    password: Password
    organization_id: Token | None = Field(default=None, alias="organizationId")


class RefreshBody(_Body):
    refresh_token: Token = Field(alias="refreshToken")


Code = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]


class MfaBody(_Body):
    mfa_token: Token = Field(alias="mfaToken")
    code: Code | None = None
    recovery_code: Code | None = Field(default=None, alias="recoveryCode")


class ReauthenticateBody(_Body):
    password: Password
    code: Code | None = None


class SwitchBody(_Body):
    organization_id: Token = Field(alias="organizationId")
    code: Code | None = None


class AcceptInvitationBody(_Body):
    token: Token
    name: Name
    password: Password
    code: Code | None = None


SIGNUP_ACCEPTED = {"status": "CONFIRMATION_SENT"}


def _timestamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def token_pair_body(pair: TokenPair) -> dict[str, Any]:
    return {
        "tokenType": "Bearer",
        "accessToken": pair.access.token,
        "accessTokenExpiresAt": _timestamp(pair.access.expires_at),
        "refreshToken": pair.refresh.token,
        "refreshTokenExpiresAt": _timestamp(pair.refresh.expires_at),
        "organization": {
            "id": encode_global_id("Organization", pair.organization.id),
            "name": pair.organization.name,
        },
        "member": {
            "id": encode_global_id("Member", pair.membership.id),
            "role": pair.membership.role.value,
        },
        "organizations": [
            {"id": encode_global_id("Organization", org.id), "name": org.name}
            for org in pair.organizations
        ],
    }


async def _limit(limiter: RateLimiter, name: str, key: str | None) -> None:
    """Count one request; a client address of None counts in the shared counter (`per_ip`)."""
    decision = await limiter.hit(name, per_ip(key))
    if not decision.allowed:
        raise RateLimited("Too many attempts; try again later", retry_after=decision.retry_after)


Endpoint = Callable[[Request], Awaitable[Response]]


def _endpoint(handler: Endpoint) -> Endpoint:
    """Coded errors become `{"error": …}` answers; every answer is `no-store`."""

    @functools.wraps(handler)
    async def wrapper(request: Request) -> Response:
        try:
            response = await handler(request)
        except WefluxError as error:
            return wefluxerror_response(error)
        response.headers["Cache-Control"] = "no-store"
        return response

    return wrapper


async def _body(request: Request, runtime: Runtime) -> Any:
    return await read_json(request, runtime.settings.max_auth_body_bytes)


@_endpoint
async def signup(request: Request) -> Response:
    """202 with the same body whether or not the email has an account; the email follows."""
    runtime = runtime_of(request)
    meta = request_meta(request, runtime.trusted_proxies)
    await _limit(runtime.limiter, "signup_ip", meta.ip)
    body = parse(SignupBody, await _body(request, runtime))
    signup_request = signup_service.signup_request(
        organization_name=body.organization_name,
        name=body.name,
        email=check_email(body.email),
        password=body.password,
    )
    await _limit(runtime.limiter, "signup_email", signup_request.email)
    message = await signup_service.request_signup(
        runtime.db, runtime.mailer, runtime.settings.app_base_url, meta, signup_request
    )
    # Sent after the answer, so its duration cannot tell which email it was.
    return JSONResponse(
        SIGNUP_ACCEPTED,
        status_code=202,
        background=BackgroundTask(send_quietly, runtime.mailer, message),
    )


@_endpoint
async def confirm_signup(request: Request) -> Response:
    runtime = runtime_of(request)
    meta = request_meta(request, runtime.trusted_proxies)
    await _limit(runtime.limiter, "signup_confirm_ip", meta.ip)
    body = parse(SignupConfirmBody, await _body(request, runtime))
    pair = await signup_service.confirm_signup(runtime.db, runtime.codec, meta, token=body.token)
    return JSONResponse(token_pair_body(pair), status_code=201)


async def _count_refused_login(request: Request, runtime: Runtime, meta: RequestMeta) -> None:
    """A login refused per IP still counts for the credential-stuffing detector."""
    try:
        body = parse(LoginBody, await _body(request, runtime))
    except WefluxError:
        return
    await runtime.detectors.login_failed(
        runtime.db, meta, email=body.email, user_id=None, workspaces=[]
    )


@_endpoint
async def login(request: Request) -> Response:
    runtime = runtime_of(request)
    meta = request_meta(request, runtime.trusted_proxies)
    try:
        await _limit(runtime.limiter, "login_ip", meta.ip)
    except RateLimited:
        await _count_refused_login(request, runtime, meta)
        raise
    body = parse(LoginBody, await _body(request, runtime))
    organization_id = (
        decode_global_id(body.organization_id, "Organization") if body.organization_id else None
    )
    pair = await auth_service.login(
        runtime.db,
        runtime.codec,
        runtime.password_guard,
        meta,
        email=body.email,
        password=body.password,
        organization_id=organization_id,
        detectors=runtime.detectors,
    )
    return JSONResponse(token_pair_body(pair))


@_endpoint
async def refresh(request: Request) -> Response:
    runtime = runtime_of(request)
    meta = request_meta(request, runtime.trusted_proxies)
    await _limit(runtime.limiter, "refresh_ip", meta.ip)
    body = parse(RefreshBody, await _body(request, runtime))
    pair = await auth_service.refresh(
        runtime.db,
        runtime.codec,
        runtime.authenticator,
        meta,
        body.refresh_token,
        reuse_interval=runtime.settings.refresh_reuse_interval,
    )
    return JSONResponse(token_pair_body(pair))


@_endpoint
async def logout(request: Request) -> Response:
    runtime = runtime_of(request)
    principal = await runtime.authenticator.authenticate(
        bearer_token(request.headers.get("authorization"))
    )
    if principal is None:
        raise Unauthenticated("Authentication required")
    meta = request_meta(request, runtime.trusted_proxies)
    await auth_service.logout(runtime.db, runtime.authenticator, principal, meta)
    return Response(status_code=204)


@_endpoint
async def mfa(request: Request) -> Response:
    """The second step of a login: the mfaToken of the password step and a code."""
    runtime = runtime_of(request)
    meta = request_meta(request, runtime.trusted_proxies)
    await _limit(runtime.limiter, "login_ip", meta.ip)
    body = parse(MfaBody, await _body(request, runtime))
    if (body.code is None) == (body.recovery_code is None):
        raise BadUserInput(
            "Send either `code` or `recoveryCode`",
            details=[{"field": "code", "message": "either code or recoveryCode"}],
        )
    pair = await two_factor_service.complete_login(
        runtime.db,
        runtime.codec,
        runtime.password_guard,
        runtime.keyring,
        meta,
        mfa_token=body.mfa_token,
        code=body.code,
        recovery_code=body.recovery_code,
        detectors=runtime.detectors,
    )
    return JSONResponse(token_pair_body(pair))


@_endpoint
async def reauthenticate(request: Request) -> Response:
    """The password (and a code) again: sensitive operations for the next few minutes."""
    runtime = runtime_of(request)
    meta = request_meta(request, runtime.trusted_proxies)
    # A password check like a login's: one IP guessing with many stolen tokens is counted.
    await _limit(runtime.limiter, "login_ip", meta.ip)
    principal = await runtime.authenticator.authenticate(
        bearer_token(request.headers.get("authorization"))
    )
    if principal is None:
        raise Unauthenticated("Authentication required")
    body = parse(ReauthenticateBody, await _body(request, runtime))
    await two_factor_service.reauthenticate(
        runtime.db,
        runtime.password_guard,
        runtime.keyring,
        principal,
        meta,
        password=body.password,
        code=body.code,
    )
    return Response(status_code=204)


@_endpoint
async def switch(request: Request) -> Response:
    """A token pair for another workspace of the caller (a new session), no password."""
    runtime = runtime_of(request)
    meta = request_meta(request, runtime.trusted_proxies)
    await _limit(runtime.limiter, "switch_ip", meta.ip)
    principal = await runtime.authenticator.authenticate(
        bearer_token(request.headers.get("authorization"))
    )
    if principal is None:
        raise Unauthenticated("Authentication required")
    body = parse(SwitchBody, await _body(request, runtime))
    pair = await auth_service.switch(
        runtime.db,
        runtime.codec,
        runtime.password_guard,
        runtime.keyring,
        principal,
        meta,
        organization_id=decode_global_id(body.organization_id, "Organization"),
        code=body.code,
    )
    return JSONResponse(token_pair_body(pair))


@_endpoint
async def accept_invitation(request: Request) -> Response:
    runtime = runtime_of(request)
    meta = request_meta(request, runtime.trusted_proxies)
    await _limit(runtime.limiter, "invitation_ip", meta.ip)
    body = parse(AcceptInvitationBody, await _body(request, runtime))
    pair = await member_service.accept_invitation(
        runtime.db,
        runtime.codec,
        runtime.password_guard,
        meta,
        token=body.token,
        name=body.name,
        password=body.password,
        keyring=runtime.keyring,
        code=body.code,
        broker=runtime.broker,
    )
    return JSONResponse(token_pair_body(pair))


routes = [
    Route("/auth/signup", signup, methods=["POST"]),
    Route("/auth/signup/confirm", confirm_signup, methods=["POST"]),
    Route("/auth/login", login, methods=["POST"]),
    Route("/auth/refresh", refresh, methods=["POST"]),
    Route("/auth/logout", logout, methods=["POST"]),
    Route("/auth/mfa", mfa, methods=["POST"]),
    Route("/auth/reauthenticate", reauthenticate, methods=["POST"]),
    Route("/auth/switch", switch, methods=["POST"]),
    Route("/auth/invitations/accept", accept_invitation, methods=["POST"]),
]
