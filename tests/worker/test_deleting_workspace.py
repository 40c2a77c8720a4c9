"""The delivery worker and a workspace being deleted: nothing it queued is ever sent.

`requestWorkspaceDeletion` fails every queued message and disconnects every number in
its own transaction, and a mutation that ran meanwhile is refused at its commit
(weflux.gql.policy). A message queued after the request by any other path (one that
escapes both) must still never leave, nor wait QUEUED for ever.
"""

from __future__ import annotations

from starlette.applications import Starlette

from tests.fixtures.deletion import request_deletion
from tests.fixtures.factories import Actor, create_message
from tests.fixtures.outbound import Scene, load_message
from weflux.config import Settings
from weflux.db import Database
from weflux.models import Conversation, MessageDirection, MessageStatus, utcnow
from weflux.sandbox.cloud_api import FakeCloudApi
from weflux.services.channels import Services
from weflux.worker.delivery import deliver_due_messages


async def test_a_message_queued_after_the_deletion_request_fails_unsent(
    app: Starlette,
    db: Database,
    services: Services,
    inbox_settings: Settings,
    fake_meta: FakeCloudApi,
    admin: Actor,
    scene: Scene,
) -> None:
    """Given a workspace whose deletion was requested, when a reply is queued after it
    (past every check), then the worker's next run fails it, "the WhatsApp number was
    disconnected", and Meta is never called."""
    await request_deletion(app, db, admin)
    async with db.session(admin.org_id) as session:
        conversation = await session.get(Conversation, scene.conversation.id)
        assert conversation is not None
        late = await create_message(
            session,
            conversation,
            direction=MessageDirection.OUTBOUND,
            status=MessageStatus.QUEUED,
            wa_message_id=None,
            next_attempt_at=utcnow(),
            sent_by_membership_id=admin.membership.id,
        )

    assert await deliver_due_messages(db, services, inbox_settings) == 1

    stored = await load_message(db, late.id, admin.org_id)
    assert stored.status == MessageStatus.FAILED
    assert stored.error_title == "Not sent: the WhatsApp number was disconnected"
    assert fake_meta.requests == []
    assert await deliver_due_messages(db, services, inbox_settings) == 0
