"""Monthly budgets: minting refused at the limit, running sessions stopped when crossed."""

import datetime
import json
from decimal import Decimal
from unittest import mock

import pytest
from django.core.cache import cache
from django.db import IntegrityError
from django.utils import timezone

from sessions_app import upstream
from sessions_app.models import Budget, RealtimeSession
from sessions_app.pricing import TokenCounts
from tests.conftest import login
from tests.upstream_fake import OFFER, FakeUpstream


@pytest.fixture(autouse=True)
def fresh_rate_limits():
    # Starts in other modules' tests within the same minute count against the same user ids.
    cache.clear()


@pytest.fixture
def fake(monkeypatch):
    fake = FakeUpstream()
    monkeypatch.setattr(upstream, "_send", fake.send)
    return fake


def spend(user, cost, when=None):
    session = RealtimeSession.objects.create(
        user=user, team=user.memberships.get().team, model="gpt-realtime", voice="marin",
        turn_detection="server_vad", instructions="x",
    )
    # Recorded at `when` (the clock the record and the running totals read), or now.
    with mock.patch("django.utils.timezone.now", return_value=when or timezone.now()):
        session.record_usage(f"resp_{session.pk.hex[:8]}", TokenCounts(output_audio=1), Decimal(cost))
    return session


def mint(client, body=None):
    return client.post("/api/sessions/", data=json.dumps({"sdp": OFFER, **(body or {})}), content_type="application/json")


def test_user_budget_refuses_minting_at_the_limit(csrf_client, bob, fake, settings):
    settings.BUDGET_SESSION_RESERVE_USD = Decimal("0.05")
    Budget.objects.create(user=bob, monthly_limit_usd=Decimal("1.00"))
    spend(bob, "0.90")
    login(csrf_client, bob)
    assert mint(csrf_client).status_code == 201  # 0.90 + 0.05 reserve fits
    spend(bob, "0.06")
    response = mint(csrf_client)
    assert response.status_code == 402
    assert response.json()["error"]["code"] == "budget_exceeded"
    assert "$0.0400" in response.json()["error"]["message"]
    assert RealtimeSession.objects.filter(user=bob).count() == 3  # two spends and the one mint


def test_team_budget_counts_everyones_spend(csrf_client, alice, bob, charlie, fake):
    Budget.objects.create(team=bob.memberships.get().team, monthly_limit_usd=Decimal("0.50"))
    spend(alice, "0.48")
    login(csrf_client, bob)
    assert mint(csrf_client).status_code == 402
    login(csrf_client, charlie)  # another team: not limited
    assert mint(csrf_client).status_code == 201


def test_last_months_spend_does_not_count(csrf_client, bob, fake):
    Budget.objects.create(user=bob, monthly_limit_usd=Decimal("1.00"))
    spend(bob, "5.00", when=timezone.now().replace(day=1) - datetime.timedelta(days=2))
    login(csrf_client, bob)
    assert mint(csrf_client).status_code == 201


def test_documents_count_in_the_reserve(csrf_client, bob, fake, settings):
    settings.BUDGET_SESSION_RESERVE_USD = Decimal("0")
    Budget.objects.create(user=bob, monthly_limit_usd=Decimal("0.001"))
    login(csrf_client, bob)
    # ~2,000 tokens at $4 per million is $0.008: more than the budget.
    response = mint(csrf_client, {"model": "gpt-realtime", "document_text": "word " * 2000})
    assert response.status_code == 402


def test_page_shows_the_remaining_budget(csrf_client, bob):
    Budget.objects.create(user=bob, monthly_limit_usd=Decimal("2.00"))
    spend(bob, "0.25")
    login(csrf_client, bob)
    config = csrf_client.get("/").context["config"]
    assert config["budget"]["remaining_usd"] == "1.7500" and config["budget"]["whose"] == "yours"


def test_a_budget_names_a_user_or_a_team(bob):
    with pytest.raises(IntegrityError):
        Budget.objects.create(user=bob, team=bob.memberships.get().team, monthly_limit_usd=1)


def test_a_resend_makes_the_budget_stop_a_database_failure_skipped(bob, monkeypatch):
    """The budget is checked after the record is committed: when the database fails there, the report is
    answered with the error and sent again, and that resend (the record already stored) makes the stop."""
    from django.db import OperationalError

    from sessions_app import usage
    from sessions_app.models import Call

    Budget.objects.create(user=bob, monthly_limit_usd=Decimal("0.010"))
    session = RealtimeSession.objects.create(user=bob, team=bob.memberships.get().team, model="gpt-realtime",
                                             voice="marin", turn_detection="server_vad", instructions="x")
    Call.objects.create(session=session, number=1, call_id="rtc_capped")
    answer = {"input_tokens": 0, "output_tokens": 400, "input_token_details": {"text_tokens": 0, "audio_tokens": 0},
              "output_token_details": {"text_tokens": 0, "audio_tokens": 400}}  # $0.0256 at $64/M
    real = RealtimeSession.stop_if_over_budget
    monkeypatch.setattr(RealtimeSession, "stop_if_over_budget",
                        mock.Mock(side_effect=OperationalError("the database went away")))
    with pytest.raises(OperationalError):
        usage.record(session.pk, "resp_over", answer, source="client")
    monkeypatch.setattr(RealtimeSession, "stop_if_over_budget", real)

    recorded = usage.record(session.pk, "resp_over", answer, source="client")
    assert not recorded.created
    assert recorded.stopped == [(session.pk, {"rtc_capped": ""})]  # the call had no secret of its own
    session.refresh_from_db()
    assert (session.status, session.end_reason) == ("ended", "budget")


def test_what_is_left_is_rounded_down_where_a_start_is_weighed_against_it(csrf_client, bob, fake, settings):
    """$0.04999 left was shown as $0.0500, so the page let a start needing $0.0500 through and the server
    refused it saying the limit "leaves $0.0500, less than this session needs"."""
    settings.BUDGET_SESSION_RESERVE_USD = Decimal("0.05")
    Budget.objects.create(user=bob, monthly_limit_usd=Decimal("10.00"))
    spend(bob, "9.95001")
    login(csrf_client, bob)
    assert json.loads(csrf_client.get("/api/budget").content)["remaining_usd"] == "0.0499"
    refused = mint(csrf_client)
    assert refused.status_code == 402
    assert refused.json()["error"]["message"] == (
        "The monthly spending limit leaves $0.0499, less than the $0.0500 this session needs to start.")


def test_a_budget_already_passed_says_nothing_is_left(csrf_client, bob, fake, settings):
    Budget.objects.create(user=bob, monthly_limit_usd=Decimal("1.00"))
    spend(bob, "1.20")
    login(csrf_client, bob)
    assert json.loads(csrf_client.get("/api/budget").content)["remaining_usd"] == "0.0000"
    refused = mint(csrf_client)
    assert refused.status_code == 402 and "leaves $0.0000, less than" in refused.json()["error"]["message"]
