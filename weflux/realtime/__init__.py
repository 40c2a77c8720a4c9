"""Realtime: the broker (in-process or Redis) and what listens on it."""
