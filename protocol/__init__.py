"""The courthub wire contract: topics, envelopes, audio frames, the MQTT link, bad-input errors.

This package imports nothing else of the project; agents and the hub both build on it.
"""

from protocol.errors import BadMessage, BadReason

__all__ = ["BadMessage", "BadReason"]
