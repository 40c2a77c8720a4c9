"""The WhatsApp Cloud API: a pooled client, its classified errors, and a fake for tests."""

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
