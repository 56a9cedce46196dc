"""The spend dashboard (staff and team admins): the query, the figures, the page and its JSON.

Every figure is summed from the day rollups (SpendDay), never from the usage
records, so a dashboard read costs the same with a million records in the month
as with none; the sessions behind the figures come a page at a time through an
index. Live updates arrive as deltas the page applies (static/js/spend_dashboard.js).
"""

import datetime
from dataclasses import dataclass, field
from decimal import Decimal
from urllib.parse import urlencode

from django import forms
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET

from teams_app.models import Team

from . import chart
from .templatetags.display import when
from .models import RealtimeSession, SpendDay, usage_snapshot

UTC = datetime.timezone.utc
ONE_DAY = datetime.timedelta(days=1)
DEFAULT_DAYS = 30
MAX_DAYS = 366
# Far enough apart for any real range, and end + one day never overflows.
EARLIEST, LATEST = datetime.date(2000, 1, 1), datetime.date(2999, 12, 31)
SESSIONS_PER_PAGE = 50
TOKEN_KINDS = SpendDay.TOKEN_FIELDS


def viewable_teams(user):
    """The teams whose spend the user may see; PermissionDenied for a member who administers none."""
    teams = Team.objects.spend_visible_to(user)
    if not user.is_staff and not teams.exists():
        raise PermissionDenied("Only staff and team admins see spend.")
    return teams


def today():
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
    model = forms.ChoiceField(required=False, error_messages={"invalid_choice": "That model is not offered."})

    def __init__(self, data, viewer):
        super().__init__(data)
        teams = viewable_teams(viewer).order_by("name")
        users = get_user_model().objects.filter(memberships__team__in=teams).distinct().order_by("username")
        if viewer.is_staff:
            users = get_user_model().objects.order_by("username")
        self.fields["team"].choices = [("", "All teams")] + [(str(t.pk), t.name) for t in teams]
        self.fields["user"].choices = [("", "All users")] + [(u.get_username(), u.get_username()) for u in users]
        self.fields["model"].choices = [("", "All models")] + [(m, m) for m in settings.REALTIME_MODELS]
        # Someone who has left the team, or a model no longer offered, still has spend the breakdowns link
        # to: the asked-for value is accepted when the viewer may see spend of it (one indexed look-up).
        spend = SpendDay.objects.visible_to(viewer)
        for name, lookup, note in (("user", "user__username", "no longer in the team"),
                                   ("model", "model", "no longer offered")):
            value = self.data.get(name)
            choices = self.fields[name].choices
            if value and value not in dict(choices) and spend.filter(**{lookup: value}).exists():
                self.fields[name].choices = choices + [(value, f"{value} ({note})")]

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
        end = data.get("end") or today()
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
    # The range ends today because no end was asked for: it moves on with the days (and so does its start,
    # unless one was asked for).
    rolling: bool = False
    start_asked: bool = False

    def as_dict(self):
        """The effective query (never the refused values)."""
        params = {"start": self.start.isoformat(), "end": self.end.isoformat()}
        params.update((k, v) for k, v in self.filters.items() if v)
        return params

    def params(self, **changes):
        """The effective query as a query string."""
        return urlencode(self.as_dict() | changes)

    def live_params(self, **changes):
        """The query as a live page reads it again: a rolling range without its dates, so that a read after
        midnight gets the range ending on the new day."""
        params = self.as_dict() | changes
        if self.rolling:
            del params["end"]
            if not self.start_asked:
                del params["start"]
        return urlencode(params)


def read_query(request):
    """The validated range and filters; whatever was refused falls back to its default and is said."""
    form = SpendFilterForm(request.GET, request.user)
    form.is_valid()
    data = form.cleaned_data
    dates_ok = not (form.has_error("start") or form.has_error("end") or form.non_field_errors())
    if dates_ok:
        start, end = data["start"], data["end"]
    else:
        end = today()
        start = end - (DEFAULT_DAYS - 1) * ONE_DAY
    filters = {name: data.get(name) or None for name in ("team", "user", "model")}
    errors = [str(message) for messages in form.errors.values() for message in messages]
    rolling = not dates_ok or not request.GET.get("end")
    return SpendQuery(form, start, end, filters, errors, rolling, dates_ok and bool(request.GET.get("start")))


# ---- the figures ----

def figure(sums, **extra):
    """One row of figures, JSON-ready: exact cost (8 decimals) and the 4-decimal display."""
    row = {kind: sums[kind] for kind in ("sessions", "responses", *TOKEN_KINDS)}
    row["cost_usd"] = f"{sums['cost']:.8f}"
    row["cost_display"] = f"{sums['cost']:.4f}"
    row["transcription_cost_usd"] = f"{sums['transcription']:.8f}"
    row.update(extra)
    return row


def _breakdown(days, query, param, key, label):
    """Figures grouped by one dimension, most spent first; each label links to the page filtered by it."""
    figures = []
    for sums in sorted(days.by(*dict.fromkeys((key, label))), key=lambda s: (-s["cost"], str(s[label]))):
        value = str(sums[key]) if sums[key] is not None else ""
        href = "?" + query.params(**{param: value}) if value else ""
        figures.append(figure(sums, key=value, label=sums[label] or "(none)", href=href))
    return figures


def _by_day(days, query):
    found = {row["day"]: row for row in days.by("day")}
    empty = dict.fromkeys(("sessions", "responses", *TOKEN_KINDS), 0) | {"cost": Decimal(0),
                                                                         "transcription": Decimal(0)}
    figures, day = [], query.start
    # Every day of the range, so the chart shows quiet days as zero.
    while day <= query.end:
        iso = day.isoformat()
        figures.append(figure(found.get(day, empty), key=iso, label=iso, href="?" + query.params(start=iso, end=iso)))
        day += ONE_DAY
    return figures


def has_spend(row):
    """Whether a row of figures has anything on it (the by-day table leaves quiet days out)."""
    return bool(row["sessions"] or any(row[kind] for kind in TOKEN_KINDS) or Decimal(row["cost_usd"]))


def session_row(session):
    """A conversation as the sessions table shows it: its whole bill, verified or not."""
    seconds = session.duration_seconds
    verified = session.verified
    return {
        "id": str(session.pk),
        "started_at": session.created_at.astimezone(UTC).isoformat(),
        "started_display": when(session.created_at),
        "user": session.user.get_username(),
        "team": session.team.name if session.team else "",
        "model": session.model,
        "duration_seconds": seconds,
        "duration_display": duration_display(seconds),
        "input_tokens": session.billed_input_tokens,
        "cached": session.billed_cached_tokens,
        "output_tokens": session.billed_output_tokens,
        "responses": session.billed_response_count,
        "cost_usd": f"{session.billed_cost_usd:.8f}",
        "cost_display": f"{session.billed_cost_usd:.4f}",
        "transcription_cost_usd": f"{session.transcription_cost_usd:.8f}",
        "documents": [str(d.get("title", "")) for d in session.documents if isinstance(d, dict)],
        "verified": verified,
        "verified_cost_usd": f"{session.verified_cost_usd:.8f}" if verified else None,
        "verified_cost_display": f"{session.verified_cost_usd:.4f}" if verified else None,
        "reported_session_cost_usd": f"{session.cost_usd:.8f}",
        "reported_session_cost_display": f"{session.cost_usd:.4f}",
        "mismatch": session.usage_mismatch,
        "unverified": session.unverified_count,
        "url": reverse("sessions-history-detail", args=[session.pk]),
    }


def sessions_in(viewer, query):
    """The conversations whose first billed usage falls in the range, newest first (an index, not a scan)."""
    sessions = RealtimeSession.objects.readable_by(viewer).filter(
        first_billed_at__gte=_midnight(query.start), first_billed_at__lt=_midnight(query.end + ONE_DAY),
    )
    if not viewer.is_staff:
        sessions = sessions.filter(team__in=viewable_teams(viewer))
    if query.filters.get("team"):
        sessions = sessions.filter(team_id=query.filters["team"])
    if query.filters.get("user"):
        sessions = sessions.filter(user__username=query.filters["user"])
    if query.filters.get("model"):
        sessions = sessions.filter(model=query.filters["model"])
    return sessions.listed().order_by("-first_billed_at", "-pk")


def figures(viewer, query, page=1):
    """Everything the dashboard shows, JSON-ready; the page and its JSON mode share it."""
    # Read as of one moment: updates to records after the last one in it are not in these figures, and
    # the page applies them on top.
    with usage_snapshot() as last_record:
        return _figures(viewer, query, page, last_record)


def _figures(viewer, query, page, last_record):
    visible = SpendDay.objects.visible_to(viewer).matching(query.filters)
    days = visible.between(query.start, query.end)
    now = today()
    by_day = _by_day(days, query)
    range_sums = days.totals()
    paginator = Paginator(sessions_in(viewer, query), SESSIONS_PER_PAGE)
    # The rollups count the conversations first billed in the range: no COUNT over them.
    paginator.count = range_sums["sessions"]
    sessions = paginator.get_page(page)
    result = {
        "start": query.start.isoformat(),
        "end": query.end.isoformat(),
        "today_date": now.isoformat(),
        "month_start": now.replace(day=1).isoformat(),
        "filters": query.filters,
        "params": query.as_dict(),
        "rolling": query.rolling,
        "last_record": last_record,
        "today": figure(visible.between(now, now).totals()),
        "month": figure(visible.between(now.replace(day=1), now).totals()),
        "range": figure(range_sums),
        "by_user": _breakdown(days, query, "user", "user__username", "user__username"),
        "by_team": _breakdown(days, query, "team", "team", "team__name"),
        "by_model": _breakdown(days, query, "model", "model", "model"),
        "by_day": by_day,
        "sessions": [session_row(s) for s in sessions],
        "sessions_page": sessions.number,
        "sessions_pages": sessions.paginator.num_pages,
        "sessions_per_page": SESSIONS_PER_PAGE,
        "chart": chart.bars(by_day, query.start, query.end),
        "csv_url": reverse("dashboard-csv") + "?" + query.params(),
    }
    result["sessions_shown"] = len(result["sessions"])
    return result


def _midnight(day):
    return datetime.datetime.combine(day, datetime.time(), tzinfo=UTC)


def duration_display(seconds):
    if seconds is None:
        return "not ended"
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


# ---- views ----

@login_required
@require_GET
def dashboard(request):
    query = read_query(request)
    page = request.GET.get("page", 1)
    if request.GET.get("format") == "json":
        if query.errors:
            message = " ".join(query.errors)
            return JsonResponse({"error": {"code": "invalid_request", "message": message}}, status=400)
        return JsonResponse(figures(request.user, query, page))
    result = figures(request.user, query, page)
    live = {"json_url": reverse("dashboard") + "?" + query.live_params(format="json", page=result["sessions_page"]),
            "ws_path": "/ws/dashboard/"}
    context = {"query": query, "form": query.form, "figures": result, "live": live, "errors": query.errors,
               "days_with_spend": [row for row in result["by_day"] if has_spend(row)]}
    # Refused values still get a page, with the defaults used instead, but not a 200.
    return render(request, "dashboard/dashboard.html", context, status=400 if query.errors else 200)
