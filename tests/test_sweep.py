"""The sweep ends a conversation only if it is still what made it due when it ends: a page that came back,
or a call resumed, between the sweep's read and its end keeps the conversation going."""

import datetime

import pytest
from django.utils import timezone

from sessions_app.models import Call, EndReason, RealtimeSession

pytestmark = pytest.mark.django_db

GRACE = datetime.timedelta(seconds=30)
CAP = datetime.timedelta(minutes=61)


def conversation(user, age, **fields):
    session = RealtimeSession.objects.create(
        user=user, team=user.memberships.get().team, model="gpt-realtime", voice="marin",
        turn_detection="server_vad", connected_at=timezone.now() - age, **fields)
    RealtimeSession.objects.filter(pk=session.pk).update(created_at=timezone.now() - age)
    return session


def call(session, number, ended_ago=None):
    row = Call.objects.create(session=session, number=number, call_id=f"rtc_{session.pk.hex[:8]}_{number}")
    if ended_ago is not None:
        Call.objects.filter(pk=row.pk).update(status=Call.ENDED, end_reason=EndReason.CALL_CLOSED,
                                              ended_at=timezone.now() - ended_ago)
    return row


def meanwhile(monkeypatch, change):
    """`change` happens after the sweep read its conversations and before it ends the first."""
    real = RealtimeSession.end

    def end(self, reason, **kwargs):
        change(self)
        return real(self, reason, **kwargs)

    monkeypatch.setattr(RealtimeSession, "end", end)


def left_page(user):
    now = timezone.now()
    session = conversation(user, datetime.timedelta(minutes=5), page_connected_at=now - datetime.timedelta(minutes=2),
                           page_left_at=now - datetime.timedelta(minutes=1))
    call(session, 1)
    return session


def test_a_page_gone_past_the_grace_ends_its_conversation(alice):
    session = left_page(alice)
    ((ended_id, calls, reason),) = RealtimeSession.objects.sweep(GRACE, CAP)
    assert (ended_id, len(calls), reason) == (session.pk, 1, EndReason.PAGE_GONE)
    session.refresh_from_db()
    assert (session.status, session.end_reason) == ("ended", "page_gone")


def test_a_page_back_before_the_end_keeps_its_conversation(alice, monkeypatch):
    session = left_page(alice)
    meanwhile(monkeypatch, lambda s: RealtimeSession.objects.filter(pk=s.pk).update(page_connected_at=timezone.now()))
    assert RealtimeSession.objects.sweep(GRACE, CAP) == []
    session.refresh_from_db()
    assert session.status == "active" and session.calls.get().status == "active"


def test_a_conversation_no_call_resumed_in_time_is_ended_and_a_recent_or_new_call_keeps_it(alice, settings,
                                                                                          monkeypatch):
    settings.NO_CALL_SECONDS = 600
    now = timezone.now()
    connected = {"page_connected_at": now}
    idle = conversation(alice, datetime.timedelta(minutes=20), **connected)
    call(idle, 1, ended_ago=datetime.timedelta(minutes=11))
    recent = conversation(alice, datetime.timedelta(minutes=20), **connected)
    call(recent, 1, ended_ago=datetime.timedelta(minutes=2))
    assert RealtimeSession.objects.sweep(GRACE, CAP) == [(idle.pk, {}, EndReason.NO_CALL)]
    recent.refresh_from_db()
    assert recent.status == "active"

    resumed = conversation(alice, datetime.timedelta(minutes=20), **connected)
    call(resumed, 1, ended_ago=datetime.timedelta(minutes=11))
    meanwhile(monkeypatch, lambda s: call(s, 2))
    assert RealtimeSession.objects.sweep(GRACE, CAP) == []
    resumed.refresh_from_db()
    assert resumed.status == "active"
