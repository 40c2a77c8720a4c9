"""Weflux: the backend of a customer-engagement platform for WhatsApp Business."""

__version__ = "0.1.0"
