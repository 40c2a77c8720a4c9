"""The long-lived objects of a process, built once and reached in one typed way.

`Runtime.build(settings)` makes them (nothing connects yet), `start()` opens what listens,
`stop()` closes everything. The app's lifespan keeps the one runtime on `app.state.runtime`;
`runtime_of(request)` reads it back, typed. Everything below the app (services, the
GraphQL context, the worker's jobs) receives the parts it needs, never the runtime.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.requests import HTTPConnection

from weflux.auth.authenticator import Authenticator
from weflux.auth.guard import PasswordGuard
from weflux.auth.tokens import TokenCodec
from weflux.client_ip import TrustedProxy, parse_trusted_proxies
from weflux.config import Settings
from weflux.crypto.keyring import KeyRing
from weflux.db import ANSWER_MARGIN, Database
from weflux.gql.budgets import CostBudgets
from weflux.mail.mailer import Mailer, build_mailer
from weflux.media.store import MediaStore, build_store
from weflux.realtime.broker import Broker, InProcessBroker, RedisBroker
from weflux.realtime.caps import SocketCaps
from weflux.realtime.counts import CountsFeed
from weflux.realtime.hub import Hub
from weflux.realtime.sockets import SocketRegistry
from weflux.sandbox.channels import Sandbox
from weflux.secops.detectors import Detectors
from weflux.services.channel_cache import ChannelCache
from weflux.services.channels import Services as ChannelServices
from weflux.services.live_keys import LiveKeys
from weflux.services.webhook_queue import WebhookIntake
from weflux.throttle.ratelimit import RateLimiter
from weflux.tls import TLS_MINIMUM
from weflux.whatsapp.client import CloudApiClient
from weflux.worker import jobs
from weflux.worker.runner import Worker

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from weflux.gql.event_memo import EventMemo


def create_redis(url: str, *, socket_timeout: float | None = 5.0) -> Redis:
    """A client of `WEFLUX_REDIS_URL`; `rediss://` verifies the server and needs TLS 1.2+
    (its CA from the system, or `?ssl_ca_certs=/path/ca.pem` in the URL).

    `socket_timeout=None` only for a client whose every call its user bounds itself (the
    broker's publisher, `RedisBroker`): without one a stalled Redis holds a call forever.
    """
    # Imported here, not at the top: redis-py costs every process a second to import,
    # and only a deployment with WEFLUX_REDIS_URL needs it (docs/development.md).
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff

    tls: dict[str, Any] = {}
    if urlsplit(url).scheme == "rediss":
        tls["ssl_min_version"] = TLS_MINIMUM
    return Redis.from_url(
        url,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=3),
        socket_connect_timeout=2.0,
        socket_timeout=socket_timeout,
        health_check_interval=30,
        **tls,
    )


def serving_database(settings: Settings) -> Database:
    """The database handle of `weflux serve` and `weflux worker`."""
    return Database(
        settings.database_url,
        pool_size=settings.database_pool_size,
        connect_timeout=settings.database_connect_timeout,
        statement_timeout=settings.database_statement_timeout,
        # Past the server's own timeout, whose error says more: only a server that
        # stopped answering (docs/operations/README.md#when-postgresql-stops-answering).
        answer_timeout=settings.database_statement_timeout + ANSWER_MARGIN,
    )


def create_redis_broker(url: str, redis: Redis) -> RedisBroker:
    """The broker of a process with `WEFLUX_REDIS_URL`: its subscriptions on `redis`, its
    publishes on a client of their own, each bounded by the broker (see `RedisBroker`)."""
    return RedisBroker(redis, publisher=create_redis(url, socket_timeout=None))


@dataclass(eq=False)
class Runtime:
    """What one process shares: connections, keys, limits, live fan-out, the worker."""

    settings: Settings
    db: Database
    redis: Redis | None
    broker: Broker
    keyring: KeyRing
    cloud_api: CloudApiClient
    sandbox: Sandbox | None
    channel_services: ChannelServices
    codec: TokenCodec
    authenticator: Authenticator
    limiter: RateLimiter
    password_guard: PasswordGuard
    detectors: Detectors
    mailer: Mailer
    cost_budgets: CostBudgets
    trusted_proxies: tuple[TrustedProxy, ...]
    hub: Hub
    sockets: SocketRegistry
    socket_caps: SocketCaps
    inbox_counts: CountsFeed
    channel_cache: ChannelCache
    live_keys: LiveKeys
    webhook_intake: WebhookIntake
    media: MediaStore
    worker: Worker | None = None

    @functools.cached_property
    def event_memo(self) -> EventMemo:
        """Live events loaded once per visibility class, built on first use: by a process
        that serves subscriptions. It loads graphql-core and Strawberry, which `weflux
        worker` never needs (its start-up time; tests/test_imports.py)."""
        from weflux.gql.event_memo import EventMemo

        return EventMemo()

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        """Every part, wired; nothing is connected until `start()`."""
        assert settings.jwt_secret is not None  # load_settings guarantees it
        db = serving_database(settings)
        redis = create_redis(settings.redis_url) if settings.redis_url else None
        broker: Broker = (
            create_redis_broker(settings.redis_url, redis)
            if redis is not None and settings.redis_url
            else InProcessBroker()
        )
        keyring = KeyRing.from_settings(settings)
        cloud_api = CloudApiClient.from_settings(settings)
        # Sandbox channels (the demo number) are answered here; production has none.
        sandbox = None if settings.is_production else Sandbox(settings)
        media = build_store(settings)
        codec = TokenCodec(
            settings.jwt_secret.get_secret_value(),
            access_ttl=settings.access_token_ttl,
            refresh_ttl=settings.refresh_token_ttl,
            session_max_age=settings.session_max_age,
        )
        authenticator = Authenticator(codec, db, broker)
        limiter = RateLimiter(settings)
        hub = Hub(broker)
        # The registry first: it refreshes a socket's principal before the counts feed,
        # told of the same role change, counts with it.
        sockets = SocketRegistry(
            authenticator,
            per_session=settings.websocket_max_per_session,
            per_member=settings.websocket_max_per_member,
        )
        inbox_counts = CountsFeed(hub)
        authenticator.add_revocation_listener(inbox_counts.on_revocation)
        channel_cache = ChannelCache(broker)
        db.channels_changed = channel_cache.changed
        return cls(
            settings=settings,
            db=db,
            redis=redis,
            broker=broker,
            keyring=keyring,
            cloud_api=cloud_api,
            sandbox=sandbox,
            channel_services=ChannelServices(
                keyring=keyring, cloud=cloud_api, broker=broker, sandbox=sandbox, media=media
            ),
            codec=codec,
            authenticator=authenticator,
            limiter=limiter,
            password_guard=PasswordGuard(limiter),
            detectors=Detectors(settings, limiter, broker),
            mailer=build_mailer(settings),
            cost_budgets=CostBudgets(settings),
            trusted_proxies=parse_trusted_proxies(settings.trusted_proxies),
            hub=hub,
            sockets=sockets,
            socket_caps=SocketCaps(
                per_ip=settings.websocket_max_per_ip,
                pending_per_ip=settings.websocket_max_pending_per_ip,
            ),
            inbox_counts=inbox_counts,
            channel_cache=channel_cache,
            live_keys=LiveKeys(db, channel_cache),
            webhook_intake=WebhookIntake.for_pool(
                db, broker, settings, channel_cache, settings.database_pool_size
            ),
            media=media,
        )

    def build_worker(self) -> Worker:
        """The delivery and maintenance jobs over this runtime's parts."""
        return jobs.build_worker(
            settings=self.settings,
            db=self.db,
            broker=self.broker,
            channel_services=self.channel_services,
            redis=self.redis,
            mailer=self.mailer,
            media=self.media,
        )

    async def start(self, *, serve: bool, worker: bool) -> None:
        """Connect the broker; with `worker`, run the jobs in this process; with `serve`,
        listen for revocations and workspace events (what a process serving the API needs)."""
        await self.broker.start()
        if worker:
            self.worker = self.build_worker()
            await self.worker.start()
        if serve:
            await self.authenticator.start()
            await self.hub.start()
            await self.channel_cache.start()
            if self.settings.database_warm_pool:
                # PostgreSQL: the pool's connections open before the first webhooks need
                # them, not in their acknowledgements (`Database.warm_pool`).
                await self.db.warm_pool()
            self.webhook_intake.start()

    async def stop(self) -> None:
        """Close everything, whatever `start()` reached."""
        await self.inbox_counts.stop()
        await self.webhook_intake.stop()
        await self.live_keys.stop()
        await self.channel_cache.stop()
        await self.hub.stop()
        await self.authenticator.stop()
        await self.limiter.close()
        await self.cost_budgets.close()
        if self.worker is not None:
            await self.worker.stop()
        await self.broker.stop()
        await self.cloud_api.aclose()
        if self.sandbox is not None:
            await self.sandbox.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        await self.db.dispose()


def runtime_of(where: HTTPConnection | Starlette) -> Runtime:
    """The runtime of the app serving a request or socket (or of the app itself)."""
    app = where.app if isinstance(where, HTTPConnection) else where
    runtime = getattr(app.state, "runtime", None)
    if not isinstance(runtime, Runtime):
        raise RuntimeError("the app's lifespan has not started: no runtime")
    return runtime
