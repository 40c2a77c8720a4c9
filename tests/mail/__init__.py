"""SMTP settings and the test email."""
