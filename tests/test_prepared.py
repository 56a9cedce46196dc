"""The reads compiled once per process (voiceproject.prepared) answer what the ORM answers, value by value:
a compiled read that kept its first values, or bound one in the wrong place, would show another person's rows."""

import datetime
import uuid
from decimal import Decimal

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, connection, transaction
from django.db.models import Q, Value, signals
from django.db.transaction import TransactionManagementError
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from sessions_app import sideband
from sessions_app.models import Budget, Call, ModelPrice, RealtimeSession
from sessions_app.views import running_session
from teams_app.models import Membership, Team
from tests.conftest import _user
from tests.test_budgets import spend
from voiceproject.prepared import Prepared, PreparedInsert, PreparedUpdate


def fields(obj):
    return {k: v for k, v in vars(obj).items() if not k.startswith("_")}


def test_the_billed_membership_is_each_persons_own(alice, charlie, staff, team_b):
    Membership.objects.create(team=team_b, user=alice, role=Membership.MEMBER)  # newer: not the billed one
    for user in (alice, charlie, staff, alice):
        expected = Membership.objects.filter(user=user).select_related("team").order_by("created_at", "pk").first()
        got = Membership.primary_for(user)
        if expected is None:
            assert got is None
            continue
        assert fields(got) == fields(expected)
        with CaptureQueriesContext(connection) as read:
            assert got.team.name == expected.team.name  # selected with it: no second read
        assert len(read) == 0


def test_budgets_with_their_spend_match_a_fresh_read_for_each_person_and_team(alice, bob, charlie, team_a, team_b):
    Budget.objects.create(user=alice, monthly_limit_usd=10)
    Budget.objects.create(user=charlie, monthly_limit_usd=20)
    Budget.objects.create(team=team_a, monthly_limit_usd=30)
    Budget.objects.create(team=team_b, monthly_limit_usd=40)
    spend(alice, "1.25")
    spend(bob, "0.5")
    spend(charlie, "2")
    for user, team in ((alice, team_a), (bob, team_a), (charlie, team_b), (alice, None), (bob, None), (charlie, team_a)):
        query = Q(user=user) | Q(team=team) if team else Q(user=user)
        expected = {b.pk: b.spent() for b in Budget.objects.filter(query)}
        got = Budget.for_session(user, team)
        assert {b.pk: b.month_spent for b in got} == expected
        assert all(b.spent() == b.month_spent for b in got)
    assert Budget.room_for(alice, team_a) == min(Decimal("10") - Decimal("1.25"), Decimal("30") - Decimal("1.75"))
    assert Budget.room_for(bob, None) is None


def test_a_price_is_the_named_models(db):
    for model in ("gpt-realtime", "gpt-realtime-mini", "gpt-realtime"):
        assert fields(ModelPrice.for_model(model)) == fields(ModelPrice.objects.get(model=model))
    assert ModelPrice.for_model("no-such-model") is None


def test_the_running_conversation_is_the_persons_own_and_connected(alice, bob):
    now = timezone.now()

    def conversation(user, **extra):
        return RealtimeSession.objects.create(user=user, team=user.memberships.get().team, model="gpt-realtime",
                                              voice="marin", turn_detection="server_vad", instructions="x", **extra)

    mine = conversation(alice, page_connected_at=now)
    conversation(alice, page_connected_at=now - datetime.timedelta(minutes=1), page_left_at=now)  # its page left
    assert running_session(alice).pk == mine.pk
    assert running_session(bob) is None
    theirs = conversation(bob, page_connected_at=now)
    assert running_session(bob).pk == theirs.pk
    assert running_session(alice).pk == mine.pk
    got = running_session(alice)
    assert (got.created_at, got.billed_cost_usd) == (mine.created_at, mine.billed_cost_usd)


def test_a_watched_call_is_read_whole_where_the_watch_reads_it(alice, bob):
    calls = []
    for n, user in enumerate((alice, bob)):
        session = RealtimeSession.objects.create(
            user=user, model="gpt-realtime", voice="marin", turn_detection="server_vad", instructions="x",
            session_config={"instructions": f"for {user}"}, documents=[{"id": "pasted", "mode": "inline"}],
            pasted_text=f"notes of {user}")
        calls.append(Call.objects.create(session=session, number=n + 1, call_id=f"rtc_{n}", sealed_secret="s"))
    for call in calls + calls[::-1]:
        got = sideband._call_to_watch.first(pk=call.pk)
        with CaptureQueriesContext(connection) as read:
            seen = (got.call_id, got.number, got.status, got.session_id, got.session.session_config,
                    got.session.documents, got.session.pasted_text)
        assert len(read) == 0, "everything the watch reads was read with the call"
        assert seen == (call.call_id, call.number, Call.objects.get(pk=call.pk).status, call.session_id,
                        call.session.session_config, call.session.documents, call.session.pasted_text)
    assert sideband._call_to_watch.first(pk=10**9) is None


def test_a_prepared_update_writes_what_the_orms_update_writes(alice):
    """Two calls, one written by the ORM's update and one by the prepared one, with the same values: a
    time with microseconds in another zone, a choice, and a time set back to nothing."""
    session = RealtimeSession.objects.create(user=alice, model="gpt-realtime", voice="marin",
                                             turn_detection="server_vad", instructions="x", session_config={})
    by_orm, prepared = (Call.objects.create(session=session, number=n, call_id=f"rtc_u{n}", sealed_secret="s",
                                            context_ready_at=timezone.now()) for n in (1, 2))
    when = datetime.datetime(2026, 12, 7, 23, 59, 58, 123456, tzinfo=datetime.timezone(datetime.timedelta(hours=-5)))
    values = {"sideband_credential": Call.CALL_SECRET, "sideband_attached_at": when, "context_ready_at": None}
    Call.objects.filter(pk=by_orm.pk).update(**values)
    update = PreparedUpdate(Call)
    with CaptureQueriesContext(connection) as written:
        assert update(prepared.pk, **values) == 1
    assert len(written) == 1 and written[0]["sql"].startswith("UPDATE")
    fields = ("sideband_credential", "sideband_attached_at", "context_ready_at", "call_id", "status")
    a, b = (Call.objects.values_list(*fields).get(pk=pk) for pk in (by_orm.pk, prepared.pk))
    assert a[:3] == b[:3] == (Call.CALL_SECRET, when, None)
    assert b[3:] == ("rtc_u2", prepared.status)  # the other columns, and the other row, untouched
    assert update(10**9, sideband_credential=Call.API_KEY) == 0
    with pytest.raises(ImproperlyConfigured):
        update(prepared.pk, id=5)
    from django.db.models import F

    with pytest.raises(TypeError):
        update(prepared.pk, number=F("number") + 1)


def _columns(model, pk):
    return model.objects.values().get(pk=pk)


def test_a_prepared_insert_writes_what_the_orms_create_writes(alice, team_a):
    """A conversation (a UUID key made by the model) and its call (a key the database gives back), each
    inserted by the ORM and by the prepared insert with the same values: every column the same, but the
    keys and the creation times; the instances as saved as the ORM's."""
    when = datetime.datetime(2026, 12, 7, 23, 59, 58, 123456, tzinfo=datetime.timezone(datetime.timedelta(hours=-5)))
    values = {"user": alice, "team": team_a, "model": "gpt-realtime", "voice": "marin", "turn_detection": "semantic_vad",
              "instructions": "Answer from the documents.\nQuoted: \"x\" \u00e9", "connected_at": when,
              "session_config": {"audio": {"output": {"voice": "marin"}}, "tools": [1, 2.5, None, True]},
              "documents": [{"id": "pasted", "tokens": 12}], "document_tokens": 12, "pasted_text": "notes"}
    insert_session, insert_call = PreparedInsert(RealtimeSession), PreparedInsert(Call)
    for _ in range(2):  # the first insert compiles, the second reuses
        by_orm = RealtimeSession.objects.create(**values)
        with CaptureQueriesContext(connection) as written:
            prepared = insert_session(**values)
        assert len(written) == 1 and written[0]["sql"].startswith("INSERT")
        assert isinstance(prepared.pk, uuid.UUID) and prepared.pk != by_orm.pk
        assert not prepared._state.adding and prepared._state.db == by_orm._state.db
        a, b = _columns(RealtimeSession, by_orm.pk), _columns(RealtimeSession, prepared.pk)
        for row in (a, b):
            assert abs(row.pop("created_at") - timezone.now()) < datetime.timedelta(seconds=30)
            row.pop("id")
        assert a == b
        assert b["connected_at"] == when and b["cost_usd"] == Decimal(0) and b["status"] == RealtimeSession.ACTIVE
        lease = {"sideband_owner": "w1", "sideband_lease_until": when}
        call_orm = Call.objects.create(session=by_orm, number=1, call_id=f"rtc_o{by_orm.pk.hex}", sealed_secret="s", **lease)
        call = insert_call(session=prepared, number=1, call_id=f"rtc_p{prepared.pk.hex}", sealed_secret="s", **lease)
        assert isinstance(call.pk, int) and call.pk == Call.objects.get(call_id=call.call_id).pk
        c, d = _columns(Call, call_orm.pk), _columns(Call, call.pk)
        for row, session in ((c, by_orm), (d, prepared)):
            assert row.pop("session_id") == session.pk
            assert row.pop("call_id").endswith(session.pk.hex)
            row.pop("id"), row.pop("created_at")
        assert c == d and d["sideband_lease_until"] == when
        assert call.session is prepared and list(prepared.calls.all()) == [call]


def test_a_prepared_insert_refused_by_the_database_leaves_nothing_and_listeners_still_hear(alice):
    from django.db.models.functions import Lower

    insert_session = PreparedInsert(RealtimeSession)
    values = {"user": alice, "voice": "marin", "turn_detection": "server_vad", "instructions": "x"}
    with pytest.raises(TypeError):  # on its first use, before anything is compiled from it
        insert_session(model=Lower(Value("GPT-REALTIME")), **values)
    session = insert_session(model="GPT-realtime", **values)
    assert RealtimeSession.objects.get(pk=session.pk).model == "GPT-realtime"
    insert_call = PreparedInsert(Call)
    insert_call(session=session, number=1, call_id="rtc_same", sealed_secret="s")
    with transaction.atomic():
        with pytest.raises(IntegrityError):
            insert_call(session=session, number=2, call_id="rtc_same", sealed_secret="s")
        with pytest.raises(TransactionManagementError):  # as after the ORM's create: roll back first
            Call.objects.count()
    assert Call.objects.filter(session=session).count() == 1
    from django.db.models import F

    with pytest.raises(TypeError):
        insert_call(session=session, number=F("number"), call_id="rtc_f", sealed_secret="s")
    heard = []

    def listener(sender, instance, created, **kwargs):
        heard.append((instance.call_id, created))

    signals.post_save.connect(listener, sender=Call)
    try:
        insert_call(session=session, number=3, call_id="rtc_heard", sealed_secret="s")
    finally:
        signals.post_save.disconnect(listener, sender=Call)
    assert heard == [("rtc_heard", True)]
    assert sorted(Call.objects.filter(session=session).values_list("number", flat=True)) == [1, 3]


def test_values_lists_and_uuids_take_their_values(team_a, team_b):
    names = Prepared(lambda team_id: Team.objects.filter(pk=team_id).values_list("name", "created_at"), team_id=uuid.UUID)
    for team in (team_a, team_b, team_a):
        assert names(team_id=team.pk) == [(team.name, team.created_at)]
    assert names(team_id=uuid.uuid4()) == []


def test_a_value_the_orm_would_convert_or_a_wrong_type_is_refused(db):
    with pytest.raises(ImproperlyConfigured):
        Prepared(lambda when: Team.objects.filter(created_at__gte=when), when=datetime.datetime)
    lowered = Prepared(lambda name: Team.objects.filter(name__iexact=name.upper()), name=str)
    with pytest.raises(ImproperlyConfigured, match="did not reach the SQL"):
        lowered(name="demo")
    by_name = Prepared(lambda name: Team.objects.filter(name=name), name=str)
    with pytest.raises(TypeError):
        by_name(name=1)
    with pytest.raises(TypeError):
        by_name(title="x")
    assert by_name(name="none such") == []


def test_a_user_created_later_reads_their_own(db, team_a):
    first = _user("first", team_a, Membership.MEMBER)
    assert Membership.primary_for(first).user_id == first.pk
    later = _user("later", team_a, Membership.ADMIN)
    assert Membership.primary_for(later).user_id == later.pk
    assert Membership.primary_for(later).role == Membership.ADMIN


def test_the_signed_in_user_is_read_by_their_session_and_an_inactive_one_is_signed_out(client, alice, bob):
    from django.contrib.auth import get_user
    from django.contrib.auth.models import AnonymousUser

    for user in (alice, bob, alice):
        client.force_login(user)
        response = client.get("/api/budget")
        assert response.status_code == 200
        assert response.wsgi_request.user.pk == user.pk
        assert get_user(response.wsgi_request).username == user.username
    bob.is_active = False
    bob.save()
    client.force_login(alice)
    client.force_login(bob)  # an inactive user's session does not sign them in
    response = client.get("/api/budget")
    assert response.status_code == 401
    assert isinstance(get_user(response.wsgi_request), AnonymousUser)


def test_lists_take_each_length_and_an_empty_one_asks_nothing(db, monkeypatch):
    from voiceproject import prepared

    teams = [Team.objects.create(name=f"t{i}") for i in range(5)]
    by_ids = Prepared(lambda ids, names: Team.objects.filter(pk__in=ids, name__in=names).order_by("name"),
                      ids=[uuid.UUID], names=[str])
    for chosen in ([0], [1, 3], [4, 2, 0], [0, 1, 2, 3, 4], [3], [2, 2]):
        ids = [teams[i].pk for i in chosen]
        got = by_ids(ids=ids, names=[t.name for t in teams])
        assert [t.pk for t in got] == [t.pk for t in Team.objects.filter(pk__in=ids).order_by("name")]
        # The second list filters too: only the named ones.
        assert [t.name for t in by_ids(ids=ids, names=[teams[chosen[0]].name])] == [teams[chosen[0]].name]
    with CaptureQueriesContext(connection) as read:
        assert by_ids(ids=[], names=["t0"]) == []
    assert len(read) == 0
    with pytest.raises(TypeError):
        by_ids(ids=[teams[0].pk, "not a uuid"], names=["t0"])
    with pytest.raises(TypeError):  # checked even when another list is empty
        by_ids(ids=[], names="t0")
    monkeypatch.setattr(prepared, "MAX_PLANS", 3)
    for n in range(1, 6):  # past the bound the oldest plans go, and reads stay right
        assert len(by_ids(ids=[t.pk for t in teams[:n]], names=[t.name for t in teams])) == n
    assert len(by_ids._plans) <= 3


def test_a_claim_takes_what_claimable_lists_in_one_update_each_and_only_once(alice, monkeypatch):
    """The sideband's claim is SQL of its own: it must take exactly the calls `claimable` (the ORM's
    definition) lists, on SQLite and on PostgreSQL alike, and a second worker none of them."""
    from django.db.models.query import QuerySet

    now = timezone.now()
    minutes = datetime.timedelta(minutes=5)
    session = RealtimeSession.objects.create(user=alice, team=alice.memberships.get().team, model="gpt-realtime",
                                             voice="marin", turn_detection="push_to_talk", instructions="",
                                             session_config={}, connected_at=now)
    rows = [("", None, Call.ACTIVE), ("gone-worker", now - minutes, Call.ACTIVE), ("other", now + minutes, Call.ACTIVE),
            ("", None, Call.ENDED), ("gone-worker", now - minutes, Call.ENDED), ("me", now + minutes, Call.ACTIVE),
            ("", None, Call.ACTIVE)]
    pks = [Call.objects.create(session=session, number=n + 1, call_id=f"rtc_claim{n}", sideband_owner=owner,
                               sideband_lease_until=until, status=status).pk for n, (owner, until, status) in enumerate(rows)]
    expected = set(Call.objects.claimable(now).values_list("pk", flat=True))
    assert expected == {pks[0], pks[1], pks[6]}

    def built(*args, **kwargs):
        raise AssertionError("the claim built an ORM update")

    monkeypatch.setattr(QuerySet, "update", built)
    lease = datetime.timedelta(seconds=30)
    with CaptureQueriesContext(connection) as queries:
        claimed = Call.objects.claim_these("me", lease, pks, now)
    assert claimed == [pks[0], pks[1], pks[6]]  # in the order asked
    assert len(queries) == len(pks)
    for pk, call in Call.objects.in_bulk(pks).items():
        if pk in claimed:
            assert (call.sideband_owner, call.sideband_lease_until) == ("me", now + lease)
        else:
            before = rows[pks.index(pk)]
            assert (call.sideband_owner, call.sideband_lease_until) == before[:2]
    assert Call.objects.claim_these("another", lease, pks, now) == []  # taken: the lease is the lock
    later = now + lease + datetime.timedelta(seconds=1)  # those leases lapsed; "me" and "other" hold theirs
    assert Call.objects.claim_these("another", lease, pks, later) == [pks[0], pks[1], pks[6]]
    assert Call.objects.claim_these("last", lease, pks, now + minutes * 2) == [pks[0], pks[1], pks[2], pks[5], pks[6]]
