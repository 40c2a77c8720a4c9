"""Backup and restore: throughput and peak memory at two sizes (memory must not grow).

    .venv/bin/python -m bench.backups [--sizes 100000,1000000] [--postgres ADMIN_URL]

For each size, a database with that many messages (one workspace, one conversation,
texts of about 120 characters, one in ten with a JSON media object) is built; then
`create_backup` and `restore_backup` (into an empty database of the same engine) each
run in a child process of their own, whose peak RSS (`ru_maxrss` from `wait4`) and wall
time are reported. With `--postgres` (a superuser URL, e.g.
`postgresql+asyncpg://postgres@127.0.0.1/postgres`) the databases are PostgreSQL ones
created and dropped by the run; otherwise SQLite files in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import insert, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from weflux.config import Settings, generate_encryption_key_entry, load_settings
from weflux.db import Database
from weflux.migrate import migrate
from weflux.models import Contact, Conversation, Message, Organization, WhatsAppAccount, utcnow
from weflux.models.base import new_id

BATCH = 5000
TEXT = "Hello, I ordered a blue jacket last week and it has not arrived yet; could you check? #"


def _settings(workdir: Path, url: str) -> Settings:
    keys = json.loads((workdir / "keys.json").read_text())
    return load_settings(
        _env_file=None,
        env="test",
        var_dir=workdir / "var",
        database_url=url,
        jwt_secret="b" * 40,
        encryption_keys=keys["application"],
        backup_keys=keys["backup"],
        log_level="WARNING",
    )


async def _populate(url: str, messages: int) -> None:
    await migrate(url)
    db = Database(url, maintenance=True)
    org_id, account_id, contact_id, conversation_id = (new_id() for _ in range(4))
    now = utcnow()
    async with db.engine.begin() as connection:
        await connection.execute(
            insert(Organization.__table__),  # type: ignore[attr-defined]
            [{"id": org_id, "name": "Bench", "created_at": now}],
        )
        await connection.execute(
            insert(WhatsAppAccount.__table__),  # type: ignore[attr-defined]
            [
                {
                    "id": account_id,
                    "org_id": org_id,
                    "display_phone_number": "+1 555 0000001",
                    "phone_number_id": "900000000001",
                    "business_account_id": "800000000001",
                    "webhook_key": uuid.uuid4().hex,
                    "credentials_updated_at": now,
                    "status": "CONNECTED",
                    "quality_rating": "GREEN",
                    "created_at": now,
                }
            ],
        )
        await connection.execute(
            insert(Contact.__table__),  # type: ignore[attr-defined]
            [
                {
                    "id": contact_id,
                    "org_id": org_id,
                    "wa_id": "4930000001",
                    "phone_number": "+4930000001",
                    "name": "Bench",
                    "created_at": now,
                    "updated_at": now,
                    "opted_out": False,
                    "name_set_by_team": False,
                }
            ],
        )
        await connection.execute(
            insert(Conversation.__table__),  # type: ignore[attr-defined]
            [
                {
                    "id": conversation_id,
                    "org_id": org_id,
                    "contact_id": contact_id,
                    "account_id": account_id,
                    "status": "OPEN",
                    "unread_count": 0,
                    "created_at": now,
                    "updated_at": now,
                }
            ],
        )
    done = 0
    while done < messages:
        size = min(BATCH, messages - done)
        rows: list[dict[str, Any]] = [
            {
                "id": new_id(),
                "org_id": org_id,
                "conversation_id": conversation_id,
                "direction": "INBOUND",
                "type": "text",
                "text": f"{TEXT}{done + n}",
                "media": {"id": f"m{done + n}", "mime_type": "image/jpeg"} if n % 10 == 0 else None,
                "status": "RECEIVED",
                "wa_message_id": f"wamid.B{done + n:012d}",
                "attempts": 0,
                "created_at": now,
            }
            for n in range(size)
        ]
        async with db.engine.begin() as connection:
            await connection.execute(insert(Message.__table__), rows)  # type: ignore[attr-defined]
        done += size
    await db.dispose()


async def _phase(phase: str, workdir: Path, url: str, path: Path) -> None:
    from weflux.lifecycle.backups import create_backup, restore_backup

    settings = _settings(workdir, url)
    started = time.perf_counter()
    if phase == "create":
        summary = await create_backup(settings, out=path)
    else:
        summary = await restore_backup(settings, path)
    print(json.dumps({"seconds": time.perf_counter() - started, "rows": summary.rows}))


def _child(phase: str, workdir: Path, url: str, path: Path) -> dict[str, float]:
    command = [
        sys.executable,
        "-m",
        "bench.backups",
        "--phase",
        phase,
        "--workdir",
        str(workdir),
        "--url",
        url,
        "--file",
        str(path),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE)  # noqa: S603  (our own module)
    assert process.stdout is not None
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"{phase} failed")
    result: dict[str, float] = json.loads(out)
    result["peak_mib"] = usage.ru_maxrss / 1024
    return result


async def _create_pg(admin: str, name: str) -> str:
    engine = create_async_engine(admin, isolation_level="AUTOCOMMIT")
    async with engine.connect() as connection:
        await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    await engine.dispose()
    return make_url(admin).set(database=name).render_as_string(hide_password=False)


async def _drop_pg(admin: str, name: str) -> None:
    engine = create_async_engine(admin, isolation_level="AUTOCOMMIT")
    async with engine.connect() as connection:
        await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await engine.dispose()


def run(sizes: list[int], postgres: str | None) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="weflux-bench-backups-"))
    (workdir / "keys.json").write_text(
        json.dumps(
            {
                "application": generate_encryption_key_entry("app1"),
                "backup": generate_encryption_key_entry("bk1"),
            }
        )
    )
    engine = "PostgreSQL" if postgres else "SQLite"
    print(f"{engine}; work directory {workdir}")
    print(
        "| messages | file MiB | create s | create rows/s | create peak MiB "
        "| restore s | restore rows/s | restore peak MiB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for size in sizes:
        names = (f"weflux_bench_src_{os.getpid()}_{size}", f"weflux_bench_dst_{os.getpid()}_{size}")
        if postgres:
            source = asyncio.run(_create_pg(postgres, names[0]))
            target = asyncio.run(_create_pg(postgres, names[1]))
        else:
            source = f"sqlite+aiosqlite:///{workdir}/source-{size}.db"
            target = f"sqlite+aiosqlite:///{workdir}/target-{size}.db"
        try:
            asyncio.run(_populate(source, size))
            path = workdir / f"bench-{size}.wfxbak"
            created = _child("create", workdir, source, path)
            restored = _child("restore", workdir, target, path)
        finally:
            if postgres:
                for name in names:
                    asyncio.run(_drop_pg(postgres, name))
        mib = path.stat().st_size / 2**20
        print(
            f"| {size:,} | {mib:,.1f} | {created['seconds']:.1f} "
            f"| {created['rows'] / created['seconds']:,.0f} | {created['peak_mib']:.0f} "
            f"| {restored['seconds']:.1f} | {restored['rows'] / restored['seconds']:,.0f} "
            f"| {restored['peak_mib']:.0f} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--postgres", default=None, help="a superuser URL to create databases")
    parser.add_argument("--phase", choices=["create", "restore"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        asyncio.run(_phase(args.phase, Path(args.workdir), args.url, Path(args.file)))
        return
    run([int(size) for size in args.sizes.split(",")], args.postgres)


if __name__ == "__main__":
    main()
