"""WhatsApp accounts and SMTP settings."""
