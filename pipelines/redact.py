"""Secrets out of what is shown: job errors, log tails, health, start-up output and logs.

Three kinds are masked: the password of any `scheme://user:password@host` URL, `password=...`
style pairs, and the value of every secret setting (a field whose name says key, password,
token or secret) or credential variable MLflow reads, wherever it appears in the text.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable

from pipelines.settings import Settings

MASK = "***"
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@")
_PAIR = re.compile(r"(?P<head>(?:password|passwd|pwd|secret|token|key)\s*[=:]\s*)[^\s;,&]+", re.I)
_SECRET_NAME = re.compile(r"key|password|token|secret", re.IGNORECASE)
# What MLflow's client reads to authenticate to a tracking server.
CREDENTIAL_VARIABLES = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
# Shorter values would mask ordinary words.
_MIN_SECRET_LENGTH = 4


def secret_values(settings: Settings) -> list[str]:
    """The values to mask: secret settings, and MLflow's credential variables."""
    values = [
        value
        for name in Settings.model_fields
        if _SECRET_NAME.search(name) and isinstance(value := getattr(settings, name), str)
    ]
    values += [os.environ.get(name, "") for name in CREDENTIAL_VARIABLES]
    return [value for value in values if len(value) >= _MIN_SECRET_LENGTH]


def redact(text: str, *, secrets: Iterable[str] = ()) -> str:
    """`text` with URL passwords and the given secret values replaced by `***`."""
    masked = _URL_PASSWORD.sub(lambda match: f"{match.group('head')}{MASK}@", text)
    masked = _PAIR.sub(lambda match: f"{match.group('head')}{MASK}", masked)
    for secret in sorted(set(secrets), key=len, reverse=True):
        masked = masked.replace(secret, MASK)
    return masked


def describe_error(error: BaseException, *, limit: int = 200) -> str:
    """`Type: message`: its first line only, secrets masked, at most `limit` characters."""
    message = str(error).strip()
    text = redact(message.splitlines()[0]) if message else ""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class RedactingFormatter(logging.Formatter):
    """A log formatter that masks secrets in the whole line, the traceback included."""

    def __init__(self, fmt: str, *, secrets: Iterable[str] = ()) -> None:
        super().__init__(fmt)
        self._secrets = tuple(secrets)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record), secrets=self._secrets)


def install_log_redaction() -> None:
    """Mask secrets in everything the root logger's handlers write (call after basicConfig):
    URL passwords, `password=` pairs, and the process's secret settings when they are valid."""
    from pipelines.settings import get_settings

    try:
        secrets = secret_values(get_settings())
    except ValueError:  # invalid settings: the command reports them; mask what is still known
        secrets = []
    for handler in logging.getLogger().handlers:
        fmt = handler.formatter._fmt if handler.formatter is not None else None
        handler.setFormatter(RedactingFormatter(fmt or "%(message)s", secrets=secrets))
