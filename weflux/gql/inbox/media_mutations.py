"""Sending media: `uploadMedia` (GraphQL multipart request spec), then `sendMedia`."""

from __future__ import annotations

from typing import Annotated, Any

import strawberry
from strawberry.file_uploads import Upload
from strawberry.types import Info

from weflux.auth.permissions import Permission
from weflux.errors import BadUserInput
from weflux.gql.context import Context
from weflux.gql.inbox.media_types import Media, to_media
from weflux.gql.inbox.types import Message, to_message
from weflux.gql.permissions import guarded
from weflux.ids import decode_global_id
from weflux.services import media as media_service
from weflux.services import outbound
from weflux.services.outbound import MAX_TEXT_LENGTH


@strawberry.input(description="An uploaded file (uploadMedia) to send in a conversation.")
class SendMediaInput:
    conversation_id: strawberry.ID = strawberry.field(description="The conversation's id.")
    media_id: strawberry.ID = strawberry.field(
        description="The `Media.id` uploadMedia answered (or of a file the caller may see)."
    )
    caption: str | None = strawberry.field(
        default=None,
        description=f"A caption for an image, video or document (1 to {MAX_TEXT_LENGTH} "
        "characters); WhatsApp shows none for audio and stickers.",
    )
    client_message_id: str | None = strawberry.field(
        default=None,
        description="As in SendMessageInput: a retry with the same file and caption answers "
        "the first message; anything else under a used id is CONFLICT.",
    )


@strawberry.type
class MediaMutation:
    @strawberry.mutation(
        **guarded(
            Permission.REPLY,
            "Upload a file to send with sendMedia, as a multipart request (the GraphQL "
            "multipart request spec: `operations`, `map`, then the file). Its kind is "
            "read from its content, not its name: JPEG and PNG images, MP4 and 3GPP "
            "video, AAC, AMR, MP3, MP4 and OGG audio, WebP stickers, PDF, Office and .txt "
            "documents, each within WhatsApp's size limit (image 5 MB, video and audio "
            "16 MB, sticker 500 KB, document 100 MB); anything else is BAD_USER_INPUT. "
            "Stored encrypted; only the uploader sees it until it is sent. RATE_LIMITED "
            "once the workspace has uploaded WEFLUX_RATE_LIMIT_MEDIA_UPLOAD_MB_WORKSPACE.",
        )
    )
    async def upload_media(
        self,
        info: Info[Context, None],
        file: Annotated[
            Upload, strawberry.argument(description="The file: a part of the multipart request.")
        ],
    ) -> Media:
        context = info.context
        store = context.channel_services.media
        upload: Any = file
        if store is None or not hasattr(upload, "file"):
            raise BadUserInput("Send the file as a multipart request")
        row = await media_service.upload_media(
            context.db,
            context.unit,
            context.actor,
            context.channel_services.keyring,
            store,
            file=upload.file,
            filename=getattr(upload, "filename", None),
            limiter=context.limiter,
        )
        return to_media(row)

    @strawberry.mutation(
        **guarded(
            Permission.REPLY,
            "Send an uploaded file in a visible conversation, as sendMessage sends text: "
            "QUEUED, then the worker uploads it to WhatsApp and sends it (`messageUpdated` "
            "follows it); OUTSIDE_SERVICE_WINDOW 24 hours after the contact last wrote, "
            "CONTACT_OPTED_OUT after a STOP, NOT_FOUND for a file the caller may not see or "
            "one deleted meanwhile (an upload no message carries expires after "
            "WEFLUX_MEDIA_UPLOAD_RETENTION, 7 days by default).",
        )
    )
    async def send_media(
        self,
        info: Info[Context, None],
        input: Annotated[
            SendMediaInput,
            strawberry.argument(description="The conversation, the file and its caption."),
        ],
    ) -> Message:
        context = info.context
        row = await outbound.send_media(
            context.unit,
            context.actor,
            context.broker,
            conversation_id=decode_global_id(input.conversation_id, "Conversation"),
            media_id=decode_global_id(input.media_id, "Media"),
            caption=input.caption,
            client_message_id=input.client_message_id,
        )
        return to_message(row)
