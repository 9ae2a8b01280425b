"""The exception hierarchy: every failure sensor-sd reports is one of these.

Callers catch `InventoryError` for anything a poll can do wrong and
`PublishError` for anything writing the outputs can; `reason` is the short,
stable word used as a metric label and in logs.
"""

from __future__ import annotations


class SensorSDError(Exception):
    """Base of all sensor-sd errors."""

    reason = "error"


class ConfigError(SensorSDError):
    """A configuration value is invalid; the process exits 2 before doing anything."""

    reason = "config"

    def __init__(self, variable: str, value: object, allowed: str) -> None:
        self.variable = variable
        self.value = value
        self.allowed = allowed
        super().__init__(f"invalid {variable}={_quote(value)}: {allowed}")


class InventoryError(SensorSDError):
    """A poll of one inventory source failed; the last known good targets stay."""

    reason = "error"


class FetchError(InventoryError):
    """Connection refused/reset, DNS, TLS or timeout."""

    reason = "unreachable"


class FetchTimeout(FetchError):
    """The request did not finish within REQUEST_TIMEOUT."""

    reason = "timeout"


class StatusError(InventoryError):
    """The inventory answered with a non-2xx status."""

    reason = "http_status"

    def __init__(self, status: int) -> None:
        self.status = status
        super().__init__(f"HTTP status {status}")


class BodyTooLarge(InventoryError):
    """The body exceeded MAX_RESPONSE_BYTES; reading stopped there."""

    reason = "too_large"


class DecodeError(InventoryError):
    """The body is not valid UTF-8, not valid JSON, or not a JSON array."""

    reason = "decode"


class InternalError(InventoryError):
    """A bug of ours raised something unexpected during a poll; the fence turned it into a failed poll."""

    reason = "internal"


class PublishError(SensorSDError):
    """Writing an output failed; the previous output stays in place."""

    reason = "publish"


def _quote(value: object, limit: int = 200) -> str:
    """Quote a value on one line, control characters escaped, long values cut."""
    text = value if isinstance(value, str) else repr(value)
    cut = len(text) > limit
    text = text[:limit]
    escaped = text.encode("unicode_escape").decode("ascii").replace('"', '\\"')
    return f'"{escaped}"' + ("..." if cut else "")
