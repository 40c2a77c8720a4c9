"""recovery codes: each stored hash wrapped in a keyed hash of the key ring

Recovery codes were stored as their plain SHA-256 (`users.recovery_code_hashes`): 50
random bits each, which whoever reads the table (a leaked backup, a DBA) can search
offline on a GPU in hours. The app now stores `<kid>:<HMAC-SHA256>` of
`<user id>:<that SHA-256>` under the key ring's keyed-hash key (weflux.auth.recovery_codes);
this wraps every stored plain hash the same way, without knowing its code, so every
code left keeps working once and no plain hash remains.

It needs the key ring: `weflux migrate` (and `weflux backup restore`, `weflux serve` in
development) hand it over from WEFLUX_ENCRYPTION_KEYS. Where there is a plain hash to
wrap and no key ring (`alembic upgrade` by hand), the migration fails and changes nothing.

Downgrading leaves the keyed hashes, which the earlier release cannot verify: recovery
codes stop working until their users regenerate them (with a TOTP code) or the operator
resets their two factors. The number of such accounts is logged.

Revision ID: 0037_keyed_recovery_hashes
Revises: 0036_webhook_event_batches
Create Date: 2026-12-06 10:30:00 UTC
"""

import contextlib
import logging
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import context, op

revision: str = "0037_keyed_recovery_hashes"
down_revision: str | None = "0036_webhook_event_batches"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.runtime.migration")

# As weflux.auth.recovery_codes has them at this revision (copied: a migration must not
# change meaning when the app's code does).
PURPOSE = "two-factor/recovery-code"
SEPARATOR = ":"
KEYRING = "keyring"  # weflux.migrate.KEYRING

USERS = sa.table("users", sa.column("id", sa.Uuid()), sa.column("recovery_code_hashes", sa.Text()))


def _keyed(keyring: Any, user_id: uuid.UUID, code_digest: str) -> str:
    kid, mac = keyring.keyed_hash(PURPOSE, f"{user_id}{SEPARATOR}{code_digest}")
    return f"{kid}{SEPARATOR}{mac}"


def _is_plain(value: str) -> bool:
    return SEPARATOR not in value


def _with_codes() -> list[Any]:
    query = (
        sa.select(USERS.c.id, USERS.c.recovery_code_hashes)
        .where(USERS.c.recovery_code_hashes.is_not(None))
        .order_by(USERS.c.id)
    )
    return list(op.get_bind().execute(query).all())


def _forced(table: str) -> bool:
    """Whether row-level security is FORCEd on `table` (for its owner too)."""
    if op.get_bind().dialect.name != "postgresql":
        return False
    query = sa.text("SELECT relforcerowsecurity FROM pg_class WHERE oid = CAST(:t AS regclass)")
    return bool(op.get_bind().execute(query, {"t": table}).scalar())


@contextlib.contextmanager
def _owner_sees_users() -> Iterator[None]:
    """Row-level security lifted for the owner's statements on `users`, when FORCEd, inside
    the migration's transaction (the DDL lock keeps every other session out until it is back)."""
    forced = _forced("users")
    if forced:
        op.execute("ALTER TABLE users NO FORCE ROW LEVEL SECURITY")
    yield
    if forced:
        op.execute("ALTER TABLE users FORCE ROW LEVEL SECURITY")


def _wrap(rows: list[Any], keyring: Any) -> int:
    wrapped = 0
    for user_id, stored in rows:
        values = stored.split()
        if not any(_is_plain(value) for value in values):
            continue
        new = " ".join(_keyed(keyring, user_id, v) if _is_plain(v) else v for v in values)
        op.get_bind().execute(
            USERS.update().where(USERS.c.id == user_id).values(recovery_code_hashes=new)
        )
        wrapped += 1
    return wrapped


def upgrade() -> None:
    with _owner_sees_users():
        rows = _with_codes()
        plain = sum(1 for _, stored in rows if any(_is_plain(v) for v in stored.split()))
        if not plain:
            return
        keyring = context.config.attributes.get(KEYRING)
        if keyring is None:
            raise RuntimeError(
                f"{plain} account(s) hold recovery codes stored as plain SHA-256, which this "
                "migration wraps under the key ring: run `weflux migrate` with "
                "WEFLUX_ENCRYPTION_KEYS set"
            )
        wrapped = _wrap(rows, keyring)
    log.info("recovery codes of %d account(s) wrapped under a keyed hash", wrapped)


def downgrade() -> None:
    with _owner_sees_users():
        keyed = sum(1 for _, stored in _with_codes() if stored.split())
    if keyed:
        log.warning(
            "%d account(s) keep recovery codes under a keyed hash, which the earlier release "
            "cannot verify: they work again once regenerated",
            keyed,
        )
