"""Repairs applied to upstream output and client history (pure functions, no I/O)."""
