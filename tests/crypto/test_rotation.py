"""Key rotation across workspaces, on SQLite and PostgreSQL; and the sealing helpers."""

from __future__ import annotations

import json
import logging
import os
import secrets
import uuid
from dataclasses import dataclass

import pytest
from sqlmodel import select

from tests.fixtures.factories import Actor, create_org
from weflux.auth import recovery_codes, totp
from weflux.crypto.fields import SECRET_COLUMNS, context_for, open_secret, seal
from weflux.crypto.keyring import DecryptionError, KeyRing, SecretContext
from weflux.crypto.rotation import rotate_keys
from weflux.crypto.secret import Secret
from weflux.db import Database
from weflux.models import (
    AuditEvent,
    Organization,
    SmtpSettings,
    User,
    WhatsAppAccount,
    utcnow,
)
from weflux.services.audit import Action

OLD_KEY = os.urandom(32)
NEW_KEY = os.urandom(32)
OLD_RING = KeyRing([("old", OLD_KEY)])
NEW_RING = KeyRing([("new", NEW_KEY), ("old", OLD_KEY)])
WHATSAPP_COLUMNS = SECRET_COLUMNS["whatsapp_accounts"]


def _account(org_id: uuid.UUID) -> WhatsAppAccount:
    suffix = secrets.token_hex(6)
    return WhatsAppAccount(
        org_id=org_id,
        display_phone_number="+1 555 0100",
        phone_number_id=f"pn-{suffix}",
        business_account_id=f"waba-{suffix}",
        webhook_key=f"wh-{suffix}",
        credentials_updated_at=utcnow(),
    )


@dataclass
class Stored:
    """The plaintexts the test sealed, by (table, row id, column)."""

    plaintexts: dict[tuple[str, uuid.UUID, str], str]

    def of_org(self, rows: dict[uuid.UUID, uuid.UUID], org_id: uuid.UUID) -> list[str]:
        return [v for (_, row, _), v in self.plaintexts.items() if rows[row] == org_id]


async def _seed(
    db: Database, orgs: list[Organization], *, accounts_per_org: int, ring: KeyRing
) -> tuple[Stored, dict[uuid.UUID, uuid.UUID]]:
    """WhatsApp accounts with all three secrets, and SMTP settings, in every workspace."""
    stored: dict[tuple[str, uuid.UUID, str], str] = {}
    owners: dict[uuid.UUID, uuid.UUID] = {}
    for org in orgs:
        async with db.session(org.id) as session:
            for _ in range(accounts_per_org):
                account = _account(org.id)
                for column in WHATSAPP_COLUMNS:
                    plaintext = f"{column}-{secrets.token_urlsafe(16)}"
                    seal(ring, account, column, plaintext)
                    stored[("whatsapp_accounts", account.id, column)] = plaintext
                owners[account.id] = org.id
                session.add(account)
            smtp = SmtpSettings(
                org_id=org.id,
                host="smtp.example.com",
                port=587,
                from_address="inbox@example.com",
                security="starttls",
            )
            password = f"smtp-{secrets.token_urlsafe(16)}"
            seal(ring, smtp, "password_enc", password)
            stored[("smtp_settings", smtp.id, "password_enc")] = password
            owners[smtp.id] = org.id
            session.add(smtp)
    return Stored(stored), owners


async def _envelopes(
    owner_db: Database,
) -> dict[tuple[str, uuid.UUID, str], tuple[str, SecretContext]]:
    """Every stored envelope with its context, read back as the schema owner."""
    found: dict[tuple[str, uuid.UUID, str], tuple[str, SecretContext]] = {}
    async with owner_db.session(all_workspaces="test: read back") as session:
        accounts = (await session.exec(select(WhatsAppAccount))).all()
        smtps = (await session.exec(select(SmtpSettings))).all()
    for account in accounts:
        for column in WHATSAPP_COLUMNS:
            value = getattr(account, column)
            if value is not None:
                key = ("whatsapp_accounts", account.id, column)
                found[key] = (value, context_for(account, column))
    for smtp in smtps:
        if smtp.password_enc is not None:
            key = ("smtp_settings", smtp.id, "password_enc")
            found[key] = (smtp.password_enc, context_for(smtp, "password_enc"))
    return found


async def _audit_events(db: Database, org_id: uuid.UUID) -> list[AuditEvent]:
    async with db.session(org_id) as session:
        statement = select(AuditEvent).where(AuditEvent.action == Action.KEYS_ROTATED)
        return list((await session.exec(statement)).all())


async def test_rotation_re_encrypts_every_workspace_under_the_new_primary(
    db: Database, owner_db: Database, org: Organization, other_org: Organization
) -> None:
    stored, owners = await _seed(db, [org, other_org], accounts_per_org=3, ring=OLD_RING)
    total = len(stored.plaintexts)  # 2 workspaces x (3 accounts x 3 + 1 smtp) = 20

    # A small batch size, so that the run spans several committed batches.
    report = await rotate_keys(owner_db, NEW_RING, batch_size=2)

    assert (report.scanned, report.rotated, report.already_current, report.failed) == (
        total,
        total,
        0,
        0,
    )
    assert report.summary() == f"scanned {total}, rotated {total}, already current 0, failed 0"
    envelopes = await _envelopes(owner_db)
    assert envelopes.keys() == stored.plaintexts.keys()
    for key, (envelope, context) in envelopes.items():
        assert envelope.startswith("v1.new.")
        assert NEW_RING.decrypt(envelope, context).reveal() == stored.plaintexts[key]
        with pytest.raises(DecryptionError, match="unknown key id `new`"):
            OLD_RING.decrypt(envelope, context)

    for workspace in (org, other_org):
        events = await _audit_events(db, workspace.id)
        assert len(events) == 1
        assert events[0].details == {"rotated": total // 2, "primary": "new"}
        assert events[0].org_id == workspace.id
        details = json.dumps(events[0].details)
        for plaintext in stored.of_org(owners, workspace.id):
            assert plaintext not in details

    again = await rotate_keys(owner_db, NEW_RING, batch_size=2)
    assert (again.scanned, again.rotated, again.already_current, again.failed) == (
        total,
        0,
        total,
        0,
    )
    assert await _envelopes(owner_db) == envelopes  # untouched: not even re-encrypted
    assert len(await _audit_events(db, org.id)) == 1  # nothing rotated, nothing audited


async def test_an_undecryptable_value_is_counted_logged_without_it_and_left_alone(
    db: Database,
    owner_db: Database,
    org: Organization,
    other_org: Organization,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stored, _ = await _seed(db, [org, other_org], accounts_per_org=2, ring=OLD_RING)
    gone = KeyRing([("gone", os.urandom(32))])
    async with db.session(org.id) as session:
        broken = _account(org.id)
        seal(OLD_RING, broken, "access_token_enc", "fine-token-123")
        seal(gone, broken, "app_secret_enc", "sealed-under-a-lost-key")
        session.add(broken)
        moved = _account(org.id)
        session.add(moved)
    # A value copied from another row, and a plaintext that was never sealed.
    async with db.session(org.id) as session:
        moved_row = await session.get(WhatsAppAccount, moved.id)
        assert moved_row is not None
        moved_row.access_token_enc = broken.access_token_enc
        moved_row.webhook_verify_token_enc = "plain-verify-token-never-sealed"
    broken_envelopes = {
        (broken.id, "app_secret_enc"): broken.app_secret_enc,
        (moved.id, "access_token_enc"): broken.access_token_enc,
        (moved.id, "webhook_verify_token_enc"): "plain-verify-token-never-sealed",
    }

    caplog.set_level(logging.WARNING, logger="weflux.crypto.rotation")
    report = await rotate_keys(owner_db, NEW_RING, batch_size=3)

    good = len(stored.plaintexts) + 1  # and the broken row's access token
    assert (report.scanned, report.rotated, report.failed) == (good + 3, good, 3)
    envelopes = await _envelopes(owner_db)
    for (row_id, column), value in broken_envelopes.items():
        assert envelopes[("whatsapp_accounts", row_id, column)][0] == value
    fine, context = envelopes[("whatsapp_accounts", broken.id, "access_token_enc")]
    assert NEW_RING.decrypt(fine, context).reveal() == "fine-token-123"

    failures = [r for r in caplog.records if r.name == "weflux.crypto.rotation"]
    assert len(failures) == 3
    assert {(r.row_id, r.column) for r in failures} == {  # type: ignore[attr-defined]
        (str(row_id), column) for row_id, column in broken_envelopes
    }
    logged = caplog.text + " ".join(str(r.__dict__) for r in failures)
    for value in broken_envelopes.values():
        assert value is not None
        assert value not in logged
    assert "sealed-under-a-lost-key" not in logged
    assert {r.reason for r in failures} == {  # type: ignore[attr-defined]
        "unknown key id `gone`",
        "the ciphertext was tampered with or belongs to another row "
        "(or key `old` is not the key it was sealed with)",
        "the stored value is not a well-formed envelope",
    }

    again = await rotate_keys(owner_db, NEW_RING)
    assert (again.rotated, again.failed) == (0, 3)


async def test_an_interrupted_rotation_resumes_where_it_stopped(
    db: Database, owner_db: Database, org: Organization
) -> None:
    stored, _ = await _seed(db, [org], accounts_per_org=4, ring=OLD_RING)
    total = len(stored.plaintexts)  # 4 x 3 + 1 = 13

    class CrashingKeyRing(KeyRing):
        """Dies at the seventh value: in the second batch, after the first (6 values) committed."""

        calls = 0

        def encrypt(self, plaintext: str, context: SecretContext) -> str:
            CrashingKeyRing.calls += 1
            if CrashingKeyRing.calls == 7:
                raise RuntimeError("the process died")
            return super().encrypt(plaintext, context)

    crashing = CrashingKeyRing([("new", NEW_KEY), ("old", OLD_KEY)])
    with pytest.raises(RuntimeError, match="died"):
        await rotate_keys(owner_db, crashing, batch_size=2)
    # The first batch of two accounts (6 values) committed; the second rolled back.
    assert sum(e.startswith("v1.new.") for e, _ in (await _envelopes(owner_db)).values()) == 6
    assert await _audit_events(db, org.id) == []

    report = await rotate_keys(owner_db, NEW_RING, batch_size=2)
    assert (report.scanned, report.rotated, report.already_current) == (total, total - 6, 6)
    for key, (envelope, context) in (await _envelopes(owner_db)).items():
        assert NEW_RING.decrypt(envelope, context).reveal() == stored.plaintexts[key]


async def test_rotation_with_nothing_stored(owner_db: Database) -> None:
    report = await rotate_keys(owner_db, NEW_RING)
    assert report.summary() == "scanned 0, rotated 0, already current 0, failed 0"


@pytest.mark.parametrize("dialect", ["sqlite"])
async def test_batch_size_must_be_positive(owner_db: Database) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        await rotate_keys(owner_db, NEW_RING, batch_size=0)


# --- sealing helpers --------------------------------------------------------------------


def test_seal_and_open_on_a_row() -> None:
    org_id = uuid.uuid4()
    account = _account(org_id)
    seal(NEW_RING, account, "access_token_enc", "token-value-1")
    seal(NEW_RING, account, "app_secret_enc", Secret("app-secret-1"))
    seal(NEW_RING, account, "webhook_verify_token_enc", None)
    assert account.access_token_enc is not None
    assert account.access_token_enc.startswith("v1.new.")
    opened = open_secret(NEW_RING, account, "access_token_enc")
    assert opened is not None
    assert opened.reveal() == "token-value-1"
    app_secret = open_secret(NEW_RING, account, "app_secret_enc")
    assert app_secret == "app-secret-1"
    assert open_secret(NEW_RING, account, "webhook_verify_token_enc") is None
    assert context_for(account, "access_token_enc") == SecretContext(
        org_id=org_id, table="whatsapp_accounts", column="access_token_enc", row_id=account.id
    )
    # Bound to its column: moved to another it no longer opens.
    account.app_secret_enc = account.access_token_enc
    with pytest.raises(DecryptionError):
        open_secret(NEW_RING, account, "app_secret_enc")


def test_sealing_needs_the_workspace_set_explicitly() -> None:
    account = _account(uuid.uuid4())
    account.org_id = None  # type: ignore[assignment]
    with pytest.raises(ValueError, match=r"org_id explicitly"):
        seal(NEW_RING, account, "access_token_enc", "token-value-1")
    assert account.access_token_enc is None


def test_only_registered_columns_are_sealed() -> None:
    account = _account(uuid.uuid4())
    with pytest.raises(ValueError, match="SECRET_COLUMNS"):
        seal(NEW_RING, account, "display_phone_number", "token-value-1")


async def test_a_workspace_session_sees_its_own_sealed_rows_only(
    db: Database, org: Organization
) -> None:
    """Sealed values survive the database round trip on both dialects."""
    async with db.session() as session:
        third = await create_org(session, name="Initech")
    stored, _ = await _seed(db, [org, third], accounts_per_org=1, ring=NEW_RING)
    async with db.session(org.id) as session:
        accounts = (await session.exec(select(WhatsAppAccount))).all()
    assert len(accounts) == 1
    for column in WHATSAPP_COLUMNS:
        opened = open_secret(NEW_RING, accounts[0], column)
        assert opened == stored.plaintexts[("whatsapp_accounts", accounts[0].id, column)]


async def test_rotation_re_seals_users_totp_secrets_bound_to_their_row(
    db: Database, owner_db: Database, admin: Actor, agent: Actor
) -> None:
    """Given two users' TOTP secrets sealed under the old key, when keys rotate, then each
    is under the new primary, opens only on its own row, and no workspace's audit trail
    counts it (a person's secret belongs to no workspace)."""
    plaintexts = {}
    for actor in (admin, agent):
        async with db.session(actor.org_id) as session:
            user = await session.get(User, actor.user.id)
            assert user is not None
            plaintexts[user.id] = totp.new_secret()
            seal(OLD_RING, user, "totp_secret_enc", plaintexts[user.id])

    report = await rotate_keys(owner_db, NEW_RING)

    assert (report.rotated, report.failed) == (2, 0)
    async with owner_db.session(all_workspaces="test: read back") as session:
        users = {u.id: u for u in (await session.exec(select(User))).all()}
    for user_id, plaintext in plaintexts.items():
        user = users[user_id]
        assert user.totp_secret_enc is not None
        assert user.totp_secret_enc.startswith("v1.new.")
        opened = open_secret(NEW_RING, user, "totp_secret_enc")
        assert opened is not None
        assert opened.reveal() == plaintext
    [first, second] = plaintexts
    users[second].totp_secret_enc = users[first].totp_secret_enc  # copied to another row
    with pytest.raises(DecryptionError):
        open_secret(NEW_RING, users[second], "totp_secret_enc")
    assert await _audit_events(db, admin.org_id) == []


async def test_recovery_codes_keep_their_key_and_the_report_says_which_keys_they_need(
    db: Database, owner_db: Database, admin: Actor, agent: Actor
) -> None:
    """Given two users' recovery codes stored under the old key (a keyed hash cannot be
    re-keyed without its code), when keys rotate, then the codes are left as they are and
    still verify under the new ring, and the report names the old key as still needed;
    once one user regenerated and the other's codes are gone, it names none; a ring
    without the old key cannot verify them: counted as failures."""
    codes = {actor.user.id: totp.new_recovery_codes() for actor in (admin, agent)}
    for actor in (admin, agent):
        async with db.session(actor.org_id) as session:
            user = await session.get(User, actor.user.id)
            assert user is not None
            user.recovery_code_hashes = recovery_codes.stored_form(
                OLD_RING, user.id, codes[user.id]
            )
    before = await _recovery_hashes(owner_db)

    report = await rotate_keys(owner_db, NEW_RING, batch_size=1)

    assert report.recovery_codes_by_kid == {"old": 20}
    assert (report.recovery_code_keys, report.recovery_codes_failed) == (["old"], 0)
    assert report.summary().endswith("; 20 recovery code(s) still need key(s) old")
    assert await _recovery_hashes(owner_db) == before
    for user_id, stored in before.items():
        assert recovery_codes.matching(NEW_RING, user_id, stored, codes[user_id][9])
    lost = KeyRing([("new", NEW_KEY)])
    assert (await rotate_keys(owner_db, lost)).recovery_codes_failed == 20

    async with db.session(admin.org_id) as session:
        user = await session.get(User, admin.user.id)
        assert user is not None
        user.recovery_code_hashes = recovery_codes.stored_form(NEW_RING, user.id, ["aaaaa-bbbbb"])
    async with db.session(agent.org_id) as session:
        user = await session.get(User, agent.user.id)
        assert user is not None
        user.recovery_code_hashes = ""
    after = await rotate_keys(owner_db, NEW_RING)
    assert (after.recovery_codes_by_kid, after.recovery_code_keys) == ({"new": 1}, [])
    assert "recovery" not in after.summary()


async def _recovery_hashes(owner_db: Database) -> dict[uuid.UUID, str]:
    async with owner_db.session(all_workspaces="test: read back") as session:
        users = (await session.exec(select(User))).all()
    return {u.id: u.recovery_code_hashes for u in users if u.recovery_code_hashes}
