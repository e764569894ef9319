"""Secrets out of what the queue stores: job errors and log tails are shown to API clients.

Two kinds are masked: the password of any `scheme://user:password@host` URL, and the value of
every secret setting (a field whose name says key, password, token or secret) or credential
variable MLflow reads, wherever it appears in the text.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from pipelines.settings import Settings

MASK = "***"
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@")
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
    for secret in sorted(set(secrets), key=len, reverse=True):
        masked = masked.replace(secret, MASK)
    return masked
