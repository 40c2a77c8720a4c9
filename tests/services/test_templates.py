"""Known templates are checked before a template send is queued."""

from __future__ import annotations

import pytest

from tests.fixtures.factories import Actor
from tests.fixtures.outbound import Scene, all_messages
from tests.fixtures.principals import principal_of
from weflux.db import Database
from weflux.errors import BadUserInput
from weflux.models import MessageTemplate
from weflux.services.channels import Services
from weflux.services.outbound import send_template_message
from weflux.services.templates import parameter_count


async def _send(
    db: Database, services: Services, actor: Actor, scene: Scene, name: str, *params: str
) -> None:
    async with db.session(actor.org_id) as session:
        await send_template_message(
            session,
            principal_of(actor),
            services.broker,
            conversation_id=scene.conversation.id,
            template_name=name,
            language_code="en_US",
            body_parameters=list(params),
        )


async def _template(db: Database, scene: Scene, name: str, status: str, count: int) -> None:
    async with db.session(scene.org_id) as session:
        session.add(
            MessageTemplate(
                org_id=scene.org_id,
                account_id=scene.account.id,
                name=name,
                language="en_US",
                status=status,
                parameter_count=count,
            )
        )


async def test_without_known_templates_meta_judges_at_send_time(
    db: Database, services: Services, admin: Actor, scene: Scene
) -> None:
    await _send(db, services, admin, scene, "never_synced", "a", "b")
    assert len(await all_messages(db, admin.org_id)) == 1


async def test_unknown_unapproved_or_mis_parameterised_templates_queue_nothing(
    db: Database, services: Services, admin: Actor, scene: Scene
) -> None:
    await _template(db, scene, "order_update", "APPROVED", 2)
    await _template(db, scene, "promo", "PAUSED", 0)
    cases = [
        (("promo",), "templateName", "PAUSED"),
        (("order_update", "only one"), "bodyParameters", "takes 2"),
        (("order_update", "a", "b", "c"), "bodyParameters", "takes 2"),
        (("no_such_template",), "templateName", "no template"),
    ]
    for args, field, words in cases:
        with pytest.raises(BadUserInput) as raised:
            await _send(db, services, admin, scene, *args)
        assert raised.value.graphql_code == "BAD_USER_INPUT"
        assert raised.value.details[0]["field"] == field
        assert words in raised.value.message
    assert await all_messages(db, admin.org_id) == []

    await _send(db, services, admin, scene, "order_update", "Ana", "A-17")
    assert len(await all_messages(db, admin.org_id)) == 1


def test_parameter_count_counts_distinct_placeholders() -> None:
    assert parameter_count(None) == 0
    assert parameter_count("No parameters") == 0
    assert parameter_count("Hi {{1}}, {{2}} and {{1}} again; {{ 3 }}") == 3
    assert parameter_count("Hello {{first_name}}") == 1
