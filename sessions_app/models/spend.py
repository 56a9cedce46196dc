"""What was spent, by day (the rollups the dashboards read), the monthly budgets, and the
snapshot a dashboard reads its figures in."""

import contextlib
import datetime
import functools
import uuid
from decimal import Decimal

from django.conf import settings
from django.db import connections, models, transaction
from django.db.models.functions import Coalesce
from django.utils import timezone

from teams_app.models import Team
from voiceproject.prepared import Prepared

from .conversations import RealtimeSession


class SpendDayQuerySet(models.QuerySet):
    def visible_to(self, viewer):
        """The rows of the teams whose spend the viewer may see (every team for staff)."""
        return self if viewer.is_staff else self.filter(team__in=Team.objects.spend_visible_to(viewer))

    def between(self, start, end):
        return self.filter(day__gte=start, day__lte=end)

    def matching(self, filters):
        """Only the team (id), user (name) and model asked for, where asked."""
        rows = self
        if filters.get("team"):
            rows = rows.filter(team_id=filters["team"])
        if filters.get("user"):
            rows = rows.filter(user__username=filters["user"])
        if filters.get("model"):
            rows = rows.filter(model=filters["model"])
        return rows

    @staticmethod
    def sums():
        sums = {name: models.Sum(name, default=0) for name in (*SpendDay.TOKEN_FIELDS, "responses", "sessions")}
        money = models.DecimalField(max_digits=24, decimal_places=8)
        sums["cost"] = models.Sum("cost_usd", default=Decimal(0), output_field=money)
        sums["transcription"] = models.Sum("transcription_cost_usd", default=Decimal(0), output_field=money)
        return sums

    def totals(self):
        return self.aggregate(**self.sums())

    def by(self, *fields):
        """The sums grouped by these fields."""
        return self.values(*fields).annotate(**self.sums()).order_by()

    def spent_this_month(self, field):
        """{team or user id: this month's spend}, as Budget.spent() counts it, for every one at once."""
        rows = self.filter(day__gte=month_start().date()).values(field).annotate(total=models.Sum("cost_usd"))
        return {row[field]: row["total"] for row in rows.order_by()}


class SpendDay(models.Model):
    """What went on the bill on one UTC day, for one user in one team, on one model.

    Kept as records arrive, in their transaction: budgets, the dashboard and the
    day rollups read these rows, never the records, so their cost does not grow
    with history. `manage.py rebuild_spend` recomputes them from the records.
    """

    TOKEN_FIELDS = ("input_text", "input_audio", "input_image", "cached", "output_text", "output_audio")

    day = models.DateField()
    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="+")
    team = models.ForeignKey(Team, models.CASCADE, null=True, blank=True, related_name="+")
    # The team's id, or "" for none: a unique key that NULL would not make.
    team_key = models.CharField(max_length=32, blank=True)
    model = models.CharField(max_length=100)
    cost_usd = models.DecimalField(max_digits=20, decimal_places=8, default=Decimal(0))
    transcription_cost_usd = models.DecimalField(max_digits=20, decimal_places=8, default=Decimal(0))
    input_text = models.BigIntegerField(default=0)
    input_audio = models.BigIntegerField(default=0)
    input_image = models.BigIntegerField(default=0)
    cached = models.BigIntegerField(default=0)
    output_text = models.BigIntegerField(default=0)
    output_audio = models.BigIntegerField(default=0)
    responses = models.IntegerField(default=0)
    # Conversations whose first billed usage fell here.
    sessions = models.IntegerField(default=0)

    objects = SpendDayQuerySet.as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["day", "user", "team_key", "model"], name="one_spend_row_per_day")]
        indexes = [models.Index(fields=["team", "day"]), models.Index(fields=["user", "day"]),
                   models.Index(fields=["day"]), models.Index(fields=["model", "day"])]

    @staticmethod
    def amounts(record, sign):
        """One record's part of a day's figures, signed (all zero without a record)."""
        day = {"cost_usd": sign * record.cost_usd if record else Decimal(0), "transcription_cost_usd": Decimal(0),
               "responses": 0}
        for name in SpendDay.TOKEN_FIELDS:
            day[name] = 0
        if record is None:
            return day
        if record.kind == record.RESPONSE:
            day.update(
                responses=sign, input_text=sign * record.input_text_tokens,
                input_audio=sign * record.input_audio_tokens, input_image=sign * record.input_image_tokens,
                cached=sign * record.cached_tokens, output_text=sign * record.output_text_tokens,
                output_audio=sign * record.output_audio_tokens,
            )
        else:
            day["transcription_cost_usd"] = sign * record.cost_usd
        return day

    @classmethod
    def changes_by_day(cls, changes, first_billed=None):
        """A record's billing changes on their days, with the conversation's count moved when its first
        billed moment changes (`first_billed`: (before or None, after)): {day: amounts}, no empty day."""
        days = {}

        def on(day):
            return days.setdefault(day, cls.amounts(None, 0) | {"sessions": 0})

        for record, sign in changes:
            row = on(record.created_at.astimezone(datetime.timezone.utc).date())
            for name, value in cls.amounts(record, sign).items():
                row[name] += value
        if first_billed:
            before, after = first_billed
            if before is not None:
                on(before.astimezone(datetime.timezone.utc).date())["sessions"] -= 1
            on(after.astimezone(datetime.timezone.utc).date())["sessions"] += 1
        # A conversation's count that moved within one day changes nothing.
        return {day: amounts for day, amounts in sorted(days.items()) if any(amounts.values())}

    @classmethod
    def apply(cls, user_id, team_id, model, days):
        """Add {day: amounts} to one user's rows in one team on one model: per day, one statement that
        makes the row or adds to the one there (ON CONFLICT on its unique key, on both engines, so two
        batches cannot race to make it). It was an F() update, then a create where nothing was updated:
        building those was 8% of the ingest servers' CPU."""
        from django.db import connection

        key = {"user": user_id, "team": team_id, "team_key": team_id.hex if team_id else "", "model": model}
        with connection.cursor() as cursor:
            for day, amounts in sorted(days.items()):
                if not any(amounts.values()):
                    continue
                values = {"day": day, **key, **amounts}
                names = tuple(values)
                cursor.execute(cls._adding_upsert(connection.alias, names),
                               [cls._meta.get_field(name).get_db_prep_save(values[name], connection) for name in names])

    @staticmethod
    @functools.cache
    def _adding_upsert(alias, names):
        """INSERT of `names` (fields), adding the amounts to the day's row where it exists (per database)."""
        from django.db import connections

        meta, quote = SpendDay._meta, connections[alias].ops.quote_name
        columns = [quote(meta.get_field(name).column) for name in names]
        unique = ("day", "user", "team_key", "model")
        target = ", ".join(quote(meta.get_field(name).column) for name in unique)
        table = quote(meta.db_table)
        adds = ", ".join(f"{column} = {table}.{column} + EXCLUDED.{column}"
                         for name, column in zip(names, columns) if name not in unique and name != "team")
        return (f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))}) "
                f"ON CONFLICT ({target}) DO UPDATE SET {adds}")

    @staticmethod
    def as_json(days):
        """{day: amounts} as the dashboards receive it: [{"day": ISO date, field: number or decimal string}]."""
        return [{"day": day.isoformat(), **{k: (f"{v:.8f}" if isinstance(v, Decimal) else v) for k, v in amounts.items()}}
                for day, amounts in days.items()]


# A spend dashboard reads its figures, and the last usage record in them, as of one moment between usage
# writes. A write half done as it read would otherwise be in the figures with an id above that record (the
# page applies its update again), or, on PostgreSQL, commit after a later id the figures hold (its update
# never applied). The writes share a lock that the dashboard takes alone while its snapshot begins.
_USAGE_WRITES_LOCK = 7_406_111  # PostgreSQL advisory lock key


def _usage_write_begins():
    connection = transaction.get_connection()
    # SQLite needs nothing: its writes run one at a time (BEGIN IMMEDIATE), so their ids commit in order.
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock_shared(%s)", [_USAGE_WRITES_LOCK])


@contextlib.contextmanager
def usage_snapshot():
    """Reads made inside see every usage write that had finished and none still under way, as one snapshot.
    Yields the id of the newest record in it (0 for none)."""
    from .records import UsageRecord  # records build on spend

    def newest():
        return UsageRecord.objects.aggregate(last=models.Max("pk"))["last"] or 0

    connection = transaction.get_connection()
    if connection.in_atomic_block:  # inside a transaction already (a test's): it sees what it sees
        yield newest()
    elif connection.vendor != "postgresql":
        # SQLite writes one transaction at a time, so ids are committed in order. A deferred transaction
        # (not atomic()'s, which begins IMMEDIATE and would hold the writes off) takes its snapshot, in WAL
        # mode, at its first read, and keeps it to the end without a lock any write waits for.
        with connection.cursor() as cursor:
            cursor.execute("BEGIN DEFERRED")
        try:
            yield newest()
        finally:
            with connection.cursor() as cursor:
                cursor.execute("ROLLBACK")  # it wrote nothing
    else:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [_USAGE_WRITES_LOCK])  # writes in flight finish first
        locked = True
        try:
            with transaction.atomic():
                with connection.cursor() as cursor:
                    cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                last = newest()  # the transaction's snapshot is taken here
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s)", [_USAGE_WRITES_LOCK])
                locked = False
                yield last
        finally:
            if locked:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s)", [_USAGE_WRITES_LOCK])


def month_start(now=None):
    now = now or timezone.now()
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


class Budget(models.Model):
    """A monthly spending limit for one user or one team (UTC calendar months)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, models.CASCADE, null=True, blank=True,
                                related_name="budget")
    team = models.OneToOneField(Team, models.CASCADE, null=True, blank=True, related_name="budget")
    monthly_limit_usd = models.DecimalField(max_digits=12, decimal_places=4)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=(models.Q(user__isnull=False, team__isnull=True) | models.Q(user__isnull=True, team__isnull=False)),
                name="budget_for_a_user_or_a_team",
            ),
            models.CheckConstraint(condition=models.Q(monthly_limit_usd__gte=0), name="budget_not_negative"),
        ]

    def __str__(self):
        return f"{self.user or self.team}: ${self.monthly_limit_usd}/month"

    def spent(self, since=None):
        """Spend this month under this budget, from the day rollups (a month's rows, not its records)."""
        if since is None and hasattr(self, "month_spent"):  # read with the budget by for_session()
            return self.month_spent or Decimal(0)
        days = SpendDay.objects.filter(day__gte=(since or month_start()).date())
        days = days.filter(user_id=self.user_id) if self.user_id else days.filter(team_id=self.team_id)
        return days.aggregate(total=models.Sum("cost_usd"))["total"] or Decimal(0)

    def remaining(self):
        return self.monthly_limit_usd - self.spent()

    def allows(self, cost):
        """Whether `cost` more can be spent this month."""
        return self.spent() + cost <= self.monthly_limit_usd

    def running_sessions(self):
        sessions = RealtimeSession.objects.exclude(status=RealtimeSession.ENDED)
        return sessions.filter(user_id=self.user_id) if self.user_id else sessions.filter(team_id=self.team_id)

    @classmethod
    def room_for(cls, user, team):
        """How much this user may still spend this month under every budget they fall under (None: no limit)."""
        return min((b.remaining() for b in cls.for_session(user, team)), default=None)

    @staticmethod
    def _month_spent(column, month):
        """The month's spend of the budget's user (or team) as a subquery; 0 for the other kind of budget."""
        money = SpendDay._meta.get_field("cost_usd")
        money = models.DecimalField(max_digits=money.max_digits, decimal_places=money.decimal_places)
        days = SpendDay.objects.filter(day__gte=month, **{column: models.OuterRef(column)})
        total = days.values(column).annotate(total=models.Sum("cost_usd")).values("total")
        return Coalesce(models.Subquery(total, output_field=money), Decimal(0), output_field=money)

    @staticmethod
    @functools.lru_cache(maxsize=4)
    def _read_with_month_spent(month, with_team):
        """Budgets read with the month's spend under each, compiled once a month (a start, a usage
        report and the voice page each read budgets: building the two subqueries cost 1.1 ms of CPU,
        compiling them 0.5 more; a compiled read costs 0.07)."""
        budgets = Budget.objects.select_related("user", "team").annotate(
            by_user=Budget._month_spent("user_id", month), by_team=Budget._month_spent("team_id", month))
        if with_team:
            return Prepared(lambda user_id, team_id: budgets.filter(models.Q(user_id=user_id) | models.Q(team_id=team_id)),
                            user_id=int, team_id=uuid.UUID)
        return Prepared(lambda user_id: budgets.filter(user_id=user_id), user_id=int)

    @classmethod
    def for_session(cls, user, team):
        """The budgets a session of this user, billed to this team, counts against, each with this month's
        spend under it: one query however many apply (the month summed from the day rollups in a subquery,
        as spent() sums them)."""
        read = cls._read_with_month_spent(month_start().date(), team is not None)
        budgets = read(user_id=user.pk) if team is None else read(user_id=user.pk, team_id=team.pk)
        for budget in budgets:
            budget.month_spent = budget.by_user + budget.by_team
        return budgets
