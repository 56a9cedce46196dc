"""The running totals recomputed from the usage records, which stay the truth.

`manage.py rebuild_spend` uses this to report (and with --fix, mend) any
difference between the running totals (the day rollups and each conversation's
bill) and a fresh sum of the records; the migration that introduced the rollups
used it to fill them. It reads every record, one conversation at a time: it is
the slow, certain check, not a request path.
"""

import datetime
from collections import defaultdict
from decimal import Decimal
from itertools import groupby

from sessions_app.models import TOTAL_FIELDS

DAY_FIELDS = ("cost_usd", "transcription_cost_usd", "input_text", "input_audio", "input_image", "cached",
              "output_text", "output_audio", "responses", "sessions")
# A conversation's running totals, as RealtimeSession keeps them.
SESSION_FIELDS = TOTAL_FIELDS
RECORD_FIELDS = ("session_id", "kind", "response_id", "source", "cost_usd", "created_at", "input_text_tokens",
                 "input_audio_tokens", "input_image_tokens", "cached_text_tokens", "cached_audio_tokens",
                 "cached_image_tokens", "output_text_tokens", "output_audio_tokens")


def _empty_day():
    return dict.fromkeys(DAY_FIELDS, 0) | {"cost_usd": Decimal(0), "transcription_cost_usd": Decimal(0)}


def _empty_session():
    money = ("cost_usd", "verified_cost_usd", "billed_cost_usd", "transcription_cost_usd")
    return dict.fromkeys(SESSION_FIELDS, 0) | dict.fromkeys(money, Decimal(0)) | {"first_billed_at": None}


def sums_of(records):
    """One conversation's totals and its parts of the days, from its records (dicts) alone."""
    totals = _empty_session()
    by_key = defaultdict(dict)  # (kind, response id) -> {source: record}
    for r in records:
        by_key[(r["kind"], r["response_id"])][r["source"]] = r
        r["input"] = r["input_text_tokens"] + r["input_audio_tokens"] + r["input_image_tokens"]
        r["cached"] = r["cached_text_tokens"] + r["cached_audio_tokens"] + r["cached_image_tokens"]
        r["output"] = r["output_text_tokens"] + r["output_audio_tokens"]
        response = r["kind"] == "response"
        if r["source"] == "server":
            totals["verified_count"] += 1
            totals["verified_cost_usd"] += r["cost_usd"]
            if response:
                totals["verified_response_count"] += 1
                totals["verified_input_tokens"] += r["input"]
                totals["verified_output_tokens"] += r["output"]
        else:
            totals["reported_count"] += 1
            totals["cost_usd"] += r["cost_usd"]
            if response:
                totals["response_count"] += 1
                totals["input_tokens"] += r["input"]
                totals["cached_tokens"] += r["cached"]
                totals["output_tokens"] += r["output"]
        if totals["first_billed_at"] is None or r["created_at"] < totals["first_billed_at"]:
            totals["first_billed_at"] = r["created_at"]
    days = defaultdict(_empty_day)
    for sources in by_key.values():
        if len(sources) == 2:
            totals["paired_count"] += 1
            totals["disagreement_count"] += sources["server"]["cost_usd"] != sources["client"]["cost_usd"]
        # Per answer or transcription: the server's record where there is one, else the page's.
        billed = sources.get("server") or sources["client"]
        day = days[billed["created_at"].astimezone(datetime.timezone.utc).date()]
        day["cost_usd"] += billed["cost_usd"]
        totals["billed_cost_usd"] += billed["cost_usd"]
        if billed["kind"] == "response":
            totals["billed_response_count"] += 1
            totals["billed_input_tokens"] += billed["input"]
            totals["billed_cached_tokens"] += billed["cached"]
            totals["billed_output_tokens"] += billed["output"]
            day["responses"] += 1
            for name in ("input_text", "input_audio", "input_image", "output_text", "output_audio"):
                day[name] += billed[f"{name}_tokens"]
            day["cached"] += billed["cached"]
        else:
            totals["transcription_cost_usd"] += billed["cost_usd"]
            day["transcription_cost_usd"] += billed["cost_usd"]
    if totals["first_billed_at"] is not None:
        # A conversation counts once, on the day its first usage went on the bill.
        days[totals["first_billed_at"].astimezone(datetime.timezone.utc).date()]["sessions"] += 1
    return totals, days


def rebuild(SpendDay, UsageRecord, RealtimeSession, fix=False):
    """Compare the running totals with a fresh sum of the records; with `fix`, make them equal.

    Returns the differences found, as readable lines.
    """
    differences = []
    days = defaultdict(_empty_day)
    stored_sessions = RealtimeSession.objects.values("pk", "user_id", "team_id", "model", *SESSION_FIELDS)
    sessions = {s["pk"]: s for s in stored_sessions.iterator(chunk_size=5000)}
    records = UsageRecord.objects.order_by("session_id").values(*RECORD_FIELDS).iterator(chunk_size=5000)
    seen = set()
    for session_id, group in groupby(records, key=lambda r: r["session_id"]):
        seen.add(session_id)
        session = sessions[session_id]
        totals, parts = sums_of(list(group))
        team_key = session["team_id"].hex if session["team_id"] else ""
        for day, part in parts.items():
            row = days[(day, session["user_id"], team_key, session["model"])]
            for name in DAY_FIELDS:
                row[name] += part[name]
        _compare_session(RealtimeSession, session, totals, differences, fix)
    for session_id, session in sessions.items():
        if session_id not in seen:
            _compare_session(RealtimeSession, session, _empty_session(), differences, fix)
    stored = {(r.day, r.user_id, r.team_key, r.model): r for r in SpendDay.objects.all()}
    for key in sorted(set(days) | set(stored), key=str):
        want = days.get(key, _empty_day())
        row = stored.get(key)
        have = {name: getattr(row, name) for name in DAY_FIELDS} if row else _empty_day()
        wrong = [name for name in DAY_FIELDS if have[name] != want[name]]
        if not wrong:
            continue
        differences.append(f"{key[0]} user {key[1]} team {key[2] or '-'} {key[3]}: "
                           + ", ".join(f"{name} {have[name]} should be {want[name]}" for name in wrong))
        if fix:
            if row is None:
                SpendDay.objects.create(day=key[0], user_id=key[1], team_id=key[2] or None, team_key=key[2],
                                        model=key[3], **want)
            elif key not in days:
                row.delete()
            else:
                SpendDay.objects.filter(pk=row.pk).update(**want)
    return differences


def _compare_session(RealtimeSession, session, want, differences, fix):
    wrong = [name for name in SESSION_FIELDS if session[name] != want[name]]
    if wrong:
        differences.append(f"conversation {session['pk']}: "
                           + ", ".join(f"{name} {session[name]} should be {want[name]}" for name in wrong))
        if fix:
            RealtimeSession.objects.filter(pk=session["pk"]).update(**{name: want[name] for name in wrong})
