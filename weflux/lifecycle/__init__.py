"""The data lifecycle: erasure, exports, retention and backups."""
