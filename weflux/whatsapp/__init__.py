"""The WhatsApp Cloud API: a pooled client, its classified errors, the webhook parser."""

from weflux.whatsapp.client import CloudApiClient, PhoneNumberHealth, SentMessage
from weflux.whatsapp.errors import ErrorKind, MetaApiError, MetaUnavailable, classify

__all__ = [
    "CloudApiClient",
    "ErrorKind",
    "MetaApiError",
    "MetaUnavailable",
    "PhoneNumberHealth",
    "SentMessage",
    "classify",
]
