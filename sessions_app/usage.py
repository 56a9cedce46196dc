"""Recording usage, one path for the page's reports and the server's sideband.

Price it (an answer at the realtime model's prices, an input transcription at
the transcription model's), store it once per source, keep the conversation's
totals, and end whatever a crossed budget ends.
"""

import uuid
from dataclasses import dataclass, field

from django.conf import settings

from voiceproject.prepared import Prepared

from .models import ModelPrice, RealtimeSession, SpendDay, TranscriptionPrice, UsageEntry, UsageRecord
from .pricing import UsageError, cost_of, parse_transcription_usage, parse_usage, transcription_cost


@dataclass
class Recorded:
    record: UsageRecord
    created: bool
    totals: dict
    team_id: str | None
    # Conversations a crossed budget ended: [(session id, {upstream call id: sealed secret})].
    stopped: list = field(default_factory=list)
    # For the dashboards: what this record changed on the bill, as a delta they apply (None: nothing).
    update: dict | None = None
    dashboards_told: bool = False


class NoPrice(UsageError):
    """The model has no price in the tables; an admin must add one."""


def transcription_model(session):
    transcription = ((session.session_config.get("audio") or {}).get("input") or {}).get("transcription") or {}
    return transcription.get("model") or settings.TRANSCRIPTION_MODEL


class Report:
    """One usage as received: from the page (source client) or the sideband (source server)."""

    __slots__ = ("session_id", "key", "usage", "source", "kind", "call")

    def __init__(self, session_id, key, usage, *, source, kind=UsageRecord.RESPONSE, call=None):
        self.session_id, self.key, self.usage, self.source, self.kind, self.call = (
            session_id, key, usage, source, kind, call)


def record(session_id, key, usage, *, source, kind=UsageRecord.RESPONSE, call=None):
    """Store one answer's or one transcription's usage; raises UsageError when it is malformed."""
    (result,) = record_many([Report(session_id, key, usage, source=source, kind=kind, call=call)])
    if isinstance(result, Exception):
        raise result
    return result


def record_many(reports):
    """Store usages together (one transaction for all that are well formed): one Recorded per report, in
    order, or the exception that report alone raised (UsageError, RealtimeSession.DoesNotExist)."""
    for report in reports:
        report.session_id = as_id(report.session_id)
    # What pricing needs; the conversations are read again, locked, to be written.
    ids = sorted({r.session_id for r in reports if r.session_id})
    sessions = {s.pk: s for s in _pricing_reads(ids=ids)}
    prices = {p.model: p for p in _prices_of(models=sorted({s.model for s in sessions.values()}))}
    transcription_prices = {}
    if any(r.kind != UsageRecord.RESPONSE for r in reports):
        wanted = {transcription_model(s) for s in sessions.values()}
        transcription_prices = {p.model: p for p in TranscriptionPrice.objects.filter(model__in=wanted)}
    results, entries, owners = [None] * len(reports), [], []
    for index, report in enumerate(reports):
        try:
            entries.append(priced(report, sessions, prices, transcription_prices))
            owners.append(index)
        except (UsageError, RealtimeSession.DoesNotExist) as exc:
            results[index] = exc
    if not entries:
        return results
    stored = RealtimeSession.store_usages(entries)
    # Budgets are checked once per owner (a user in a team) with a report here, a resend too: the check
    # runs after the commit, so a resend is how a check the database failed gets made.
    checked = set()
    for index, one in zip(owners, stored):
        session = one.session
        stopped = []
        if (session.user_id, session.team_id) not in checked:
            checked.add((session.user_id, session.team_id))
            stopped = session.stop_if_over_budget()
        # Every stored record: one that leaves the bill as it was (a page's report after the server's)
        # still changes the conversation's row (what the page reported, a disagreement flagged).
        update = dashboard_update(session, one.record) if one.created else None
        team_id = str(session.team_id) if session.team_id else None
        results[index] = Recorded(one.record, one.created, session.totals(), team_id, stopped, update)
    return results


# Every report batch reads these: compiled once (a batch's reads cost the ORM more than the database).
_pricing_reads = Prepared(lambda ids: RealtimeSession.objects.only("model", "session_config").filter(pk__in=ids),
                          ids=[uuid.UUID])
_prices_of = Prepared(lambda models: ModelPrice.objects.filter(model__in=models), models=[str])


def as_id(value):
    try:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    except ValueError:
        return None


def priced(report, sessions, prices, transcription_prices):
    """The report as an entry to store, at its model's price."""
    session = sessions.get(report.session_id)
    if session is None:
        raise RealtimeSession.DoesNotExist(f"no conversation {report.session_id}")
    if report.kind == UsageRecord.RESPONSE:
        price = prices.get(session.model)
        if price is None:
            raise NoPrice(f"{session.model} has no price; an admin must add one.")
        counts = parse_usage(report.usage, price, upstream=report.source == UsageRecord.SERVER)
        return UsageEntry(session.pk, report.key, counts, cost_of(counts, price), report.source, report.kind,
                          session.model, report.call)
    model = transcription_model(session)
    price = transcription_prices.get(model)
    if price is None:
        raise NoPrice(f"{model} has no transcription price; an admin must add one.")
    counts = parse_transcription_usage(report.usage, upstream=report.source == UsageRecord.SERVER)
    return UsageEntry(session.pk, report.key, counts, transcription_cost(counts, price), report.source,
                      report.kind, model, report.call, counts.seconds)


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
        "model": session.model, "changes": SpendDay.as_json(record.billed_changes) if record else [],
        "session_row": session_row(session),
    }

