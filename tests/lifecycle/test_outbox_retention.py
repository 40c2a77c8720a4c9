"""The development mail outbox (`<var>/outbox/*.eml`, no WEFLUX_SMTP_URL): the worker's
retention deletes its files once older than WEFLUX_DEV_OUTBOX_RETENTION."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from starlette.applications import Starlette

from tests.fixtures.settings import make_settings
from weflux.mail.mailer import OUTBOX_DIR, OutboxMailer, compose
from weflux.models import utcnow
from weflux.runtime import runtime_of

DAY = timedelta(days=1)


def _age(path: Path, by: timedelta) -> None:
    """Make `path` look written `by` ago."""
    when = (utcnow() - by).timestamp()
    os.utime(path, (when, when))


async def _write(mailer: OutboxMailer, to: str) -> Path:
    before = set(mailer.directory.glob("*.eml")) if mailer.directory.is_dir() else set()
    await mailer.send(compose(mailer, to=to, subject="Confirm", body="https://app/#token=x"))
    [path] = set(mailer.directory.glob("*.eml")) - before
    return path


async def test_the_worker_retention_deletes_old_outbox_mail(app: Starlette) -> None:
    """Given an outbox with a mail 8 days old, one a day old and a file the app never
    wrote, when the worker's retention job runs, then only the old mail is gone."""
    runtime = runtime_of(app)
    mailer = runtime.mailer
    assert isinstance(mailer, OutboxMailer)
    assert mailer.directory == runtime.settings.var_dir / OUTBOX_DIR
    old = await _write(mailer, "old@example.com")
    recent = await _write(mailer, "recent@example.com")
    _age(old, 8 * DAY)
    _age(recent, DAY)
    foreign = mailer.directory / "notes.txt"
    foreign.write_text("kept")
    _age(foreign, 30 * DAY)

    jobs = {job.name: job for job in runtime.build_worker().jobs}
    await jobs["retention"].run()

    assert not old.exists()
    assert recent.exists()
    assert foreign.exists()


async def test_the_retention_is_a_setting(tmp_path: Path) -> None:
    """Given WEFLUX_DEV_OUTBOX_RETENTION=1h, mail two hours old goes and mail just written
    stays; the default is 7 days; it must be a positive duration."""
    settings = make_settings(tmp_path, dev_outbox_retention="1h")
    assert settings.dev_outbox_retention == timedelta(hours=1)
    assert make_settings(tmp_path).dev_outbox_retention == timedelta(days=7)
    with pytest.raises(ValueError, match="duration"):
        make_settings(tmp_path, dev_outbox_retention="soon")

    mailer = OutboxMailer(tmp_path / OUTBOX_DIR)
    assert await mailer.expire(utcnow()) == 0  # no directory yet: nothing to do
    stale = await _write(mailer, "stale@example.com")
    fresh = await _write(mailer, "fresh@example.com")
    _age(stale, timedelta(hours=2))

    assert await mailer.expire(utcnow() - settings.dev_outbox_retention) == 1
    assert not stale.exists()
    assert fresh.exists()
