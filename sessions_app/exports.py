"""Downloads: a conversation's transcript (Markdown and CSV, with each answer's cost and sources), and the
spend dashboard's sessions as CSV."""

import csv
import datetime

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse
from django.views.decorators.http import require_GET

from .models import RealtimeSession, TranscriptEntry, UsageRecord
from .tools import sources_by_item

UTC = datetime.timezone.utc
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _readable_session(user, session_id):
    try:
        return RealtimeSession.objects.readable_by(user).select_related("user", "team").get(pk=session_id)
    except RealtimeSession.DoesNotExist:
        raise Http404 from None


def transcript_rows(session):
    """Each turn said, in order: when, who, what, what the answer cost (the bill's figure), its sources."""
    costs = dict(
        session.usage_records.billable().filter(kind=UsageRecord.RESPONSE).values_list("response_id", "cost_usd")
    )
    sources = sources_by_item(session)
    return [
        {
            "at": entry.created_at.astimezone(UTC),
            "speaker": entry.get_role_display(),
            "text": entry.text,
            "cost_usd": costs.get(entry.response_id) if entry.role == TranscriptEntry.ASSISTANT else None,
            "sources": sources.get(entry.item_id, []),
        }
        for entry in session.transcript.exclude(text="")
    ]


def _where(source):
    return f"page {source['page']}" if source["page"] else (f"section “{source['section']}”" if source["section"] else "")


def _filename(session, extension):
    return f"transcript-{session.created_at.astimezone(UTC):%Y%m%d-%H%M}-{str(session.pk)[:8]}.{extension}"


@login_required
@require_GET
def transcript_markdown(request, session_id):
    session = _readable_session(request.user, session_id)
    lines = [
        f"# Conversation of {session.created_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"{session.user.get_username()}, {session.model}, {session.calls.count()} call(s), "
        f"cost ${session.billed_cost_usd:.4f}.",
        "",
    ]
    for row in transcript_rows(session):
        cost = f" (${row['cost_usd']:.4f})" if row["cost_usd"] is not None else ""
        lines += [f"**{row['speaker']}** {row['at']:%H:%M:%S}{cost}: {_one_line(row['text'])}", ""]
        if row["sources"]:
            lines.append("Sources:")
            for number, source in enumerate(row["sources"], 1):
                where = _where(source)
                lines.append(f"{number}. {source['title']}{', ' + where if where else ''}")
                lines += [f"   > {line}" for line in source["text"].splitlines() if line.strip()]
            lines.append("")
    response = HttpResponse("\n".join(lines), content_type="text/markdown; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{_filename(session, "md")}"'
    return response


@login_required
@require_GET
def transcript_csv(request, session_id):
    session = _readable_session(request.user, session_id)
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{_filename(session, "csv")}"'
    writer = csv.writer(response)
    writer.writerow(["time_utc", "speaker", "text", "answer_cost_usd", "sources"])
    for row in transcript_rows(session):
        sources = " | ".join(
            f"{s['title']}{', ' + _where(s) if _where(s) else ''}: {_one_line(s['text'])}" for s in row["sources"]
        )
        cost = f"{row['cost_usd']:.8f}" if row["cost_usd"] is not None else ""
        writer.writerow(_cells([row["at"].isoformat(), row["speaker"], row["text"], cost, sources]))
    return response


def _one_line(text):
    return " ".join(text.split())


def _cells(values):
    """Text a spreadsheet would run as a formula gets a leading apostrophe."""
    return ["'" + v if v.startswith(FORMULA_START) else v for v in values]


SPEND_CSV_HEADER = [
    "session_id", "first_billed_at", "started_at", "user", "team", "model", "duration_seconds", "responses",
    "input_tokens", "cached_tokens", "output_tokens", "cost_usd", "transcription_cost_usd", "documents", "verified",
    "verified_cost_usd", "reported_session_cost_usd", "mismatch",
]


@login_required
@require_GET
def spend_csv(request):
    """The conversations behind the dashboard's figures for the same range and filters, and the total."""
    from .dashboard import figure, read_query, session_row, sessions_in
    from .models import SpendDay

    query = read_query(request)
    if query.errors:
        return HttpResponse(" ".join(query.errors), status=400, content_type="text/plain; charset=utf-8")
    response = HttpResponse(content_type="text/csv; charset=utf-8", headers={
        "Content-Disposition": f'attachment; filename="spend-{query.start}-{query.end}.csv"'})
    writer = csv.writer(response)
    writer.writerow(SPEND_CSV_HEADER)
    for session in sessions_in(request.user, query).iterator(chunk_size=1000):
        row = session_row(session)
        writer.writerow(_cells([
            row["id"], session.first_billed_at.astimezone(UTC).isoformat(), row["started_at"], row["user"],
            row["team"], row["model"], "" if row["duration_seconds"] is None else str(row["duration_seconds"]),
            str(row["responses"]), str(row["input_tokens"]), str(row["cached"]), str(row["output_tokens"]),
            row["cost_usd"], row["transcription_cost_usd"], "; ".join(row["documents"]),
            "yes" if row["verified"] else "no", row["verified_cost_usd"] or "", row["reported_session_cost_usd"],
            "yes" if row["mismatch"] else "no",
        ]))
    total = figure(SpendDay.objects.visible_to(request.user).matching(query.filters)
                   .between(query.start, query.end).totals())
    input_tokens = total["input_text"] + total["input_audio"] + total["input_image"]
    writer.writerow(_cells(["TOTAL", "", "", "", "", "", "", str(total["responses"]), str(input_tokens),
                            str(total["cached"]), str(total["output_text"] + total["output_audio"]),
                            total["cost_usd"], total["transcription_cost_usd"]]))
    return response
