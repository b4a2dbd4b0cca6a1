"""Typed messages of the self-service kiosk's MQTT protocol (``shared/protocols/kiosk-mqtt.md``).

The kiosk publishes on ``kiosk/{kiosk_id}/up`` and listens on ``kiosk/{kiosk_id}/down``; every
payload is a UTF-8 JSON object whose ``type`` field selects the message. Each message is a
:mod:`msgspec` Struct in a tagged union, so one decode validates the type tag, required fields,
value sets and ranges. :func:`parse_up` / :func:`parse_down` raise
:class:`protocol.errors.BadMessage` for anything else and never another exception, so the
driver's receive path needs exactly one ``except``.

Unknown fields are ignored (newer kiosk firmware may add some); unknown ``type`` values are not.
"""

from __future__ import annotations

import re
from typing import Annotated, Final, Literal, TypeAlias, TypeVar

import msgspec

from protocol.errors import BadMessage, BadReason

#: Largest kiosk payload accepted (bytes). Real messages are well under 2 KiB; a print job of
#: many lines is the biggest thing on these topics.
MAX_KIOSK_PAYLOAD: Final = 16 * 1024

#: The raw number of a PRC resident ID card (18 chars, or the old 15-digit form). Such a value
#: must never travel in ``id_hash``: a kiosk that sends one is misconfigured, and we refuse it.
_RAW_ID_NUMBER: Final = re.compile(r"\d{17}[\dXx]|\d{15}")

RequestId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
ServiceCode = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
IdHash = Annotated[
    str, msgspec.Meta(min_length=8, max_length=128, pattern=r"^[A-Za-z0-9+/=_:.-]+$")
]
ShortText = Annotated[str, msgspec.Meta(max_length=128)]
Percent = Annotated[float, msgspec.Meta(ge=0, le=100)]
Count = Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]
Seconds = Annotated[float, msgspec.Meta(ge=0, le=10 * 365 * 24 * 3600)]

PrinterState = Literal["ok", "jam", "no_paper"]
CardReaderState = Literal["ok", "fault"]
Priority = Literal["normal", "elderly", "disabled"]


class _Message(msgspec.Struct, tag_field="type", frozen=True, kw_only=True, omit_defaults=True):
    """Common base: the ``type`` field is the msgspec tag; ``None`` optionals are not encoded."""


# --- kiosk -> agent (kiosk/{kiosk_id}/up) ------------------------------------------------------
class Hello(_Message, tag="hello", frozen=True):
    """The kiosk started, or reconnected to the broker."""

    model: ShortText
    firmware: ShortText
    services: Annotated[list[ServiceCode], msgspec.Meta(max_length=32)]


class Status(_Message, tag="status", frozen=True):
    """Periodic health report (every 10 s)."""

    paper_pct: Percent
    printer: PrinterState
    card_reader: CardReaderState
    cpu_temp_c: Annotated[float, msgspec.Meta(ge=-50, le=150)]
    uptime_s: Seconds


class TicketRequest(_Message, tag="ticket_request", frozen=True):
    """A litigant asks for a queue ticket; repeated with the same id until answered."""

    request_id: RequestId
    service: ServiceCode
    priority: Priority
    id_hash: IdHash | None = None


class CaseQuery(_Message, tag="case_query", frozen=True):
    """A litigant looks a case up, e.g. ``(2026)京0105民初12345号``."""

    request_id: RequestId
    case_no: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class IdCard(_Message, tag="id_card", frozen=True):
    """An ID card was read; only a hash and the masked name leave the kiosk."""

    id_hash: IdHash
    name_masked: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]


class PrintDone(_Message, tag="print_done", frozen=True):
    """A print job (a ticket or a ``print`` command) finished."""

    request_id: RequestId
    ok: bool
    error: ShortText | None = None


class Offline(_Message, tag="offline", frozen=True):
    """The kiosk's MQTT will: the broker publishes it when the kiosk vanishes."""


UpMessage: TypeAlias = Hello | Status | TicketRequest | CaseQuery | IdCard | PrintDone | Offline


# --- agent -> kiosk (kiosk/{kiosk_id}/down) ----------------------------------------------------
class Ticket(_Message, tag="ticket", frozen=True):
    """The answer to a ``ticket_request``; ``issued_at`` is UTC milliseconds."""

    request_id: RequestId
    number: Annotated[str, msgspec.Meta(min_length=1, max_length=16)]
    service: ServiceCode
    waiting_ahead: Count
    estimated_wait_s: Annotated[int, msgspec.Meta(ge=0, le=7 * 24 * 3600)]
    issued_at: Annotated[int, msgspec.Meta(ge=0)]


class CaseInfo(_Message, tag="case_info", frozen=True):
    """The answer to a ``case_query``; the details are present only when ``found``."""

    request_id: RequestId
    found: bool
    status: ShortText | None = None
    next_hearing: ShortText | None = None
    judge: ShortText | None = None
    courtroom: ShortText | None = None

    def __post_init__(self) -> None:
        """A found case carries its status; a missing one carries nothing but the id."""
        details = (self.status, self.next_hearing, self.judge, self.courtroom)
        if self.found and self.status is None:
            raise ValueError("a found case needs at least `status`")
        if not self.found and any(d is not None for d in details):
            raise ValueError("a case that was not found has no status, hearing, judge or room")


class PrintJob(_Message, tag="print", frozen=True):
    """Print text lines on the kiosk's printer (a notice, a receipt)."""

    request_id: RequestId
    lines: Annotated[
        list[Annotated[str, msgspec.Meta(max_length=200)]],
        msgspec.Meta(min_length=1, max_length=200),
    ]


class ShowMessage(_Message, tag="message", frozen=True):
    """Show a text on the kiosk's screen for ``seconds``."""

    text: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
    seconds: Annotated[float, msgspec.Meta(gt=0, le=3600)]


class ErrorReply(_Message, tag="error", frozen=True):
    """The litigant-facing reason a request failed."""

    request_id: RequestId
    code: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]


DownMessage: TypeAlias = Ticket | CaseInfo | PrintJob | ShowMessage | ErrorReply

#: The kiosk's MQTT will, ready to hand to the client library.
OFFLINE_WILL: Final = b'{"type":"offline"}'

_UP_DECODER: Final[msgspec.json.Decoder[UpMessage]] = msgspec.json.Decoder(UpMessage)
_DOWN_DECODER: Final[msgspec.json.Decoder[DownMessage]] = msgspec.json.Decoder(DownMessage)
_ENCODER: Final = msgspec.json.Encoder()

_T = TypeVar("_T")


def up_topic(kiosk_id: str) -> str:
    """Where kiosk ``kiosk_id`` publishes."""
    return f"kiosk/{kiosk_id}/up"


def down_topic(kiosk_id: str) -> str:
    """Where kiosk ``kiosk_id`` listens."""
    return f"kiosk/{kiosk_id}/down"


def parse_up(payload: bytes) -> UpMessage:
    """Decode and validate a kiosk -> agent payload.

    Raises :class:`BadMessage` (``oversized``, ``malformed_json`` or ``schema``) and nothing else.
    """
    msg = _decode(_UP_DECODER, payload)
    id_hash = getattr(msg, "id_hash", None)
    if id_hash is not None and _RAW_ID_NUMBER.fullmatch(id_hash):
        raise BadMessage(BadReason.SCHEMA, "id_hash looks like a raw ID number, refused")
    return msg


def parse_down(payload: bytes) -> DownMessage:
    """Decode and validate an agent -> kiosk payload (used by kiosks and the simulator)."""
    return _decode(_DOWN_DECODER, payload)


def encode_up(msg: UpMessage) -> bytes:
    """Encode a kiosk -> agent message as compact UTF-8 JSON."""
    return _ENCODER.encode(msg)


def encode_down(msg: DownMessage) -> bytes:
    """Encode an agent -> kiosk message as compact UTF-8 JSON."""
    return _ENCODER.encode(msg)


def _decode(decoder: msgspec.json.Decoder[_T], payload: bytes) -> _T:
    if len(payload) > MAX_KIOSK_PAYLOAD:
        raise BadMessage(BadReason.OVERSIZED, f"{len(payload)} bytes > {MAX_KIOSK_PAYLOAD}")
    try:
        return decoder.decode(payload)
    except msgspec.ValidationError as exc:  # a subclass of DecodeError: catch it first
        raise BadMessage(BadReason.SCHEMA, str(exc)) from None
    except msgspec.DecodeError as exc:
        raise BadMessage(BadReason.MALFORMED_JSON, str(exc)) from None
