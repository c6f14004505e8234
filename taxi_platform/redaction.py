"""Secrets out of every message: passwords and tokens in URLs, connection strings and key=value pairs."""

import re

MASK = "***"
# scheme://user:password@host -> scheme://user:***@host
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)(?P<secret>[^@\s]*)(?=@)")
# password=..., token: ..., secret=... in DSNs, query strings and messages
_KEY_VALUE = re.compile(
    r"(?P<head>\b(?:password|passwd|pwd|token|secret|api[_-]?key|access[_-]?key|key)\b\s*[=:]\s*)"
    r"(?P<secret>\"[^\"]*\"|'[^']*'|[^\s&;,'\"]+)",
    re.IGNORECASE,
)


def redact(text: str, *secrets: str) -> str:
    """`text` with URL passwords, key=value secrets and each of `secrets` (when longer than 3
    characters) replaced by ***."""
    for secret in secrets:
        if secret and len(secret) > 3:
            text = text.replace(secret, MASK)
    text = _URL_PASSWORD.sub(lambda m: m["head"] + MASK, text)
    return _KEY_VALUE.sub(lambda m: m["head"] + MASK, text)


def url_scheme(url: str) -> str:
    """Only the scheme of a URL whose path may itself be a token (Slack, Discord, ntfy, ...)."""
    return url.split("://", 1)[0] + "://" + MASK if "://" in url else MASK
