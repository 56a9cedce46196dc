"""Django's SQLite backend, with this process's writers queued on a lock of its own.

SQLite lets one writer at a time hold its database; a writer that finds it taken sleeps and looks
again (1, 2, 5, 10 ... up to 100 ms between looks), so under concurrent writes the database sat
unlocked while the next writer slept. Here a thread takes the process's lock before it writes (at
BEGIN, for a transaction, or around a single write outside one) and gives it back when the write is
done, so the next writer of this process starts the moment the last one finished. Writers in other
processes (a management command, a second server) still meet at SQLite's own lock, as before.
"""

import contextlib
import threading

from django.db.backends.sqlite3 import base
from django.db.utils import OperationalError

# One lock per database file, shared by every connection of this process to it.
_locks = {}
_locks_guard = threading.Lock()

# Statements that take no lock of their own: reads, and a transaction's steps (its BEGIN took the lock).
_NO_LOCK = ("SELECT", "PRAGMA", "EXPLAIN", "BEGIN", "SAVEPOINT", "RELEASE", "ROLLBACK")


def _lock_for(name):
    with _locks_guard:
        return _locks.setdefault(str(name), threading.Lock())


class CursorWrapper(base.SQLiteCursorWrapper):
    """A write outside a transaction holds the process's lock while it runs."""

    def execute(self, query, params=None):
        if self.connection.in_transaction or query.lstrip()[:9].upper().startswith(_NO_LOCK):
            return super().execute(query, params)
        with self.connection.django_wrapper.write_lock():
            return super().execute(query, params)

    def executemany(self, query, param_list):
        if self.connection.in_transaction:
            return super().executemany(query, param_list)
        with self.connection.django_wrapper.write_lock():
            return super().executemany(query, param_list)


class Connection(base.Database.Connection):
    """sqlite3's connection, knowing the Django connection it belongs to (for its cursors)."""

    django_wrapper = None


class DatabaseWrapper(base.DatabaseWrapper):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.holds_write_lock = False

    def get_connection_params(self):
        return {**super().get_connection_params(), "factory": Connection}

    def get_new_connection(self, conn_params):
        connection = super().get_new_connection(conn_params)
        connection.django_wrapper = self
        return connection

    def create_cursor(self, name=None):
        return self.connection.cursor(factory=CursorWrapper)

    @contextlib.contextmanager
    def write_lock(self):
        """The lock for one statement, unless this connection holds it already (for its transaction)."""
        if self.holds_write_lock:
            yield
            return
        self._acquire()
        try:
            yield
        finally:
            self._release()

    def _start_transaction_under_autocommit(self):
        # BEGIN IMMEDIATE takes SQLite's write lock; take this process's first.
        self._acquire()
        try:
            super()._start_transaction_under_autocommit()
        except BaseException:
            self._release()
            raise

    def _commit(self):
        try:
            return super()._commit()
        finally:
            self._release()

    def _rollback(self):
        try:
            return super()._rollback()
        finally:
            self._release()

    def _close(self):
        try:
            return super()._close()
        finally:
            self._release()

    def _acquire(self):
        if self.holds_write_lock:
            return
        timeout = self.settings_dict["OPTIONS"].get("timeout", 5)
        if not _lock_for(self.settings_dict["NAME"]).acquire(timeout=timeout):
            raise OperationalError("database is locked")
        self.holds_write_lock = True

    def _release(self):
        if self.holds_write_lock:
            self.holds_write_lock = False
            _lock_for(self.settings_dict["NAME"]).release()
