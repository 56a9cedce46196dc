"""The running totals (day rollups, each conversation's bill, budgets) equal a fresh sum of the records.

A randomised history goes through the one recording path the page and the
sideband share (usage.record): answers and transcriptions reported by the page,
verified by the server, or both in either order; resends, some with other
figures; records on both sides of a month's end. The expected figures are summed
here from what was stored, by this file's own rules.
"""

import datetime
import io
import random
from collections import defaultdict
from decimal import Decimal
from unittest import mock

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test.utils import CaptureQueriesContext

from sessions_app import usage
from sessions_app.models import Budget, RealtimeSession, SpendDay, UsageRecord

UTC = datetime.timezone.utc
MONTH_END = datetime.datetime(2026, 10, 31, 23, 58, tzinfo=UTC)  # records fall from here to 2026-11-01 00:02


def answer_usage(rng):
    text, audio = rng.randint(1, 3000), rng.randint(0, 6000)
    cached = rng.randint(0, text)
    out_text, out_audio = rng.randint(1, 300), rng.randint(0, 2000)
    return {
        "total_tokens": text + audio + out_text + out_audio, "input_tokens": text + audio,
        "output_tokens": out_text + out_audio,
        "input_token_details": {"text_tokens": text, "audio_tokens": audio, "image_tokens": 0, "cached_tokens": cached,
                                "cached_tokens_details": {"text_tokens": cached, "audio_tokens": 0, "image_tokens": 0}},
        "output_token_details": {"text_tokens": out_text, "audio_tokens": out_audio},
    }


def transcription_usage(rng):
    return {"type": "duration", "seconds": round(rng.uniform(0.5, 40), 3)}


def at(when):
    """Record as if the clock said `when` (the records, the rollups' days and first-billed moments read it)."""
    return mock.patch("django.utils.timezone.now", return_value=when)


@pytest.fixture
def conversations(alice, bob, charlie):
    """Four conversations: two users of one team, one of another (charlie), two models."""
    made = []
    for user, model in ((alice, "gpt-realtime"), (bob, "gpt-realtime-mini"), (charlie, "gpt-realtime"),
                        (alice, "gpt-realtime-mini")):
        made.append(RealtimeSession.objects.create(
            user=user, team=user.memberships.get().team, model=model, voice="marin", turn_detection="server_vad",
            instructions="x", status="active"))
    return made


def replay(rng, sessions, events=80):
    """Random reports through usage.record; returns what was stored, first per (conversation, kind, id, source)."""
    stored = {}
    keys = [(s, kind, f"{kind[:4]}_{n}") for s in sessions for n in range(6)
            for kind in (UsageRecord.RESPONSE, UsageRecord.TRANSCRIPTION)]
    for _ in range(events):
        session, kind, key = rng.choice(keys)
        source = rng.choice([UsageRecord.CLIENT, UsageRecord.SERVER])
        figures = answer_usage(rng) if kind == UsageRecord.RESPONSE else transcription_usage(rng)
        when = MONTH_END + datetime.timedelta(seconds=rng.uniform(0, 240))
        with at(when):
            result = usage.record(session.pk, key, figures, source=source, kind=kind)
        ident = (session.pk, kind, key, source)
        # A resend changes nothing, whatever figures it carries.
        assert result.created == (ident not in stored)
        if result.created:
            stored[ident] = (result.record.cost_usd, when, result.record)
        else:
            assert result.record.cost_usd == stored[ident][0] and result.update is None
    return stored


def expected_days(stored, sessions):
    """{(day, user, team key, model): figures} by this file's rules: the server's record where there is one."""
    by_session = {s.pk: s for s in sessions}
    days = defaultdict(lambda: defaultdict(Decimal))
    first = {}
    for (session_id, kind, key, source), (cost, when, record) in stored.items():
        first[session_id] = min(first.get(session_id, when), when)
        if source == UsageRecord.CLIENT and (session_id, kind, key, UsageRecord.SERVER) in stored:
            continue
        s = by_session[session_id]
        row = days[(when.date(), s.user_id, s.team_id.hex, s.model)]
        row["cost_usd"] += cost
        if kind == UsageRecord.RESPONSE:
            row["responses"] += 1
            row["input_text"] += record.input_text_tokens
            row["cached"] += record.cached_text_tokens
            row["output_audio"] += record.output_audio_tokens
        else:
            row["transcription_cost_usd"] += cost
    for session_id, when in first.items():
        s = by_session[session_id]
        days[(when.date(), s.user_id, s.team_id.hex, s.model)]["sessions"] += 1
    return days


@pytest.mark.parametrize("seed", range(6))
def test_totals_equal_a_fresh_sum_of_the_records(conversations, seed):
    rng = random.Random(seed)
    stored = replay(rng, conversations)
    want = expected_days(stored, conversations)
    names = ("cost_usd", "transcription_cost_usd", "responses", "sessions", "input_text", "cached", "output_audio")
    have = {(r.day, r.user_id, r.team_key, r.model): {n: getattr(r, n) for n in names} for r in SpendDay.objects.all()}
    assert have == {k: {n: v.get(n, 0) for n in names} for k, v in want.items()}
    # Both sides of the month's end are there, and each month's budget sees its own.
    assert {k[0] for k in want} == {datetime.date(2026, 10, 31), datetime.date(2026, 11, 1)}
    for user in {s.user for s in conversations}:
        budget = Budget.objects.create(user=user, monthly_limit_usd=100)
        november = sum((v["cost_usd"] for k, v in want.items() if k[1] == user.pk and k[0].month == 11), Decimal(0))
        assert budget.spent(since=datetime.datetime(2026, 11, 1, tzinfo=UTC)) == november
        budget.delete()
    # Each conversation's bill, from the same records.
    for s in conversations:
        s.refresh_from_db()
        mine = {k: v for k, v in want.items() if k[3] == s.model and k[1] == s.user_id}
        assert s.billed_cost_usd == sum((v["cost_usd"] for v in mine.values()), Decimal(0))
        assert s.billed_response_count == sum(v["responses"] for v in mine.values())
        assert s.transcription_cost_usd == sum((v["transcription_cost_usd"] for v in mine.values()), Decimal(0))
    # And the rebuild command, reading only the records, agrees.
    out = io.StringIO()
    call_command("rebuild_spend", stdout=out)
    assert "The running totals equal the records." in out.getvalue()


def test_rebuild_reports_and_mends_a_difference(conversations):
    replay(random.Random(99), conversations, events=30)
    row = SpendDay.objects.order_by("pk").first()
    SpendDay.objects.filter(pk=row.pk).update(cost_usd=row.cost_usd + 1)
    session = conversations[0]
    RealtimeSession.objects.filter(pk=session.pk).update(billed_response_count=999)
    out = io.StringIO()
    with pytest.raises(CommandError, match="2 total"):
        call_command("rebuild_spend", stdout=out)
    assert f"cost_usd {row.cost_usd + 1} should be {row.cost_usd}" in out.getvalue()
    assert f"conversation {session.pk}: billed_response_count 999" in out.getvalue()
    call_command("rebuild_spend", "--fix", stdout=io.StringIO())
    assert SpendDay.objects.get(pk=row.pk).cost_usd == row.cost_usd
    call_command("rebuild_spend", stdout=io.StringIO())  # no difference left: no error


def test_seeded_history_is_consistent(alice, bob, charlie):
    out = io.StringIO()
    call_command("seed_usage", "--records", "500", "--per-session", "7", stdout=out)
    assert "Added 500 usage records" in out.getvalue()
    assert UsageRecord.objects.count() == 500
    call_command("rebuild_spend", stdout=io.StringIO())  # raises if any total differs from the records
    totals = SpendDay.objects.aggregate(sessions=models_sum("sessions"), responses=models_sum("responses"))
    assert totals["sessions"] == RealtimeSession.objects.count() == 72  # 71 of 7 records and one of 3
    assert totals["responses"] == UsageRecord.objects.values("session", "response_id").distinct().count()


def test_seed_usage_refuses_nonsense(db):
    with pytest.raises(CommandError, match="seed_demo"):
        call_command("seed_usage", "--records", "10", stdout=io.StringIO())


def models_sum(name):
    from django.db.models import Sum

    return Sum(name)


# ---- flat with history: the same queries with none and with some ----

def queries(action):
    with CaptureQueriesContext(connection) as captured:
        action()
    return len(captured.captured_queries)


def test_a_report_a_mint_and_a_dashboard_read_cost_the_same_queries_with_history(
        csrf_client, client, alice, bob, staff, monkeypatch, settings):
    import json

    from sessions_app import upstream
    from tests.conftest import login
    from tests.upstream_fake import OFFER, FakeUpstream

    monkeypatch.setattr(upstream, "_send", FakeUpstream().send)
    settings.MINT_RATE_LIMIT = "100000/m"
    Budget.objects.create(user=bob, monthly_limit_usd=1000)
    Budget.objects.create(team=bob.memberships.get().team, monthly_limit_usd=1000)
    login(csrf_client, bob)
    login(client, staff)
    rng = random.Random(1)

    def measure(tag):
        minted = []

        def mint():
            response = csrf_client.post("/api/sessions/", data=json.dumps({"sdp": OFFER}),
                                        content_type="application/json")
            assert response.status_code == 201, response.content
            minted.append(response.json()["id"])

        def report():
            usage.record(minted[-1], f"resp_{tag}_{len(minted)}", answer_usage(rng), source=UsageRecord.CLIENT)

        def read():
            assert client.get("/dashboard/?format=json").status_code == 200

        mint(), report(), read()  # warm caches (prices, sessions, templates)
        return [queries(mint), queries(report), queries(read)]

    empty = measure("empty")
    call_command("seed_usage", "--records", "3000", stdout=io.StringIO())
    history = measure("history")
    assert UsageRecord.objects.count() > 3000
    assert history == empty, f"queries for mint, report, dashboard read: {empty} empty, {history} with history"


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_concurrent_recorders_keep_the_totals_exact(alice, bob):
    """The page and the sideband record the same answers at the same moment, from several threads."""
    import threading

    from django.db import close_old_connections

    sessions = [RealtimeSession.objects.create(
        user=user, team=user.memberships.get().team, model="gpt-realtime", voice="marin",
        turn_detection="server_vad", instructions="x", status="active") for user in (alice, bob)]
    errors = []

    def recorder(source, seed):
        rng = random.Random(seed)
        try:
            for n in range(25):
                for session in sessions:
                    usage.record(session.pk, f"resp_{n}", answer_usage(rng), source=source)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            close_old_connections()

    threads = [threading.Thread(target=recorder, args=(source, i))
               for i, source in enumerate([UsageRecord.CLIENT, UsageRecord.SERVER] * 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert UsageRecord.objects.count() == 2 * 25 * 2  # each answer once per source, however many sent it
    call_command("rebuild_spend", stdout=io.StringIO())  # raises if any running total differs
    for session in sessions:
        session.refresh_from_db()
        assert session.billed_response_count == 25 and session.paired_count == 25


@pytest.mark.django_db
def test_a_batch_stores_what_the_same_reports_one_by_one_store(conversations):
    """The consumer stores a process's reports together; a batch with resends, both sources of one answer,
    a malformed report and an unknown conversation ends where the same reports sent one by one end."""
    import uuid

    rng = random.Random(7)
    first, second = conversations[0], conversations[2]  # one model, so one price
    a, b, c = answer_usage(rng), answer_usage(rng), answer_usage(rng)
    other_figures = answer_usage(rng)

    def reports(session):
        return [
            usage.Report(session.pk, "resp_a", a, source=UsageRecord.CLIENT),
            usage.Report(session.pk, "resp_a", a, source=UsageRecord.CLIENT),  # a resend
            usage.Report(session.pk, "resp_a", other_figures, source=UsageRecord.SERVER),  # verified, other figures
            usage.Report(session.pk, "resp_b", b, source=UsageRecord.SERVER),
            usage.Report(session.pk, "resp_b", b, source=UsageRecord.CLIENT),  # the page after the server
            usage.Report(session.pk, "resp_c", {"input_tokens": -1}, source=UsageRecord.CLIENT),
            usage.Report(uuid.uuid4(), "resp_d", c, source=UsageRecord.CLIENT),
            usage.Report(session.pk, "item_t", transcription_usage(rng), source=UsageRecord.SERVER,
                         kind=UsageRecord.TRANSCRIPTION),
        ]

    batch = usage.record_many(reports(first))
    one_by_one = []
    for report in reports(second):
        try:
            one_by_one.append(usage.record(report.session_id, report.key, report.usage, source=report.source,
                                           kind=report.kind))
        except Exception as exc:
            one_by_one.append(exc)
    assert [type(r).__name__ for r in batch] == [type(r).__name__ for r in one_by_one] == [
        "Recorded", "Recorded", "Recorded", "Recorded", "Recorded", "UsageError", "DoesNotExist", "Recorded"]
    assert [r.created for r in batch[:5]] == [r.created for r in one_by_one[:5]] == [True, False, True, True, True]
    # The server's figures replace the page's; not back (the page's report after them changes no day, only its row).
    assert batch[2].update["changes"] and batch[4].update["changes"] == [] and batch[4].update["session_row"]
    # Each result carries the conversation's totals just after its own report.
    assert [r.totals["version"] for r in batch if hasattr(r, "totals")] == [1, 1, 2, 3, 4, 5]
    first.refresh_from_db()
    second.refresh_from_db()
    fields = ("billed_cost_usd", "billed_input_tokens", "billed_output_tokens", "billed_response_count",
              "paired_count", "disagreement_count", "transcription_cost_usd", "reported_count", "verified_count")
    assert [getattr(first, f) for f in fields] == [getattr(second, f) for f in fields]
    assert first.billed_response_count == 2 and first.paired_count == 2 and first.disagreement_count == 1
    call_command("rebuild_spend", stdout=io.StringIO())  # raises if any running total differs from the records


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_the_dashboard_reads_its_figures_and_their_last_record_as_of_one_moment(alice, staff, monkeypatch):
    """A report stored while the dashboard reads is either in its figures with an id at or below the last
    record they name, or in neither: the page applies updates above that record, so a report in the
    figures above it was counted twice (and, on PostgreSQL, one committed below it never)."""
    import threading

    from django.db import close_old_connections

    from sessions_app.dashboard import figures, read_query
    from sessions_app.models import SpendDayQuerySet

    session = RealtimeSession.objects.create(user=alice, team=alice.memberships.get().team, model="gpt-realtime",
                                             voice="marin", turn_detection="server_vad", instructions="x")
    rng = random.Random(7)
    usage.record(session.pk, "resp_before", answer_usage(rng), source=UsageRecord.CLIENT)

    def report_meanwhile():
        try:
            usage.record(session.pk, "resp_during", answer_usage(rng), source=UsageRecord.CLIENT)
        finally:
            close_old_connections()

    reporter = threading.Thread(target=report_meanwhile)
    real = SpendDayQuerySet.visible_to
    stored_during_the_read = []

    def visible_to(self, viewer):
        if not reporter.is_alive() and reporter.ident is None:
            reporter.start()
            reporter.join(timeout=5)
            stored_during_the_read.append(not reporter.is_alive())  # the read holds no write off
        return real(self, viewer)

    monkeypatch.setattr(SpendDayQuerySet, "visible_to", visible_to)
    request = mock.Mock(GET={}, user=staff)
    read = figures(staff, read_query(request))
    reporter.join()
    assert UsageRecord.objects.count() == 2
    in_figures = sum(r.cost_usd for r in UsageRecord.objects.filter(pk__lte=read["last_record"]))
    assert Decimal(read["month"]["cost_usd"]) == in_figures
    assert stored_during_the_read == [True]
