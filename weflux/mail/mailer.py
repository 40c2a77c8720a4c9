"""The platform's own outgoing mail: sign-up confirmations now, invitations and alerts later.

- With `WEFLUX_SMTP_URL`, messages go through that server (`weflux.mail.smtp.send_email`:
  TLS verified, nothing of the message or the server's replies logged).
- Without it (development and test only: production refuses to start), each message is
  written to `<WEFLUX_VAR_DIR>/outbox/` as an `.eml` file (mode 0600, directory 0700), and
  only the file's path is logged, never a link or a token. The worker's retention deletes
  the files older than `WEFLUX_DEV_OUTBOX_RETENTION` (they hold sign-up and invitation
  links, and the addresses they went to).

Callers build the message with `compose` and hand it to `Mailer.send`. `send` raises
`SmtpError` when the server refuses; `send_quietly` logs that instead (for mail sent after
the answer, where nobody could be told).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from datetime import datetime
from email.message import EmailMessage
from email.utils import formataddr, formatdate, make_msgid
from pathlib import Path
from typing import Protocol

from weflux.config import Settings
from weflux.mail.smtp import SmtpConfig, SmtpError, send_email

log = logging.getLogger(__name__)

SENDER_NAME = "Weflux"
OUTBOX_DIR = "outbox"
SEND_TIMEOUT_SECONDS = 30.0
# Used only when no SMTP server is configured (development and test).
OUTBOX_SENDER = "no-reply@weflux.invalid"


class Mailer(Protocol):
    """Somewhere messages go."""

    sender: str

    async def send(self, message: EmailMessage) -> None: ...


def compose(mailer: Mailer, *, to: str, subject: str, body: str) -> EmailMessage:
    """A plain-text message from the platform to `to`."""
    message = EmailMessage()
    message["From"] = formataddr((SENDER_NAME, mailer.sender))
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=mailer.sender.rpartition("@")[2] or None)
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(body)
    return message


async def send_quietly(mailer: Mailer, message: EmailMessage) -> None:
    """Send, logging a failure (never the message, which may hold a link) instead of
    raising it: for mail sent after the answer, where nobody could be told."""
    try:
        await mailer.send(message)
    except SmtpError as error:
        log.warning("email not delivered", extra={"reason": error.message})
    except Exception as error:  # an outbox that cannot be written, a timeout
        log.warning("email not delivered", extra={"error": type(error).__name__})


class SmtpMailer:
    """Sends through the platform's SMTP server (`WEFLUX_SMTP_URL`)."""

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config
        self.sender = config.from_address

    async def send(self, message: EmailMessage) -> None:
        # The operator chose this server: loopback and private addresses are fine.
        await send_email(self.config, message, allow_private=True, timeout=SEND_TIMEOUT_SECONDS)


class OutboxMailer:
    """Writes each message to a directory as an `.eml` file only its owner can read."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.sender = OUTBOX_SENDER

    async def send(self, message: EmailMessage) -> None:
        path = await asyncio.to_thread(self._write, message.as_bytes())
        log.info("email written to the outbox", extra={"path": str(path)})

    async def expire(self, before: datetime) -> int:
        """Delete the messages written before `before`; how many went."""
        return await asyncio.to_thread(self._expire, before.timestamp())

    def _expire(self, before: float) -> int:
        gone = 0
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:  # nothing written yet
            return 0
        for entry in entries:
            if not (entry.name.endswith(".eml") and entry.is_file(follow_symlinks=False)):
                continue  # only what `_write` makes
            with contextlib.suppress(FileNotFoundError):  # another worker was first
                if entry.stat(follow_symlinks=False).st_mtime < before:
                    os.unlink(entry.path)
                    gone += 1
        return gone

    def _write(self, content: bytes) -> Path:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.directory / f"{uuid.uuid4().hex}.eml"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        return path


def build_mailer(settings: Settings) -> Mailer:
    """The SMTP mailer when `WEFLUX_SMTP_URL` is set, else the outbox directory."""
    config = settings.platform_smtp
    if config is not None:
        return SmtpMailer(config)
    return OutboxMailer(settings.var_dir / OUTBOX_DIR)
