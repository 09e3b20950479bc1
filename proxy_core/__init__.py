"""Switchboard proxy core: headless, never imports textual or rich."""
