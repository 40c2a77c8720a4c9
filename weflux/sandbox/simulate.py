"""`weflux simulate`: Meta-shaped, correctly signed webhooks to a running server.

By default each body is written for the demo number (the live sandbox channel), signed
with its app secret (read from the database through the key ring, with the local
settings) and posted to that channel's URL `/webhooks/whatsapp/{webhookKey}`.
`--channel PHONE_NUMBER_ID` picks another channel of the database; with `--app-secret`
the body is signed with that secret and posted to the bare `/webhooks/whatsapp` (the
platform's Meta app), and no database is read. Timestamps are the current time.

`message --image FILE` first gives the file to the server's sandbox (`POST
/sandbox/media`, development only), and the webhook names the media id it answers, so the
server's download of the image succeeds. A server without that route (404) gets a fresh
media id nothing holds, and the command says the download will fail.

A body naming a number the server has no live channel for is dropped by the server (it
still answers 200, as to Meta, and logs the drop at WARNING): the command says so.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import mimetypes
import secrets
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weflux.logs import configure_logging_for, loggable_target
from weflux.sandbox import webhooks
from weflux.services import phone_numbers

if TYPE_CHECKING:
    import httpx

    from weflux.config import Settings

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_CUSTOMER = "+15551230001"
MAX_IMAGE_BYTES = 5 * 1024 * 1024  # Meta's limit for images
STATUSES = ("sent", "delivered", "read", "failed")
RATINGS = ("GREEN", "YELLOW", "RED")
# `--event` names: ours (short) and the Meta events they stand for; Meta's own names go too.
ACCOUNT_EVENTS = {
    "FLAGGED": "ACCOUNT_VIOLATION",
    "RESTRICTED": "ACCOUNT_RESTRICTION",
    "BANNED": "DISABLED_UPDATE",
    "DELETED": "ACCOUNT_DELETED",
    "RECONNECTED": "ACCOUNT_RECONNECTED",
}
META_ACCOUNT_EVENTS = (
    "ACCOUNT_VIOLATION",
    "ACCOUNT_RESTRICTION",
    "DISABLED_UPDATE",
    "ACCOUNT_DELETED",
    "ACCOUNT_OFFBOARDED",
    "ACCOUNT_RECONNECTED",
    "VERIFIED_ACCOUNT",
)
_FAILED_TITLES = {
    131049: "This message was not delivered to maintain healthy ecosystem engagement.",
    131026: "Message undeliverable",
    131047: "Re-engagement message",
    131000: "Something went wrong",
}


class SimulateError(Exception):
    """A simulation that cannot be built or sent; its message is for the terminal."""


@dataclass(frozen=True)
class Target:
    """Where a body goes and how it is signed."""

    phone_number_id: str
    business_account_id: str
    display_phone_number: str
    path: str
    app_secret: str = field(repr=False)
    known: bool  # a live channel of the server's database has this number


@dataclass(frozen=True)
class Outcome:
    """What was sent, and what the server answered."""

    url: str
    body: dict[str, Any]
    http_status: int
    answer: str
    dropped: str | None
    note: str | None = None  # e.g. `--image`'s file kept local: its download will fail


# -- bodies -------------------------------------------------------------------------------


def _customer(number: str) -> str:
    """`--from`'s WhatsApp id: a number the inbox's one rule accepts, so it can be answered."""
    e164 = phone_numbers.e164(number)
    if e164 is None:
        raise SimulateError(f"`{number}`: {phone_numbers.INVALID_PHONE_NUMBER}")
    return e164.removeprefix("+")


def _digits(number: str) -> str:
    digits = "".join(c for c in number if c.isdigit())
    if not 5 <= len(digits) <= 20:
        raise SimulateError(f"`{number}` is not a phone number (5 to 20 digits, + allowed)")
    return digits


@dataclass(frozen=True)
class ImageFile:
    """`--image`'s file, read once: what is uploaded is what the webhook's SHA-256 names."""

    content: bytes = field(repr=False)
    mime_type: str
    media_id: str | None = None  # the sandbox's (POST /sandbox/media), when it took the file


def read_image(path: Path) -> ImageFile:
    """A real image file's bytes and its MIME type (by its name), within Meta's limit."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise SimulateError(f"cannot read {path}: {error.strerror}") from None
    if not raw or len(raw) > MAX_IMAGE_BYTES:
        raise SimulateError(f"{path} must hold 1 byte to 5 MB (Meta's limit for images)")
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if mime not in ("image/jpeg", "image/png", "image/webp"):
        raise SimulateError(f"{path} is not a JPEG, PNG or WebP image (by its name)")
    return ImageFile(raw, mime)


def image_payload(image: ImageFile, caption: str | None = None) -> dict[str, Any]:
    """Meta's image object for a real file: its MIME type and SHA-256, and its media id (the
    sandbox's, which the server's download finds) or else a fresh one that nothing holds."""
    payload: dict[str, Any] = {
        "mime_type": image.mime_type,
        "sha256": base64.b64encode(hashlib.sha256(image.content).digest()).decode(),
        "id": image.media_id or str(10**15 + secrets.randbelow(9 * 10**15)),
    }
    if caption:
        payload["caption"] = caption
    return payload


def customer_content(
    *,
    text: str | None = None,
    image: ImageFile | None = None,
    caption: str | None = None,
    location: str | None = None,
    reaction: str | None = None,
    to_message: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """The kind and Meta's object of what a customer sends: the first of `text`, `image`,
    `location` ("LAT,LONG") or `reaction` (an emoji, "" removes) to `to_message` given.

    `weflux simulate message` and the sandbox page both build their messages here."""
    if text is not None:
        return "text", {"body": text}
    if image is not None:
        return "image", image_payload(image, caption)
    if location is not None:
        try:
            latitude, longitude = (float(part) for part in location.split(","))
        except ValueError:
            raise SimulateError("a location is LAT,LONG, e.g. 38.7223,-9.1393") from None
        if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
            raise SimulateError("a location's latitude is -90..90, its longitude -180..180")
        return "location", {"latitude": latitude, "longitude": longitude}
    if reaction is None:
        raise SimulateError("nothing to send: a text, an image, a location or a reaction")
    if not to_message:
        raise SimulateError("a reaction names the message reacted to (--to-message WAMID)")
    return "reaction", {"message_id": to_message, "emoji": reaction}


def message_change(
    target: Target, args: argparse.Namespace, image: ImageFile | None = None
) -> dict[str, Any]:
    """The `messages` change of an inbound message from `--from` (`image`: `--image`'s)."""
    sender = _customer(args.sender)
    if args.image is not None and image is None:
        image = read_image(args.image)
    kind, payload = customer_content(
        text=args.text,
        image=image,
        caption=args.caption,
        location=args.location,
        reaction=args.reaction,
        to_message=args.to_message,
    )
    inbound = webhooks.inbound(webhooks.new_wamid(), sender, kind, payload, reply_to=args.reply_to)
    return webhooks.messages_change(
        target.phone_number_id,
        target.display_phone_number,
        contacts=[webhooks.contact(sender, args.name or f"Customer {sender[-4:]}")],
        messages=[inbound],
    )


def status_change(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    """The `messages` change of a status of an outbound message."""
    errors = None
    if args.status == "failed":
        code = args.error or 131000
        errors = [webhooks.error(code, _FAILED_TITLES.get(code, "Message failed to send"))]
    elif args.error is not None:
        raise SimulateError("--error goes with --status failed")
    state = webhooks.status(args.message, args.status, _digits(args.recipient), errors=errors)
    return webhooks.messages_change(
        target.phone_number_id, target.display_phone_number, statuses=[state]
    )


def build_body(
    target: Target, args: argparse.Namespace, image: ImageFile | None = None
) -> dict[str, Any]:
    """The notification the subcommand asks for, written for `target`."""
    if args.kind == "message":
        built = message_change(target, args, image)
    elif args.kind == "status":
        built = status_change(target, args)
    elif args.kind == "quality":
        built = webhooks.quality_change(target.display_phone_number, args.rating)
    else:
        built = webhooks.account_change(
            target.phone_number_id, ACCOUNT_EVENTS.get(args.event, args.event)
        )
    return webhooks.body(target.business_account_id, built)


# -- target -------------------------------------------------------------------------------


def _settings(settings: Settings | None) -> Settings:
    from weflux.config import load_settings  # deferred: start-up cost

    # Logging as configured before loading logs (the generated secrets' warning).
    return settings if settings is not None else load_settings(configure_logging_for)


def _unreadable(error: Exception) -> SimulateError:
    """Run away from the server (another directory, other settings), the local database is
    missing, empty or unreachable: say so instead of a traceback."""
    where = f": no file {error.args[0]}" if isinstance(error, FileNotFoundError) else ""
    return SimulateError(
        f"cannot read the channels of this database ({type(error).__name__}{where}): run it with "
        "the server's settings (its directory, or the same WEFLUX_VAR_DIR / "
        "WEFLUX_DATABASE_URL), or give --app-secret and --channel"
    )


def _missing_sqlite_file(url: str) -> str | None:
    """The file of a SQLite URL that does not exist (connecting would create it empty)."""
    from sqlalchemy.engine import make_url  # deferred: start-up cost

    parsed = make_url(url)
    path = parsed.database
    if parsed.get_backend_name() != "sqlite" or not path or path == ":memory:":
        return None
    return None if Path(path).is_file() else path


async def _channel_target(args: argparse.Namespace, settings: Settings) -> Target:
    """The demo number (or `--channel`), its app secret opened with the local key ring."""
    # deferred: start-up cost (`weflux --help` loads no SQLAlchemy)
    from sqlalchemy.exc import SQLAlchemyError
    from sqlmodel import col, select

    from weflux.crypto.fields import open_secret
    from weflux.crypto.keyring import DecryptionError, KeyRing
    from weflux.db import maintenance_database
    from weflux.models import WhatsAppAccount

    missing = _missing_sqlite_file(settings.migration_url)
    if missing is not None:
        # Not opened: SQLite would leave an empty file where the user ran the command.
        raise _unreadable(FileNotFoundError(missing))
    try:
        db = await maintenance_database(settings.migration_url)
    except (SQLAlchemyError, OSError) as error:
        raise _unreadable(error) from None
    try:
        async with db.session(all_workspaces="simulate: the channel to write as") as session:
            statement = select(WhatsAppAccount).where(
                col(WhatsAppAccount.disconnected_at).is_(None)
            )
            if args.channel:
                statement = statement.where(WhatsAppAccount.phone_number_id == args.channel)
            else:
                statement = statement.where(col(WhatsAppAccount.sandbox).is_(True))
            account = (
                await session.exec(statement.order_by(col(WhatsAppAccount.created_at)))
            ).first()
    except (SQLAlchemyError, OSError) as error:
        raise _unreadable(error) from None
    finally:
        await db.dispose()
    if account is None:
        if args.channel:
            raise SimulateError(
                f"no live channel has phone_number_id {args.channel} in this database: the "
                "server would drop the body; give --app-secret to send it anyway"
            )
        raise SimulateError("no demo (sandbox) channel in this database: run `weflux demo`")
    try:
        secret = open_secret(KeyRing.from_settings(settings), account, "app_secret_enc")
    except DecryptionError:
        raise SimulateError(
            "the channel's app secret cannot be decrypted with these WEFLUX_ENCRYPTION_KEYS"
        ) from None
    if secret is None:
        raise SimulateError("the channel has no app secret of its own: give --app-secret")
    return Target(
        phone_number_id=account.phone_number_id,
        business_account_id=account.business_account_id,
        display_phone_number=account.display_phone_number,
        path=f"/webhooks/whatsapp/{account.webhook_key}",
        app_secret=secret.reveal(),
        known=True,
    )


async def _known_number(phone_number_id: str, settings: Settings) -> bool | None:
    """Whether the local database has a live channel of this number (None: unreadable)."""
    if _missing_sqlite_file(settings.migration_url) is not None:
        return None
    try:
        # deferred: start-up cost
        from sqlmodel import col, select

        from weflux.db import maintenance_database
        from weflux.models import WhatsAppAccount

        db = await maintenance_database(settings.migration_url)
        try:
            async with db.session(all_workspaces="simulate: is this number known?") as session:
                statement = select(WhatsAppAccount.id).where(
                    WhatsAppAccount.phone_number_id == phone_number_id,
                    col(WhatsAppAccount.disconnected_at).is_(None),
                )
                return (await session.exec(statement)).first() is not None
        finally:
            await db.dispose()
    except Exception:
        return None


async def resolve_target(args: argparse.Namespace, settings: Settings | None = None) -> Target:
    """Where this simulation goes: a channel of the database, or `--app-secret`'s bare URL."""
    if args.app_secret is None:
        return await _channel_target(args, _settings(settings))
    if not args.channel:
        raise SimulateError("--app-secret needs --channel PHONE_NUMBER_ID (the number written to)")
    try:
        known = await _known_number(args.channel, _settings(settings))
    except Exception:
        known = None  # no readable local settings: nothing to say about the number
    return Target(
        phone_number_id=args.channel,
        business_account_id=args.business_account or "0",
        display_phone_number=args.display_phone_number or "+1 555 0100",
        path="/webhooks/whatsapp",
        app_secret=args.app_secret,
        known=known is not False,
    )


# -- sending ------------------------------------------------------------------------------


STAYS_LOCAL = (
    "the server has no sandbox media route (POST /sandbox/media answered 404: not "
    "WEFLUX_ENV=development, or no sandbox): the file stays local and its download will fail"
)


async def upload_image(
    http: httpx.AsyncClient, base_url: str, path: Path, image: ImageFile
) -> str | None:
    """Give `--image`'s file to the server's sandbox (`POST /sandbox/media`); its media id,
    or None where the server has no such route (404)."""
    import httpx  # deferred: start-up cost

    url = base_url.rstrip("/") + "/sandbox/media"
    try:
        response = await http.post(
            url,
            content=image.content,
            headers={"Content-Type": image.mime_type, "User-Agent": "weflux-simulate"},
        )
    except httpx.HTTPError as error:
        raise SimulateError(f"could not reach {base_url}: {type(error).__name__}") from None
    if response.status_code == 404:
        return None
    media_id = None
    with contextlib.suppress(ValueError, AttributeError):
        media_id = response.json().get("id")
    if response.status_code != 200 or not isinstance(media_id, str):
        try:
            why = str(response.json()["error"]["message"])
        except (ValueError, KeyError, TypeError):
            why = response.text[:200]
        raise SimulateError(
            f"the server refused {path} (POST /sandbox/media: HTTP {response.status_code}): {why}"
        )
    return media_id


async def simulate(args: argparse.Namespace, settings: Settings | None = None) -> Outcome:
    """Build, sign and post one notification; answer what happened."""
    import httpx  # deferred: start-up cost

    target = await resolve_target(args, settings)
    image, note = None, None
    if args.kind == "message" and args.image is not None:
        image = read_image(args.image)  # a bad file is refused before anything is sent
    url = args.url.rstrip("/") + target.path
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            if image is not None:
                media_id = await upload_image(http, args.url, args.image, image)
                image = replace(image, media_id=media_id)
                note = STAYS_LOCAL if media_id is None else None
            body = build_body(target, args, image)
            raw = webhooks.encode(body)
            response = await http.post(
                url,
                content=raw,
                headers={
                    "Content-Type": "application/json",
                    "X-Hub-Signature-256": webhooks.sign(raw, target.app_secret),
                    "User-Agent": "weflux-simulate",
                },
            )
    except httpx.HTTPError as error:
        raise SimulateError(f"could not reach {args.url}: {type(error).__name__}") from None
    dropped = None
    if response.status_code == 200 and not target.known:
        dropped = (
            f"no live channel has phone_number_id {target.phone_number_id}: the server "
            "answered 200 (as it does to Meta) and dropped the body, logging why at WARNING"
        )
    return Outcome(url, body, response.status_code, response.text[:500], dropped, note)


def cmd_simulate(args: argparse.Namespace) -> int:
    """Send a Meta-shaped, signed webhook to a running server (CONTRACT §10)."""
    try:
        outcome = asyncio.run(simulate(args))
    except SimulateError as error:
        print(f"weflux simulate: {error}", file=sys.stderr)
        return 2
    print(report(outcome))
    return 0 if outcome.http_status == 200 and outcome.dropped is None else 1


def report(outcome: Outcome) -> str:
    """What was sent and what the server answered, for the terminal."""
    lines = [
        f"POST {loggable_target(outcome.url)}",
        json.dumps(outcome.body, indent=2, ensure_ascii=False),
        f"-> HTTP {outcome.http_status} {outcome.answer}",
    ]
    if outcome.note is not None:
        lines.append(f"NOTE: {outcome.note}")
    if outcome.dropped is not None:
        lines.append(f"DROPPED: {outcome.dropped}")
    return "\n".join(lines)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=DEFAULT_URL, help=f"the server (default {DEFAULT_URL})")
    parser.add_argument(
        "--channel",
        metavar="PHONE_NUMBER_ID",
        help="the channel written to (default: the demo number, the live sandbox channel)",
    )
    parser.add_argument(
        "--app-secret",
        help="sign with this secret and post to the bare /webhooks/whatsapp (no database read)",
    )
    parser.add_argument("--business-account", help="with --app-secret: the WABA id of the body")
    parser.add_argument("--display-phone-number", help="with --app-secret: the number's display")
    parser.set_defaults(func=cmd_simulate)


def add_simulate_commands(commands: Any) -> None:
    """`weflux simulate message|status|quality|account`."""
    simulate_parser = commands.add_parser(
        "simulate", help="send Meta-shaped, signed webhooks to a running server"
    )
    kinds = simulate_parser.add_subparsers(dest="kind", required=True)

    message = kinds.add_parser("message", help="a customer's inbound message")
    _common(message)
    message.add_argument(
        "--from", dest="sender", default=DEFAULT_CUSTOMER, help="the customer's number"
    )
    message.add_argument("--name", help="the customer's WhatsApp profile name")
    content = message.add_mutually_exclusive_group(required=True)
    content.add_argument("--text")
    content.add_argument("--image", type=Path, metavar="FILE", help="a small JPEG, PNG or WebP")
    content.add_argument("--location", metavar="LAT,LONG")
    content.add_argument("--reaction", metavar="EMOJI")
    message.add_argument("--caption", help="with --image")
    message.add_argument("--to-message", metavar="WAMID", help="with --reaction")
    message.add_argument("--reply-to", metavar="WAMID", help="quote this message")

    status = kinds.add_parser("status", help="a status of an outbound message")
    _common(status)
    status.add_argument("--message", required=True, metavar="WAMID", help="its waMessageId")
    status.add_argument("--status", required=True, choices=STATUSES)
    status.add_argument("--error", type=int, metavar="CODE", help="with failed: Meta's code")
    status.add_argument(
        "--recipient", default=DEFAULT_CUSTOMER, help="the customer the message went to"
    )

    quality = kinds.add_parser("quality", help="a quality rating change of the number")
    _common(quality)
    quality.add_argument("--rating", required=True, choices=RATINGS)

    account = kinds.add_parser("account", help="an account update (restrictions, flags, bans)")
    _common(account)
    account.add_argument(
        "--event",
        required=True,
        choices=[*ACCOUNT_EVENTS, *META_ACCOUNT_EVENTS],
        help="FLAGGED, RESTRICTED, BANNED, DELETED, RECONNECTED, or Meta's own event name",
    )
