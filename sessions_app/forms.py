"""Validation of what the browser sends: the start and resume requests, its SDP offer, the budget form."""

import re
import uuid
from dataclasses import dataclass, field
from decimal import Decimal

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError

from .models import TurnMode
from .text import clean_text

TURN_MODES = tuple(TurnMode.values)
MAX_PASTED_CHARS = 2_000_000
MAX_DOCUMENTS = 20


# A browser's offer is 1-5 KB; anything near this is not one.
MAX_SDP_BYTES = 20_000


class RequestError(ValueError):
    code = "invalid_request"


class OfferError(RequestError):
    code = "invalid_sdp"


@dataclass
class MintRequest:
    model: str
    voice: str
    turn_detection: str
    sdp: str
    document_ids: list = field(default_factory=list)
    document_text: str = ""
    search_only: bool = False


def _choice(data, key, allowed, default):
    value = data.get(key, default)
    if not isinstance(value, str):
        raise RequestError(f"{key} must be a string")
    if value not in allowed:
        raise RequestError(f"{key} must be one of: {', '.join(allowed)}")
    return value


def parse_mint_request(data):
    if not isinstance(data, dict):
        raise RequestError("the body must be a JSON object")
    unknown = sorted(
        set(data) - {"model", "voice", "turn_detection", "document_ids", "document_text", "search_only", "sdp"}
    )
    if unknown:
        raise RequestError(f"unknown field: {', '.join(unknown)}")
    model = _choice(data, "model", settings.REALTIME_MODELS, settings.DEFAULT_MODEL)
    voice = _choice(data, "voice", settings.REALTIME_VOICES, settings.DEFAULT_VOICE)
    turn = _choice(data, "turn_detection", TURN_MODES, settings.DEFAULT_TURN_DETECTION)

    ids = data.get("document_ids", [])
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise RequestError("document_ids must be a list of document ids")
    if len(ids) > MAX_DOCUMENTS:
        raise RequestError(f"at most {MAX_DOCUMENTS} documents per session")
    try:
        parsed_ids = [uuid.UUID(i) for i in ids]
    except ValueError:
        raise RequestError("document_ids must hold document ids (UUIDs)") from None
    if len(set(parsed_ids)) != len(parsed_ids):
        raise RequestError("document_ids lists a document twice")

    text = data.get("document_text", "")
    if not isinstance(text, str):
        raise RequestError("document_text must be a string")
    text = clean_text(text)
    if len(text) > MAX_PASTED_CHARS:
        raise RequestError("document_text is too long")
    search_only = data.get("search_only", False)
    if not isinstance(search_only, bool):
        raise RequestError("search_only must be true or false")
    return MintRequest(model, voice, turn, check_offer(data.get("sdp")), parsed_ids, text.strip(), search_only)


def parse_resume_request(data):
    """The body of POST /api/sessions/<id>/calls: {"sdp": "<the browser's new offer>"}."""
    if not isinstance(data, dict):
        raise RequestError("the body must be a JSON object")
    unknown = sorted(set(data) - {"sdp"})
    if unknown:
        raise RequestError(f"unknown field: {', '.join(unknown)}")
    return check_offer(data.get("sdp"))


SDP_LINE = re.compile(r"[a-z]=[^\x00-\x08\x0a-\x1f\x7f]*")
MEDIA_PORT = re.compile(r"[0-9]{1,5}(/[0-9]{1,3})?")


def check_offer(sdp):
    """The browser's offer, unchanged, if it asks for what a voice call needs and nothing else:
    one audio stream and at most one data channel."""
    if sdp is None:
        raise OfferError("sdp is required: the browser's SDP offer")
    if not isinstance(sdp, str):
        raise OfferError("sdp must be a string: the browser's SDP offer")
    try:
        size = len(sdp.encode("utf-8"))
    except UnicodeEncodeError:
        raise OfferError("sdp is not text") from None
    if size > MAX_SDP_BYTES:
        raise OfferError(f"the SDP offer is {size:,} bytes; at most {MAX_SDP_BYTES:,} are accepted")
    if not sdp.startswith("v=0") or "\x00" in sdp:
        raise OfferError("sdp is not an SDP offer (it must start with v=0)")
    # SDP's lines end in CRLF (a bare LF is tolerated); Python's splitlines() would also break at U+2028
    # and the like, which inside an SDP line are just characters.
    lines = [line.removesuffix("\r") for line in sdp.split("\n") if line.strip()]
    if not all(SDP_LINE.fullmatch(line) for line in lines):
        raise OfferError("sdp is not an SDP offer: every line is a letter, '=' and a value")
    media = [line[2:].split() for line in lines if line.startswith("m=")]
    if not all(len(m) >= 4 and MEDIA_PORT.fullmatch(m[1]) for m in media):
        raise OfferError("the SDP offer has a media line that is not <media> <port> <protocol> <formats>")
    kinds = [m[0] for m in media]
    if kinds.count("audio") != 1:
        raise OfferError(f"the SDP offer must have exactly one audio stream; it has {kinds.count('audio')}")
    if kinds.count("application") > 1:
        raise OfferError("the SDP offer may have at most one data channel")
    others = sorted(set(kinds) - {"audio", "application"})
    if others:
        raise OfferError(f"the SDP offer may carry audio and a data channel only, not {', '.join(others)}")
    for m in media:
        if m[0] == "application" and (len(m) < 3 or "SCTP" not in m[2]):
            raise OfferError("the SDP offer's application stream must be a WebRTC data channel")
    # What any browser's WebRTC offer carries, without which the upstream refuses it anyway.
    if not any(line.startswith("a=ice-ufrag:") for line in lines) or not any(
            line.startswith("a=fingerprint:") for line in lines):
        raise OfferError("the SDP offer has no ICE credentials or DTLS fingerprint: it is not a WebRTC offer")
    return sdp


class DollarsField(forms.DecimalField):
    """An amount as people type it: "25", "12.50", "$1,200". Commas only where they group thousands, and
    something left once the "$" and commas are gone: "$" or ",,," is not an empty field, which would
    remove the limit, and "1,2,3" is not $123."""

    GROUPED = re.compile(r"\d{1,3}(,\d{3})+(\.\d*)?")

    def to_python(self, value):
        if isinstance(value, str) and value.strip():
            amount = value.strip().removeprefix("$").strip()
            if "," in amount:
                if not self.GROUPED.fullmatch(amount):
                    raise ValidationError(self.error_messages["invalid"], code="invalid")
                amount = amount.replace(",", "")
            if not amount:
                raise ValidationError(self.error_messages["invalid"], code="invalid")
            value = amount
        return super().to_python(value)


class BudgetForm(forms.Form):
    """Set (or, left empty, remove) the monthly limit of one team or one user."""

    scope = forms.ChoiceField(choices=[("team", "Team"), ("user", "User")])
    target = forms.CharField(max_length=150, help_text="the team's id or the user's name")
    monthly_limit_usd = DollarsField(
        required=False, min_value=Decimal(0), max_value=Decimal(1_000_000), max_digits=12, decimal_places=4,
        help_text="USD per calendar month (UTC); empty removes the limit",
        error_messages={
            "invalid": "Write the limit in dollars, such as 25 or 12.50.",
            "min_value": "A limit cannot be negative. Leave it empty to remove the limit.",
            "max_value": "A limit can be at most $1,000,000 a month.",
            "max_digits": "A limit can be at most $1,000,000 a month.",
            "max_decimal_places": "Use at most 4 decimal places (a hundredth of a cent).",
            "max_whole_digits": "A limit can be at most $1,000,000 a month.",
        },
    )
