"""The spend dashboard (staff and team admins), its CSV export, and members' session history.

Every spend figure comes from spend_queryset() and is summed in the database,
so the page, its JSON mode and the CSV agree to the last digit.
"""

import csv
import datetime
from dataclasses import dataclass, field
from decimal import Decimal
from urllib.parse import urlencode

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Count, DecimalField, Exists, F, OuterRef, Q, Sum
from django.db.models.functions import TruncDate
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET

from teams_app.models import Membership, Team

from .models import RealtimeSession, UsageRecord

UTC = datetime.timezone.utc
ONE_DAY = datetime.timedelta(days=1)
DEFAULT_DAYS = 30
MAX_DAYS = 366
# Far enough apart for any real range, and end + one day never overflows.
EARLIEST, LATEST = datetime.date(2000, 1, 1), datetime.date(2999, 12, 31)
SESSIONS_ON_PAGE = 200
HISTORY_PAGE_SIZE = 50
# A sum outgrows one record's 14 digits long before a session does.
MONEY = DecimalField(max_digits=24, decimal_places=8)
TOKEN_KINDS = ("input_text", "input_audio", "input_image", "cached", "output_text", "output_audio")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
CSV_HEADER = [
    "session_id", "started_at", "user", "team", "model", "duration_seconds", *(f"{k}_tokens" for k in TOKEN_KINDS),
    "cost_usd", "documents", "verified", "verified_cost_usd", "reported_session_cost_usd", "mismatch",
]


# ---- who sees what ----

def teams_whose_spend_user_sees(user):
    """Teams whose spend the user may see: None means every team (staff)."""
    if user.is_staff:
        return None
    teams = Team.objects.filter(memberships__user=user, memberships__role=Membership.ADMIN)
    if not teams.exists():
        raise PermissionDenied("Only staff and team admins see spend.")
    return teams


def spend_queryset(viewer, start, end, filters=None):
    """The usage records that count as the viewer's spend from start to end (UTC days, inclusive).

    The one place deciding what counts, the same rule budgets use: per
    response, what the server verified itself where it did, else what the
    browser reported.
    """
    records = UsageRecord.objects.billable().filter(
        created_at__gte=_midnight(start),
        created_at__lt=_midnight(end + ONE_DAY),
    )
    teams = teams_whose_spend_user_sees(viewer)
    if teams is not None:
        records = records.filter(session__team__in=teams)
    filters = filters or {}
    if filters.get("team"):
        records = records.filter(session__team_id=filters["team"])
    if filters.get("user"):
        records = records.filter(session__user__username=filters["user"])
    if filters.get("model"):
        records = records.filter(session__model=filters["model"])
    return records


def _midnight(day):
    return datetime.datetime.combine(day, datetime.time(), tzinfo=UTC)


def _today():
    return timezone.now().astimezone(UTC).date()


# ---- the query: range and filters, validated against what the viewer may see ----

class SpendFilterForm(forms.Form):
    start = forms.DateField(
        required=False, input_formats=["%Y-%m-%d"],
        error_messages={"invalid": "The start must be a date written YYYY-MM-DD."},
    )
    end = forms.DateField(
        required=False, input_formats=["%Y-%m-%d"],
        error_messages={"invalid": "The end must be a date written YYYY-MM-DD."},
    )
    team = forms.ChoiceField(required=False, error_messages={"invalid_choice": "That team is not one you may see."})
    user = forms.ChoiceField(required=False, error_messages={"invalid_choice": "That user is not one you may see."})
    model = forms.ChoiceField(
        required=False, error_messages={"invalid_choice": "No session you may see used that model."}
    )

    def __init__(self, data, viewer):
        super().__init__(data)
        teams = teams_whose_spend_user_sees(viewer)
        sessions = RealtimeSession.objects.all() if teams is None else RealtimeSession.objects.filter(team__in=teams)
        teams = Team.objects.all() if teams is None else teams
        users = get_user_model().objects.filter(realtime_sessions__in=sessions).distinct().order_by("username")
        models = sessions.order_by("model").values_list("model", flat=True).distinct()
        self.fields["team"].choices = [("", "All teams")] + [(str(t.pk), t.name) for t in teams]
        self.fields["user"].choices = [("", "All users")] + [(u.get_username(), u.get_username()) for u in users]
        self.fields["model"].choices = [("", "All models")] + [(m, m) for m in models]

    def _check_bounds(self, name):
        day = self.cleaned_data.get(name)
        if day and not EARLIEST <= day <= LATEST:
            raise forms.ValidationError(f"The {name} must be between {EARLIEST} and {LATEST}.")
        return day

    def clean_start(self):
        return self._check_bounds("start")

    def clean_end(self):
        return self._check_bounds("end")

    def clean(self):
        data = super().clean()
        if self.has_error("start") or self.has_error("end"):
            return data
        end = data.get("end") or _today()
        start = data.get("start") or end - (DEFAULT_DAYS - 1) * ONE_DAY
        if end < start:
            raise forms.ValidationError(f"The end ({end}) is before the start ({start}).")
        if (end - start).days >= MAX_DAYS:
            raise forms.ValidationError(f"A range may span at most {MAX_DAYS} days.")
        data["start"], data["end"] = start, end
        return data


@dataclass
class SpendQuery:
    form: SpendFilterForm
    start: datetime.date
    end: datetime.date
    filters: dict
    errors: list = field(default_factory=list)

    def params(self, **changes):
        """The effective query (never the refused values) as a query string."""
        params = {"start": self.start.isoformat(), "end": self.end.isoformat()}
        params.update((k, v) for k, v in self.filters.items() if v)
        params.update(changes)
        return urlencode(params)


def _read_query(request):
    """The validated range and filters; whatever was refused falls back to its default and is said."""
    form = SpendFilterForm(request.GET, request.user)
    form.is_valid()
    data = form.cleaned_data
    dates_ok = not (form.has_error("start") or form.has_error("end") or form.non_field_errors())
    if dates_ok:
        start, end = data["start"], data["end"]
    else:
        end = _today()
        start = end - (DEFAULT_DAYS - 1) * ONE_DAY
    filters = {name: data.get(name) or None for name in ("team", "user", "model")}
    errors = [str(message) for messages in form.errors.values() for message in messages]
    return SpendQuery(form, start, end, filters, errors)


# ---- the figures ----

def _sums():
    # Token columns are the realtime model's; input transcription adds to the cost only.
    answers = Q(kind=UsageRecord.RESPONSE)
    return {
        "sessions": Count("session", distinct=True),
        "input_text": Sum("input_text_tokens", default=0, filter=answers),
        "input_audio": Sum("input_audio_tokens", default=0, filter=answers),
        "input_image": Sum("input_image_tokens", default=0, filter=answers),
        "cached": Sum(F("cached_text_tokens") + F("cached_audio_tokens") + F("cached_image_tokens"), default=0,
                      filter=answers),
        "output_text": Sum("output_text_tokens", default=0, filter=answers),
        "output_audio": Sum("output_audio_tokens", default=0, filter=answers),
        "cost": Sum("cost_usd", default=Decimal(0), output_field=MONEY),
    }


def _figure(sums, **extra):
    """One row of figures, JSON-ready: exact cost (8 decimals) and the 4-decimal display."""
    row = {kind: sums[kind] for kind in ("sessions", *TOKEN_KINDS)}
    row["cost_usd"] = f"{sums['cost']:.8f}"
    row["cost_display"] = f"{sums['cost']:.4f}"
    row.update(extra)
    return row


def _breakdown(spend, query, param, key, label=None):
    """Figures grouped by one field; each label links to the page filtered by it."""
    label = label or key
    rows = spend.values(*dict.fromkeys((key, label))).annotate(**_sums()).order_by("-cost", label)
    figures = []
    for sums in rows:
        value = str(sums[key]) if sums[key] is not None else ""
        href = "?" + query.params(**{param: value}) if value else ""
        figures.append(_figure(sums, key=value, label=sums[label] or "(none)", href=href))
    return figures


def _by_day(spend, query):
    days = spend.annotate(day=TruncDate("created_at", tzinfo=UTC)).values("day").annotate(**_sums()).order_by("day")
    found = {row["day"]: row for row in days}
    empty = dict.fromkeys(("sessions", *TOKEN_KINDS), 0) | {"cost": Decimal(0)}
    figures, day = [], query.start
    # Every day of the range, so the chart shows quiet days as zero.
    while day <= query.end:
        iso = day.isoformat()
        figures.append(_figure(found.get(day, empty), key=iso, label=iso, href="?" + query.params(start=iso, end=iso)))
        day += ONE_DAY
    return figures


def _duration(session):
    if not session.ended_at:
        return None
    began = session.connected_at or session.created_at
    return max(0, int((session.ended_at - began).total_seconds()))


def _duration_display(seconds):
    if seconds is None:
        return "not ended"
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def _verification(session_ids):
    """Per session, over all its records: the browser-reported against the server-verified cost."""
    reported_too = UsageRecord.objects.filter(
        session=OuterRef("session"), response_id=OuterRef("response_id"), source=UsageRecord.CLIENT
    )
    server = Q(source=UsageRecord.SERVER)
    rows = (
        UsageRecord.objects.filter(session__in=session_ids)
        .values("session")
        .annotate(
            reported=Sum("cost_usd", filter=Q(source=UsageRecord.CLIENT), default=Decimal(0), output_field=MONEY),
            verified=Sum("cost_usd", filter=server, default=Decimal(0), output_field=MONEY),
            server_records=Count("pk", filter=server),
            unreported=Count("pk", filter=server & ~Exists(reported_too)),
        )
        .order_by()
    )
    return {row["session"]: row for row in rows}


def _session_rows(spend, limit=None):
    """The sessions behind the figures, newest first, with their in-range spend."""
    per_session = spend.values("session").annotate(**_sums()).order_by("-session__created_at", "session")
    if limit is not None:
        per_session = per_session[:limit]
    per_session = list(per_session)
    ids = [row["session"] for row in per_session]
    sessions = RealtimeSession.objects.select_related("user", "team").in_bulk(ids)
    # A bounded page asks about its own ids; the full export about the whole range.
    checks = _verification(ids if limit is not None else spend.values("session"))
    return [_session_row(sessions[row["session"]], row, checks[row["session"]]) for row in per_session]


def _session_row(session, sums, check):
    seconds = _duration(session)
    verified = check["server_records"] > 0
    # Verified but different, or responses the server saw and the browser never reported.
    mismatch = verified and (check["verified"] != check["reported"] or check["unreported"] > 0)
    row = _figure(
        sums,
        id=str(session.pk),
        started_at=session.created_at.astimezone(UTC).isoformat(),
        started_display=f"{session.created_at.astimezone(UTC):%Y-%m-%d %H:%M}",
        user=session.user.get_username(),
        team=session.team.name if session.team else "",
        model=session.model,
        duration_seconds=seconds,
        duration_display=_duration_display(seconds),
        documents=[str(d.get("title", "")) for d in session.documents if isinstance(d, dict)],
        verified=verified,
        verified_cost_usd=f"{check['verified']:.8f}" if verified else None,
        verified_cost_display=f"{check['verified']:.4f}" if verified else None,
        reported_session_cost_usd=f"{check['reported']:.8f}",
        reported_session_cost_display=f"{check['reported']:.4f}",
        mismatch=mismatch,
        api_url=reverse("sessions-detail", args=[session.pk]),
    )
    del row["sessions"]
    return row


CHART_WIDTH, CHART_HEIGHT = 720, 220
CHART_LEFT, CHART_RIGHT, CHART_TOP, CHART_BOTTOM = 70, 10, 14, 30


def _chart(by_day, query):
    """Bar geometry for the spend-per-day SVG; the page and the live script both draw from it."""
    costs = [Decimal(row["cost_usd"]) for row in by_day]
    peak = max(costs, default=Decimal(0))
    plot_width = CHART_WIDTH - CHART_LEFT - CHART_RIGHT
    plot_height = CHART_HEIGHT - CHART_TOP - CHART_BOTTOM
    step = plot_width / max(len(by_day), 1)
    bars = []
    for i, (row, cost) in enumerate(zip(by_day, costs)):
        height = float(cost / peak) * plot_height if peak else 0.0
        bars.append({
            "x": round(CHART_LEFT + i * step + step * 0.1, 2),
            "y": round(CHART_TOP + plot_height - height, 2),
            "width": round(max(step * 0.8, 1), 2),
            "height": round(height, 2),
            "label": f"{row['label']}: ${row['cost_display']}",
        })
    busiest = by_day[costs.index(peak)]["label"] if peak else None
    return {
        "width": CHART_WIDTH, "height": CHART_HEIGHT,
        "left": CHART_LEFT, "right": CHART_WIDTH - CHART_RIGHT,
        "top": CHART_TOP, "baseline": CHART_TOP + plot_height,
        "label_x": CHART_LEFT - 6, "label_y": CHART_HEIGHT - 8,
        "peak_display": f"{peak:.4f}",
        "first_day": query.start.isoformat(), "last_day": query.end.isoformat(),
        "title": f"Spend per day (USD), {query.start} to {query.end}, UTC",
        "description": (f"Highest: ${peak:.4f} on {busiest}." if busiest else "No spend in this range.")
        + " The table “By day” has every value.",
        "bars": bars,
    }


def _figures(viewer, query):
    """Everything the dashboard shows, JSON-ready; the page and its JSON mode share it."""
    spend = spend_queryset(viewer, query.start, query.end, query.filters)
    today = _today()
    by_day = _by_day(spend, query)
    figures = {
        "start": query.start.isoformat(),
        "end": query.end.isoformat(),
        "today_date": today.isoformat(),
        "filters": query.filters,
        "today": _figure(spend_queryset(viewer, today, today, query.filters).aggregate(**_sums())),
        "month": _figure(spend_queryset(viewer, today.replace(day=1), today, query.filters).aggregate(**_sums())),
        "range": _figure(spend.aggregate(**_sums())),
        "by_user": _breakdown(spend, query, "user", "session__user__username"),
        "by_team": _breakdown(spend, query, "team", "session__team", "session__team__name"),
        "by_model": _breakdown(spend, query, "model", "session__model"),
        "by_day": by_day,
        "sessions": _session_rows(spend, limit=SESSIONS_ON_PAGE),
        "chart": _chart(by_day, query),
        "csv_url": reverse("dashboard-csv") + "?" + query.params(),
    }
    figures["sessions_shown"] = len(figures["sessions"])
    return figures


# ---- views ----

@login_required
@require_GET
def dashboard(request):
    query = _read_query(request)
    if request.GET.get("format") == "json":
        if query.errors:
            message = " ".join(query.errors)
            return JsonResponse({"error": {"code": "invalid_request", "message": message}}, status=400)
        return JsonResponse(_figures(request.user, query))
    figures = _figures(request.user, query)
    live = {"json_url": reverse("dashboard") + "?" + query.params(format="json"), "ws_path": "/ws/dashboard/"}
    context = {"query": query, "form": query.form, "figures": figures, "live": live, "errors": query.errors}
    # Refused values still get a page, with the defaults used instead, but not a 200.
    return render(request, "dashboard/dashboard.html", context, status=400 if query.errors else 200)


@login_required
@require_GET
def spend_csv(request):
    query = _read_query(request)
    if query.errors:
        return HttpResponse(" ".join(query.errors), status=400, content_type="text/plain; charset=utf-8")
    spend = spend_queryset(request.user, query.start, query.end, query.filters)
    filename = f"spend-{query.start}-{query.end}.csv"
    response = HttpResponse(
        content_type="text/csv; charset=utf-8", headers={"Content-Disposition": f'attachment; filename="{filename}"'}
    )
    writer = csv.writer(response)
    writer.writerow(CSV_HEADER)
    for row in _session_rows(spend):
        writer.writerow(_csv_cells([
            row["id"], row["started_at"], row["user"], row["team"], row["model"], row["duration_seconds"],
            *(row[k] for k in TOKEN_KINDS), row["cost_usd"], "; ".join(row["documents"]),
            "yes" if row["verified"] else "no", row["verified_cost_usd"], row["reported_session_cost_usd"],
            "yes" if row["mismatch"] else "no",
        ]))
    total = _figure(spend.aggregate(**_sums()))
    writer.writerow(_csv_cells(["TOTAL", "", "", "", "", "", *(total[k] for k in TOKEN_KINDS), total["cost_usd"]]))
    return response


def _csv_cells(values):
    """Text a spreadsheet would run as a formula gets a leading apostrophe."""
    cells = ["" if value is None else str(value) for value in values]
    return ["'" + cell if cell.startswith(FORMULA_START) else cell for cell in cells]


def _get_readable_session(user, session_id):
    try:
        return RealtimeSession.objects.readable_by(user).select_related("user", "team").get(pk=session_id)
    except RealtimeSession.DoesNotExist:
        raise Http404 from None


@login_required
@require_GET
def history(request):
    sessions = RealtimeSession.objects.filter(user=request.user).order_by("-created_at", "-pk")
    page = Paginator(sessions, HISTORY_PAGE_SIZE).get_page(request.GET.get("page"))
    rows = [
        {
            "session": s,
            "duration": _duration_display(_duration(s)),
            "cost": f"{s.billed_cost_usd:.4f}",
            "cost_usd": f"{s.billed_cost_usd:.8f}",
        }
        for s in page
    ]
    return render(request, "sessions/history.html", {"page": page, "rows": rows})


@login_required
@require_GET
def history_detail(request, session_id):
    from .exports import transcript_rows

    session = _get_readable_session(request.user, session_id)
    context = {
        "session": session,
        "duration": _duration_display(_duration(session)),
        "cost": f"{session.billed_cost_usd:.4f}",
        "cost_usd": f"{session.billed_cost_usd:.8f}",
        "transcript": transcript_rows(session),
        "calls": session.calls.all(),
    }
    return render(request, "sessions/history.html", context)
