"""Turning a realtime `usage` object into token counts and a Decimal cost.

Prices live in the database (ModelPrice, per million tokens). Cached input is a
part of input (`cached_tokens` is a subset of `input_tokens`), charged at the
cached rate per modality; the rest of the input at the full rate. Input
transcription is billed apart, at the transcription model's price
(TranscriptionPrice), by tokens or by duration.
"""

import logging
import math
from dataclasses import asdict, dataclass, replace
from decimal import Decimal

from .models import MILLION

KINDS = ("text", "audio", "image")

log = logging.getLogger(__name__)


class UsageError(ValueError):
    """The usage object is malformed or impossible; the message says why."""


@dataclass(frozen=True)
class TokenCounts:
    input_text: int = 0
    input_audio: int = 0
    input_image: int = 0
    cached_text: int = 0
    cached_audio: int = 0
    cached_image: int = 0
    output_text: int = 0
    output_audio: int = 0

    @property
    def input_total(self):
        return self.input_text + self.input_audio + self.input_image

    @property
    def cached_total(self):
        return self.cached_text + self.cached_audio + self.cached_image

    @property
    def output_total(self):
        return self.output_text + self.output_audio

    def as_record_fields(self):
        return {f"{name}_tokens": value for name, value in asdict(self).items()}


def _count(obj, key, where):
    value = obj.get(key)
    if value is None:
        return None
    # bool is an int in Python; a count never is.
    if not isinstance(value, int) or isinstance(value, bool):
        raise UsageError(f"{where}.{key} must be an integer")
    if value < 0:
        raise UsageError(f"{where}.{key} must not be negative")
    return value


def _details(usage, key):
    details = usage.get(key)
    if details is None:
        return {}
    if not isinstance(details, dict):
        raise UsageError(f"usage.{key} must be an object")
    return details


def parse_usage(usage, model_price, upstream=False):
    """Validate a `response.done` usage object against the model's limits.

    The page's reports are held to every rule. The upstream's own (`upstream`, from the sideband) are the
    bill: the tokens its totals count beyond their text/audio/image split are billed at that side's dearest
    rate, and the model's limits (which the price table may have wrong) are not checked, so nothing the
    upstream billed is dropped. Only a count that is no count is refused."""
    if not isinstance(usage, dict):
        raise UsageError("usage must be an object")
    input_tokens = _count(usage, "input_tokens", "usage")
    output_tokens = _count(usage, "output_tokens", "usage")
    total_tokens = _count(usage, "total_tokens", "usage")
    inp = _details(usage, "input_token_details")
    out = _details(usage, "output_token_details")
    cached = _details(inp, "cached_tokens_details") if inp else {}

    fields = {}
    for kind in KINDS:
        fields[f"input_{kind}"] = _count(inp, f"{kind}_tokens", "usage.input_token_details") or 0
        # Absent per-modality cache details count as uncached: never undercharge.
        fields[f"cached_{kind}"] = _count(cached, f"{kind}_tokens", "usage.input_token_details.cached_tokens_details") or 0
        if fields[f"cached_{kind}"] > fields[f"input_{kind}"]:
            if not upstream:
                raise UsageError(f"cached {kind} tokens exceed {kind} input tokens")
            fields[f"input_{kind}"] = fields[f"cached_{kind}"]  # cached input is input: counted at least once
    for kind in ("text", "audio"):
        fields[f"output_{kind}"] = _count(out, f"{kind}_tokens", "usage.output_token_details") or 0
    counts = TokenCounts(**fields)
    if upstream:
        return _with_unsplit(counts, input_tokens, output_tokens, model_price)

    if input_tokens is not None and input_tokens != counts.input_total:
        raise UsageError("usage.input_tokens does not match its text, audio and image details")
    if output_tokens is not None and output_tokens != counts.output_total:
        raise UsageError("usage.output_tokens does not match its text and audio details")
    if total_tokens is not None and total_tokens != counts.input_total + counts.output_total:
        raise UsageError("usage.total_tokens is not input_tokens + output_tokens")
    cached_tokens = _count(inp, "cached_tokens", "usage.input_token_details")
    if cached_tokens is not None and cached_tokens < counts.cached_total:
        raise UsageError("cached_tokens is less than its per-modality details")
    # One response cannot read more than the context or write more than the cap.
    if counts.input_total > model_price.context_window:
        raise UsageError(f"input_tokens exceed the {model_price.model} context window")
    if counts.output_total > model_price.max_output_tokens:
        raise UsageError(f"output_tokens exceed the {model_price.model} output limit")
    return counts


def _with_unsplit(counts, input_tokens, output_tokens, price):
    """The counts, with what the totals say beyond the split added at the dearest rate of its side."""
    extra_in = max(0, (input_tokens or 0) - counts.input_total)
    extra_out = max(0, (output_tokens or 0) - counts.output_total)
    if not (extra_in or extra_out):
        return counts
    log.warning("%s usage counted %s input and %s output tokens outside its split; billed at the dearest rates",
                price.model, extra_in, extra_out)
    dear_in = max(KINDS, key=lambda kind: getattr(price, f"{kind}_input"))
    dear_out = max(("text", "audio"), key=lambda kind: getattr(price, f"{kind}_output"))
    extra = {f"input_{dear_in}": getattr(counts, f"input_{dear_in}") + extra_in}
    extra[f"output_{dear_out}"] = getattr(counts, f"output_{dear_out}") + extra_out
    return replace(counts, **extra)


def cost_of(counts, model_price):
    """Cost in USD of one response's tokens, exact (Decimal)."""
    p = model_price
    per_million = (
        (counts.input_text - counts.cached_text) * p.text_input
        + counts.cached_text * p.text_cached_input
        + (counts.input_audio - counts.cached_audio) * p.audio_input
        + counts.cached_audio * p.audio_cached_input
        + (counts.input_image - counts.cached_image) * p.image_input
        + counts.cached_image * p.image_cached_input
        + counts.output_text * p.text_output
        + counts.output_audio * p.audio_output
    )
    return Decimal(per_million) / MILLION


def text_input_cost(tokens, model_price, cached=False):
    """What `tokens` of text input cost in one response, uncached or cached."""
    rate = model_price.text_cached_input if cached else model_price.text_input
    return Decimal(tokens) * rate / MILLION


# One user turn cannot be transcribed from more than a call's hour of audio.
MAX_TRANSCRIPTION_SECONDS = 3600
MAX_TRANSCRIPTION_TOKENS = 1_000_000


@dataclass(frozen=True)
class TranscriptionCounts:
    input_text: int = 0
    input_audio: int = 0
    output_text: int = 0
    seconds: Decimal | None = None  # usage billed by duration

    def as_record_fields(self):
        return {"input_text_tokens": self.input_text, "input_audio_tokens": self.input_audio,
                "output_text_tokens": self.output_text}


def parse_transcription_usage(usage, upstream=False):
    """Validate the `usage` of conversation.item.input_audio_transcription.completed (the upstream's own
    figures: input tokens beyond their split are billed as audio, the dearer kind, never dropped)."""
    if not isinstance(usage, dict):
        raise UsageError("usage must be an object")
    kind = usage.get("type")
    if kind == "duration":
        seconds = usage.get("seconds")
        # An int is compared as it is: math.isfinite() of a 400-digit int raises OverflowError.
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or (
                isinstance(seconds, float) and not math.isfinite(seconds)):
            raise UsageError("usage.seconds must be a number")
        if not 0 <= seconds <= MAX_TRANSCRIPTION_SECONDS:
            raise UsageError(f"usage.seconds must be between 0 and {MAX_TRANSCRIPTION_SECONDS}")
        # abs(): -0.0 is in range, and would be priced and stored as a cost of -0.
        return TranscriptionCounts(seconds=Decimal(str(abs(seconds))).quantize(Decimal("0.001")))
    if kind != "tokens":
        raise UsageError('usage.type must be "tokens" or "duration"')
    details = _details(usage, "input_token_details")
    input_tokens = _count(usage, "input_tokens", "usage") or 0
    output_tokens = _count(usage, "output_tokens", "usage") or 0
    total_tokens = _count(usage, "total_tokens", "usage")
    text = _count(details, "text_tokens", "usage.input_token_details")
    audio = _count(details, "audio_tokens", "usage.input_token_details")
    if text is None and audio is None:
        # No split given: bill it all as audio, the dearer kind, never less.
        text, audio = 0, input_tokens
    text, audio = text or 0, audio or 0
    if upstream:
        audio += max(0, input_tokens - text - audio)
        input_tokens, total_tokens = text + audio, None
    if text + audio != input_tokens:
        raise UsageError("usage.input_tokens does not match its text and audio details")
    if total_tokens is not None and total_tokens != input_tokens + output_tokens:
        raise UsageError("usage.total_tokens is not input_tokens + output_tokens")
    if input_tokens + output_tokens > MAX_TRANSCRIPTION_TOKENS:
        raise UsageError("usage has more tokens than one transcription can")
    return TranscriptionCounts(input_text=text, input_audio=audio, output_text=output_tokens)


def transcription_cost(counts, price):
    """Cost in USD of one input transcription, exact (Decimal)."""
    if counts.seconds is not None:
        return counts.seconds * price.per_minute / 60
    per_million = (
        counts.input_text * price.text_input + counts.input_audio * price.audio_input
        + counts.output_text * price.text_output
    )
    return Decimal(per_million) / MILLION
