"""The spend dashboard, its CSV export and members' session history.

The figures are checked against totals computed here, in Python, from the
records this file creates, never from the code under test.
"""

import csv
import datetime
import io
import random
from collections import defaultdict
from decimal import Decimal
from html.parser import HTMLParser

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.utils import timezone

from sessions_app.dashboard import has_spend
from sessions_app.models import RealtimeSession, TranscriptEntry, UsageRecord
from teams_app.models import Membership
from tests.conftest import login


UTC = datetime.timezone.utc
KINDS = ("input_text", "input_audio", "input_image", "cached", "output_text", "output_audio")
TODAY = timezone.now().astimezone(UTC).date()
DEFAULT_START = TODAY - datetime.timedelta(days=29)


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    # The personas' real password hashing is most of this file's run time.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def make_session(user, team, model="gpt-realtime", created=None, documents=(), **extra):
    session = RealtimeSession.objects.create(
        user=user, team=team, model=model, voice="marin", turn_detection="server_vad",
        instructions="x", documents=list(documents), **extra,
    )
    if created:
        RealtimeSession.objects.filter(pk=session.pk).update(created_at=created)
        session.refresh_from_db()
    return session


def add_record(session, response_id, at, cost, source="client", **tokens):
    """A usage record written directly, as history imported from elsewhere: `on_the_bill()` then puts
    it on the running totals the dashboard reads, the way `manage.py rebuild_spend --fix` would."""
    record = UsageRecord.objects.create(
        session=session, response_id=response_id, source=source, model=session.model,
        cost_usd=Decimal(cost), **{f"{k}_tokens": v for k, v in tokens.items()},
    )
    UsageRecord.objects.filter(pk=record.pk).update(created_at=at)
    return record


def on_the_bill():
    call_command("rebuild_spend", "--fix", stdout=io.StringIO())


def at(day, seconds=3600):
    return datetime.datetime.combine(day, datetime.time(), tzinfo=UTC) + datetime.timedelta(seconds=seconds)


def team_of(user):
    return user.memberships.get().team


class Tags(HTMLParser):
    """Every start tag's attributes, with the breakdown table it sits in."""

    def __init__(self, html):
        super().__init__()
        self.tags, self.table = [], None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.table = attrs.get("data-breakdown") or attrs.get("id")
        self.tags.append((tag, self.table, attrs))

    def find(self, table=None, **wanted):
        wanted = {k.replace("_", "-"): v for k, v in wanted.items()}
        return [
            a for tag, t, a in self.tags
            if (table is None or t == table) and all(a.get(k) == v for k, v in wanted.items())
        ]


# ---- a generated data set, and its totals computed independently ----

@pytest.fixture
def spend(alice, bob, charlie, team_a, team_b):
    """About 30 sessions over 3 users, 2 teams, 3 models and 40 days, with their expected figures."""
    dave = get_user_model().objects.create_user("dave", "dave@example.test", "x")
    Membership.objects.create(team=team_b, user=dave, role=Membership.ADMIN)
    rng = random.Random(20240607)
    people = [(alice, team_a), (bob, team_a), (charlie, team_b), (dave, team_b)]
    models = ["gpt-realtime", "gpt-realtime-mini", "gpt-realtime-2"]
    rows, sessions = [], []
    for n in range(30):
        user, team = people[n % 4]
        # Mostly inside the default 30 days, a few before it; today always has some.
        day = TODAY - datetime.timedelta(days=0 if n % 7 == 0 else rng.randrange(0, 40))
        session = make_session(user, team, models[n % 3], created=at(day, 60), documents=[
            {"id": str(n), "title": f"Doc {n}", "tokens": 10, "sha256": "0"}])
        sessions.append(session)
        for r in range(rng.randrange(1, 4)):
            tokens = {k: rng.randrange(0, 5000) for k in KINDS if k != "cached"}
            tokens.update(
                cached_text=rng.randrange(0, 900), cached_audio=rng.randrange(0, 900), cached_image=rng.randrange(0, 9)
            )
            cost = Decimal(rng.randrange(1, 10**8)) / 10**8
            when = at(day, 120 + 60 * r)
            add_record(session, f"resp_{n}_{r}", when, cost, **tokens)
            cached = tokens.pop("cached_text") + tokens.pop("cached_audio") + tokens.pop("cached_image")
            rows.append({"response": f"resp_{n}_{r}", "session": str(session.pk), "user": user.username,
                         "team": str(team.pk),
                         "model": session.model, "day": when.date(), "cost": cost, "cached": cached, **tokens})
    # What the server verified itself replaces the browser's report of that response.
    add_record(sessions[0], "resp_0_0", at(TODAY, 130), "5", source="server", input_text=99999)
    verified = next(r for r in rows if r["response"] == "resp_0_0")
    verified.update({k: 0 for k in KINDS}, input_text=99999, cost=Decimal(5), day=TODAY)
    on_the_bill()
    return {"rows": rows, "sessions": sessions, "dave": dave}


def expected(rows, start=DEFAULT_START, end=TODAY, **filters):
    """Totals and breakdowns, from the generated rows alone."""
    chosen = [r for r in rows if start <= r["day"] <= end and all(r[k] == v for k, v in filters.items())]

    def figure(group):
        cost = sum((r["cost"] for r in group), Decimal(0))
        return {"sessions": len({r["session"] for r in group}), "cost_usd": f"{cost:.8f}",
                **{k: sum(r[k] for r in group) for k in KINDS}}

    def by(key):
        groups = defaultdict(list)
        for r in chosen:
            groups[str(r[key])].append(r)
        return {k: figure(v) for k, v in groups.items()}

    return {"range": figure(chosen), "by_user": by("user"), "by_team": by("team"), "by_model": by("model"),
            "by_day": by("day"), "by_session": by("session")}


def figure_of(row):
    return {k: row[k] for k in ("sessions", "cost_usd", *KINDS) if k in row}


def session_figure(want):
    """A conversation's expected row: its whole bill, tokens summed by direction."""
    return {"cost_usd": want["cost_usd"], "cached": want["cached"],
            "input_tokens": want["input_text"] + want["input_audio"] + want["input_image"],
            "output_tokens": want["output_text"] + want["output_audio"]}


def test_staff_sees_every_team_and_the_figures_match(client, staff, spend):
    want = expected(spend["rows"])
    data = login(client, staff).get("/dashboard/?format=json").json()
    assert (data["start"], data["end"]) == (DEFAULT_START.isoformat(), TODAY.isoformat())
    assert figure_of(data["range"]) == want["range"]
    for kind in ("by_user", "by_team", "by_model"):
        assert {r["key"]: figure_of(r) for r in data[kind]} == want[kind], kind
    days = {r["key"]: figure_of(r) for r in data["by_day"] if r["sessions"]}
    assert days == want["by_day"]
    assert len(data["by_day"]) == 30 and data["by_day"][0]["key"] == DEFAULT_START.isoformat()
    sessions = {r["id"]: {k: r[k] for k in ("cost_usd", "cached", "input_tokens", "output_tokens")}
                for r in data["sessions"]}
    assert sessions == {pk: session_figure(w) for pk, w in want["by_session"].items()}
    assert figure_of(data["today"]) == expected(spend["rows"], TODAY, TODAY)["range"]
    assert figure_of(data["month"]) == expected(spend["rows"], TODAY.replace(day=1), TODAY)["range"]
    assert data["range"]["cost_display"] == f"{Decimal(want['range']['cost_usd']):.4f}"


def test_html_data_attributes_equal_the_json(client, staff, spend):
    login(client, staff)
    data = client.get("/dashboard/?format=json").json()
    response = client.get("/dashboard/")
    assert response.status_code == 200
    tags = Tags(response.content.decode())
    for name in ("today", "month", "range"):
        (dd,) = tags.find(data_figure=name)
        assert dd["data-cost-usd"] == data[name]["cost_usd"] and dd["data-sessions"] == str(data[name]["sessions"])
        assert all(dd[f"data-{k.replace('_', '-')}"] == str(data[name][k]) for k in KINDS)
    for kind in ("user", "team", "model", "day"):
        for row in data[f"by_{kind}"]:
            found = tags.find(table=kind, data_key=row["key"])
            if kind == "day" and not has_spend(row):
                assert not found, row  # quiet days are left out of the table (the chart keeps them)
                continue
            (tr,) = found
            assert tr["data-cost-usd"] == row["cost_usd"] and tr["data-sessions"] == str(row["sessions"])
            assert tr["data-input-audio"] == str(row["input_audio"]) and tr["data-cached"] == str(row["cached"])
    for row in data["sessions"]:
        (tr,) = tags.find(table="sessions-table", data_session=row["id"])
        assert tr["data-cost-usd"] == row["cost_usd"] and tr["data-output-tokens"] == str(row["output_tokens"])
        assert tr["data-input-tokens"] == str(row["input_tokens"]) and tr["data-cached"] == str(row["cached"])
    # The chart is inline SVG with an accessible name, and nothing is fetched from elsewhere.
    (svg,) = tags.find(id="spend-chart")
    assert svg["role"] == "img" and "chart-title" in svg["aria-labelledby"]
    assert b"http://" not in response.content and b"https://" not in response.content
    assert len([t for t in tags.tags if t[0] == "rect"]) == 30


def test_csv_rows_and_totals_equal_the_page(client, staff, spend):
    login(client, staff)
    start = TODAY - datetime.timedelta(days=39)
    query = f"start={start}&end={TODAY}"
    data = client.get(f"/dashboard/?{query}&format=json").json()
    response = client.get(f"/dashboard/spend.csv?{query}")
    assert response.status_code == 200
    assert response["Content-Disposition"] == f'attachment; filename="spend-{start}-{TODAY}.csv"'
    header, *rows, total = list(csv.reader(io.StringIO(response.content.decode())))
    assert header[:4] == ["session_id", "first_billed_at", "started_at", "user"]
    by_id = {r["id"]: r for r in data["sessions"]}
    assert [r[0] for r in rows] == [r["id"] for r in data["sessions"]] and len(rows) == 30
    for row in rows:
        cells = dict(zip(header, row))
        assert cells["cost_usd"] == by_id[row[0]]["cost_usd"]
        assert [cells["input_tokens"], cells["cached_tokens"], cells["output_tokens"]] == [
            str(by_id[row[0]][k]) for k in ("input_tokens", "cached", "output_tokens")]
    cells = dict(zip(header, total))
    assert cells["session_id"] == "TOTAL" and cells["cost_usd"] == data["range"]["cost_usd"]
    figures = data["range"]
    assert cells["input_tokens"] == str(figures["input_text"] + figures["input_audio"] + figures["input_image"])
    assert cells["output_tokens"] == str(figures["output_text"] + figures["output_audio"])
    assert cells["cached_tokens"] == str(figures["cached"])
    assert sum(Decimal(dict(zip(header, r))["cost_usd"]) for r in rows) == Decimal(data["range"]["cost_usd"])
    assert data["range"]["sessions"] == len(rows)


@pytest.mark.parametrize("query, filters", [
    ("model=gpt-realtime-mini", {"model": "gpt-realtime-mini"}),
    ("user=bob", {"user": "bob"}),
    ("team={team_b}", {"team": "{team_b}"}),
])
def test_filters_narrow_the_figures(client, staff, spend, team_b, query, filters):
    filters = {k: v.format(team_b=team_b.pk) for k, v in filters.items()}
    data = login(client, staff).get(f"/dashboard/?{query.format(team_b=team_b.pk)}&format=json").json()
    assert figure_of(data["range"]) == expected(spend["rows"], **filters)["range"]
    assert data["range"]["sessions"] > 0


@pytest.mark.parametrize("asked, live_dates, rolling", [
    ("", {}, True),  # the default range: both dates move on with the days
    ("start=2026-10-01", {"start": "2026-10-01"}, True),  # a start asked for stays; the end is today's
    ("start=2026-10-01&end=2026-10-31", {"start": "2026-10-01", "end": "2026-10-31"}, False),
    ("end=nonsense", {}, True),  # refused: the defaults, which move on
])
def test_a_live_page_reads_again_the_range_it_asked_for(client, staff, asked, live_dates, rolling):
    """A range with no end asked for ends today: the page's live reads name no end, so a read after
    midnight gets the range ending on the new day (and the page is told the range rolls)."""
    import json
    from urllib.parse import parse_qs, urlsplit

    login(client, staff)
    page = client.get(f"/dashboard/?{asked}").content.decode()
    live = json.loads(page.split('id="dashboard-live" type="application/json">', 1)[1].split("</script>", 1)[0])
    query = {k: v[0] for k, v in parse_qs(urlsplit(live["json_url"]).query).items()}
    assert {k: query[k] for k in ("start", "end") if k in query} == live_dates
    assert client.get(live["json_url"]).json()["rolling"] is rolling


def test_a_chosen_range(client, staff, spend):
    start, end = TODAY - datetime.timedelta(days=35), TODAY - datetime.timedelta(days=3)
    login(client, staff)
    data = client.get(f"/dashboard/?start={start}&end={end}&format=json").json()
    assert figure_of(data["range"]) == expected(spend["rows"], start, end)["range"]
    assert len(data["by_day"]) == 33


def test_team_admin_sees_only_their_teams(client, alice, spend, team_a, team_b, charlie):
    login(client, alice)
    data = client.get("/dashboard/?format=json").json()
    assert figure_of(data["range"]) == expected(spend["rows"], team=str(team_a.pk))["range"]
    assert {r["label"] for r in data["by_team"]} == {"Demo"} and "charlie" not in {r["key"] for r in data["by_user"]}
    others = [str(s.pk) for s in spend["sessions"] if s.team_id == team_b.pk]
    page = client.get("/dashboard/")
    csv_body = client.get("/dashboard/spend.csv").content.decode()
    for body in (page.content.decode(), csv_body):
        assert "charlie" not in body and "dave" not in body and not any(pk in body for pk in others)
    # Asking for the other team by id is refused, and shows nothing of it.
    refused = client.get(f"/dashboard/?team={team_b.pk}")
    assert refused.status_code == 400 and "That team is not one you may see." in refused.content.decode()
    assert not any(pk in refused.content.decode() for pk in others) and "charlie" not in refused.content.decode()
    assert client.get(f"/dashboard/?team={team_b.pk}&format=json").status_code == 400
    assert client.get(f"/dashboard/spend.csv?team={team_b.pk}").status_code == 400
    assert client.get("/dashboard/?user=charlie").status_code == 400
    # The other team's admin sees the mirror image.
    data = login(client, spend["dave"]).get("/dashboard/?format=json").json()
    assert figure_of(data["range"]) == expected(spend["rows"], team=str(team_b.pk))["range"]


def test_breakdown_links_work_for_people_who_left_and_models_no_longer_offered(client, alice, bob, spend, team_a,
                                                                              settings):
    """The by-user and by-model links name whoever and whatever has spend the viewer may see, even once
    the person has left the team or the model is no longer offered; anything else is still refused."""
    login(client, alice)
    bob.memberships.all().delete()
    settings.REALTIME_MODELS = [m for m in settings.REALTIME_MODELS if m != "gpt-realtime-2"]
    data = client.get("/dashboard/?format=json").json()
    links = {row["key"]: row["href"] for row in data["by_user"] + data["by_model"]}
    for key, filters in (("bob", {"user": "bob"}), ("gpt-realtime-2", {"model": "gpt-realtime-2"})):
        followed = client.get(f"/dashboard/{links[key]}&format=json")
        assert followed.status_code == 200, followed.content
        want = expected(spend["rows"], team=str(team_a.pk), **filters)["range"]
        assert figure_of(followed.json()["range"]) == want and want["sessions"] > 0
        page = client.get(f"/dashboard/{links[key]}")
        assert page.status_code == 200 and f'<option value="{key}" selected>' in page.content.decode()
        assert client.get(f"/dashboard/spend.csv{links[key]}").status_code == 200
    # Charlie has spend, but in a team Alice does not administer; nobody has spend on an unknown model.
    assert "That user is not one you may see." in client.get("/dashboard/?user=charlie").content.decode()
    assert client.get("/dashboard/?user=charlie&format=json").status_code == 400
    assert client.get("/dashboard/?model=gpt-unknown&format=json").status_code == 400


def test_a_departed_filter_costs_the_same_queries_whatever_the_history(client, staff, bob, spend, team_a, settings):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from sessions_app.models import SpendDay

    login(client, staff)
    bob.memberships.all().delete()
    settings.REALTIME_MODELS = ["gpt-realtime"]
    path = "/dashboard/?user=bob&model=gpt-realtime-2&format=json"

    def queries():
        with CaptureQueriesContext(connection) as captured:
            assert client.get(path).status_code == 200
        return len(captured)

    before = queries()
    # A year more of history, long before the range.
    SpendDay.objects.bulk_create(SpendDay(day=TODAY - datetime.timedelta(days=400 + n), user=bob, team=team_a,
                                          team_key=team_a.pk.hex, model="gpt-realtime-2") for n in range(365))
    assert queries() == before <= 15


@pytest.mark.parametrize("who", ["bob", "erin", "charlie"])
@pytest.mark.parametrize("path", ["/dashboard/", "/dashboard/?format=json", "/dashboard/spend.csv"])
def test_members_and_read_only_get_403(client, spend, who, path, request):
    response = login(client, request.getfixturevalue(who)).get(path)
    assert response.status_code == 403 and b"resp_" not in response.content


@pytest.mark.parametrize("path", ["/dashboard/", "/dashboard/spend.csv", "/sessions/"])
def test_anonymous_is_sent_to_login(client, path, db):
    response = client.get(path)
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/?next=")


@pytest.mark.parametrize("path", ["/dashboard/", "/dashboard/spend.csv", "/sessions/"])
def test_wrong_method_is_405(csrf_client, staff, path):
    assert login(csrf_client, staff).post(path).status_code == 405


@pytest.mark.parametrize("query, message", [
    ("start=banana", "The start must be a date written YYYY-MM-DD."),
    ("end=2024-13-45", "The end must be a date written YYYY-MM-DD."),
    ("start=2024-05-10&end=2024-05-01", "The end (2024-05-01) is before the start (2024-05-10)."),
    ("start=2020-01-01&end=2024-01-01", "A range may span at most 366 days."),
    ("start=9999-12-31&end=9999-12-31", "The start must be between 2000-01-01 and 2999-12-31."),
    ("team=not-a-uuid", "That team is not one you may see."),
    ("team=00000000-0000-0000-0000-000000000000", "That team is not one you may see."),
    ("model=<b>gpt</b>", "That model is not offered."),
    ("user=nobody", "That user is not one you may see."),
])
def test_bad_queries_get_a_message_and_the_defaults(client, staff, spend, query, message):
    login(client, staff)
    response = client.get(f"/dashboard/?{query}")
    assert response.status_code == 400
    body = response.content.decode()
    assert message in body and "<b>gpt</b>" not in body
    tags = Tags(body)
    (dd,) = tags.find(data_figure="range")
    if query.startswith(("start", "end")):
        assert dd["data-cost-usd"] == expected(spend["rows"])["range"]["cost_usd"]
    json_error = client.get(f"/dashboard/?{query}&format=json")
    assert json_error.status_code == 400 and message in json_error.json()["error"]["message"]
    csv_error = client.get(f"/dashboard/spend.csv?{query}")
    assert csv_error.status_code == 400 and message in csv_error.content.decode()


def test_page_messages_are_escaped_and_whole(client, staff, spend):
    body = login(client, staff).get("/dashboard/?start=2024-05-10&end=2024-05-01").content.decode()
    assert "The end (2024-05-01) is before the start (2024-05-10)." in body


def test_mismatches_are_flagged(client, staff, alice, team_a):
    day = TODAY
    same = make_session(alice, team_a, created=at(day))
    add_record(same, "r1", at(day), "0.01000000")
    add_record(same, "r1", at(day), "0.01000000", source="server")
    different = make_session(alice, team_a, created=at(day))
    add_record(different, "r1", at(day), "0.01000000")
    add_record(different, "r1", at(day), "0.01500000", source="server")
    unreported = make_session(alice, team_a, created=at(day))
    add_record(unreported, "r1", at(day), "0.01000000")
    add_record(unreported, "r2", at(day), "0.01000000", source="server")
    browser_only = make_session(alice, team_a, created=at(day))
    add_record(browser_only, "r1", at(day), "0.01000000")
    on_the_bill()

    login(client, staff)
    rows = {r["id"]: r for r in client.get("/dashboard/?format=json").json()["sessions"]}
    flags = [(rows[str(s.pk)]["verified"], rows[str(s.pk)]["mismatch"])
             for s in (same, different, unreported, browser_only)]
    assert flags == [(True, False), (True, True), (True, True), (False, False)]
    assert rows[str(different.pk)]["verified_cost_usd"] == "0.01500000"
    assert rows[str(different.pk)]["reported_session_cost_usd"] == "0.01000000"
    # Per response, the server's record counts where there is one: 0.01 + 0.015 + (0.01 + 0.01) + 0.01.
    assert client.get("/dashboard/?format=json").json()["range"]["cost_usd"] == "0.05500000"

    tags = Tags(client.get("/dashboard/").content.decode())
    assert tags.find(data_session=str(different.pk))[0]["data-mismatch"] == "true"
    assert tags.find(data_session=str(same.pk))[0]["data-mismatch"] == "false"
    assert tags.find(data_session=str(same.pk))[0]["data-verified"] == "true"
    export = client.get("/dashboard/spend.csv").content.decode()
    rows = {r["session_id"]: r for r in csv.DictReader(io.StringIO(export))}
    assert rows[str(different.pk)]["mismatch"] == "yes" and rows[str(same.pk)]["mismatch"] == "no"
    assert rows[str(same.pk)]["verified"] == "yes" and rows[str(browser_only.pk)]["verified"] == "no"


def test_user_strings_are_escaped_and_csv_formulas_defused(client, staff, alice, team_a):
    evil = [{"id": "1", "title": "=HYPERLINK(\"http://x\")", "tokens": 1, "sha256": "0"},
            {"id": "2", "title": "<img src=x onerror=alert(1)>", "tokens": 1, "sha256": "0"}]
    session = make_session(alice, team_a, model="@model", created=at(TODAY), documents=evil)
    add_record(session, "r1", at(TODAY), "0.5")
    on_the_bill()
    login(client, staff)
    body = client.get("/dashboard/").content.decode()
    assert "<img src=x" not in body and "&lt;img src=x onerror=alert(1)&gt;" in body
    (row,) = list(csv.DictReader(io.StringIO(client.get("/dashboard/spend.csv").content.decode())))[:1]
    assert row["documents"].startswith("'=HYPERLINK") and row["model"] == "'@model"


# ---- history ----

@pytest.fixture
def histories(alice, bob, team_a):
    mine = make_session(bob, team_a, documents=[{"id": "1", "title": "Launch <plan>", "tokens": 5, "sha256": "0"}],
                        billed_input_tokens=120, billed_cached_tokens=20, billed_output_tokens=30,
                        billed_cost_usd=Decimal("0.01234567"),
                        billed_response_count=2, status="ended")
    RealtimeSession.objects.filter(pk=mine.pk).update(
        connected_at=mine.created_at, ended_at=mine.created_at + datetime.timedelta(seconds=125))
    TranscriptEntry.objects.create(session=mine, item_id="i1", role="user", text="When is the <launch>?")
    TranscriptEntry.objects.create(session=mine, item_id="i2", role="assistant", text="On the 3rd.")
    theirs = make_session(alice, team_a)
    return mine, theirs


def test_history_lists_only_own_sessions(client, bob, histories):
    mine, theirs = histories
    body = login(client, bob).get("/sessions/").content.decode()
    assert str(mine.pk) in body and str(theirs.pk) not in body
    assert "Launch &lt;plan&gt;" in body and 'data-cost-usd="0.01234567"' in body and "2:05" in body


def test_history_detail_shows_the_transcript_and_export(client, bob, histories):
    mine, _ = histories
    response = login(client, bob).get(f"/sessions/{mine.pk}/")
    body = response.content.decode()
    assert response.status_code == 200
    assert "When is the &lt;launch&gt;?" in body and "On the 3rd." in body
    assert f'href="/api/sessions/{mine.pk}"' in body


def test_history_detail_names_why_the_session_ended(client, bob, histories):
    mine, _ = histories
    RealtimeSession.objects.filter(pk=mine.pk).update(end_reason="page_gone")
    body = login(client, bob).get(f"/sessions/{mine.pk}/").content.decode()
    assert "Ended (The page went away)" in body and "page_gone" not in body


@pytest.mark.parametrize("who, status", [("alice", 200), ("staff", 200), ("charlie", 404)])
def test_a_session_page_is_for_its_owner_team_admins_and_staff(client, histories, who, status, request):
    mine, _ = histories
    assert login(client, request.getfixturevalue(who)).get(f"/sessions/{mine.pk}/").status_code == status


def test_someone_elses_conversation_is_under_spend_in_the_navigation(client, bob, alice, histories):
    """A team admin reads a member's conversation from the Spend dashboard: "My sessions" was marked current."""
    mine, _ = histories
    current = 'aria-current="true">'
    assert f'href="/sessions/" {current}My sessions' in login(client, bob).get(f"/sessions/{mine.pk}/").content.decode()
    page = login(client, alice).get(f"/sessions/{mine.pk}/").content.decode()
    assert f'href="/dashboard/" {current}Spend' in page and f"{current}My sessions" not in page


def test_history_detail_anonymous_and_bad_ids(client, bob, histories):
    mine, _ = histories
    assert client.get(f"/sessions/{mine.pk}/").status_code == 302
    login(client, bob)
    assert client.get("/sessions/not-a-uuid/").status_code == 404
    assert client.get("/sessions/00000000-0000-0000-0000-000000000000/").status_code == 404


def test_history_is_paginated_newest_first(client, bob, team_a):
    base = timezone.now() - datetime.timedelta(days=1)
    sessions = [make_session(bob, team_a) for _ in range(51)]
    for i, s in enumerate(sessions):
        RealtimeSession.objects.filter(pk=s.pk).update(created_at=base + datetime.timedelta(minutes=i))
    login(client, bob)
    first, second = client.get("/sessions/"), client.get("/sessions/?page=2")
    assert first.content.decode().count("data-session=") == 50
    assert str(sessions[-1].pk) in first.content.decode() and str(sessions[0].pk) not in first.content.decode()
    assert second.content.decode().count("data-session=") == 1 and str(sessions[0].pk) in second.content.decode()
    assert client.get("/sessions/?page=banana").status_code == 200


def test_the_page_costs_a_fixed_number_of_queries(client, staff, spend, django_assert_max_num_queries):
    login(client, staff)
    for path in ("/dashboard/", "/dashboard/?format=json", "/dashboard/spend.csv"):
        with django_assert_max_num_queries(15):
            assert client.get(path).status_code == 200


def test_lists_of_conversations_never_read_their_large_texts(client, staff, bob, spend, histories):
    """The instructions hold every inline document (up to 300 KB) and the minted session object holds
    them again: the dashboards, the spend CSV, the history and the report path read neither."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from sessions_app import usage

    big = "An inline document. " * 1000
    RealtimeSession.objects.update(instructions=big, session_config={"instructions": big}, pasted_text=big)
    large = [f'"sessions_app_realtimesession"."{name}"' for name in ("instructions", "session_config", "pasted_text")]

    def selected(captured):
        """What each query reading the conversations selects (the part before FROM)."""
        return [q["sql"].split(" FROM ")[0] for q in captured if 'FROM "sessions_app_realtimesession"' in q["sql"]]

    def columns_read(action):
        with CaptureQueriesContext(connection) as captured:
            response = action()
        assert response.status_code == 200
        selects = selected(captured)
        assert selects, "no query read the conversations"
        return [name for name in large for sql in selects if name in sql]

    login(client, staff)
    assert columns_read(lambda: client.get("/dashboard/?format=json")) == []
    assert columns_read(lambda: client.get("/dashboard/")) == []
    assert columns_read(lambda: client.get("/dashboard/spend.csv")) == []
    mine, _ = histories
    login(client, bob)
    assert columns_read(lambda: client.get("/sessions/")) == []
    # The voice page (and every start) asks whether a conversation is running elsewhere: one is.
    RealtimeSession.objects.filter(pk=mine.pk).update(
        status=RealtimeSession.ACTIVE, ended_at=None, page_connected_at=timezone.now(), page_left_at=None)
    assert columns_read(lambda: client.get("/")) == []
    # A usage report reads the minted session object once, for its transcription model, and no more.
    with CaptureQueriesContext(connection) as captured:
        usage.record(mine.pk, "resp_large_texts", {
            "total_tokens": 20, "input_tokens": 10, "output_tokens": 10,
            "input_token_details": {"text_tokens": 10, "audio_tokens": 0, "cached_tokens": 0},
            "output_token_details": {"text_tokens": 10, "audio_tokens": 0},
        }, source=UsageRecord.CLIENT)
    selects = selected(captured)
    assert not any(large[0] in sql or large[2] in sql for sql in selects)
    assert sum(large[1] in sql for sql in selects) <= 1
