"""The worker's jobs, wired from the parts of the runtime: delivery, health, webhook retry."""

from __future__ import annotations

from typing import TYPE_CHECKING

from weflux.config import Settings
from weflux.db import Database
from weflux.lifecycle.worker import (
    Lifecycle,
    run_due_requests,
    run_retention,
    sweep_abandoned_files,
)
from weflux.mail.mailer import Mailer, OutboxMailer
from weflux.media.download import download_due_media
from weflux.media.store import MediaStore
from weflux.realtime.broker import Broker
from weflux.secops.alerts import send_due_alerts
from weflux.services.channels import Services as ChannelServices
from weflux.services.webhook_queue import retry_due_events
from weflux.throttle.sends import build_throttle
from weflux.worker.delivery import deliver_due_messages
from weflux.worker.health import refresh_due_accounts
from weflux.worker.runner import Job, Worker

if TYPE_CHECKING:
    from redis.asyncio import Redis

HEALTH_SWEEP_SECONDS = 60.0
WEBHOOK_SWEEP_SECONDS = 10.0
# A delivery sweep that claims a full batch goes again at once, up to this many rounds.
DELIVERY_MAX_ROUNDS = 20


def build_worker(
    *,
    settings: Settings,
    db: Database,
    broker: Broker,
    channel_services: ChannelServices,
    redis: Redis | None,
    mailer: Mailer,
    media: MediaStore,
) -> Worker:
    """Delivery every `WEFLUX_DELIVERY_INTERVAL`, inbound media downloads, health
    refresh, webhook retry and security alert sweeps, and the data lifecycle (requests,
    retention) every `WEFLUX_LIFECYCLE_INTERVAL`."""
    interval = settings.health_refresh_interval
    throttle = build_throttle(redis)
    batch_size = settings.delivery_batch_size
    lifecycle_every = settings.lifecycle_interval.total_seconds()

    async def health() -> int:
        return await refresh_due_accounts(db, channel_services, interval=interval)

    async def webhooks() -> int:
        return await retry_due_events(db, broker, settings)

    async def security_alerts() -> int:
        return await send_due_alerts(db, settings, mailer)

    lifecycle = Lifecycle(
        db=db,
        keyring=channel_services.keyring,
        batch=settings.lifecycle_batch_size,
        export_dir=settings.export_directory,
        security_event_retention=settings.security_event_retention,
        media_upload_retention=settings.media_upload_retention,
        conversation_removal_retention=settings.conversation_removal_retention,
        session_retention=settings.session_retention,
        audit_network_retention=settings.audit_network_retention,
        media=media,
        outbox=mailer if isinstance(mailer, OutboxMailer) else None,
        dev_outbox_retention=settings.dev_outbox_retention,
    )

    async def data_requests() -> int:
        return await run_due_requests(lifecycle)

    async def retention() -> int:
        return await run_retention(lifecycle)

    async def abandoned_files() -> int:
        return await sweep_abandoned_files(lifecycle)

    async def media_downloads() -> int:
        return await download_due_media(db, media, channel_services, settings)

    async def delivery() -> int:
        total = 0
        for _ in range(DELIVERY_MAX_ROUNDS):
            claimed = await deliver_due_messages(
                db, channel_services, settings, batch_size=batch_size, throttle=throttle
            )
            total += claimed
            if claimed < batch_size:
                break
        return total

    return Worker(
        [
            Job("delivery", every=settings.delivery_interval, run=delivery),
            Job("media-download", every=settings.media_download_interval, run=media_downloads),
            Job("health-refresh", every=HEALTH_SWEEP_SECONDS, run=health),
            Job("webhook-retry", every=WEBHOOK_SWEEP_SECONDS, run=webhooks),
            Job("security-alerts", every=settings.security_alert_interval, run=security_alerts),
            Job("data-requests", every=lifecycle_every, run=data_requests),
            Job("retention", every=lifecycle_every, run=retention),
            Job("abandoned-files", every=lifecycle_every, run=abandoned_files),
        ]
    )
