"""Django's SQLite backend, with this process's writers queued on a lock of its own.

SQLite lets one writer at a time hold its database; a writer that finds it taken sleeps and looks
again (1, 2, 5, 10 ... up to 100 ms between looks), so under concurrent writes the database sat
unlocked while the next writer slept. Here a thread takes the process's lock before it writes (at
BEGIN, for a transaction, or around a single write outside one) and gives it back when the write is
done, so the next writer of this process starts the moment the last one finished. Writers in other
processes (a management command, a second server) still meet at SQLite's own lock, as before.

A transaction holds the lock from its BEGIN (IMMEDIATE, see settings) until SQLite says it ended:
after its commit, its rollback, or its connection's close (a COMMIT that fails, on a deferred foreign
key, leaves the transaction open, and the lock with it, until the rollback). A write outside a
transaction holds it until SQLite has finished the statement, so the rows an INSERT ... RETURNING
gives back are read before the lock is let go. Transactions Django does not begin (set_autocommit(False),
a raw BEGIN) are not covered: neither this project nor Django's own code on SQLite makes them.
"""

import collections
import contextlib
import functools
import threading

from django.db.backends.sqlite3 import base
from django.db.utils import OperationalError

# One lock per database file, shared by every connection of this process to it.
_locks = {}
_locks_guard = threading.Lock()

# Statements that take no lock of their own: reads, and a transaction's steps (its BEGIN took the lock).
_NO_LOCK = ("SELECT", "PRAGMA", "EXPLAIN", "BEGIN", "SAVEPOINT", "RELEASE", "ROLLBACK")


# Statements longer than this (a bulk insert of many rows) are converted each time instead of kept.
_KEPT_QUERY_CHARS = 4000


@functools.lru_cache(maxsize=512)
def _qmark(query):
    """Django's %s placeholders as SQLite's ?, worked out once per statement instead of on every run (a
    regular expression over the whole SQL, 10 us a statement)."""
    return base.FORMAT_QMARK_REGEX.sub("?", query).replace("%%", "%")


def _lock_for(name):
    with _locks_guard:
        return _locks.setdefault(str(name), threading.Lock())


class CursorWrapper(base.SQLiteCursorWrapper):
    """A write outside a transaction holds the process's lock until SQLite has finished it."""

    returned = None  # the rows a locked write gave back (RETURNING), read while it held the lock

    def convert_query(self, query, *, param_names=None):
        if param_names is None and len(query) <= _KEPT_QUERY_CHARS:
            return _qmark(query)
        return super().convert_query(query, param_names=param_names)

    def execute(self, query, params=None):
        self.returned = None
        if self.connection.in_transaction or query.lstrip()[:9].upper().startswith(_NO_LOCK):
            return super().execute(query, params)
        with self.connection.django_wrapper.write_lock():
            super().execute(query, params)
            # SQLite ends the statement, and its hold on the database, only once its rows are read.
            if self.description is not None:
                self.returned = collections.deque(super().fetchall())
            return self

    def executemany(self, query, param_list):
        self.returned = None
        if self.connection.in_transaction:
            return super().executemany(query, param_list)
        with self.connection.django_wrapper.write_lock():
            return super().executemany(query, param_list)

    def fetchone(self):
        if self.returned is None:
            return super().fetchone()
        return self.returned.popleft() if self.returned else None

    def fetchmany(self, size=None):
        if self.returned is None:
            return super().fetchmany(self.arraysize if size is None else size)
        count = min(len(self.returned), self.arraysize if size is None else size)
        return [self.returned.popleft() for _ in range(count)]

    def fetchall(self):
        if self.returned is None:
            return super().fetchall()
        rows, self.returned = list(self.returned), collections.deque()
        return rows

    def __next__(self):
        if self.returned is None:
            return super().__next__()
        if not self.returned:
            raise StopIteration
        return self.returned.popleft()


class Connection(base.Database.Connection):
    """sqlite3's connection, knowing the Django connection it belongs to (for its cursors)."""

    django_wrapper = None


class DatabaseWrapper(base.DatabaseWrapper):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.held_lock = None  # the process's lock, while this connection holds it

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
        if self.held_lock is not None:
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
            self._release_when_ended()

    def _rollback(self):
        try:
            return super()._rollback()
        finally:
            self._release_when_ended()

    def _close(self):
        try:
            return super()._close()
        finally:
            self._release()

    def _acquire(self):
        if self.held_lock is not None:
            return
        lock = _lock_for(self.settings_dict["NAME"])
        if not lock.acquire(timeout=self.settings_dict["OPTIONS"].get("timeout", 5)):
            raise OperationalError("database is locked")
        self.held_lock = lock

    def _release(self):
        lock, self.held_lock = self.held_lock, None
        if lock is not None:
            lock.release()

    def _release_when_ended(self):
        """Let the lock go unless SQLite still has the transaction open (a COMMIT it refused)."""
        if self.connection is None or not self.connection.in_transaction:
            self._release()
