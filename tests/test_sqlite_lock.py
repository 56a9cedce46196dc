"""SQLite's writers of one process queue on the process's lock (voiceproject/sqlite): a writer waits for
the one before it instead of meeting SQLite's lock and sleeping. Each thread here tells SQLite not to
wait at all (busy_timeout 0), so a write that reached SQLite's lock while another held it would fail
at once with "database is locked"."""

import threading
import uuid

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import IntegrityError, connection, transaction

from teams_app.models import Membership, Team
from voiceproject.sqlite.base import _lock_for

# Transactional: the writers are threads with connections of their own. serialized_rollback, as in the
# other transactional modules, leaves the database as the next module expects it.
pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


def process_lock():
    return _lock_for(connection.settings_dict["NAME"])


def impatient():
    """This thread's connection, told to fail at once where SQLite's lock is taken."""
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA busy_timeout = 0")


def test_a_transaction_holds_the_lock_until_it_commits_or_rolls_back():
    with transaction.atomic():
        Team.objects.create(name="inside")
        assert process_lock().locked()
    assert not process_lock().locked()
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        Team.objects.create(name="rolled back")
        1 / 0
    assert not process_lock().locked()
    Team.objects.create(name="outside a transaction")
    assert not process_lock().locked()
    assert sorted(Team.objects.values_list("name", flat=True)) == ["inside", "outside a transaction"]


def test_a_write_waits_for_the_transaction_before_it():
    began, finish, errors, done = threading.Event(), threading.Event(), [], threading.Event()

    def holder():
        try:
            with transaction.atomic():
                Team.objects.create(name="first")
                began.set()
                finish.wait(10)
        finally:
            connection.close()

    def writer():
        try:
            impatient()
            began.wait(10)
            Team.objects.create(name="second")  # outside a transaction
        except Exception as exc:  # noqa: BLE001  (the test reports it)
            errors.append(exc)
        finally:
            done.set()
            connection.close()

    threads = [threading.Thread(target=holder), threading.Thread(target=writer)]
    for t in threads:
        t.start()
    assert began.wait(10)
    assert not done.wait(0.3)  # the writer waits for the transaction to end
    finish.set()
    for t in threads:
        t.join(10)
    assert errors == []
    assert sorted(Team.objects.values_list("name", flat=True)) == ["first", "second"]


def test_many_writers_on_threads_all_succeed_without_sqlite_waiting():
    errors, per_thread, threads = [], 25, 8

    def work(n):
        try:
            impatient()
            for i in range(per_thread):
                if i % 2:
                    # Outside a transaction; a Group's insert returns its id (INSERT ... RETURNING), and
                    # SQLite holds the database until that row is read.
                    Team.objects.create(name=f"t{n}-{i}")
                    Group.objects.create(name=f"g{n}-{i}")
                else:
                    with transaction.atomic():
                        Team.objects.create(name=f"t{n}-{i}")
                        Team.objects.filter(name=f"t{n}-{i}").update(name=f"t{n}-{i}")
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connection.close()

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(60)
    assert errors == []
    assert Team.objects.count() == threads * per_thread
    assert Group.objects.count() == threads * (per_thread // 2)
    assert not process_lock().locked()


def test_a_refused_commit_keeps_the_lock_until_its_rollback(monkeypatch):
    """SQLite checks foreign keys at COMMIT and, refusing it, keeps the transaction open: the lock
    stays with it until Django rolls it back, and is free after."""
    user = get_user_model().objects.create_user("lock-owner")
    seen = []
    rollback = connection._rollback

    def watched_rollback():
        seen.append((process_lock().locked(), connection.connection.in_transaction))
        return rollback()

    monkeypatch.setattr(connection, "_rollback", watched_rollback)
    with pytest.raises(IntegrityError), transaction.atomic():
        Membership.objects.create(team_id=uuid.uuid4(), user=user, role=Membership.MEMBER)
    assert seen == [(True, True)]
    assert not process_lock().locked()
    errors = []

    def writer():
        try:
            impatient()
            Team.objects.create(name="after")
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connection.close()

    t = threading.Thread(target=writer)
    t.start()
    t.join(10)
    assert errors == []


def test_placeholders_are_converted_as_djangos_backend_converts_them():
    """The statements' ? placeholders, kept per statement, are the ones Django's own conversion gives,
    with a literal % kept and a long statement converted each time; and the kept ones run."""
    from django.db.backends.sqlite3.base import SQLiteCursorWrapper

    from voiceproject.sqlite.base import _KEPT_QUERY_CHARS, _qmark

    statements = ["SELECT %s", "SELECT name FROM t WHERE name LIKE '%%x' AND id = %s", "UPDATE t SET a = %s, b = %s",
                  "INSERT INTO t VALUES " + ", ".join(["(%s, %s)"] * 1000)]
    assert len(statements[-1]) > _KEPT_QUERY_CHARS
    _qmark.cache_clear()
    with connection.cursor() as wrapper:
        cursor = wrapper.cursor
        for query in statements * 2:
            ours = cursor.convert_query(query)
            assert ours == SQLiteCursorWrapper.convert_query(cursor, query) and "%s" not in ours
        assert _qmark.cache_info().currsize == len(statements) - 1  # the long one is not kept
        assert cursor.convert_query("SELECT %(a)s", param_names=["a"]) == "SELECT :a"
    names = {Team.objects.create(name=f"kept {i}").name for i in range(3)}
    assert set(Team.objects.filter(name__startswith="kept").values_list("name", flat=True)) == names
