"""The `weflux` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import ValidationError

from weflux.config import ConfigError, Settings, load_settings
from weflux.logs import configure_logging

log = logging.getLogger("weflux.cli")

SCHEMA_FILE = Path("schema.graphql")


def _settings() -> Settings:
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    return settings


def _migrate(settings: Settings) -> None:
    from weflux.migrate import migrate

    asyncio.run(migrate(settings.migration_url, app_url=settings.database_url))


async def _demo(settings: Settings, *, only_if_empty: bool) -> int:
    from weflux.db import Database
    from weflux.services import demo

    db = Database(settings.database_url)
    try:
        if only_if_empty and not await demo.database_is_empty(db):
            return 0
        logins = await demo.create_demo(db)
    finally:
        await db.dispose()
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
    return asyncio.run(_demo(settings, only_if_empty=False))


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the API under uvicorn."""
    import uvicorn

    configure_logging()
    settings = _settings()
    if settings.env == "development":
        _migrate(settings)
        asyncio.run(_demo(settings, only_if_empty=True))
    if args.no_worker:
        log.info("serving without the in-process worker (--no-worker)")
    uvicorn.run(
        "weflux.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_config=None,
        server_header=False,
        proxy_headers=False,  # the app trusts X-Forwarded-For only from WEFLUX_TRUSTED_PROXIES
        ws_per_message_deflate=False,
    )
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    """Apply the Alembic migrations."""
    configure_logging()
    settings = _settings()
    _migrate(settings)
    log.info("migrations applied")
    return 0


def export_schema_sdl() -> str:
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
    serve.set_defaults(func=cmd_serve)

    migrate = commands.add_parser("migrate", help=cmd_migrate.__doc__)
    migrate.set_defaults(func=cmd_migrate)

    demo = commands.add_parser("demo", help=cmd_demo.__doc__)
    demo.set_defaults(func=cmd_demo)

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
