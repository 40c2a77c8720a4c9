"""The live webhook keys' digests of a process: memory, load time and lookup at scale.

    .venv/bin/python -m bench.live_keys [--database-url URL] [--keys 100000] [--loads 5]

A fresh migrated database (SQLite unless `--database-url`, the owner's URL of an empty
database) gets `--keys` live numbers, bulk-inserted; then `weflux.services.live_keys`
loads their digests as a serving process does (`--loads` times: median and worst wall
time, and the CPU of this process), and reports the digests' bytes, the Python heap's
peak during one load (tracemalloc), and the time of one refusal of a random key
(`may_be_live`). No floor and no goal: the numbers docs/inbox.md quotes.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import statistics
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path

import sqlalchemy as sa

from bench.fanout import prepare
from weflux.db import Database
from weflux.models import WhatsAppAccount, utcnow
from weflux.realtime.broker import InProcessBroker
from weflux.services.channel_cache import ChannelCache
from weflux.services.live_keys import LiveKeys

CHUNK = 5_000


async def insert_numbers(url: str, org_id: object, count: int) -> None:
    db = Database(url)
    now = utcnow()
    table = WhatsAppAccount.__table__  # type: ignore[attr-defined]
    try:
        for start in range(0, count, CHUNK):
            rows = [
                {
                    "id": uuid.uuid4(),
                    "org_id": org_id,
                    "display_phone_number": f"+1 {n:010d}",
                    "phone_number_id": f"7{n:014d}",
                    "business_account_id": f"6{n:014d}",
                    "webhook_key": secrets.token_urlsafe(24),
                    "credentials_updated_at": now,
                    "quality_rating": "GREEN",
                    "status": "CONNECTED",
                    "sandbox": False,
                    "created_at": now,
                }
                for n in range(start, min(start + CHUNK, count))
            ]
            async with db.engine.begin() as connection:
                await connection.execute(sa.insert(table), rows)
    finally:
        await db.dispose()


async def run(args: argparse.Namespace, workdir: Path) -> None:
    url = args.database_url or f"sqlite+aiosqlite:///{workdir}/live_keys.db"
    space = await prepare(url)
    await insert_numbers(url, space.org_id, args.keys)
    db = Database(url)
    cache = ChannelCache(InProcessBroker())
    await cache.start()
    keys = LiveKeys(db, cache)
    try:
        walls, cpus = [], []
        for _ in range(args.loads):
            wall, cpu = time.perf_counter(), time.process_time()
            await keys.load()
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        tracemalloc.start()
        await keys.load()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        held = len(keys)
        if not keys.current or held != args.keys + 1:
            raise RuntimeError(f"{held} digests held, not current or not {args.keys + 1}")
        probes = [secrets.token_urlsafe(24) for _ in range(100_000)]
        began = time.perf_counter()
        refused = sum(not keys.may_be_live(key) for key in probes)
        lookup = (time.perf_counter() - began) / len(probes) * 1e6
    finally:
        await keys.stop()
        await cache.stop()
        await db.dispose()
    print(f"database: {url.split(':', 1)[0]}, {held} live keys")
    print(f"digests held:          {held * 8 / 1e6:6.2f} MB (8 bytes a key)")
    print(f"heap peak of a load:   {peak / 1e6:6.2f} MB")
    print(
        f"load:                  {statistics.median(walls) * 1e3:6.0f} ms median, "
        f"{max(walls) * 1e3:.0f} ms worst, {statistics.median(cpus) * 1e3:.0f} ms CPU"
    )
    print(f"random key refused:    {lookup:6.2f} µs ({refused} of {len(probes)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="PostgreSQL URL (owner); default: SQLite")
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--loads", type=int, default=5)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="weflux-bench-live-keys-"))
    try:
        asyncio.run(run(args, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
