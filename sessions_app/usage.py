"""Recording usage, one path for the page's reports and the server's sideband.

Price it (an answer at the realtime model's prices, an input transcription at
the transcription model's), store it once per source, keep the conversation's
totals, and end whatever a crossed budget ends.
"""

from dataclasses import dataclass, field

from django.conf import settings

from .models import ModelPrice, RealtimeSession, TranscriptionPrice, UsageRecord
from .pricing import UsageError, cost_of, parse_transcription_usage, parse_usage, transcription_cost


@dataclass
class Recorded:
    record: UsageRecord
    created: bool
    totals: dict
    team_id: str | None
    # Conversations a crossed budget ended: [(session id, [upstream call ids])].
    stopped: list = field(default_factory=list)


class NoPrice(UsageError):
    """The model has no price in the tables; an admin must add one."""


def transcription_model(session):
    transcription = ((session.session_config.get("audio") or {}).get("input") or {}).get("transcription") or {}
    return transcription.get("model") or settings.TRANSCRIPTION_MODEL


def record(session_id, key, usage, *, source, kind=UsageRecord.RESPONSE, call=None):
    """Store one answer's or one transcription's usage; raises UsageError when it is malformed."""
    session = RealtimeSession.objects.select_related("user", "team").get(pk=session_id)
    if kind == UsageRecord.RESPONSE:
        price = ModelPrice.objects.filter(model=session.model).first()
        if price is None:
            raise NoPrice(f"{session.model} has no price; an admin must add one.")
        counts = parse_usage(usage, price)
        cost, model, seconds = cost_of(counts, price), session.model, None
    else:
        model = transcription_model(session)
        price = TranscriptionPrice.objects.filter(model=model).first()
        if price is None:
            raise NoPrice(f"{model} has no transcription price; an admin must add one.")
        counts = parse_transcription_usage(usage)
        cost, seconds = transcription_cost(counts, price), counts.seconds
    if call is None:
        call = session.current_call
    stored, created = session.record_usage(
        key, counts, cost, source=source, kind=kind, model=model, call=call, audio_seconds=seconds
    )
    stopped = session.stop_if_over_budget() if created else []
    team_id = str(session.team_id) if session.team_id else None
    return Recorded(stored, created, session.totals(), team_id, stopped)
