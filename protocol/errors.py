"""The one error type for bad input on the wire.

Everything that decodes bytes from outside (MQTT payloads, topics, audio frames, serial lines)
raises :class:`BadMessage` and nothing else, so a receive loop needs exactly one ``except``.
The ``reason`` is a short stable code used as a counter label; ``detail`` is for the log.
"""

from __future__ import annotations

from enum import StrEnum


class BadReason(StrEnum):
    """Why a message was rejected; the values are counter labels and never change."""

    UNKNOWN_TOPIC = "unknown_topic"
    BAD_ID = "bad_id"
    UNSUPPORTED_VERSION = "unsupported_version"
    OVERSIZED = "oversized"
    MALFORMED_JSON = "malformed_json"
    SCHEMA = "schema"
    BAD_MAGIC = "bad_magic"
    BAD_HEADER = "bad_header"
    BAD_LENGTH = "bad_length"
    WRONG_DIRECTION = "wrong_direction"


class BadMessage(ValueError):
    """Input that does not follow the wire contract.

    Raised by every decoder in :mod:`protocol`; never by anything else.
    """

    def __init__(self, reason: BadReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
