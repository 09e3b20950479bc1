"""Keeping secrets out of everything Switchboard writes or shows.

The `Redactor` knows the secret values in play (upstream API keys read from
the environment, AWS credentials, bearer tokens clients present) and
well-known token shapes, and replaces them with a marker. Everything that
leaves the core for a journal row, a log line, an event stream or an API
answer passes through it.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable

REDACTED = "[redacted]"

_AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
            "AWS_BEARER_TOKEN_BEDROCK")

_PATTERNS = re.compile(
    r"(?i:bearer)\s+[A-Za-z0-9._~+/=-]{8,}"          # Authorization values
    r"|\bsk-[A-Za-z0-9_-]{16,}"                        # OpenAI / OpenRouter / Moonshot keys
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"                  # AWS access key ids
    r"|\bABSK[A-Za-z0-9+/=]{20,}"                      # Bedrock API keys
)
#: Credentials inside URLs: `scheme://user:password@host` and key-like query parameters.
_URL_SECRETS = re.compile(
    r"(://)[^/\s:@\"']+:[^/\s@\"']+(@)"
    r"|([?&](?:api[_-]?key|key|token|access[_-]?token|secret|password)=)[^&\s\"'#]+",
    re.IGNORECASE)


def _url_secret(match: re.Match[str]) -> str:
    if match.group(1):
        return f"://{REDACTED}@"
    return match.group(3) + REDACTED

#: Values shorter than this are not treated as secrets (too many false hits).
_MIN_SECRET = 6
#: Clients often send a placeholder key ("x", "local", "switchboard"); only
#: values this long are taken for real keys and scrubbed everywhere.
CLIENT_TOKEN_MIN = 12


class Redactor:
    """Replace known secret values and secret-shaped tokens with `[redacted]`."""

    def __init__(self, env_vars: Iterable[str] = ()) -> None:
        self._values: set[str] = set()
        self._ordered: list[str] = []
        #: Counts the secrets learnt: text redacted at an older generation may need it again.
        self.generation = 0
        for name in (*env_vars, *_AWS_ENV):
            self.add(os.environ.get(name))

    def add(self, value: str | None, *, min_length: int = _MIN_SECRET) -> None:
        """Remember a secret value (an upstream key, a client's bearer token)."""
        if value and len(value) >= min_length and value not in self._values:
            self._values.add(value)
            # Longest first, so a secret that contains another goes whole.
            self._ordered = sorted(self._values, key=len, reverse=True)
            self.generation += 1

    def __call__(self, text: str) -> str:
        for _ in range(3):  # a replacement can, rarely, complete another secret: go again
            before = text
            if "earer" in text or "sk-" in text or "AKIA" in text or "ASIA" in text \
                    or "ABSK" in text:
                text = _PATTERNS.sub(REDACTED, text)
            if "://" in text or "=" in text:
                text = _URL_SECRETS.sub(_url_secret, text)
            for value in self._ordered:
                if value in text:
                    text = text.replace(value, REDACTED)
            if text == before:
                break
        return text


class RedactingFilter(logging.Filter):
    """A logging filter that runs every record's final message through a Redactor."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = self.redactor(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            # Render the traceback now so the redactor sees it too.
            formatted = logging.Formatter().formatException(record.exc_info)
            record.msg = f"{record.msg}\n{self.redactor(formatted)}"
            record.exc_info = None
        return True
