"""The long-lived objects of a process: database, Redis, broker, key ring, Cloud API, worker."""

from __future__ import annotations

import logging
from datetime import timedelta

from redis.asyncio import Redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from weflux.config import Settings
from weflux.crypto.keyring import KeyRing
from weflux.db import Database
from weflux.realtime.broker import Broker, InProcessBroker, RedisBroker
from weflux.services.channels import Services as ChannelServices
from weflux.whatsapp.client import CloudApiClient
from weflux.worker.delivery import build_throttle, deliver_due_messages
from weflux.worker.health import refresh_due_accounts
from weflux.worker.runner import Job, Worker

log = logging.getLogger(__name__)

HEALTH_SWEEP_SECONDS = 60.0
WEBHOOK_SWEEP_SECONDS = 10.0
# A delivery sweep that claims a full batch goes again at once, up to this many rounds.
DELIVERY_MAX_ROUNDS = 20


def create_redis(url: str) -> Redis:
    return Redis.from_url(
        url,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=3),
        socket_connect_timeout=2.0,
        socket_timeout=5.0,
        health_check_interval=30,
    )


class Runtime:
    """Built once per process; `start()` opens connections, `stop()` closes them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = Database(
            settings.database_url,
            pool_size=settings.database_pool_size,
            connect_timeout=settings.database_connect_timeout,
            statement_timeout=settings.database_statement_timeout,
        )
        self.redis = create_redis(settings.redis_url) if settings.redis_url else None
        self.broker: Broker = (
            RedisBroker(self.redis) if self.redis is not None else InProcessBroker()
        )
        self.keyring = KeyRing.from_settings(settings)
        self.cloud_api = CloudApiClient.from_settings(settings)
        self.channel_services = ChannelServices(
            keyring=self.keyring, cloud=self.cloud_api, broker=self.broker
        )
        self.worker: Worker | None = None

    def build_worker(self) -> Worker:
        interval: timedelta = self.settings.health_refresh_interval

        async def health() -> int:
            return await refresh_due_accounts(self.db, self.channel_services, interval=interval)

        async def webhooks() -> int:
            from weflux.services.ingest import retry_due_events

            return await retry_due_events(self)

        throttle = build_throttle(self.redis)
        batch_size = self.settings.delivery_batch_size

        async def delivery() -> int:
            total = 0
            for _ in range(DELIVERY_MAX_ROUNDS):
                claimed = await deliver_due_messages(
                    self.db,
                    self.channel_services,
                    self.settings,
                    batch_size=batch_size,
                    throttle=throttle,
                )
                total += claimed
                if claimed < batch_size:
                    break
            return total

        return Worker(
            [
                Job("delivery", every=self.settings.delivery_interval, run=delivery),
                Job("health-refresh", every=HEALTH_SWEEP_SECONDS, run=health),
                Job("webhook-retry", every=WEBHOOK_SWEEP_SECONDS, run=webhooks),
            ]
        )

    async def start(self, *, worker: bool) -> None:
        await self.broker.start()
        if worker:
            self.worker = self.build_worker()
            await self.worker.start()

    async def stop(self) -> None:
        if self.worker is not None:
            await self.worker.stop()
        await self.broker.stop()
        await self.cloud_api.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        await self.db.dispose()
