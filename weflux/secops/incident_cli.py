"""`weflux incident open|notify|list|close`: the operator's side of the incident register.

Each command connects as the schema owner (WEFLUX_DATABASE_MIGRATION_URL, or the
database URL), like the other maintenance commands.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from weflux.cli_arguments import aware_time, row_id
from weflux.config import Settings, load_settings
from weflux.errors import WefluxError
from weflux.ids import encode_global_id
from weflux.logs import configure_logging_for

# Each command imports the database and the register inside its function ("deferred:
# start-up cost"): `weflux --help` must not load SQLAlchemy (see weflux/cli.py).


def _settings() -> Settings:
    return load_settings(configure_logging_for)


def cmd_incident_open(args: argparse.Namespace) -> int:
    """Register an incident: its discovery time and the workspaces it affects; prints its id."""
    settings = _settings()
    return asyncio.run(_incident_open(settings, args.title, args.discovered_at, args.workspace))


async def _incident_open(
    settings: Settings, title: str, discovered_at: datetime, org_ids: list[uuid.UUID]
) -> int:
    # deferred: start-up cost
    from weflux.db import maintenance_database
    from weflux.secops import incidents

    db = await maintenance_database(settings.migration_url)
    try:
        async with db.session(all_workspaces="open an incident") as session:
            incident = await incidents.open_incident(
                session, title=title, discovered_at=discovered_at, org_ids=org_ids
            )
    except WefluxError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 2
    finally:
        await db.dispose()
    print(encode_global_id("Incident", incident.id))
    print(
        f"notify by {incident.notify_by.isoformat()}; "
        f"post-mortem due {incident.post_mortem_due_at.isoformat()}",
        file=sys.stderr,
    )
    return 0


def cmd_incident_notify(args: argparse.Namespace) -> int:
    """Email every Admin of each affected workspace not yet told (idempotent)."""
    settings = _settings()
    message = Path(args.message_file).read_text(encoding="utf-8")
    return asyncio.run(_incident_notify(settings, args.id, message))


async def _incident_notify(settings: Settings, incident_id: uuid.UUID, message: str) -> int:
    # deferred: start-up cost
    from weflux.db import maintenance_database
    from weflux.mail.mailer import build_mailer
    from weflux.secops import incidents

    db = await maintenance_database(settings.migration_url)
    try:
        report = await incidents.notify(db, build_mailer(settings), incident_id, message)
    except WefluxError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 2
    finally:
        await db.dispose()
    print(f"notified {len(report.sent)} Admin(s); {report.already} told before")
    for address in report.failed:
        print(f"not delivered to {address}: run notify again", file=sys.stderr)
    for org_id in report.without_admin:
        print(f"workspace {org_id} has no Admin to notify", file=sys.stderr)
    return 1 if report.failed or report.without_admin else 0


def _post_mortem(incident: Any) -> str:
    if incident.post_mortem_url:
        return str(incident.post_mortem_url)
    return f"due {incident.post_mortem_due_at.isoformat()}"


def cmd_incident_list(args: argparse.Namespace) -> int:
    """List incidents and what is overdue; exits 1 while any notice or post-mortem is."""
    settings = _settings()
    return asyncio.run(_incident_list(settings))


async def _incident_list(settings: Settings) -> int:
    # deferred: start-up cost
    from weflux.db import maintenance_database
    from weflux.secops import incidents

    db = await maintenance_database(settings.migration_url)
    try:
        async with db.session(all_workspaces="list incidents") as session:
            states = await incidents.list_incidents(session)
    finally:
        await db.dispose()
    if not states:
        print("no incidents")
    for state in states:
        incident = state.incident
        told = len(state.workspaces) - len(state.unnotified)
        flags = [
            flag
            for flag, on in (
                ("NOTICE OVERDUE", state.notice_overdue),
                ("POST-MORTEM OVERDUE", state.post_mortem_overdue),
            )
            if on
        ]
        print(
            f"{encode_global_id('Incident', incident.id)}  {incident.status.value}  "
            f"{incident.title}\n"
            f"  discovered {incident.discovered_at.isoformat()}; "
            f"notified {told}/{len(state.workspaces)} workspace(s), "
            f"due {incident.notify_by.isoformat()}; "
            f"post-mortem {_post_mortem(state.incident)}"
            + (f"\n  {', '.join(flags)}" if flags else "")
        )
    return 1 if any(state.overdue for state in states) else 0


def cmd_incident_close(args: argparse.Namespace) -> int:
    """Close an incident with the URL of its published post-mortem."""
    settings = _settings()
    return asyncio.run(_incident_close(settings, args.id, args.post_mortem_url))


async def _incident_close(settings: Settings, incident_id: uuid.UUID, url: str) -> int:
    # deferred: start-up cost
    from weflux.db import maintenance_database
    from weflux.secops import incidents

    db = await maintenance_database(settings.migration_url)
    try:
        async with db.session(all_workspaces="close an incident") as session:
            await incidents.close_incident(session, incident_id, post_mortem_url=url)
    except WefluxError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 2
    finally:
        await db.dispose()
    print("closed")
    return 0


def add_incident_commands(commands: Any) -> None:
    """Register `incident` and its subcommands on the `weflux` parser's subparsers."""
    incident = commands.add_parser("incident", help="the incident register and its notices")
    incident_commands = incident.add_subparsers(dest="incident_command", required=True)
    opened = incident_commands.add_parser("open", help=cmd_incident_open.__doc__)
    opened.add_argument("--title", required=True)
    opened.add_argument(
        "--discovered-at", required=True, type=aware_time, help="ISO time with its zone"
    )
    opened.add_argument(
        "--workspace",
        required=True,
        action="append",
        type=row_id("Organization"),
        help="an affected Organization's global id (repeatable)",
    )
    opened.set_defaults(func=cmd_incident_open)
    notify = incident_commands.add_parser("notify", help=cmd_incident_notify.__doc__)
    notify.add_argument("id", type=row_id("Incident"), help="the incident's id")
    notify.add_argument("--message-file", required=True, help="the notice's text (UTF-8)")
    notify.set_defaults(func=cmd_incident_notify)
    listed = incident_commands.add_parser("list", help=cmd_incident_list.__doc__)
    listed.set_defaults(func=cmd_incident_list)
    close = incident_commands.add_parser("close", help=cmd_incident_close.__doc__)
    close.add_argument("id", type=row_id("Incident"), help="the incident's id")
    close.add_argument("--post-mortem-url", required=True)
    close.set_defaults(func=cmd_incident_close)
