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
    # For the dashboards: what this record changed on the bill, as a delta they apply (None: nothing).
    update: dict | None = None


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
    update = None
    if created and getattr(stored, "billed_changes", None):
        update = dashboard_update(session, stored)
    return Recorded(stored, created, session.totals(), team_id, stopped, update)


def dashboard_update(session, record=None):
    """What the spend dashboards apply: the conversation's row as it now stands and, after a record,
    what that record changed on the bill per day (none when only the conversation changed, as when
    it ends)."""
    from .dashboard import session_row

    return {
        "record_id": record.pk if record else None, "response_id": record.response_id if record else None,
        "kind": record.kind if record else None, "verified": bool(record and record.source == UsageRecord.SERVER),
        "session_id": str(session.pk), "user": session.user.get_username(),
        "team_id": str(session.team_id) if session.team_id else None, "team": session.team.name if session.team else "",
        "model": session.model, "changes": record.billed_changes if record else [],
        "session_row": session_row(session),
    }

