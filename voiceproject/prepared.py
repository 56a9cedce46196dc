"""Reads (and writes by primary key) on the hot paths whose SQL is compiled once per process instead
of on every use.

Building and compiling a queryset costs the ORM 0.2-0.6 ms of CPU per read, where SQLite runs a
small indexed read in 0.01 ms; a start made five such reads and its sideband one more. A Prepared
read is a queryset over named parameters. On its first use the ORM compiles it with a marker in
place of each parameter; its SQL, where each marker landed in the SQL's parameters, and how the
rows become objects are kept. Each read after that runs the same SQL with the new values and builds
the rows as the queryset would have: model instances (with what it select_related, its deferred
fields and its annotations) or, for values_list(), tuples. The ORM stays the one definition of
each query.

Parameters are ints, strings or UUIDs (ids, names), or lists of one of those (declared `[uuid.UUID]`,
for `__in`): a value the ORM would convert otherwise on its way to the database (a date, a model
instance) is refused when the read is first compiled, as is a marker that did not reach the SQL. A
read with a list is compiled once per length of that list, and a read with an empty one returns no
rows without asking the database, as the ORM does.

A PreparedUpdate writes named fields of one row found by its primary key, as
`Model.objects.filter(pk=pk).update(**values)` would: the same SQL, each value made ready for the
database by its field as the ORM's update does (so dates and times reach each database in its own
form), built once per set of fields instead of compiling a queryset on every write (a sideband attach
wrote its call that way: 0.4 ms of CPU a start).

A PreparedInsert adds one row as `Model.objects.create(**values)` would: the instance is made by the
model (its defaults, its relations checked), each column's value is made ready by its field as the
ORM's insert does (auto_now_add, JSON, decimals), and the INSERT's SQL, which the ORM compiles on the
first insert, is kept for the next ones; the key the database gives back is set on the instance. A
model whose saves someone listens to (pre_save, post_save) is saved by the ORM, so they still hear.
"""

import itertools
import threading
import uuid

from django.core.exceptions import EmptyResultSet, ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.models import AutoField, signals
from django.db.models.query import ModelIterable, ValuesListIterable, get_related_populators
from django.db.models.sql import InsertQuery

# Far from any id or name a row holds, so a marker is never mistaken for a constant of the query, and
# within a 32-bit integer column's range (on PostgreSQL the ORM turns a lookup past it into no query).
_INT_MARKER = -2_073_400_001
# Plans kept per read: one per length of its lists, the oldest dropped past this many.
MAX_PLANS = 64
# How each kind of value may reach the SQL's parameters: as it is, or (a UUID on SQLite) as its hex.
_FORMS = {int: (None,), str: (None,), uuid.UUID: (None, "hex")}


def _marker(kind, index):
    if kind is int:
        return _INT_MARKER - index
    if kind is uuid.UUID:
        return uuid.UUID(int=0x7F3A_0000_0000_0000_0000_0000_0000_0000 + index)
    return f"\x1fprepared parameter {index}\x1f"


def _form(value, form):
    return value if form is None else getattr(value, form)


class _Plan:
    """One compiled read: its SQL, its parameters (markers at known positions), and its row builder."""

    def __init__(self, queryset, markers):
        compiler = queryset.query.get_compiler(using=queryset.db)
        try:
            self.sql, params = compiler.as_sql()
        except EmptyResultSet:
            raise ImproperlyConfigured("prepared read: the ORM compiles it to no query (a marker out of range?)") from None
        self.params = list(params)
        self.slots = []  # (position in params, parameter name, the form it takes there)
        found = set()
        for position, value in enumerate(self.params):
            for name, marker in markers.items():  # name: (parameter, index in its list or None)
                for form in _FORMS[type(marker)]:
                    shown = _form(marker, form)
                    if type(value) is type(shown) and value == shown:
                        self.slots.append((position, name, form))
                        found.add(name)
        if missing := {name for name, _ in set(markers) - found}:
            raise ImproperlyConfigured(
                f"prepared read: {sorted(missing)} did not reach the SQL as given (a value the ORM converts "
                "cannot be a prepared parameter)")
        if queryset._iterable_class not in (ModelIterable, ValuesListIterable):
            raise ImproperlyConfigured("prepared read: a queryset of model instances or of values_list() tuples")
        self.values_only = queryset._iterable_class is ValuesListIterable
        columns = [column for column, _, _ in compiler.select[: compiler.col_count]]
        self.converters = list(compiler.get_converters(columns).items())
        if not self.values_only:
            info = compiler.klass_info
            self.model = info["model"]
            start, end = info["select_fields"][0], info["select_fields"][-1] + 1
            self.model_slice = slice(start, end)
            self.attnames = [column.target.attname for column, _, _ in compiler.select[start:end]]
            self.populators = get_related_populators(info, compiler.select, queryset.db)
            self.annotations = list(compiler.annotation_col_map.items())

    def run(self, connection, alias, values):
        params = list(self.params)
        for position, (name, index), form in self.slots:
            params[position] = _form(values[name] if index is None else values[name][index], form)
        with connection.cursor() as cursor:
            cursor.execute(self.sql, params)
            rows = cursor.fetchall()
        if self.converters:
            rows = [self._convert(row, connection) for row in rows]
        if self.values_only:
            return [tuple(row) for row in rows]
        return [self._instance(row, alias) for row in rows]

    def _convert(self, row, connection):
        row = list(row)
        for position, (functions, expression) in self.converters:
            value = row[position]
            for convert in functions:
                value = convert(value, expression, connection)
            row[position] = value
        return row

    def _instance(self, row, alias):
        obj = self.model.from_db(alias, self.attnames, row[self.model_slice])
        for populator in self.populators:
            populator.populate(row, obj)
        for name, position in self.annotations:
            setattr(obj, name, row[position])
        return obj


def _element_kind(kind):
    """The kind of a list parameter's elements (declared as a one-element list), None for a scalar."""
    return kind[0] if isinstance(kind, list) and len(kind) == 1 else None


class Prepared:
    """A read compiled once per process and database: `build` takes the parameters (int, str or
    uuid.UUID, or a list of one of them, by name, as declared in `kinds`) and returns the queryset;
    reading returns its rows as a list."""

    def __init__(self, build, using=DEFAULT_DB_ALIAS, **kinds):
        if any((_element_kind(kind) or kind) not in _FORMS for kind in kinds.values()):
            raise ImproperlyConfigured("prepared read: parameters are int, str or uuid.UUID, or a list of one")
        self.build = build
        self.using = using
        self.kinds = kinds
        self.lists = [name for name, kind in kinds.items() if _element_kind(kind)]
        self._plans = {}
        self._lock = threading.Lock()

    def _plan(self, connection, lengths):
        # Keyed by the connection's settings, not the connection (each thread has its own), and by the
        # lists' lengths (each length is its own SQL).
        key = (self.using, connection.vendor, connection.settings_dict["NAME"], lengths)
        plan = self._plans.get(key)
        if plan is None:
            with self._lock:
                markers, arguments, counter = {}, {}, itertools.count()
                for name, kind in self.kinds.items():
                    element = _element_kind(kind)
                    if element is None:
                        markers[(name, None)] = arguments[name] = _marker(kind, next(counter))
                    else:
                        arguments[name] = [_marker(element, next(counter)) for _ in range(lengths[self.lists.index(name)])]
                        markers.update({(name, i): m for i, m in enumerate(arguments[name])})
                plan = _Plan(self.build(**arguments).using(self.using), markers)
                while self._plans and len(self._plans) >= MAX_PLANS:
                    self._plans.pop(next(iter(self._plans)))
                self._plans[key] = plan
        return plan

    def __call__(self, **values):
        if values.keys() != self.kinds.keys():
            raise TypeError(f"prepared read takes {sorted(self.kinds)}, got {sorted(values)}")
        for name, value in values.items():
            kind = self.kinds[name]
            element = _element_kind(kind)
            if element is None and type(value) is not kind:
                raise TypeError(f"prepared read: {name} must be {kind.__name__}, not {type(value).__name__}")
            if element is not None and (not isinstance(value, (list, tuple))
                                        or any(type(v) is not element for v in value)):
                raise TypeError(f"prepared read: {name} must be a list of {element.__name__}")
        lengths = tuple(len(values[name]) for name in self.lists)
        if 0 in lengths:
            return []  # nothing is in an empty list: no query, as the ORM
        connection = connections[self.using]
        return self._plan(connection, lengths).run(connection, self.using, values)

    def first(self, **values):
        rows = self(**values)
        return rows[0] if rows else None


class PreparedUpdate:
    """`model`'s UPDATE of named fields of the row with primary key `pk`; returns the rows changed (0 or 1)."""

    def __init__(self, model, using=DEFAULT_DB_ALIAS):
        self.model = model
        self.using = using
        self._sql = {}

    def __call__(self, pk, **values):
        connection = connections[self.using]
        names = tuple(sorted(values))
        key = (connection.vendor, names)
        built = self._sql.get(key)
        if built is None:
            meta = self.model._meta
            fields = [meta.get_field(name) for name in names]
            if not fields or any(not f.concrete or f.primary_key or f.many_to_many for f in fields):
                raise ImproperlyConfigured("prepared update: name one or more of the row's own columns, not its key")
            quote = connection.ops.quote_name
            sql = (f"UPDATE {quote(meta.db_table)} SET {', '.join(f'{quote(f.column)} = %s' for f in fields)} "
                   f"WHERE {quote(meta.pk.column)} = %s")
            built = self._sql[key] = (sql, fields)
        sql, fields = built
        if any(hasattr(values[f.name], "resolve_expression") for f in fields):
            raise TypeError("prepared update: values only (an expression needs the ORM's update)")
        params = [f.get_db_prep_save(values[f.name], connection) for f in fields]
        params.append(self.model._meta.pk.get_db_prep_value(pk, connection))
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.rowcount


class PreparedInsert:
    """`model`'s INSERT of one row; returns the saved instance, as `model.objects.create(**values)`."""

    def __init__(self, model, using=DEFAULT_DB_ALIAS):
        meta = model._meta
        if meta.parents or meta.proxy or meta.order_with_respect_to:
            raise ImproperlyConfigured("prepared insert: one table's own rows (no parents, proxies or ordering)")
        self.model = model
        self.using = using
        self._sql = {}

    def _build(self, connection, obj, pk_set):
        meta = self.model._meta
        fields = [f for f in meta.local_concrete_fields if not f.generated and (pk_set or f is not meta.auto_field)]
        returning = meta.db_returning_fields
        query = InsertQuery(self.model)
        query.insert_values(fields, [obj])
        compiler = query.get_compiler(using=self.using, connection=connection)
        compiler.returning_fields = returning
        (sql, params), = compiler.as_sql()
        returning_params = tuple(getattr(compiler, "returning_params", ()))
        if not fields or len(params) != len(fields) + len(returning_params):
            raise ImproperlyConfigured("prepared insert: a column whose value is not one parameter of the SQL")
        if returning and not connection.features.can_return_columns_from_insert and not (
                len(returning) == 1 and isinstance(returning[0], AutoField)):
            raise ImproperlyConfigured("prepared insert: this database cannot give back the new row's columns")
        columns = [f.get_col(meta.db_table) for f in returning]
        converters = list(compiler.get_converters(columns).items()) if returning else []
        return sql, fields, returning, returning_params, converters

    def __call__(self, **values):
        obj = self.model(**values)
        if signals.pre_save.has_listeners(self.model) or signals.post_save.has_listeners(self.model):
            obj.save(force_insert=True, using=self.using)
            return obj
        obj._prepare_related_fields_for_save(operation_name="save")
        meta = self.model._meta
        if not obj._is_pk_set(meta):
            setattr(obj, meta.pk.attname, meta.pk.get_pk_value_on_save(obj))
        pk_set = obj._is_pk_set(meta)
        connection = connections[self.using]
        key = (connection.vendor, pk_set)
        built = self._sql.get(key)
        if built is None:
            # The SQL is compiled from this instance: an expression in it would be kept in the SQL for
            # every insert after, whatever their values.
            if any(hasattr(value, "resolve_expression") for value in vars(obj).values()):
                raise TypeError("prepared insert: values only (an expression needs the ORM's create)")
            built = self._sql[key] = self._build(connection, obj, pk_set)
        sql, fields, returning, returning_params, converters = built
        params = []
        for field in fields:
            value = field.pre_save(obj, add=True)
            if hasattr(value, "resolve_expression"):
                raise TypeError("prepared insert: values only (an expression needs the ORM's create)")
            params.append(field.get_db_prep_save(value, connection))
        params.extend(returning_params)
        # As the ORM's save: an error inside an atomic block marks it to roll back.
        with transaction.mark_for_rollback_on_error(using=self.using), connection.cursor() as cursor:
            cursor.execute(sql, params)
            if returning:
                if connection.features.can_return_columns_from_insert:
                    row = list(connection.ops.fetch_returned_insert_columns(cursor, returning_params))
                else:
                    row = [connection.ops.last_insert_id(cursor, meta.db_table, returning[0].column)]
        if returning:
            for position, (functions, expression) in converters:
                for convert in functions:
                    row[position] = convert(row[position], expression, connection)
            for field, value in zip(returning, row):
                setattr(obj, field.attname, value)
        obj._state.adding = False
        obj._state.db = self.using
        return obj
