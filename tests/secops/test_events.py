"""Security event kinds: every kind has one severity, and only HIGH and CRITICAL alert."""

from __future__ import annotations

import pytest

from tests.fixtures.secops import alerts, events_of
from weflux.db import Database
from weflux.models import AlertChannel, Organization, SecuritySeverity
from weflux.realtime.broker import InProcessBroker
from weflux.secops.events import SEVERITY, SecurityKind, record_security_event
from weflux.services.audit import RequestMeta

CONTRACT_KINDS = {
    "auth.brute_force",
    "auth.credential_stuffing",
    "auth.refresh_reuse",
    "auth.new_device",
    "auth.mfa_disabled",
    "member.admin_granted",
    "data.export_requested",
    "data.erasure_requested",
    "data.workspace_deletion_requested",
    "channel.credentials_changed",
    "webhook.signature_failures",
}


def test_every_kind_of_the_contract_exists_with_a_severity() -> None:
    assert {kind.value for kind in SecurityKind} >= CONTRACT_KINDS
    assert set(SEVERITY) == set(SecurityKind)


@pytest.mark.parametrize(
    "kind",
    [
        SecurityKind.MFA_DISABLED,
        SecurityKind.EXPORT_REQUESTED,
        SecurityKind.ERASURE_REQUESTED,
        SecurityKind.WORKSPACE_DELETION_REQUESTED,
    ],
)
async def test_a_hooked_kind_is_recorded_and_alerted_by_its_severity(
    db: Database, org: Organization, kind: SecurityKind
) -> None:
    """Given a kind whose feature records it through the hook (two factors, data requests)
    When it is recorded
    Then it is one event, with Admin mail and webhook alerts when HIGH or CRITICAL."""
    async with db.session(org.id) as session:
        await record_security_event(
            session, InProcessBroker(), kind, "requested", meta=RequestMeta(ip="192.0.2.3")
        )
    [event] = await events_of(db, org.id)
    assert (event.kind, event.severity) == (kind.value, SEVERITY[kind].value)
    channels = {a.channel for a in await alerts(db)}
    if SEVERITY[kind] in (SecuritySeverity.HIGH, SecuritySeverity.CRITICAL):
        assert channels == {AlertChannel.ADMIN_MAIL, AlertChannel.WEBHOOK}
    else:
        assert channels == set()
