"""Posts to unknown webhook keys: the server's CPU per post, one key repeated and random ones.

    .venv/bin/python -m bench.unknown_key [--database-url URL] [--posts 2000]

A real `weflux serve --no-worker` on a fresh migrated database (SQLite unless
`--database-url`) is posted signed one-message webhooks on `/webhooks/whatsapp/{key}`
for keys that name no channel (each answered 404), over keep-alive connections:

1. one unknown key, `--posts` times: what a client hammering one bad URL costs (its miss
   is remembered: weflux.services.channel_cache);
2. `--posts` distinct random keys: each a miss the server has never seen;
3. for scale, the keyed URL of the real number with a wrong signature (401), `--posts`
   times: the channel is cached, the request spends an HMAC and the failure limits.

Server CPU (all threads, `bench.fanout.process_cpu_seconds`) per post, after a warm-up,
and the SQL statements of one more post to the repeated key, counted in this process.
The load generator shares the machine: compare runs against a base, not absolute times.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from sqlalchemy import event

from bench.fanout import Server, loopback, prepare, server_env, spawn
from bench.fanout import webhook as signed_webhook
from bench.webhook import Pool, bench_settings, wait_up, webhook_path
from tests.fixtures.live import free_port
from weflux.app import create_app

WARM_UP = 50


async def cpu_per_post(
    pool: Pool, server: Server, paths: list[str], body: bytes, headers: dict[str, str], status: int
) -> float:
    """Server CPU µs per post of `body` to each of `paths` in turn (after a warm-up)."""
    for path in paths[:WARM_UP]:
        await pool.post(path, body, headers)
    before = server.cpu_seconds()
    for path in paths[WARM_UP:]:
        answer, text = await pool.post(path, body, headers)
        if answer != status:
            raise RuntimeError(f"{path}: {answer} {text[:200]!r}")
    return (server.cpu_seconds() - before) / (len(paths) - WARM_UP) * 1e6


async def statements_of_repeats(
    url: str, workdir: Path, path: str, body: bytes, headers: dict[str, str]
) -> int:
    """SQL statements of the third post to one unknown key, in this process."""
    app = create_app(bench_settings(url, workdir))
    seen: list[str] = []
    async with LifespanManager(app) as manager:
        engine = app.state.runtime.db.engine.sync_engine
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://meta") as client:
            for _ in range(2):
                await client.post(path, content=body, headers=headers)

            def count(_c: Any, _cur: Any, sql: str, *_: Any) -> None:
                seen.append(sql)

            event.listen(engine, "before_cursor_execute", count)
            try:
                response = await client.post(path, content=body, headers=headers)
            finally:
                event.remove(engine, "before_cursor_execute", count)
            assert response.status_code == 404, response.text
    return len(seen)


def random_path() -> str:
    return f"/webhooks/whatsapp/{secrets.token_urlsafe(24)}"


async def run(args: argparse.Namespace, workdir: Path) -> None:
    url = args.database_url or f"sqlite+aiosqlite:///{workdir}/unknown.db"
    space = await prepare(url)
    known = await webhook_path(url, space)
    body, headers = signed_webhook(space, "15551230001", "hi")
    repeated = random_path()
    statements = await statements_of_repeats(url, workdir, repeated, body, headers)
    port = free_port()
    server = spawn(
        "weflux",
        [sys.executable, "-m", "weflux", "serve", "--no-worker", *loopback(port)],
        server_env(url, workdir),
        workdir,
        port,
    )
    try:
        await wait_up(server)
        pool = Pool(server.base)
        total = WARM_UP + args.posts
        one = await cpu_per_post(pool, server, [repeated] * total, body, headers, 404)
        many = await cpu_per_post(
            pool, server, [random_path() for _ in range(total)], body, headers, 404
        )
        bad = {**headers, "X-Hub-Signature-256": "sha256=" + "0" * 64}
        wrong = await cpu_per_post(pool, server, [known] * total, body, bad, 401)
        pool.close()
    except BaseException:
        print(f"--- server log (tail)\n{server.log_tail()}", file=sys.stderr)
        raise
    finally:
        server.stop()
    print(f"database: {url.split(':', 1)[0]}, {args.posts} posts each")
    print(f"one unknown key repeated:      {one:7.0f} µs CPU/post, {statements} statements/post")
    print(f"distinct random unknown keys:  {many:7.0f} µs CPU/post")
    print(f"known key, wrong signature:    {wrong:7.0f} µs CPU/post")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="PostgreSQL URL (owner); default: SQLite")
    parser.add_argument("--posts", type=int, default=2000)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="weflux-bench-unknown-"))
    try:
        asyncio.run(run(args, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
