"""Data requests, retention: erasure, deletion, exports."""
