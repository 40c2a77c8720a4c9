"""The sandbox: stand-ins for the outside world (today a fake WhatsApp Cloud API) for tests
and local development."""
