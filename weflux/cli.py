"""The `weflux` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from weflux.cli_arguments import listed_id, since
from weflux.config import (
    KEY_ID_PATTERN,
    ConfigError,
    Settings,
    generate_encryption_key_entry,
    load_settings,
)
from weflux.logs import configure_logging, configure_logging_for
from weflux.sandbox.simulate import add_simulate_commands
from weflux.secops.incident_cli import add_incident_commands
from weflux.tls import uvicorn_ssl_context

if TYPE_CHECKING:
    from weflux.db import Database
    from weflux.models import WebhookEventStatus
    from weflux.services.channel_cache import WrittenNumbers

# Each command imports what it needs inside its function, not here: `weflux --help` and
# the light commands must not pay for SQLAlchemy, Alembic, Strawberry, uvicorn or the
# crypto libraries (start-up cost). Such imports say "deferred: start-up cost".

log = logging.getLogger("weflux.cli")

SCHEMA_FILE = Path("schema.graphql")
WS_MAX_MESSAGE_BYTES = 64 * 1024  # a client frame larger than this closes the socket
UVICORN_OPTIONS: dict[str, Any] = {
    "log_config": None,
    "server_header": False,
    "proxy_headers": False,  # X-Forwarded-For is believed only from WEFLUX_TRUSTED_PROXIES
    "ws_per_message_deflate": False,  # CPU and memory per socket; off unless measured worthwhile
    "ws_max_size": WS_MAX_MESSAGE_BYTES,
    # uvicorn's own protocol, whose own 400s (unparseable requests) carry our security headers,
    "http": "weflux.http_protocol:HTTPProtocol",
    # and its WebSocket protocol, whose own refusals of a handshake carry them too.
    "ws": "weflux.http_protocol:WebSocketProtocol",
}


def _settings() -> Settings:
    return load_settings(configure_logging_for)


def _migrate(settings: Settings) -> None:
    # deferred: start-up cost
    from weflux.crypto.keyring import KeyRing
    from weflux.migrate import migrate

    # The key ring, for the migrations that rewrite keyed values (0037: recovery codes).
    keyring = KeyRing.from_settings(settings) if settings.encryption_keys is not None else None
    asyncio.run(migrate(settings.migration_url, app_url=settings.database_url, keyring=keyring))


async def _demo(settings: Settings, *, only_if_empty: bool) -> int:
    # deferred: start-up cost
    from weflux.crypto.keyring import KeyRing
    from weflux.db import Database, maintenance_database
    from weflux.services import demo

    if only_if_empty:
        maintenance = await maintenance_database(settings.migration_url)
        try:
            if not await demo.database_is_empty(maintenance):
                return 0
        finally:
            await maintenance.dispose()
    db = Database(settings.database_url)
    wrote_numbers = _record_number_writes(db)
    try:
        logins = await demo.create_demo(db, KeyRing.from_settings(settings))
    finally:
        await db.dispose()
        # From `serve`, before it starts: without Redis this is the one process, whose
        # server reads the numbers itself (nothing to tell, nothing to say).
        await _tell_servers_of_numbers(
            settings, wrote_numbers.named(), quiet_without_redis=only_if_empty
        )
    if logins is None:
        path = settings.var_dir / demo.LOGINS_FILE
        where = f"; its logins are in {path}" if path.is_file() else ""
        print(f"The demo workspace exists already{where}.")
        return 0
    path = demo.write_logins(settings.var_dir, logins)
    # Printed for the person at the terminal, never logged.
    print(demo.format_logins(logins))
    print(f"(kept in {path}, mode 0600)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Create a demo workspace with an Admin, a Manager and an Agent; print their logins."""
    settings = _settings()
    if settings.is_production:
        print(
            "error: production (WEFLUX_ENV=production) refuses the demo: its number is a "
            "sandbox channel, which only development answers",
            file=sys.stderr,
        )
        return 2
    return asyncio.run(_demo(settings, only_if_empty=False))


async def _require_current_schema(settings: Settings) -> None:
    """Production, before uvicorn: the app's role held by row-level security (else a
    ConfigError, printed as one rather than as the lifespan's traceback) and the schema
    at this release's head."""
    # deferred: start-up cost
    from weflux.app import check_database_role
    from weflux.db import Database
    from weflux.migrate import ensure_current_schema

    db = Database(settings.database_url)
    try:
        await check_database_role(settings, db)
        await ensure_current_schema(db.engine, strict=True)
    finally:
        await db.dispose()


def _ready_for_production(settings: Settings) -> bool:
    """Whether the database's role and schema let a production process start; if not,
    why on standard error (`serve` and `worker` then exit 2)."""
    from weflux.migrate import SchemaOutOfDate  # deferred: start-up cost

    try:
        asyncio.run(_require_current_schema(settings))
    except SchemaOutOfDate as exc:
        print(f"error: {exc}", file=sys.stderr)
        return False
    return True


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the API under uvicorn."""
    import uvicorn  # deferred: start-up cost

    configure_logging()
    settings = _settings()
    if settings.env == "development":
        _migrate(settings)
        asyncio.run(_demo(settings, only_if_empty=True))
    elif settings.is_production and not _ready_for_production(settings):
        # Here too, not only in the app's lifespan: uvicorn would restart failing workers.
        return 2
    if args.workers > 1 and not settings.redis_url:
        raise ConfigError(
            "--workers above 1 needs WEFLUX_REDIS_URL: revocations and events must reach "
            "every process"
        )
    if args.no_worker:
        # The app factory runs in uvicorn's process(es): tell it through the environment.
        os.environ["WEFLUX_IN_PROCESS_WORKER"] = "false"
        log.info("serving without the in-process worker (--no-worker)")
    uvicorn.run(
        "weflux.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        **UVICORN_OPTIONS,
        **_tls_options(args, settings),
    )
    return 0


def _tls_options(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """uvicorn's TLS options: the flags, else WEFLUX_SSL_CERTFILE/KEYFILE; none without."""
    certfile = args.ssl_certfile or settings.ssl_certfile
    keyfile = args.ssl_keyfile or settings.ssl_keyfile
    if certfile is None and keyfile is None:
        return {}
    if certfile is None or keyfile is None:
        raise ConfigError("--ssl-certfile and --ssl-keyfile go together: give both")
    for flag, path in (("--ssl-certfile", certfile), ("--ssl-keyfile", keyfile)):
        if not Path(path).is_file():
            raise ConfigError(f"{flag}: no file at {path}")
    return {
        "ssl_certfile": str(certfile),
        "ssl_keyfile": str(keyfile),
        "ssl_context_factory": uvicorn_ssl_context,
    }


def cmd_worker(args: argparse.Namespace) -> int:
    """Run the delivery and maintenance worker as its own process."""
    settings = _settings()
    if settings.is_production and not _ready_for_production(settings):
        # As `serve` does: the worker connects as WEFLUX_DATABASE_URL too.
        return 2
    return asyncio.run(_run_worker(settings))


async def _run_worker(settings: Settings) -> int:
    from weflux.runtime import Runtime  # deferred: start-up cost

    runtime = Runtime.build(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await runtime.start(serve=False, worker=True)
    log.info("worker started")
    try:
        await stop.wait()
    finally:
        await runtime.stop()
        log.info("worker stopped")
    return 0


def cmd_webhooks_replay(args: argparse.Namespace) -> int:
    """Reprocess stored webhook events (idempotent): all, those received since a time, the
    parked ones, or one."""
    from weflux.models import WebhookEventStatus  # deferred: start-up cost

    status = WebhookEventStatus.PARKED if args.parked else None
    settings = _settings()
    return asyncio.run(_replay(settings, args.since, status, args.event))


async def _replay(
    settings: Settings,
    since: datetime | None,
    status: WebhookEventStatus | None,
    event_id: uuid.UUID | None,
) -> int:
    # deferred: start-up cost
    from weflux.db import maintenance_database
    from weflux.runtime import Runtime
    from weflux.services.webhook_queue import replay

    events = await maintenance_database(settings.migration_url)
    runtime = Runtime.build(settings)
    await runtime.start(serve=False, worker=False)
    try:
        processed, failed = await replay(
            runtime.db,
            runtime.broker,
            runtime.settings,
            events,
            since=since,
            status=status,
            event_id=event_id,
        )
    finally:
        await runtime.stop()
        await events.dispose()
    print(f"replayed {processed} event(s), {failed} failed")
    if event_id is not None and processed + failed == 0:
        print(f"no stored webhook event {event_id}", file=sys.stderr)
        return 1
    return 1 if failed else 0


def cmd_webhooks_failed(args: argparse.Namespace) -> int:
    """List stored webhook events whose processing failed, parked ones first; exits 1
    while any is parked (no more automatic retries)."""
    settings = _settings()
    return asyncio.run(_failed(settings))


async def _failed(settings: Settings) -> int:
    # deferred: start-up cost
    from weflux.db import maintenance_database
    from weflux.services.webhook_queue import failures

    db = await maintenance_database(settings.migration_url)
    try:
        found = await failures(db)
    finally:
        await db.dispose()
    print("\n".join(found.lines()))
    return 1 if found.parked else 0


def cmd_migrate(args: argparse.Namespace) -> int:
    """Apply the Alembic migrations."""
    configure_logging()
    settings = _settings()
    _migrate(settings)
    log.info("migrations applied")
    return 0


def _key_id(value: str) -> str:
    if not KEY_ID_PATTERN.match(value):
        raise argparse.ArgumentTypeError("use 1 to 32 letters, digits, `_`, `.` or `-`")
    return value


def cmd_keys_generate(args: argparse.Namespace) -> int:
    """Print a new `kid:base64key` entry for WEFLUX_ENCRYPTION_KEYS."""
    # Only the entry on stdout, so that `$(weflux keys generate)` captures it; never logged.
    print(generate_encryption_key_entry(args.kid))
    print(
        "Put it first in WEFLUX_ENCRYPTION_KEYS (keep the old keys after it), "
        "deploy, then run `weflux keys rotate`.",
        file=sys.stderr,
    )
    return 0


async def _rotate_keys(settings: Settings, *, batch_size: int) -> int:
    # deferred: start-up cost
    from weflux.crypto.keyring import KeyRing
    from weflux.crypto.rotation import rotate_keys
    from weflux.db import maintenance_database

    keyring = KeyRing.from_settings(settings)
    db = await maintenance_database(settings.migration_url)
    wrote_numbers = _record_number_writes(db)
    try:
        report = await rotate_keys(db, keyring, batch_size=batch_size)
    finally:
        await db.dispose()
        await _tell_servers_of_numbers(settings, wrote_numbers.named())
    print(report.summary())
    if report.recovery_code_keys:
        print(
            "Recovery codes are keyed hashes, which cannot be re-keyed: keep key(s) "
            f"{', '.join(report.recovery_code_keys)} in WEFLUX_ENCRYPTION_KEYS until this "
            "reports none (a user who regenerates their codes moves to the primary key).",
            file=sys.stderr,
        )
    if report.failed or report.recovery_codes_failed:
        print(
            f"{report.failed} stored secret(s) could not be decrypted and were left unchanged, "
            f"{report.recovery_codes_failed} recovery code(s) cannot be verified; the log "
            "names their rows. Keep every old key until this reports none.",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    """Re-encrypt every stored secret under the primary key (idempotent, resumable)."""
    settings = _settings()
    return asyncio.run(_rotate_keys(settings, batch_size=args.batch_size))


def _backup_command(run: Callable[[Settings], Any]) -> int:
    from weflux.lifecycle.backup_file import BackupError  # deferred: start-up cost

    settings = _settings()
    try:
        message = run(settings)
    except BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(message)
    return 0


def cmd_backup_create(args: argparse.Namespace) -> int:
    """Write an encrypted backup of the whole database (to WEFLUX_BACKUP_DIR unless --out)."""
    # deferred: start-up cost
    from weflux.lifecycle.backups import Progress, create_backup

    out = Path(args.out) if args.out else None
    return _backup_command(
        lambda settings: (
            "wrote "
            + asyncio.run(create_backup(settings, out=out, progress=Progress("backup"))).describe()
        )
    )


async def _restore(settings: Settings, path: Path) -> str:
    from weflux.lifecycle.backups import Progress, restore_backup  # deferred: start-up cost

    restored = await restore_backup(settings, path, progress=Progress("restore"))
    # Its rows are copied, not written through sessions: the numbers may be new. A refused
    # restore wrote nothing (one transaction), so it tells nobody.
    await _tell_servers_of_numbers(settings, None)
    return "restored " + restored.describe()


def cmd_backup_restore(args: argparse.Namespace) -> int:
    """Restore a backup into an empty database, then replay the erasure ledger."""
    path = Path(args.file)
    return _backup_command(lambda settings: asyncio.run(_restore(settings, path)))


def cmd_backup_verify(args: argparse.Namespace) -> int:
    """Check a backup whole without restoring it (exit 1 when it does not verify)."""
    from weflux.lifecycle.backups import Progress, verify_backup  # deferred: start-up cost

    path = Path(args.file)
    return _backup_command(
        lambda settings: (
            "verified "
            + verify_backup(path, settings.backup_key_ring, Progress("verify")).describe()
        )
    )


def cmd_backup_prune(args: argparse.Namespace) -> int:
    """Delete backups older than WEFLUX_BACKUP_RETENTION in WEFLUX_BACKUP_DIR (keeps the newest)."""
    from weflux.lifecycle.backups import prune_backups  # deferred: start-up cost

    def run(settings: Settings) -> str:
        deleted = prune_backups(settings.backups_path, settings.backup_retention)
        lines = [f"deleted {path}" for path in deleted]
        return "\n".join([*lines, f"{len(deleted)} backup file(s) deleted"])

    return _backup_command(run)


def _record_number_writes(db: Database) -> WrittenNumbers:
    """Hear `db`'s committed writes of whatsapp_accounts (as a server's channel cache
    does): the numbers they wrote, gathered."""
    from weflux.services.channel_cache import WrittenNumbers  # deferred: start-up cost

    written = WrittenNumbers()

    async def record(ids: frozenset[uuid.UUID] | None = None) -> None:
        written.add(ids)

    db.channels_changed = record
    return written


async def _tell_servers_of_numbers(
    settings: Settings, ids: frozenset[uuid.UUID] | None, *, quiet_without_redis: bool = False
) -> None:
    """Numbers written here: tell the servers (their channel caches and live webhook keys)
    through Redis, as their own writes do (weflux.services.channel_cache). Without Redis,
    or Redis unreachable, they see them within 30 s."""
    if ids is not None and not ids:
        return  # none written
    unseen = "the servers see the numbers written here within 30 s"
    if settings.redis_url is None:
        if not quiet_without_redis:
            print(f"WEFLUX_REDIS_URL is not set: {unseen}.", file=sys.stderr)
        return
    # deferred: start-up cost of the Redis client
    from redis.exceptions import RedisError

    from weflux.runtime import create_redis
    from weflux.services.channel_cache import CHANNEL, change_message

    redis = create_redis(settings.redis_url)
    try:
        await redis.publish(CHANNEL, json.dumps(change_message(ids)))
    except (RedisError, OSError) as exc:
        print(f"could not reach Redis ({type(exc).__name__}): {unseen}.", file=sys.stderr)
    finally:
        await redis.aclose()


async def _reset_two_factor(settings: Settings, *, email: str, reason: str) -> int:
    # deferred: start-up cost
    from weflux.db import maintenance_database
    from weflux.services.two_factor import operator_reset

    db = await maintenance_database(settings.migration_url)
    try:
        done = await operator_reset(db, email=email, reason=reason)
    finally:
        await db.dispose()
    if done is None:
        print("no user has that email", file=sys.stderr)
        return 1
    print(
        f"two factors cleared for user {done.user_id}; {done.sessions_ended} session(s) ended; "
        f"recorded in {done.workspaces} workspace(s). They log in with the password and "
        "enroll again."
    )
    print(await _announce_revocation(settings, done.session_ids, done.membership_ids))
    return 0


async def _announce_revocation(
    settings: Settings, session_ids: Sequence[uuid.UUID], membership_ids: Sequence[uuid.UUID]
) -> str:
    """Tell the servers, through Redis, to forget these sessions and close their sockets.

    Without Redis the servers cannot be reached from here: their caches forget within
    30 s, but their open sockets stay until the access token expires (restart them).
    """
    # deferred: start-up cost of the Redis client
    from redis.exceptions import RedisError

    from weflux.auth.authenticator import AUTH_CHANNEL, revocation_message
    from weflux.runtime import create_redis

    if settings.redis_url is None:
        return (
            "WEFLUX_REDIS_URL is not set: the servers forget these sessions within 30 s, but "
            "their open sockets stay until their access tokens expire: restart the servers."
        )
    message = revocation_message(session_ids, membership_ids, origin="weflux-cli")
    redis = create_redis(settings.redis_url)
    try:
        await redis.publish(AUTH_CHANNEL, json.dumps(message))
    except (RedisError, OSError) as exc:
        return (
            f"could not reach Redis ({type(exc).__name__}): the servers forget these sessions "
            "within 30 s, but their open sockets stay: restart the servers."
        )
    finally:
        await redis.aclose()
    return "every server has been told: their sockets close at once."


def cmd_two_factor_reset(args: argparse.Namespace) -> int:
    """Clear a user's two factors (a lost phone: the last Admin, a user of several
    workspaces) in every workspace and end their sessions."""
    settings = _settings()
    return asyncio.run(_reset_two_factor(settings, email=args.email, reason=args.reason))


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def export_schema_sdl() -> str:
    # deferred: start-up cost
    from strawberry.printer import print_schema

    from weflux.gql.schema import schema

    return print_schema(schema) + "\n"


def cmd_export_schema(args: argparse.Namespace) -> int:
    """Write schema.graphql (or, with --check, fail when it differs)."""
    sdl = export_schema_sdl()
    path = Path(args.path)
    if args.check:
        current = path.read_text() if path.is_file() else ""
        if current != sdl:
            print(f"{path} is out of date: run `weflux export-schema`", file=sys.stderr)
            return 1
        return 0
    path.write_text(sdl)
    print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="weflux", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help=cmd_serve.__doc__)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--no-worker", action="store_true", help="no in-process delivery worker")
    serve.add_argument("--ssl-certfile", type=Path, help="serve HTTPS: the certificate chain (PEM)")
    serve.add_argument("--ssl-keyfile", type=Path, help="serve HTTPS: its private key (PEM)")
    serve.set_defaults(func=cmd_serve)

    worker = commands.add_parser("worker", help=cmd_worker.__doc__)
    worker.set_defaults(func=cmd_worker)

    webhooks = commands.add_parser("webhooks", help="stored WhatsApp webhook events")
    webhook_commands = webhooks.add_subparsers(dest="webhooks_command", required=True)
    replay = webhook_commands.add_parser("replay", help=cmd_webhooks_replay.__doc__)
    replay.add_argument(
        "--since", type=since, help="an ISO time, or a duration back from now (e.g. 2h)"
    )
    which = replay.add_mutually_exclusive_group()
    which.add_argument("--parked", action="store_true", help="only the parked events")
    which.add_argument(
        "--event", type=listed_id, metavar="ID", help="only this event (its id, as listed)"
    )
    replay.set_defaults(func=cmd_webhooks_replay)
    failed = webhook_commands.add_parser("failed", help=cmd_webhooks_failed.__doc__)
    failed.set_defaults(func=cmd_webhooks_failed)

    migrate = commands.add_parser("migrate", help=cmd_migrate.__doc__)
    migrate.set_defaults(func=cmd_migrate)

    demo = commands.add_parser("demo", help=cmd_demo.__doc__)
    demo.set_defaults(func=cmd_demo)

    keys = commands.add_parser("keys", help="manage the keys that encrypt stored secrets")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    generate = key_commands.add_parser("generate", help=cmd_keys_generate.__doc__)
    generate.add_argument("--kid", type=_key_id, help="the key id (default: a random one)")
    generate.set_defaults(func=cmd_keys_generate)
    rotate = key_commands.add_parser("rotate", help=cmd_keys_rotate.__doc__)
    rotate.add_argument(
        "--batch-size", type=_positive, default=100, help="rows per transaction (default 100)"
    )
    rotate.set_defaults(func=cmd_keys_rotate)

    add_incident_commands(commands)
    add_simulate_commands(commands)
    backup = commands.add_parser("backup", help="encrypted backups under WEFLUX_BACKUP_KEYS")
    backup_commands = backup.add_subparsers(dest="backup_command", required=True)
    create = backup_commands.add_parser("create", help=cmd_backup_create.__doc__)
    create.add_argument(
        "--out", help="the file to write (default: a new file in WEFLUX_BACKUP_DIR)"
    )
    create.set_defaults(func=cmd_backup_create)
    restore = backup_commands.add_parser("restore", help=cmd_backup_restore.__doc__)
    restore.add_argument("file")
    restore.set_defaults(func=cmd_backup_restore)
    verify = backup_commands.add_parser("verify", help=cmd_backup_verify.__doc__)
    verify.add_argument("file")
    verify.set_defaults(func=cmd_backup_verify)
    prune = backup_commands.add_parser("prune", help=cmd_backup_prune.__doc__)
    prune.set_defaults(func=cmd_backup_prune)

    two_factor = commands.add_parser("two-factor", help="operator procedures for two factors")
    two_factor_commands = two_factor.add_subparsers(dest="two_factor_command", required=True)
    reset = two_factor_commands.add_parser("reset", help=cmd_two_factor_reset.__doc__)
    reset.add_argument("--email", required=True, help="the user's email address")
    reset.add_argument(
        "--reason", required=True, help="why (recorded in the audit trail), e.g. a ticket id"
    )
    reset.set_defaults(func=cmd_two_factor_reset)

    export = commands.add_parser("export-schema", help=cmd_export_schema.__doc__)
    export.add_argument("--path", default=str(SCHEMA_FILE))
    export.add_argument("--check", action="store_true")
    export.set_defaults(func=cmd_export_schema)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        for error in exc.errors():
            name = "WEFLUX_" + "_".join(str(part) for part in error["loc"]).upper()
            print(f"configuration error: {name}: {error['msg']}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
