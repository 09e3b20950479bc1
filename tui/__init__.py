"""Switchboard dashboard (Textual)."""
