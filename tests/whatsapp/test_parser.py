"""The webhook parser: real Meta bodies, factory-built bodies, malformed input, speed."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import hmac
import json
import random
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.fixtures import webhooks as wh
from weflux.whatsapp.parser import (
    EPOCH,
    AccountUpdate,
    ContactProfile,
    InboundMessage,
    Media,
    MetaErrorInfo,
    ParsedWebhook,
    QualityUpdate,
    StatusUpdate,
    TemplateStatusUpdate,
    UnknownChange,
    WebhookError,
    parse_webhook,
)

FIXTURES = wh.REFERENCE_BODIES

# Files whose JSON is one body, and files whose JSON maps a variant name to a body.
SINGLE_BODIES = (
    "meta__inbound_text.json",
    "meta__inbound_image.json",
    "meta__inbound_interactive_button_reply.json",
    "meta__status_sent_marketing_pmp.json",
    "meta__status_delivered_service.json",
    "meta__status_failed_131049.json",
    "meta__phone_number_quality_update.json",
    "whatsapp-api-js__v25_incoming_bsuid.json",
)
KEYED_BODIES = (
    "pywa__message.json",
    "pywa__message_status.json",
    "pywa__template_status_update.json",
    "pywa__account_update.json",
)

# The pywa fixtures' ids.
PYWA_WABA = "1234567890987654321"
PYWA_NUMBER = "1122334455667"
PYWA_DISPLAY = "972123456789"
PYWA_FROM = "972987654321"
PYWA_USER_ID = "US.13491208655302741918"
PYWA_PARENT = "US.ENT.11815799212886844830"
PYWA_STATUS_WABA = "5467539754836534"


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def variant(name: str, key: str) -> Any:
    return load(name)[key]


def only(parsed: ParsedWebhook) -> InboundMessage:
    assert parsed.unknown == ()
    assert len(parsed.messages) == 1
    return parsed.messages[0]


def only_status(parsed: ParsedWebhook) -> StatusUpdate:
    assert parsed.unknown == ()
    assert len(parsed.statuses) == 1
    return parsed.statuses[0]


def without_raw(item: Any) -> dict[str, Any]:
    """The fields of a parsed record, without its raw JSON (for shape comparisons)."""
    return {f.name: getattr(item, f.name) for f in dataclasses.fields(item) if f.name != "raw"}


def all_bodies() -> list[tuple[str, Any]]:
    bodies: list[tuple[str, Any]] = [(name, load(name)) for name in SINGLE_BODIES]
    for name in KEYED_BODIES:
        bodies.extend((f"{name}:{key}", body) for key, body in load(name).items())
    return bodies


# --- every real fixture ---


def test_the_fixture_folder_holds_only_known_files() -> None:
    assert {p.name for p in FIXTURES.glob("*.json")} == {*SINGLE_BODIES, *KEYED_BODIES}


def test_every_fixture_body_parses_into_typed_records_and_nothing_unknown() -> None:
    bodies = all_bodies()
    assert len(bodies) == len(SINGLE_BODIES) + 23 + 7 + 2 + 17
    for name, body in bodies:
        parsed = parse_webhook(body)
        assert parsed.unknown == (), name
        produced = (
            parsed.messages
            + parsed.statuses
            + parsed.template_updates
            + parsed.quality_updates
            + parsed.account_updates
        )
        assert len(produced) == 1, name
        for item in produced:
            assert isinstance(item.raw, dict)


def test_meta_inbound_text() -> None:
    parsed = parse_webhook(load("meta__inbound_text.json"))
    message = only(parsed)
    assert message.phone_number_id == "106540352242922"
    assert message.display_phone_number == "15550783881"
    assert message.waba_id == "102290129340398"
    assert message.wa_message_id == "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA="
    assert message.from_wa_id == "16505551234"
    assert message.from_user_id is None
    assert message.from_username is None
    assert message.contact == ContactProfile("16505551234", None, None, None, "Sheena Nelson")
    assert message.contact is parsed.contacts[0]
    assert message.timestamp == datetime(2025, 6, 8, 20, 59, 43, tzinfo=UTC)
    assert message.timestamp.tzinfo is UTC
    assert message.type == "text"
    assert message.text == "Does it come in another color?"
    assert message.media is None
    assert message.reply_to_wa_message_id is None
    assert (message.forwarded, message.frequently_forwarded) == (False, False)
    assert message.referral is None
    assert message.reaction_to_wa_message_id is message.reaction_emoji is None
    assert message.errors == ()
    body = load("meta__inbound_text.json")
    assert message.raw == body["entry"][0]["changes"][0]["value"]["messages"][0]
    assert parsed.phone_number_ids == {"106540352242922"}
    assert parsed.waba_ids == {"102290129340398"}


def test_meta_inbound_image() -> None:
    message = only(parse_webhook(load("meta__inbound_image.json")))
    assert message.type == "image"
    assert message.text == "Taj Mahal"
    assert message.media == Media(
        id="1003383421387256",
        mime_type="image/jpeg",
        sha256="SfInY0gGKTsJlUWbwxC1k+FAD0FZHvzwfpvO0zX0GUI=",
        caption="Taj Mahal",
        filename=None,
        voice=False,
        animated=False,
        url="https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=133...",
    )


def test_meta_inbound_interactive_button_reply() -> None:
    message = only(parse_webhook(load("meta__inbound_interactive_button_reply.json")))
    assert message.type == "interactive"
    assert message.text == "Cancel"
    assert (
        message.reply_to_wa_message_id
        == "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI3MEM2RUJFNkI0RENGQTVDRjUA"
    )
    assert message.forwarded is False


# The 23 pywa inbound variants: what differs from a plain, fresh message.
PLAIN: dict[str, Any] = {
    "text": None,
    "media": None,
    "reply_to_wa_message_id": None,
    "forwarded": False,
    "frequently_forwarded": False,
    "reaction_to_wa_message_id": None,
    "reaction_emoji": None,
    "errors": (),
}


def media(**fields: Any) -> Media:
    base: dict[str, Any] = {
        "id": "1234567890987654321",
        "mime_type": None,
        "sha256": None,
        "caption": None,
        "filename": None,
        "voice": False,
        "animated": False,
        "url": None,
    }
    return Media(**{**base, **fields})


UNSUPPORTED_ERROR = MetaErrorInfo(
    131051,
    "Message type unknown",
    "Message type unknown",
    "Message type is currently not supported.",
)
PYWA_EXPECTED: dict[str, tuple[str, dict[str, Any]]] = {
    "text": ("text", {"text": "Body Text"}),
    "image": (
        "image",
        {"media": media(id="65463453", mime_type="image/jpeg", sha256="4654+8g=")},
    ),
    "media_with_url": (
        "image",
        {
            "media": media(
                id="65463453",
                mime_type="image/jpeg",
                sha256="4654+8g=",
                url="https://lookaside.fbsbx.com/whatsapp_business/attachments/"
                "?mid=65463453&source=webhook&ext=487r9re&hash=heiwchueowbcew-dnedcw",
            )
        },
    ),
    "video": (
        "video",
        {
            "text": "caption",
            "forwarded": True,
            "media": media(
                id="765756756",
                mime_type="video/mp4",
                sha256="Jh+2ij6PzUv/J2y+grrtegr/ZMzRxkEPwc24Oyib4s03w9Jc=",
                caption="caption",
            ),
        },
    ),
    "document": (
        "document",
        {
            "text": "caption",
            "forwarded": True,
            "media": media(
                mime_type="application/pdf",
                sha256="grwfwe/ZPx0wAbdfbdeFUNItPZ0RylL8gGUvdt3YFqc18SY=",
                caption="caption",
                filename="filename.pdf",
            ),
        },
    ),
    "audio": (
        "audio",
        {
            "forwarded": True,
            "media": media(
                mime_type="audio/ogg; codecs=opus",
                sha256="E3dxS/PdYZE7ppA3pQ4mpCFaXBJ8pX4SRN/dsfvds/iPGA=",
            ),
        },
    ),
    "voice": (
        "audio",
        {
            "media": media(
                mime_type="audio/ogg; codecs=opus",
                sha256="m04pFf2ERdaopTyFkGPA0+bX3i+YY2dYgVFwOgDLSDI=",
                voice=True,
            )
        },
    ),
    "static_sticker": (
        "sticker",
        {
            "media": media(
                mime_type="image/webp", sha256="OmT4nhjUhCMIPNmj7eeOZeCYjTXkLxoOv85OMCFwSuc="
            )
        },
    ),
    "animated_sticker": (
        "sticker",
        {
            "media": media(
                mime_type="image/webp",
                sha256="HcwyCKrTKXHk0a00ms4HWIA76GY0Du6q4Z/iuwevw=",
                animated=True,
            )
        },
    ),
    "reaction": (
        "reaction",
        {
            "text": "\U0001f62e",
            "reaction_to_wa_message_id": "wamid.yzxyzx=",
            "reaction_emoji": "\U0001f62e",
        },
    ),
    "unreaction_empty": ("reaction", {"reaction_to_wa_message_id": "wamid.yzxyzx="}),
    "unreaction_no_emoji": ("reaction", {"reaction_to_wa_message_id": "wamid.yzxyzx="}),
    "current_location": ("location", {"text": "Location: 12.25089, 43.90539", "forwarded": True}),
    "chosen_location": (
        "location",
        {"text": "Facebook HQ, 1 Hacker Way, Menlo Park, CA 94025", "forwarded": True},
    ),
    "contacts": ("contacts", {"text": "Contacts: Chandler Bing, Monica, Rachel Green"}),
    "order": ("order", {"text": "Order: 3 items"}),
    "unsupported": ("unsupported", {"errors": (UNSUPPORTED_ERROR,)}),
    "unsupported_with_type": ("unsupported", {"errors": (UNSUPPORTED_ERROR,)}),
    "reply": ("text", {"text": "replied text", "reply_to_wa_message_id": "wamid.xyzxyz=="}),
    "forwarded": ("text", {"text": "forwarded text", "forwarded": True}),
    "forwarded_many_times": (
        "text",
        {"text": "text forwarded many times", "forwarded": True, "frequently_forwarded": True},
    ),
    "interactive_message_with_err": (
        "interactive",
        {"reply_to_wa_message_id": "wamid.gvwegfretge=="},
    ),
    "referral": ("text", {"text": "BODY"}),
}


def test_the_pywa_table_names_23_variants() -> None:
    assert len(PYWA_EXPECTED) == 23


def test_the_pywa_table_covers_every_variant() -> None:
    assert set(load("pywa__message.json")) == set(PYWA_EXPECTED)


@pytest.mark.parametrize("name", sorted(PYWA_EXPECTED))
def test_pywa_inbound_variant(name: str) -> None:
    body = variant("pywa__message.json", name)
    parsed = parse_webhook(body)
    message = only(parsed)
    kind, differences = PYWA_EXPECTED[name]
    assert message.type == kind
    expected = {**PLAIN, **differences}
    assert {key: getattr(message, key) for key in expected} == expected
    assert message.phone_number_id == PYWA_NUMBER
    assert message.display_phone_number == PYWA_DISPLAY
    assert message.from_wa_id == PYWA_FROM
    # The message has no from_user_id: it comes from the matching contact.
    assert message.from_user_id == PYWA_USER_ID
    assert message.contact == ContactProfile(
        PYWA_FROM, PYWA_USER_ID, PYWA_PARENT, None, "Test Name"
    )
    assert message.raw is body["entry"][0]["changes"][0]["value"]["messages"][0]
    assert message.referral is None or name == "referral"


def test_pywa_referral_is_kept_whole() -> None:
    body = variant("pywa__message.json", "referral")
    message = only(parse_webhook(body))
    assert message.referral is not None
    assert message.referral["ctwa_clid"] == "CTWA_CLID"
    assert message.referral == body["entry"][0]["changes"][0]["value"]["messages"][0]["referral"]


def test_pywa_unsupported_keeps_its_raw_json() -> None:
    message = only(parse_webhook(variant("pywa__message.json", "unsupported_with_type")))
    assert message.raw["unsupported"] == {"type": "pool"}


def test_pywa_top_level_errors_become_a_webhook_error() -> None:
    parsed = parse_webhook(variant("pywa__message.json", "interactive_message_with_err"))
    assert len(parsed.messages) == 1
    assert parsed.messages[0].text is None
    assert parsed.errors == (
        WebhookError(
            phone_number_id=PYWA_NUMBER,
            waba_id=PYWA_WABA,
            errors=(
                MetaErrorInfo(
                    131000,
                    "Something went wrong",
                    "Something went wrong",
                    "Unsupported webhook payload",
                ),
            ),
            raw=parsed.errors[0].raw,
        ),
    )
    assert parsed.phone_number_ids == {PYWA_NUMBER}
    assert parsed.waba_ids == {PYWA_WABA}


# --- business-scoped user ids ---


def test_bsuid_fixture_gives_user_id_username_and_parent() -> None:
    parsed = parse_webhook(load("whatsapp-api-js__v25_incoming_bsuid.json"))
    message = only(parsed)
    assert message.from_user_id == "US.13491208655302741918"
    assert message.from_username == "@testusername"
    assert message.from_wa_id == "16315551181"
    assert message.text == "this is a text message"
    assert parsed.contacts == (
        ContactProfile(
            wa_id="16315551181",
            user_id="US.13491208655302741918",
            parent_user_id="US.11815799212886844830",
            username="@testusername",
            name="test user name",
        ),
    )


def test_bsuid_fixture_without_phone_numbers_still_parses() -> None:
    body = load("whatsapp-api-js__v25_incoming_bsuid.json")
    value = body["entry"][0]["changes"][0]["value"]
    del value["contacts"][0]["wa_id"]
    del value["messages"][0]["from"]
    message = only(parse_webhook(body))
    assert message.from_wa_id is None
    assert message.from_user_id == "US.13491208655302741918"
    assert message.from_username == "@testusername"
    assert message.contact is not None
    assert message.contact.wa_id is None
    assert message.contact.parent_user_id == "US.11815799212886844830"


def test_factory_bsuid_only_sender() -> None:
    body = wh.webhook_body(
        wh.messages_change(
            contacts=[wh.contact(wa_id=None, user_id="US.42", username="@ana", name="Ana")],
            messages=[wh.bsuid_text_message(user_id="US.42", body="hi")],
        )
    )
    assert "from" not in body["entry"][0]["changes"][0]["value"]["messages"][0]
    message = only(parse_webhook(body))
    assert (message.from_wa_id, message.from_user_id, message.from_username) == (
        None,
        "US.42",
        "@ana",
    )
    assert message.contact == ContactProfile(None, "US.42", None, "@ana", "Ana")
    assert message.text == "hi"


def test_a_message_matches_its_contact_by_user_id_before_phone() -> None:
    body = wh.webhook_body(
        wh.messages_change(
            contacts=[
                wh.contact(wa_id="111", name="Phone match", user_id="US.1"),
                wh.contact(wa_id="222", name="User id match", user_id="US.2"),
            ],
            messages=[wh.text_message(from_wa_id="111", user_id="US.2")],
        )
    )
    message = only(parse_webhook(body))
    assert message.contact is not None
    assert message.contact.name == "User id match"


def test_a_message_without_a_matching_contact_has_none() -> None:
    body = wh.webhook_body(
        wh.messages_change(contacts=[wh.contact(wa_id="999")], messages=[wh.text_message()])
    )
    message = only(parse_webhook(body))
    assert message.contact is None
    assert message.from_wa_id == wh.CUSTOMER_WA_ID


# --- statuses ---


@pytest.mark.parametrize("name", ["sent", "delivered", "read", "played"])
def test_pywa_status(name: str) -> None:
    status = only_status(parse_webhook(variant("pywa__message_status.json", name)))
    assert status.status == name
    assert status.phone_number_id == PYWA_NUMBER
    assert status.waba_id == PYWA_STATUS_WABA
    assert status.wa_message_id == "wamid.xyzxyz"
    assert status.recipient_id == PYWA_FROM
    assert status.recipient_user_id == PYWA_USER_ID  # from the matching contact
    assert status.conversation_id == "7270432eae37498234f4444b35ffc5"
    assert status.pricing_category == "service"
    assert status.errors == ()
    assert status.biz_opaque_callback_data is None


def test_pywa_status_failed_with_code_and_title() -> None:
    status = only_status(parse_webhook(variant("pywa__message_status.json", "failed")))
    assert status.status == "failed"
    assert status.timestamp == datetime.fromtimestamp(1689380458, UTC)
    assert status.errors == (
        MetaErrorInfo(
            code=130472,
            title="User's number is part of an experiment",
            message="User's number is part of an experiment",
            details="Failed to send message because this user's phone number is part of an "
            "experiment",
        ),
    )
    assert status.conversation_id is None
    assert status.pricing_category is None


def test_pywa_status_with_biz_opaque_callback_data() -> None:
    status = only_status(parse_webhook(variant("pywa__message_status.json", "with_tracker")))
    assert status.biz_opaque_callback_data == "some data"


def test_pywa_group_status() -> None:
    status = only_status(parse_webhook(variant("pywa__message_status.json", "group")))
    assert status.status == "read"
    assert status.recipient_id == "fowefinoewcnw"
    assert status.recipient_user_id is None
    assert status.raw["recipient_type"] == "group"


def test_meta_statuses() -> None:
    sent = only_status(parse_webhook(load("meta__status_sent_marketing_pmp.json")))
    assert (sent.status, sent.pricing_category) == ("sent", "marketing")
    assert sent.conversation_id == "72b14d6bd5407799e66f64d1b338e567"
    delivered = only_status(parse_webhook(load("meta__status_delivered_service.json")))
    assert (delivered.status, delivered.pricing_category) == ("delivered", "service")
    assert delivered.timestamp == datetime.fromtimestamp(1750263773, UTC)
    failed = only_status(parse_webhook(load("meta__status_failed_131049.json")))
    assert failed.status == "failed"
    assert [(e.code, e.title) for e in failed.errors] == [
        (131049, "This message was not delivered to maintain healthy ecosystem engagement.")
    ]
    assert failed.errors[0].details is not None
    assert failed.recipient_user_id is None


def test_status_is_lower_cased_and_unknown_values_are_kept() -> None:
    body = wh.webhook_body(
        wh.messages_change(
            statuses=[wh.status("wamid.a", "DELIVERED"), wh.status("wamid.b", "deleted")]
        )
    )
    parsed = parse_webhook(body)
    assert [s.status for s in parsed.statuses] == ["delivered", "deleted"]


# --- template, quality and account changes ---


def test_template_updates() -> None:
    approved = parse_webhook(variant("pywa__template_status_update.json", "approved"))
    assert approved.template_updates == (
        TemplateStatusUpdate(
            waba_id="102290129340398",
            event="APPROVED",
            template_id="1689556908129832",
            template_name="order_confirmation",
            language="en_US",
            reason="NONE",
            raw=approved.template_updates[0].raw,
        ),
    )
    rejected = parse_webhook(variant("pywa__template_status_update.json", "rejected"))
    update = rejected.template_updates[0]
    assert (update.event, update.reason, update.template_name) == (
        "REJECTED",
        "INVALID_FORMAT",
        "abandoned_cart",
    )
    assert "rejection_info" in update.raw
    assert rejected.waba_ids == {"102290129340398"}
    assert rejected.phone_number_ids == frozenset()


def test_quality_update() -> None:
    parsed = parse_webhook(load("meta__phone_number_quality_update.json"))
    assert parsed.quality_updates == (
        QualityUpdate(
            waba_id="102290129340398",
            display_phone_number="15550783881",
            event="THROUGHPUT_UPGRADE",
            current_limit="TIER_UNLIMITED",
            raw=parsed.quality_updates[0].raw,
        ),
    )


ACCOUNT_EVENTS = {
    "account_deleted": "ACCOUNT_DELETED",
    "account_restriction": "ACCOUNT_RESTRICTION",
    "account_violation": "ACCOUNT_VIOLATION",
    "ad_account_linked": "AD_ACCOUNT_LINKED",
    "authentication_international_eligibility": "AUTH_INTL_PRICE_ELIGIBILITY_UPDATE",
    "account_disabled": "DISABLED_UPDATE",
    "mm_api_for_wa_terms_of_service": "MM_LITE_TERMS_SIGNED",
    "partner_added": "PARTNER_ADDED",
    "partner_app_installed": "PARTNER_APP_INSTALLED",
    "partner_app_uninstalled": "PARTNER_APP_UNINSTALLED",
    "partner_led_business_verification_status": "PARTNER_CLIENT_CERTIFICATION_STATUS_UPDATE",
    "partner_removed": "PARTNER_REMOVED",
    "partner_removed_wa_app_disconnection": "PARTNER_REMOVED",
    "primary_business_location_set": "BUSINESS_PRIMARY_LOCATION_COUNTRY_UPDATE",
    "pricing_tiering_update": "VOLUME_BASED_PRICING_TIER_UPDATE",
    "account_offboarded": "ACCOUNT_OFFBOARDED",
    "account_reconnected": "ACCOUNT_RECONNECTED",
}


def test_all_17_account_updates() -> None:
    fixtures = load("pywa__account_update.json")
    assert set(fixtures) == set(ACCOUNT_EVENTS)
    for name, event in ACCOUNT_EVENTS.items():
        parsed = parse_webhook(fixtures[name])
        assert parsed.unknown == (), name
        (update,) = parsed.account_updates
        assert update.event == event, name
        assert update.waba_id == fixtures[name]["entry"][0]["id"]
        assert update.raw is fixtures[name]["entry"][0]["changes"][0]["value"]


def test_account_restriction_violation_and_ban() -> None:
    fixtures = load("pywa__account_update.json")
    (restriction,) = parse_webhook(fixtures["account_restriction"]).account_updates
    assert restriction.restriction_types == (
        "RESTRICTED_BIZ_INITIATED_MESSAGING",
        "RESTRICTED_ADD_PHONE_NUMBER_ACTION",
    )
    (violation,) = parse_webhook(fixtures["account_violation"]).account_updates
    assert violation.violation_type == "ADULT"
    assert violation.restriction_types == ()
    (disabled,) = parse_webhook(fixtures["account_disabled"]).account_updates
    assert disabled.event == "DISABLED_UPDATE"
    assert disabled.raw["ban_info"]["waba_ban_state"] == "REINSTATE"
    (deleted,) = parse_webhook(fixtures["account_deleted"]).account_updates
    assert (deleted.event, deleted.violation_type, deleted.phone_number) == (
        "ACCOUNT_DELETED",
        None,
        None,
    )


def test_factory_account_updates() -> None:
    body = wh.webhook_body(
        wh.account_update_change(
            "ACCOUNT_RESTRICTION", restriction_types=["RESTRICTED_BIZ_INITIATED_MESSAGING"]
        ),
        wh.account_update_change("ACCOUNT_VIOLATION", violation_type="SCAM"),
        wh.account_update_change("DISABLED_UPDATE", ban_state="DISABLE", waba_id="777"),
        wh.account_update_change("VERIFIED_ACCOUNT", phone_number="15550783881"),
    )
    assert [entry["id"] for entry in body["entry"]] == [wh.WABA_ID, "777"]
    parsed = parse_webhook(body)
    assert parsed.unknown == ()
    restriction, violation, verified, ban = parsed.account_updates
    assert restriction.restriction_types == ("RESTRICTED_BIZ_INITIATED_MESSAGING",)
    assert violation.violation_type == "SCAM"
    assert (ban.waba_id, ban.event, ban.raw["ban_info"]["waba_ban_state"]) == (
        "777",
        "DISABLED_UPDATE",
        "DISABLE",
    )
    assert verified.phone_number == "15550783881"
    assert parsed.waba_ids == {wh.WABA_ID, "777"}


def test_factory_template_and_quality_changes() -> None:
    parsed = parse_webhook(
        wh.webhook_body(
            wh.template_status_change("REJECTED", reason="INVALID_FORMAT", name="promo"),
            wh.quality_change("DOWNGRADE", current_limit="TIER_250"),
        )
    )
    assert parsed.unknown == ()
    (template,) = parsed.template_updates
    assert (template.event, template.reason, template.template_name, template.template_id) == (
        "REJECTED",
        "INVALID_FORMAT",
        "promo",
        "1689556908129832",
    )
    (quality,) = parsed.quality_updates
    assert (quality.event, quality.current_limit) == ("DOWNGRADE", "TIER_250")


# --- the signature and the wire format ---


def test_signature_vector_from_the_readme() -> None:
    raw = (FIXTURES / "meta__inbound_text.json").read_bytes()
    expected = "sha256=1c041e1c07f50386213ac582d2e17d24d70f1ed42949a6e5a5607057b805b5fc"
    assert wh.sign(raw, "test_app_secret") == expected
    # Re-serialising the parsed JSON gives other bytes, hence another digest.
    assert wh.sign(wh.encode(json.loads(raw)), "test_app_secret") != expected


def test_sign_is_hmac_sha256_hex() -> None:
    body = wh.encode(wh.webhook_body(wh.messages_change(messages=[wh.text_message()])))
    expected = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert wh.sign(body, "s3cret") == f"sha256={expected}"


def test_encode_is_compact_and_escapes_non_ascii_like_meta() -> None:
    body = wh.webhook_body(
        wh.messages_change(
            messages=[wh.text_message("wamid.1", body="café \U0001f62e", timestamp=1)]
        )
    )
    encoded = wh.encode(body)
    assert b'"body":"caf\\u00e9 \\ud83d\\ude2e"' in encoded
    assert b", " not in encoded
    assert b": " not in encoded
    assert encoded.isascii()
    assert json.loads(encoded) == body
    assert parse_webhook(json.loads(encoded)).messages[0].text == "café \U0001f62e"
    assert b"\\/" in wh.encode({"url": "https://x/y"}, escape_slashes=True)


# --- factories against the real shapes ---


def pywa_change(*messages: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    return wh.messages_change(
        PYWA_NUMBER,
        display_phone_number=PYWA_DISPLAY,
        waba_id=PYWA_WABA,
        contacts=[wh.contact(PYWA_FROM, "Test Name", PYWA_USER_ID, parent_user_id=PYWA_PARENT)],
        messages=messages,
        **kwargs,
    )


def pywa_factory_bodies() -> dict[str, dict[str, Any]]:
    """The 23 pywa variants, rebuilt with the factories."""
    sender: dict[str, Any] = {"wa_message_id": "wamid.xyzxyz", "from_wa_id": PYWA_FROM}
    fwd = wh.forwarded_context()
    big_id = "1234567890987654321"
    url = (
        "https://lookaside.fbsbx.com/whatsapp_business/attachments/"
        "?mid=65463453&source=webhook&ext=487r9re&hash=heiwchueowbcew-dnedcw"
    )
    img: dict[str, Any] = {"media_id": "65463453", "sha256": "4654+8g=", "timestamp": 1697043379}
    items = [
        wh.order_item("HAMBURGER", 3, 30, "ILS"),
        wh.order_item("FRENCH_FRIES", 2, 35, "ILS"),
        wh.order_item("SODA", 2, 10, "ILS"),
    ]
    cards = [
        wh.shared_contact(
            "Chandler Bing",
            "+1 555-555-5555",
            first_name="Chandler",
            last_name="Bing",
            wa_id=PYWA_FROM,
        ),
        wh.shared_contact(
            "Monica", "+1 666-666-6666", first_name="Monica", wa_id=PYWA_FROM, phone_type="HOME"
        ),
        wh.shared_contact(
            "Rachel Green",
            "+1 777-777-7777",
            first_name="Rachel",
            last_name="Green",
            wa_id=PYWA_FROM,
            phone_type="WORK",
        ),
    ]
    unsupported_errors = [
        wh.error(131051, "Message type unknown", details="Message type is currently not supported.")
    ]
    built: dict[str, dict[str, Any]] = {
        "text": wh.text_message(body="Body Text", timestamp=1697043223, **sender),
        "image": wh.image_message(**img, **sender),
        "media_with_url": wh.image_message(url=url, **img, **sender),
        "video": wh.video_message(
            caption="caption",
            media_id="765756756",
            sha256="Jh+2ij6PzUv/J2y+grrtegr/ZMzRxkEPwc24Oyib4s03w9Jc=",
            timestamp=1697044362,
            context=fwd,
            **sender,
        ),
        "document": wh.document_message(
            caption="caption",
            filename="filename.pdf",
            media_id=big_id,
            sha256="grwfwe/ZPx0wAbdfbdeFUNItPZ0RylL8gGUvdt3YFqc18SY=",
            timestamp=1697043666,
            context=fwd,
            **sender,
        ),
        "audio": wh.audio_message(
            media_id=big_id,
            sha256="E3dxS/PdYZE7ppA3pQ4mpCFaXBJ8pX4SRN/dsfvds/iPGA=",
            timestamp=1697043509,
            context=fwd,
            **sender,
        ),
        "voice": wh.audio_message(
            voice=True,
            media_id=big_id,
            sha256="m04pFf2ERdaopTyFkGPA0+bX3i+YY2dYgVFwOgDLSDI=",
            timestamp=1697043473,
            **sender,
        ),
        "static_sticker": wh.sticker_message(
            media_id=big_id,
            sha256="OmT4nhjUhCMIPNmj7eeOZeCYjTXkLxoOv85OMCFwSuc=",
            timestamp=1697043760,
            **sender,
        ),
        "animated_sticker": wh.sticker_message(
            animated=True,
            media_id=big_id,
            sha256="HcwyCKrTKXHk0a00ms4HWIA76GY0Du6q4Z/iuwevw=",
            timestamp=1697043785,
            **sender,
        ),
        "reaction": wh.reaction_message(
            "wamid.yzxyzx=", emoji="\U0001f62e", timestamp=1697044456, **sender
        ),
        "unreaction_empty": wh.unreaction_message("wamid.yzxyzx=", timestamp=1697044456, **sender),
        "unreaction_no_emoji": wh.unreaction_message(
            "wamid.yzxyzx=", omit_emoji=True, timestamp=1697044456, **sender
        ),
        "current_location": wh.location_message(
            latitude=12.25089, longitude=43.90539, timestamp=1697044557, context=fwd, **sender
        ),
        "chosen_location": wh.location_message(
            name="Facebook HQ",
            address="1 Hacker Way, Menlo Park, CA 94025",
            url="https://maps.google.com/?cid=2000000000000000000",
            timestamp=1697044557,
            context=fwd,
            **sender,
        ),
        "contacts": wh.contacts_message(cards=cards, timestamp=1697044621, **sender),
        "order": wh.order_message(items=items, timestamp=1697044668, **sender),
        "unsupported": wh.unsupported_message(
            errors=unsupported_errors, timestamp=1697044706, **sender
        ),
        "unsupported_with_type": wh.unsupported_message(
            errors=unsupported_errors, unsupported_type="pool", timestamp=1697044706, **sender
        ),
        "reply": wh.text_message(
            body="replied text",
            timestamp=1697044746,
            context=wh.reply_context("wamid.xyzxyz==", from_phone=PYWA_DISPLAY),
            **sender,
        ),
        "forwarded": wh.text_message(
            body="forwarded text", timestamp=1697044815, context=fwd, **sender
        ),
        "forwarded_many_times": wh.text_message(
            body="text forwarded many times",
            timestamp=1697044968,
            context=wh.forwarded_context(frequently=True),
            **sender,
        ),
        "interactive_message_with_err": wh.message(
            "interactive",
            None,
            "wamid.wegrchytvwcggt=",
            from_wa_id=PYWA_FROM,
            timestamp=1700505494,
            context=wh.reply_context("wamid.gvwegfretge==", from_phone=PYWA_DISPLAY),
        ),
        "referral": wh.text_message(
            "wamid.ID",
            from_wa_id=PYWA_FROM,
            body="BODY",
            timestamp=1697045000,
            referral=wh.referral(
                source_url="AD_OR_POST_FB_URL",
                source_id="ADID",
                source_type="ad or post",
                headline="AD_TITLE",
                body="AD_DESCRIPTION",
                media_type="image or video",
                image_url="RAW_IMAGE_URL",
                video_url="RAW_VIDEO_URL",
                thumbnail_url="RAW_THUMBNAIL_URL",
                ctwa_clid="CTWA_CLID",
            ),
        ),
    }
    errors = {
        "interactive_message_with_err": [
            wh.error(131000, "Something went wrong", details="Unsupported webhook payload")
        ]
    }
    return {
        name: wh.webhook_body(pywa_change(message, errors=errors.get(name, ())))
        for name, message in built.items()
    }


def test_factory_built_pywa_shapes_parse_as_the_table_says() -> None:
    """The factory shapes give what the real fixtures give."""
    bodies = pywa_factory_bodies()
    assert set(bodies) == set(PYWA_EXPECTED)
    for name, body in bodies.items():
        parsed = parse_webhook(body)
        message = only(parsed)
        kind, differences = PYWA_EXPECTED[name]
        expected = {**PLAIN, **differences}
        assert message.type == kind, name
        assert {key: getattr(message, key) for key in expected} == expected, name
        assert message.from_user_id == PYWA_USER_ID


@pytest.mark.parametrize("name", sorted(PYWA_EXPECTED))
def test_factory_shape_parses_the_same_as_the_real_one(name: str) -> None:
    real = parse_webhook(variant("pywa__message.json", name))
    built = parse_webhook(pywa_factory_bodies()[name])
    assert [without_raw(m) for m in built.messages] == [without_raw(m) for m in real.messages]
    assert built.contacts == real.contacts
    assert [without_raw(e) for e in built.errors] == [without_raw(e) for e in real.errors]
    assert built.unknown == real.unknown == ()


def meta_factory_bodies() -> dict[str, dict[str, Any]]:
    """The single-body Meta fixtures, rebuilt with the factories."""
    change: dict[str, Any] = {
        "phone_number_id": "106540352242922",
        "display_phone_number": "15550783881",
        "waba_id": "102290129340398",
    }
    sheena = [wh.contact("16505551234", "Sheena Nelson")]
    wamid_in = "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA="
    return {
        "meta__inbound_text.json": wh.webhook_body(
            wh.messages_change(
                **change,
                contacts=sheena,
                messages=[
                    wh.text_message(
                        wamid_in, body="Does it come in another color?", timestamp=1749416383
                    )
                ],
            )
        ),
        "meta__inbound_image.json": wh.webhook_body(
            wh.messages_change(
                **change,
                contacts=sheena,
                messages=[
                    wh.image_message(
                        wamid_in,
                        caption="Taj Mahal",
                        media_id="1003383421387256",
                        sha256="SfInY0gGKTsJlUWbwxC1k+FAD0FZHvzwfpvO0zX0GUI=",
                        url="https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=133...",
                        timestamp=1744344496,
                    )
                ],
            )
        ),
        "meta__inbound_interactive_button_reply.json": wh.webhook_body(
            wh.messages_change(
                **change,
                contacts=sheena,
                messages=[
                    wh.button_reply_message(
                        "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTZBQzg0MzQ4QjRCM0NGNkVGOAA=",
                        button_id="cancel-button",
                        title="Cancel",
                        context_id="wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI3MEM2RUJFNkI0RENGQTVDRjUA",
                        timestamp=1750025136,
                    )
                ],
            )
        ),
        "meta__status_sent_marketing_pmp.json": wh.webhook_body(
            wh.messages_change(
                **change,
                statuses=[
                    wh.status(
                        "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQUFERjg0NDEzNDdFODU3MUMxMAA=",
                        "sent",
                        timestamp=1750030073,
                        pricing_category="marketing",
                        conversation_id="72b14d6bd5407799e66f64d1b338e567",
                    )
                ],
            )
        ),
        "meta__status_delivered_service.json": wh.webhook_body(
            wh.messages_change(
                **change,
                statuses=[
                    wh.status(
                        "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI3MTE5MjVBOTE3MDk5QUVFM0YA",
                        timestamp=1750263773,
                        conversation_id="6ceb9d929c9bdc4f90e967a32f8639b4",
                    )
                ],
            )
        ),
        "meta__status_failed_131049.json": wh.webhook_body(
            wh.messages_change(
                **change,
                statuses=[
                    wh.status(
                        "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI0QUQ2MjA4NEYyRkExNjMyREUA",
                        "failed",
                        timestamp=1751142888,
                        errors=[
                            wh.error(
                                131049,
                                "This message was not delivered to maintain healthy "
                                "ecosystem engagement.",
                                details="In order to maintain a healthy ecosystem engagement, "
                                "the message failed to be delivered.",
                            )
                        ],
                    )
                ],
            )
        ),
        "meta__phone_number_quality_update.json": wh.webhook_body(
            wh.quality_change(time=1748454394)
        ),
    }


@pytest.mark.parametrize("name", sorted(meta_factory_bodies()))
def test_factory_meta_shape_parses_the_same_as_the_real_one(name: str) -> None:
    real = parse_webhook(load(name))
    built = parse_webhook(meta_factory_bodies()[name])
    for group in ("messages", "statuses", "quality_updates", "errors", "unknown"):
        real_items = [without_raw(item) for item in getattr(real, group)]
        assert [without_raw(item) for item in getattr(built, group)] == real_items, group
    assert built.contacts == real.contacts


def test_factory_template_and_account_shapes_parse_the_same_as_the_real_ones() -> None:
    pairs = [
        (
            variant("pywa__template_status_update.json", "rejected"),
            wh.template_status_change(
                "REJECTED",
                template_id=1689556908129835,
                name="abandoned_cart",
                language="en",
                reason="INVALID_FORMAT",
                category="MARKETING",
            ),
        ),
        (
            variant("pywa__account_update.json", "account_restriction"),
            wh.account_update_change(
                "ACCOUNT_RESTRICTION",
                restriction_types=[
                    "RESTRICTED_BIZ_INITIATED_MESSAGING",
                    "RESTRICTED_ADD_PHONE_NUMBER_ACTION",
                ],
            ),
        ),
        (
            variant("pywa__account_update.json", "account_violation"),
            wh.account_update_change("ACCOUNT_VIOLATION", violation_type="ADULT"),
        ),
    ]
    for real_body, built_change in pairs:
        real = parse_webhook(real_body)
        built = parse_webhook(wh.webhook_body(built_change))
        for group in ("template_updates", "account_updates"):
            assert [without_raw(i) for i in getattr(built, group)] == [
                without_raw(i) for i in getattr(real, group)
            ]


# --- every factory shape ---


def test_every_factory_message_shape() -> None:
    ours = wh.new_wamid()
    messages = [
        wh.text_message("wamid.t", body="Hi there"),
        wh.image_message("wamid.i", caption="look"),
        wh.video_message("wamid.v"),
        wh.audio_message("wamid.a"),
        wh.audio_message("wamid.vn", voice=True),
        wh.document_message("wamid.d", filename="invoice.pdf"),
        wh.sticker_message("wamid.s", animated=True),
        wh.location_message("wamid.l", name="Office", address="1 Main St"),
        wh.location_message("wamid.pin", latitude=1.5, longitude=-2.25),
        wh.contacts_message("wamid.c", cards=[wh.shared_contact("Joey Tribbiani")]),
        wh.button_reply_message("wamid.br", title="Yes", context_id=ours),
        wh.list_reply_message("wamid.lr", title="Option 2", context_id=ours),
        wh.template_button_message("wamid.tb", text="Stop promotions", context_id=ours),
        wh.reaction_message(ours, wa_message_id="wamid.r", emoji="\u2764\ufe0f"),
        wh.unreaction_message(ours, wa_message_id="wamid.ur"),
        wh.order_message("wamid.o", items=[wh.order_item(), wh.order_item("B")], note="asap"),
        wh.system_message("wamid.sys", body="User changed number"),
        wh.system_message("wamid.sys2", omit_body=True, system_type="user_changed_user_id"),
        wh.unsupported_message("wamid.u"),
        wh.text_message("wamid.re", body="re", context=wh.reply_context(ours)),
        wh.text_message("wamid.fw", context=wh.forwarded_context()),
        wh.text_message("wamid.ffw", context=wh.forwarded_context(frequently=True)),
        wh.text_message("wamid.ad", referral=wh.referral()),
        wh.bsuid_text_message("wamid.bs", user_id="US.9"),
        wh.message("request_welcome", None, "wamid.rw"),
    ]
    parsed = parse_webhook(wh.webhook_body(wh.messages_change(messages=messages)))
    assert parsed.unknown == ()
    got = {m.wa_message_id: m for m in parsed.messages}
    assert len(got) == len(messages)
    summary = {key: (m.type, m.text) for key, m in got.items()}
    assert summary == {
        "wamid.t": ("text", "Hi there"),
        "wamid.i": ("image", "look"),
        "wamid.v": ("video", None),
        "wamid.a": ("audio", None),
        "wamid.vn": ("audio", None),
        "wamid.d": ("document", None),
        "wamid.s": ("sticker", None),
        "wamid.l": ("location", "Office, 1 Main St"),
        "wamid.pin": ("location", "Location: 1.5, -2.25"),
        "wamid.c": ("contacts", "Contact: Joey Tribbiani"),
        "wamid.br": ("interactive", "Yes"),
        "wamid.lr": ("interactive", "Option 2"),
        "wamid.tb": ("button", "Stop promotions"),
        "wamid.r": ("reaction", "\u2764\ufe0f"),
        "wamid.ur": ("reaction", None),
        "wamid.o": ("order", "Order: 2 items (asap)"),
        "wamid.sys": ("system", "User changed number"),
        "wamid.sys2": ("system", "System: user_changed_user_id"),
        "wamid.u": ("unsupported", None),
        "wamid.re": ("text", "re"),
        "wamid.fw": ("text", "Hello"),
        "wamid.ffw": ("text", "Hello"),
        "wamid.ad": ("text", "Hello"),
        "wamid.bs": ("text", "Hello"),
        "wamid.rw": ("request_welcome", None),
    }
    for key in ("wamid.i", "wamid.v", "wamid.a", "wamid.vn", "wamid.d", "wamid.s"):
        item = got[key].media
        assert item is not None
        assert item.id, key
        assert item.sha256, key
        assert item.mime_type, key
    flags = {
        key: (media.voice, media.animated, media.filename)
        for key in ("wamid.a", "wamid.vn", "wamid.s", "wamid.d")
        if (media := got[key].media) is not None
    }
    assert flags == {
        "wamid.a": (False, False, None),
        "wamid.vn": (True, False, None),
        "wamid.s": (False, True, None),
        "wamid.d": (False, False, "invoice.pdf"),
    }
    for key in ("wamid.br", "wamid.lr", "wamid.tb", "wamid.re"):
        assert got[key].reply_to_wa_message_id == ours
    assert (got["wamid.r"].reaction_to_wa_message_id, got["wamid.r"].reaction_emoji) == (
        ours,
        "\u2764\ufe0f",
    )
    assert (got["wamid.ur"].reaction_to_wa_message_id, got["wamid.ur"].reaction_emoji) == (
        ours,
        None,
    )
    assert (got["wamid.fw"].forwarded, got["wamid.fw"].frequently_forwarded) == (True, False)
    assert (got["wamid.ffw"].forwarded, got["wamid.ffw"].frequently_forwarded) == (True, True)
    assert got["wamid.ad"].referral is not None
    assert got["wamid.ad"].referral["source_type"] == "ad"
    assert [e.code for e in got["wamid.u"].errors] == [131051]
    assert (got["wamid.bs"].from_wa_id, got["wamid.bs"].from_user_id) == (None, "US.9")


def test_text_message_generates_distinct_wamids() -> None:
    first, second = wh.text_message(), wh.text_message()
    assert first["id"].startswith("wamid.")
    assert first["id"] != second["id"]
    assert wh.text_message(user_id="US.1")["from_user_id"] == "US.1"


def test_webhook_body_groups_changes_by_waba() -> None:
    body = wh.webhook_body(
        wh.messages_change("1", waba_id="A"),
        wh.messages_change("2", waba_id="B"),
        wh.messages_change("3", waba_id="A"),
    )
    assert body["object"] == "whatsapp_business_account"
    assert [(e["id"], len(e["changes"])) for e in body["entry"]] == [("A", 2), ("B", 1)]
    assert all(set(c) == {"value", "field"} for e in body["entry"] for c in e["changes"])


def test_factory_status_shapes() -> None:
    parsed = parse_webhook(
        wh.webhook_body(
            wh.messages_change(
                statuses=[
                    wh.status("wamid.1", "sent", biz_opaque_callback_data="ticket-9"),
                    wh.status("wamid.1", "read", recipient_user_id="US.5"),
                    wh.status("wamid.1", "failed", timestamp=1700000000),
                    wh.status("wamid.2", "played"),
                ]
            )
        )
    )
    sent, read, failed, played = parsed.statuses
    assert (sent.status, sent.biz_opaque_callback_data, sent.pricing_category) == (
        "sent",
        "ticket-9",
        "service",
    )
    assert sent.conversation_id is not None
    assert read.recipient_user_id == "US.5"
    assert failed.errors[0].code == 131049
    assert failed.errors[0].title
    assert failed.timestamp == datetime.fromtimestamp(1700000000, UTC)
    assert played.status == "played"


# --- results are immutable ---


def test_results_are_frozen() -> None:
    parsed = parse_webhook(wh.webhook_body(wh.messages_change(messages=[wh.text_message()])))
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.messages[0].text = "changed"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.messages = ()  # type: ignore[misc]
    assert isinstance(parsed.messages, tuple)


# --- malformed input never raises and loses nothing ---


@pytest.mark.parametrize(
    "body", [None, [], "", 0, 1.5, True, "not json", b"bytes", {"entry": []}], ids=repr
)
def test_non_bodies_go_to_unknown(body: Any) -> None:
    parsed = parse_webhook(body)
    assert parsed.messages == ()
    assert parsed.statuses == ()
    assert len(parsed.unknown) == 1
    kept = parsed.unknown[0].raw
    assert kept is body or kept == {"body": body}


def test_another_object_goes_to_unknown_whole() -> None:
    body = {"object": "page", "entry": [{"id": "1", "changes": [{"field": "messages"}]}]}
    parsed = parse_webhook(body)
    assert parsed.unknown == (UnknownChange(None, None, body, parsed.unknown[0].reason),)
    assert "whatsapp_business_account" in parsed.unknown[0].reason


def test_entry_not_a_list() -> None:
    body = {"object": "whatsapp_business_account", "entry": {"id": "1"}}
    parsed = parse_webhook(body)
    assert [u.raw for u in parsed.unknown] == [body]


def test_odd_entries_changes_and_values() -> None:
    good = wh.messages_change(messages=[wh.text_message("wamid.ok")])
    body = wh.webhook_body(good)
    body["entry"] += [
        None,
        "entry",
        {"id": "W2", "changes": "nope"},
        {"id": "W3", "changes": [7, {"field": "messages", "value": ["x"]}, {"value": {}}]},
    ]
    parsed = parse_webhook(body)
    assert [m.wa_message_id for m in parsed.messages] == ["wamid.ok"]
    kept = [(u.waba_id, u.field, u.raw) for u in parsed.unknown]
    assert kept == [
        (None, None, {"entry": None}),
        (None, None, {"entry": "entry"}),
        ("W2", None, body["entry"][3]),
        ("W3", None, {"change": 7}),
        ("W3", "messages", body["entry"][4]["changes"][1]),
        ("W3", None, body["entry"][4]["changes"][2]),
    ]
    assert all(u.reason for u in parsed.unknown)


def test_messages_not_a_list_keeps_the_statuses_and_records_the_rest() -> None:
    change = wh.messages_change(statuses=[wh.status("wamid.s")])
    change["value"]["messages"] = {"id": "wamid.x", "type": "text"}
    parsed = parse_webhook(wh.webhook_body(change))
    assert [s.wa_message_id for s in parsed.statuses] == ["wamid.s"]
    (unknown,) = parsed.unknown
    assert unknown.raw["messages"] == {"id": "wamid.x", "type": "text"}
    assert "messages" in unknown.reason


JUNK: list[Any] = ["junk", None]
FIVE: list[Any] = [5]


@pytest.mark.parametrize("bad_id", [None, "", [], {}, True], ids=repr)
def test_a_message_without_an_id_is_recorded_not_dropped(bad_id: Any) -> None:
    broken = wh.text_message(body="no id")
    if bad_id is None:
        del broken["id"]
    else:
        broken["id"] = bad_id
    body = wh.webhook_body(
        wh.messages_change(messages=[broken, wh.text_message("wamid.fine"), *JUNK])
    )
    parsed = parse_webhook(body)
    assert [m.wa_message_id for m in parsed.messages] == ["wamid.fine"]
    assert [u.raw for u in parsed.unknown] == [broken, {"message": "junk"}, {"message": None}]
    assert parsed.unknown[0].raw is broken
    assert parsed.unknown[0].waba_id == wh.WABA_ID
    assert parsed.unknown[0].field == "messages"


def test_a_status_without_an_id_or_status_is_recorded() -> None:
    no_id = without_key(wh.status("wamid.1"), "id")
    no_status = without_key(wh.status("wamid.2"), "status")
    parsed = parse_webhook(
        wh.webhook_body(
            wh.messages_change(statuses=[no_id, no_status, wh.status("wamid.3"), *FIVE])
        )
    )
    assert [s.wa_message_id for s in parsed.statuses] == ["wamid.3"]
    assert [u.raw for u in parsed.unknown] == [no_id, no_status, {"status": 5}]


def without_key(data: dict[str, Any], key: str) -> dict[str, Any]:
    return wh.without(data, key)


def test_numbers_where_strings_belong_are_coerced() -> None:
    message = {
        "from": 16505551234,
        "id": 123456,
        "timestamp": 1700000000,
        "type": "text",
        "text": {"body": 42},
        "context": {"id": 99, "forwarded": "yes"},
    }
    change = wh.messages_change(messages=[message])
    change["value"]["metadata"]["phone_number_id"] = 106540352242922
    change["value"]["metadata"]["display_phone_number"] = None
    parsed = parse_webhook(wh.webhook_body(change))
    got = only(parsed)
    assert got.wa_message_id == "123456"
    assert got.from_wa_id == "16505551234"
    assert got.phone_number_id == "106540352242922"
    assert got.display_phone_number is None
    assert got.text == "42"
    assert got.timestamp == datetime.fromtimestamp(1700000000, UTC)
    assert got.reply_to_wa_message_id == "99"
    assert got.forwarded is False  # only a real `true` counts


def test_lists_and_objects_where_strings_belong_become_none() -> None:
    message = wh.text_message("wamid.1", from_wa_id=None)
    message.update({"from": ["1"], "from_user_id": {"a": 1}, "text": {"body": ["x"]}})
    got = only(parse_webhook(wh.webhook_body(wh.messages_change(messages=[message]))))
    assert (got.from_wa_id, got.from_user_id, got.text) == (None, None, None)


def test_nested_garbage_never_raises() -> None:
    deep: Any = "bottom"
    for _ in range(5000):
        deep = [deep]
    garbage = {
        "id": "wamid.g",
        "type": "image",
        "image": [[[[{"id": 1}]]]],
        "context": [1, 2],
        "referral": "not a dict",
        "errors": {"code": "abc", "error_data": ["x"]},
        "timestamp": {"a": 1},
        "deep": deep,
        "reaction": None,
    }
    odd_types = [
        {"id": f"wamid.{n}", "type": kind, kind if isinstance(kind, str) else "x": deep}
        for n, kind in enumerate(
            ["text", "location", "contacts", "order", "interactive", "button", "system", 7]
        )
    ]
    change = wh.messages_change(messages=[garbage, *odd_types], contacts=[deep, {"profile": deep}])
    change["value"]["errors"] = deep
    parsed = parse_webhook(wh.webhook_body(change))
    assert len(parsed.messages) == 1 + len(odd_types)
    first = parsed.messages[0]
    assert (first.type, first.media, first.referral, first.timestamp) == (
        "image",
        None,
        None,
        EPOCH,
    )
    assert first.errors == (MetaErrorInfo(None, None, None, None),)
    assert parsed.messages[-1].type == "unsupported"
    assert all(m.text is None for m in parsed.messages)
    assert [u.raw for u in parsed.unknown] == [{"contact": deep}]
    assert parsed.errors[0].errors == ()
    assert parsed.contacts == (ContactProfile(None, None, None, None, None),)


def test_an_unknown_message_type_becomes_unsupported_with_its_raw_json() -> None:
    odd = wh.message("hologram", {"frames": 3}, "wamid.h")
    got = only(parse_webhook(wh.webhook_body(wh.messages_change(messages=[odd]))))
    assert got.type == "unsupported"
    assert got.text is None
    assert got.raw is odd
    assert got.raw["type"] == "hologram"
    assert got.raw["hologram"] == {"frames": 3}
    missing = wh.without(wh.text_message("wamid.m"), "type")
    assert only(parse_webhook(wh.webhook_body(wh.messages_change(messages=[missing])))).type == (
        "unsupported"
    )


def test_an_unknown_field_is_kept() -> None:
    calls = wh.change("calls", {"calls": [{"id": "c1"}]}, waba_id="W")
    parsed = parse_webhook(wh.webhook_body(calls))
    assert parsed.unknown == (
        UnknownChange("W", "calls", wh.without(calls, "__waba_id__"), parsed.unknown[0].reason),
    )
    assert parsed.waba_ids == {"W"}


def test_waba_changes_without_an_entry_id_are_kept() -> None:
    body = wh.webhook_body(wh.template_status_change(), wh.account_update_change("X"))
    del body["entry"][0]["id"]
    parsed = parse_webhook(body)
    assert parsed.template_updates == ()
    assert parsed.account_updates == ()
    assert [u.field for u in parsed.unknown] == ["message_template_status_update", "account_update"]


def test_a_template_update_without_event_is_kept() -> None:
    value = {"message_template_id": 1, "message_template_name": "x"}
    parsed = parse_webhook(wh.webhook_body(wh.change("message_template_status_update", value)))
    assert parsed.template_updates == ()
    assert [u.raw for u in parsed.unknown] == [value]


def test_a_messages_change_without_phone_number_id_is_kept() -> None:
    change = wh.messages_change(messages=[wh.text_message()], errors=[wh.error(131000, "x")])
    del change["value"]["metadata"]
    parsed = parse_webhook(wh.webhook_body(change))
    assert parsed.messages == ()
    assert [u.raw for u in parsed.unknown] == [change["value"]]
    assert parsed.errors[0].phone_number_id is None
    assert parsed.errors[0].errors[0].code == 131000


def test_a_messages_change_with_nothing_known_is_kept() -> None:
    change = wh.messages_change()
    change["value"]["user_preferences"] = [{"wa_id": "1", "value": "stop"}]
    parsed = parse_webhook(wh.webhook_body(change))
    assert [u.raw for u in parsed.unknown] == [change["value"]]


def test_errors_only_change_is_a_webhook_error() -> None:
    parsed = parse_webhook(
        wh.webhook_body(wh.messages_change(errors=[wh.error(131000, "Something went wrong")]))
    )
    assert parsed.unknown == ()
    (error,) = parsed.errors
    assert (error.phone_number_id, error.waba_id, error.errors[0].code) == (
        wh.PHONE_NUMBER_ID,
        wh.WABA_ID,
        131000,
    )
    assert parsed.phone_number_ids == {wh.PHONE_NUMBER_ID}


def test_error_code_coercion() -> None:
    errors: list[Any] = [
        {"code": "131047"},
        {"code": 4.0},
        {"code": True},
        {"code": "x"},
        "plain text",
    ]
    status = wh.status("wamid.1", "failed", errors=errors)
    parsed = parse_webhook(wh.webhook_body(wh.messages_change(statuses=[status])))
    assert [(e.code, e.message) for e in parsed.statuses[0].errors] == [
        (131047, None),
        (4, None),
        (None, None),
        (None, None),
        (None, "plain text"),
    ]


# --- timestamps ---


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1700000000", datetime.fromtimestamp(1700000000, UTC)),
        (1700000000, datetime.fromtimestamp(1700000000, UTC)),
        ("1700000000.5", datetime.fromtimestamp(1700000000.5, UTC)),
        ("soon", None),
        ("", None),
        (None, None),
        (True, None),
        ("1e400", None),
        (10**30, None),
        (float("nan"), None),
        ([1700000000], None),
    ],
    ids=repr,
)
def test_timestamps_fall_back_to_the_entry_time_then_the_epoch(value: Any, expected: Any) -> None:
    message = wh.text_message("wamid.1")
    message["timestamp"] = value
    status = wh.status("wamid.2")
    status["timestamp"] = value
    body = wh.webhook_body(wh.messages_change(messages=[message], statuses=[status]))
    parsed = parse_webhook(body)
    assert parsed.messages[0].timestamp == (expected or EPOCH)
    assert parsed.statuses[0].timestamp == (expected or EPOCH)
    body["entry"][0]["time"] = 1600000000
    parsed = parse_webhook(body)
    entry_time = datetime.fromtimestamp(1600000000, UTC)
    assert parsed.messages[0].timestamp == (expected or entry_time)
    assert parsed.messages[0].raw["timestamp"] is value


# --- fuzzing: mangled real shapes never raise ---


GARBAGE: list[Any] = [
    None,
    True,
    0,
    -1,
    2**70,
    1.5,
    float("inf"),
    "",
    "x",
    [],
    {},
    [None],
    {"a": []},
]


def mangle(node: Any, rng: random.Random) -> Any:
    if isinstance(node, dict):
        return {
            key: (rng.choice(GARBAGE) if rng.random() < 0.15 else mangle(value, rng))
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [rng.choice(GARBAGE) if rng.random() < 0.15 else mangle(v, rng) for v in node]
    return node


def test_mangled_bodies_never_raise_and_lose_no_message() -> None:
    rng = random.Random(20260101)
    ours = wh.new_wamid()
    base = wh.webhook_body(
        wh.messages_change(
            contacts=[wh.contact(user_id="US.1", username="@u")],
            messages=[
                wh.text_message(context=wh.reply_context(ours)),
                wh.image_message(caption="c"),
                wh.reaction_message(ours),
                wh.location_message(name="n"),
                wh.contacts_message(),
                wh.order_message(),
                wh.button_reply_message(),
                wh.unsupported_message(),
                wh.text_message(referral=wh.referral()),
            ],
            statuses=[wh.status(ours, "failed"), wh.status(ours, "read")],
            errors=[wh.error()],
        ),
        wh.template_status_change(),
        wh.quality_change(),
        wh.account_update_change("ACCOUNT_RESTRICTION", restriction_types=["R"]),
        wh.change("calls", {"calls": []}),
    )
    for _ in range(400):
        body = mangle(copy.deepcopy(base), rng)
        parsed = parse_webhook(body)
        assert isinstance(parsed, ParsedWebhook)
        # Every message dict that arrived is either typed or kept in unknown.
        entries = body.get("entry") if isinstance(body, dict) else None
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict) or not isinstance(entry.get("changes"), list):
                continue
            for change in entry["changes"]:
                value = change.get("value") if isinstance(change, dict) else None
                items = value.get("messages") if isinstance(value, dict) else None
                for item in items if isinstance(items, list) else []:
                    if isinstance(item, dict):
                        assert any(m.raw is item for m in parsed.messages) or any(
                            any(u.raw is kept for kept in (item, value, change, body))
                            for u in parsed.unknown
                        )
        assert not any(u.reason.startswith("parser error") for u in parsed.unknown)


# --- a large body (its speed: bench.micro) ---


def test_a_body_of_1000_messages_parses_whole() -> None:
    body = wh.thousand_message_body()
    parsed = parse_webhook(body)
    assert len(parsed.messages) == 1000
    assert parsed.unknown == ()


def test_typed_records_are_the_documented_classes() -> None:
    body = wh.webhook_body(
        wh.messages_change(messages=[wh.text_message()], statuses=[wh.status("wamid.x")]),
        wh.account_update_change("ACCOUNT_DELETED"),
    )
    parsed = parse_webhook(body)
    assert isinstance(parsed.messages[0], InboundMessage)
    assert isinstance(parsed.statuses[0], StatusUpdate)
    assert isinstance(parsed.account_updates[0], AccountUpdate)
