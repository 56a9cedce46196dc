import contextlib
import copy
import datetime
import functools
import uuid
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import IntegrityError, connections, models, router, transaction
from django.db.models import F
from django.db.models.functions import Coalesce, Concat
from django.utils import timezone

from teams_app.models import Team
from voiceproject.prepared import Prepared

MILLION = Decimal(1_000_000)
COST_PLACES = Decimal("0.00000001")
MAX_TRANSCRIPT_CHARS = 20_000
# Room kept for the conversation itself when documents fill the context.
DOCUMENT_SHARE_OF_INPUT = Decimal("0.6")
# A price below zero would take money off every bill it priced.
NOT_NEGATIVE = [MinValueValidator(Decimal(0))]


class ModelPrice(models.Model):
    """USD per million tokens for one realtime model; editable in the admin."""

    model = models.CharField(max_length=100, unique=True)
    text_input = models.DecimalField(max_digits=10, decimal_places=4, validators=NOT_NEGATIVE)
    text_cached_input = models.DecimalField(max_digits=10, decimal_places=4, validators=NOT_NEGATIVE)
    text_output = models.DecimalField(max_digits=10, decimal_places=4, validators=NOT_NEGATIVE)
    audio_input = models.DecimalField(max_digits=10, decimal_places=4, validators=NOT_NEGATIVE)
    audio_cached_input = models.DecimalField(max_digits=10, decimal_places=4, validators=NOT_NEGATIVE)
    audio_output = models.DecimalField(max_digits=10, decimal_places=4, validators=NOT_NEGATIVE)
    image_input = models.DecimalField(max_digits=10, decimal_places=4, default=0, validators=NOT_NEGATIVE)
    image_cached_input = models.DecimalField(max_digits=10, decimal_places=4, default=0, validators=NOT_NEGATIVE)
    context_window = models.PositiveIntegerField(help_text="tokens")
    max_output_tokens = models.PositiveIntegerField(help_text="tokens per response")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model"]

    def __str__(self):
        return self.model

    @classmethod
    def for_model(cls, model):
        """The model's price, None if it has none (read on every start and resume)."""
        return _price_of_model.first(model=model)

    @property
    def max_input_tokens(self):
        return self.context_window - min(self.max_output_tokens, 4096)

    @property
    def document_budget(self):
        """Tokens the chosen documents may take, leaving room for the talk."""
        return int(self.max_input_tokens * DOCUMENT_SHARE_OF_INPUT)


_price_of_model = Prepared(lambda model: ModelPrice.objects.filter(model=model)[:1], model=str)


class EndReason(models.TextChoices):
    """Why a conversation or one of its calls ended."""

    USER = "user", "Stopped by the user"
    BUDGET = "budget", "The spending limit was reached"
    PAGE_GONE = "page_gone", "The page went away"
    CALL_CLOSED = "call_closed", "The call's connection closed"
    EXPIRED = "expired", "The call reached the 60-minute cap"
    REPLACED = "replaced", "The conversation moved to a new call"
    TAMPERING = "tampering", "The page kept changing the session"
    NO_CALL = "no_call", "No call was resumed in time"
    NEVER_CONNECTED = "never_connected", "Never connected"
    RUNNING_ELSEWHERE = "running_elsewhere", "Another conversation of the person's was running"


class TurnMode(models.TextChoices):
    """How a turn ends: the only place the modes are named."""

    VOICE_ACTIVITY = "server_vad", "Voice activity"
    SEMANTIC_VOICE_ACTIVITY = "semantic_vad", "Semantic voice activity"
    PUSH_TO_TALK = "push_to_talk", "Push to talk"


class SessionQuerySet(models.QuerySet):
    # What a conversation carries for its calls, and nothing that lists it shows: the instructions (with
    # every inline document in them, up to 300 KB), the minted session object (the same again) and
    # pasted text.
    LARGE_TEXTS = ("instructions", "session_config", "pasted_text")

    def without_texts(self):
        """Conversations without their large texts (the history, the lists)."""
        return self.defer(*self.LARGE_TEXTS)

    def listed(self):
        """Conversations as the rows that name their person and team (dashboards, spend CSV, totals)."""
        return self.without_texts().select_related("user", "team")

    def held(self):
        """Running conversations that a page holds now: it connected and has not gone since."""
        connected = models.Q(page_connected_at__isnull=False) & (
            models.Q(page_left_at__isnull=True) | models.Q(page_left_at__lt=F("page_connected_at")))
        return self.filter(status=RealtimeSession.ACTIVE).filter(connected)

    def readable_by(self, user):
        """What the user may read: their own conversations; a team admin's team's too; staff all."""
        if user.is_staff:
            return self
        return self.filter(models.Q(user=user) | models.Q(team__in=Team.objects.spend_visible_to(user)))

    def sweep(self, page_grace, call_cap, now=None):
        """End the conversations whose page went away (`page_grace` ago, or never came) or that no call
        resumed within NO_CALL_SECONDS, and the calls older than `call_cap`; returns
        [(session id, {upstream call id: sealed secret}, reason)] for what this ended, to hang up and tell."""
        now = now or timezone.now()
        ended = []
        cutoff = now - page_grace
        left = models.Q(page_left_at__lt=cutoff) & (
            models.Q(page_connected_at__isnull=True) | models.Q(page_left_at__gt=F("page_connected_at")))
        never = models.Q(page_connected_at__isnull=True, connected_at__lt=cutoff)
        since = now - datetime.timedelta(seconds=settings.NO_CALL_SECONDS)
        calls = Call.objects.filter(session=models.OuterRef("pk"))
        idle = (~models.Exists(calls.filter(status=Call.ACTIVE)) & ~models.Exists(calls.filter(ended_at__gt=since))
                & models.Q(created_at__lt=since))
        running = self.filter(status=RealtimeSession.ACTIVE)
        for reason, query in ((EndReason.PAGE_GONE, left | never), (EndReason.NO_CALL, idle)):
            for session in running.filter(query)[:50]:
                # Ended only if it still is what it was when read: a page that came back, or a call
                # resumed, since then keeps it going.
                ended_calls = session.end(reason, still=query)
                if ended_calls is not None:
                    ended.append((session.pk, ended_calls, reason))
        Call.end_all(Call.objects.filter(status=Call.ACTIVE, created_at__lt=now - call_cap), EndReason.EXPIRED)
        return ended


class CallQuerySet(models.QuerySet):
    """The sideband workers' leases: a worker watches the calls it holds a lease on."""

    def claimable(self, now):
        """The running calls whose lease is free or lapsed."""
        free = models.Q(sideband_lease_until__isnull=True) | models.Q(sideband_lease_until__lt=now)
        return self.filter(status=Call.ACTIVE).filter(free)

    def claim(self, owner, lease, limit=50):
        """Take up to `limit` running calls whose lease is free or lapsed; returns their ids."""
        now = timezone.now()
        candidates = self.claimable(now).values_list("pk", flat=True)[:limit]
        return self.claim_these(owner, lease, list(candidates), now)

    def claim_these(self, owner, lease, pks, now=None):
        """Take those of these calls that are running and free of a lease (as `claimable`); returns their ids.

        One conditional UPDATE per call, which is the lock: only one worker's changes the row. Its SQL is
        written here rather than built by the ORM for each call (`claimable(now).filter(pk=pk).update()`),
        which was a fifth of a sideband worker's CPU while it was woken for a burst of new calls. Called on
        the manager: a filter on the queryset is not part of it."""
        now = now or timezone.now()
        using = self._db or router.db_for_write(self.model, **self._hints)
        connection = connections[using]
        meta = self.model._meta
        until = meta.get_field("sideband_lease_until")
        owner_column, until_column, status_column = (connection.ops.quote_name(meta.get_field(name).column)
                                                     for name in ("sideband_owner", "sideband_lease_until", "status"))
        sql = (f"UPDATE {connection.ops.quote_name(meta.db_table)} SET {owner_column} = %s, {until_column} = %s "
               f"WHERE {connection.ops.quote_name(meta.pk.column)} = %s AND {status_column} = %s "
               f"AND ({until_column} IS NULL OR {until_column} < %s)")
        free_before = until.get_db_prep_value(now, connection)
        leased_until = until.get_db_prep_save(now + lease, connection)
        claimed = []
        with transaction.mark_for_rollback_on_error(using), connection.cursor() as cursor:
            for pk in pks:
                cursor.execute(sql, [owner, leased_until, meta.pk.get_db_prep_value(pk, connection), Call.ACTIVE,
                                     free_before])
                if cursor.rowcount:
                    claimed.append(pk)
        return claimed

    def renew(self, owner, watched, lease):
        """Extend the owner's leases on its running calls. Returns (the calls it holds: running, or among
        `watched` ended since, {id: (end reason, ended at)} for those of `watched` that ended).

        The renewal names no call: it reads and extends the owner's running calls (the status index
        holds the running ones only), and reads by id only the watched calls no longer among them (most
        renewals none). Naming every watched call cost a parameter each, twice, every renewal."""
        held = self.filter(status=Call.ACTIVE, sideband_owner=owner)
        running = set(held.values_list("pk", flat=True))
        held.update(sideband_lease_until=timezone.now() + lease)
        ended = {}
        gone = [pk for pk in watched if pk not in running]
        if gone:
            rows = self.filter(pk__in=gone, sideband_owner=owner).values_list("pk", "status", "end_reason", "ended_at")
            ended = {pk: (reason, ended_at) for pk, status, reason, ended_at in rows if status == Call.ENDED}
        return running | set(ended), ended

    def release(self, owner=None):
        """Give the owner's leases back (every running call's, without an owner) for another worker."""
        calls = self.filter(sideband_owner=owner) if owner is not None else self.filter(status=Call.ACTIVE)
        calls.update(sideband_owner="", sideband_lease_until=None)


class RealtimeSession(models.Model):
    """One conversation: its choices, documents, transcript and totals, over one call or several."""

    ACTIVE = "active"
    ENDED = "ended"
    STATUS_CHOICES = [(ACTIVE, "Active"), (ENDED, "Ended")]
    TURN_CHOICES = TurnMode.choices

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.PROTECT, related_name="realtime_sessions")
    team = models.ForeignKey(Team, models.PROTECT, null=True, blank=True, related_name="realtime_sessions")
    model = models.CharField(max_length=100)
    voice = models.CharField(max_length=40)
    turn_detection = models.CharField(max_length=20, choices=TURN_CHOICES)
    status = models.CharField(max_length=10, choices=STATUS_CHOICES, default=ACTIVE)
    instructions = models.TextField()
    # The GA session object the server minted; the sideband restores it when a page changes it.
    session_config = models.JSONField(default=dict)
    # What went into the context: [{"id", "title", "tokens", "sha256"}].
    documents = models.JSONField(default=list)
    document_tokens = models.PositiveIntegerField(default=0)
    # Pasted text is kept so every call of the conversation can be given it again.
    pasted_text = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    connected_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    end_reason = models.CharField(max_length=40, blank=True, choices=EndReason.choices)
    # What the page reported (every kind of usage; `response_count`: answers only).
    input_tokens = models.PositiveBigIntegerField(default=0)
    cached_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=14, decimal_places=8, default=Decimal(0))
    response_count = models.PositiveIntegerField(default=0)
    reported_count = models.PositiveIntegerField(default=0)
    # What the server saw itself on its sideband.
    verified_input_tokens = models.PositiveBigIntegerField(default=0)
    verified_output_tokens = models.PositiveBigIntegerField(default=0)
    verified_cost_usd = models.DecimalField(max_digits=14, decimal_places=8, default=Decimal(0))
    verified_response_count = models.PositiveIntegerField(default=0)
    verified_count = models.PositiveIntegerField(default=0)
    # The bill: per answer and per transcription, the verified usage where there is one, else the page's.
    billed_input_tokens = models.PositiveBigIntegerField(default=0)
    billed_cached_tokens = models.PositiveBigIntegerField(default=0)
    billed_output_tokens = models.PositiveBigIntegerField(default=0)
    billed_cost_usd = models.DecimalField(max_digits=14, decimal_places=8, default=Decimal(0))
    billed_response_count = models.PositiveIntegerField(default=0)
    transcription_cost_usd = models.DecimalField(max_digits=14, decimal_places=8, default=Decimal(0))
    # When the conversation's first usage went on the bill: it counts once as a session, on that day.
    first_billed_at = models.DateTimeField(null=True, blank=True)
    # Usage seen by both the page and the server, and how often the two disagreed.
    paired_count = models.PositiveIntegerField(default=0)
    disagreement_count = models.PositiveIntegerField(default=0)
    # The page's usage socket: when it last connected and last went away.
    page_connected_at = models.DateTimeField(null=True, blank=True)
    page_left_at = models.DateTimeField(null=True, blank=True)

    objects = SessionQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["user", "-created_at"]), models.Index(fields=["status"]),
                   models.Index(fields=["first_billed_at"]), models.Index(fields=["team", "first_billed_at"])]

    def __str__(self):
        return f"{self.user} {self.model} {self.created_at:%Y-%m-%d %H:%M}"

    # ---- lifecycle ----

    def end(self, reason, still=None):
        """End the conversation once, and every call still running in it; with `still` (a condition on
        the conversation) only if it holds as the conversation ends.

        Returns the calls this ended ({upstream id: sealed secret}, as Call.end_all), for the caller to
        hang up, or None if the conversation had already ended (or `still` no longer held).
        """
        with transaction.atomic():
            changed = (
                RealtimeSession.objects.filter(pk=self.pk, status=self.ACTIVE).filter(still or models.Q())
                .update(status=self.ENDED, ended_at=timezone.now(), end_reason=reason)
            )
            calls = Call.end_all(self.calls.all(), reason) if changed else None
        self.refresh_from_db()
        return calls

    @property
    def duration_seconds(self):
        """From the first call to the end; None while the conversation goes on."""
        if not self.ended_at:
            return None
        return max(0, int((self.ended_at - (self.connected_at or self.created_at)).total_seconds()))

    @property
    def current_call(self):
        return self.calls.filter(status=Call.ACTIVE).order_by("-number").first()

    # ---- usage ----

    def record_usage(self, key, counts, cost, *, source="client", kind=None, model=None, call=None, audio_seconds=None):
        """Store one priced usage (see store_usages); returns (record, created) and leaves this
        object's totals as stored."""
        entry = UsageEntry(self.pk, key, counts, cost, source, kind or UsageRecord.RESPONSE, model or self.model,
                           call, audio_seconds)
        (stored,) = RealtimeSession.store_usages([entry])
        for name in TOTAL_FIELDS:
            setattr(self, name, getattr(stored.session, name))
        return stored.record, stored.created

    @staticmethod
    def store_usages(entries):
        """Store priced usages, once per source each, and keep every running total, in one transaction.

        A repeated usage changes nothing, so a page may resend whatever it has not
        seen acknowledged. Per answer the bill counts the server's record where
        there is one, else the page's. The conversations are locked first (in id
        order, then the day rollups in key order, so batches never deadlock): the
        other source's record is either seen here or sees this one. Returns one
        Stored per entry, in order.
        """
        for attempt in (1, 2):
            try:
                with transaction.atomic():
                    return _store_usages(entries)
            except IntegrityError:
                # A rollup row made by another batch between our look and our insert: look again.
                if attempt == 2:
                    raise

    def stop_if_over_budget(self):
        """End every running conversation under a budget this one has crossed.

        Returns [(session id, {call id: sealed secret})] for the conversations this ended, so
        the caller can tell their pages and hang their calls up.
        """
        stopped = []
        for budget in Budget.for_session(self.user, self.team):
            if budget.spent() > budget.monthly_limit_usd:
                for running in budget.running_sessions():
                    calls = running.end(EndReason.BUDGET)
                    if calls is not None:
                        stopped.append((running.pk, calls))
        return stopped

    @property
    def verified(self):
        return self.verified_count > 0

    @property
    def unverified_count(self):
        """Usage only the page reported: kept on the bill, not yet confirmed by the server."""
        return self.reported_count - self.paired_count

    @property
    def usage_mismatch(self):
        """The page's reports disagree with what the server saw, or miss some of it."""
        return self.disagreement_count > 0 or self.verified_count > self.paired_count

    def totals(self):
        return {
            # Grows with every record: a page keeps the newest totals whatever order frames arrive in.
            "version": self.reported_count + self.verified_count,
            "input_tokens": self.billed_input_tokens,
            "cached_tokens": self.billed_cached_tokens,
            "output_tokens": self.billed_output_tokens,
            "cost_usd": f"{self.billed_cost_usd:.8f}",
            "transcription_cost_usd": f"{self.transcription_cost_usd:.8f}",
            "responses": self.billed_response_count,
            "verified": self.verified,
            "verified_cost_usd": f"{self.verified_cost_usd:.8f}",
            "verified_responses": self.verified_response_count,
            "reported_cost_usd": f"{self.cost_usd:.8f}",
            "reported_responses": self.response_count,
            "unverified": self.unverified_count,
            "usage_mismatch": self.usage_mismatch,
        }


def billing_changes(record, other):
    """What the bill gains (+1) and loses (-1) with a new record, given the other source's record of
    the same usage (or None): per answer, the server's record where there is one, else the page's."""
    if other is None:
        return [(record, 1)]
    if record.source == UsageRecord.SERVER:
        return [(other, -1), (record, 1)]  # the server's figures replace the page's
    return []  # the server's figures stay on the bill


def _totals_update(current, record, other, changes):
    """The conversation's totals after one new usage record, given the other source's record of the same
    usage (or None) and what goes on the bill: {field: new value} for the fields that change."""
    response = record.kind == UsageRecord.RESPONSE
    server = record.source == UsageRecord.SERVER
    update = {}

    def add(field, amount):
        if amount:
            update[field] = update.get(field, getattr(current, field)) + amount

    if server:
        add("verified_count", 1)
        add("verified_cost_usd", record.cost_usd)
        if response:
            add("verified_response_count", 1)
            add("verified_input_tokens", record.input_tokens)
            add("verified_output_tokens", record.output_tokens)
    else:
        add("reported_count", 1)
        add("cost_usd", record.cost_usd)
        if response:
            add("response_count", 1)
            add("input_tokens", record.input_tokens)
            add("cached_tokens", record.cached_tokens)
            add("output_tokens", record.output_tokens)

    if other is not None:
        add("paired_count", 1)
        if other.cost_usd != record.cost_usd:
            add("disagreement_count", 1)
    for billed, sign in changes:
        add("billed_cost_usd", sign * billed.cost_usd)
        if billed.kind == UsageRecord.RESPONSE:
            add("billed_response_count", sign)
            add("billed_input_tokens", sign * billed.input_tokens)
            add("billed_cached_tokens", sign * billed.cached_tokens)
            add("billed_output_tokens", sign * billed.output_tokens)
        else:
            add("transcription_cost_usd", sign * billed.cost_usd)
    return update


class UsageEntry:
    """One priced usage to store: for an answer, `key` is its response id; for a transcription, its item id."""

    __slots__ = ("session_id", "key", "counts", "cost", "source", "kind", "model", "call", "audio_seconds")

    def __init__(self, session_id, key, counts, cost, source, kind, model, call=None, audio_seconds=None):
        self.session_id, self.key, self.counts, self.source, self.kind = session_id, key, counts, source, kind
        # Stored with 8 decimals; the running totals must add exactly what is stored.
        self.cost = Decimal(cost).quantize(COST_PLACES, ROUND_HALF_UP)
        self.model, self.call, self.audio_seconds = model, call, audio_seconds


class Stored:
    """What storing one entry did: the record (new, or the one stored before), and the conversation as
    it stood just after (a snapshot, with its user and team)."""

    __slots__ = ("record", "created", "session")

    def __init__(self, record, created, session):
        self.record, self.created, self.session = record, created, session


# The reads of every usage batch, compiled once per process (building them cost more than running them).
# The conversations are locked, in order; not their large texts (listed()): the totals, the dashboards'
# row and the budgets need none of them.
_locked_for_usage = Prepared(
    lambda ids: RealtimeSession.objects.select_for_update(of=("self",)).listed().filter(pk__in=ids).order_by("pk"),
    ids=[uuid.UUID])
_running_calls = Prepared(
    lambda ids: Call.objects.filter(session_id__in=ids, status=Call.ACTIVE).order_by("session_id", "-number"),
    ids=[uuid.UUID])
_records_by_key = Prepared(
    lambda ids, keys: UsageRecord.objects.filter(session_id__in=ids, response_id__in=keys), ids=[uuid.UUID], keys=[str])


def _store_usages(entries):
    _usage_write_begins()
    ids = sorted({entry.session_id for entry in entries})
    sessions = {session.pk: session for session in _locked_for_usage(ids=ids)}
    current_calls = {}
    if any(entry.call is None for entry in entries):
        for call in _running_calls(ids=ids):
            current_calls.setdefault(call.session_id, call)
    known = {(r.session_id, r.kind, r.response_id, r.source): r
             for r in _records_by_key(ids=ids, keys=sorted({str(entry.key) for entry in entries}))}
    new, plan = [], []
    for entry in entries:
        session = sessions[entry.session_id]  # a missing conversation is the caller's error, found before
        slot = (entry.session_id, entry.kind, entry.key, entry.source)
        if slot in known:
            plan.append((entry, known[slot], None, False))
            continue
        record = UsageRecord(
            session=session, call=entry.call or current_calls.get(entry.session_id), response_id=entry.key,
            kind=entry.kind, source=entry.source, model=entry.model, cost_usd=entry.cost,
            audio_seconds=entry.audio_seconds, **entry.counts.as_record_fields(),
        )
        other_source = UsageRecord.SERVER if entry.source == UsageRecord.CLIENT else UsageRecord.CLIENT
        other = known.get((entry.session_id, entry.kind, entry.key, other_source))
        known[slot] = record
        new.append(record)
        plan.append((entry, record, other, True))
    if new:
        UsageRecord.objects.bulk_create(new)
    days = {}  # rollup key -> {day: amounts}
    results = []
    for entry, record, other, created in plan:
        session = sessions[entry.session_id]
        if not created:
            results.append(Stored(record, False, copy.copy(session)))
            continue
        changes = billing_changes(record, other)
        for name, value in _totals_update(session, record, other, changes).items():
            setattr(session, name, value)
        # A conversation counts once, on the day of its earliest record.
        moved = None
        if session.first_billed_at is None or record.created_at < session.first_billed_at:
            moved = (session.first_billed_at, record.created_at)
            session.first_billed_at = record.created_at
        record.billed_changes = SpendDay.changes_by_day(changes, moved)
        key = (session.user_id, session.team_id, session.model)
        for day, amounts in record.billed_changes.items():
            into = days.setdefault(key, {}).setdefault(day, dict.fromkeys(amounts, 0))
            for name, value in amounts.items():
                into[name] += value
        results.append(Stored(record, True, copy.copy(session)))
    touched = {record.session_id for record in new}
    changed = [sessions[pk] for pk in ids if pk in touched]
    if changed:
        _save_totals(changed)
    for key in sorted(days, key=lambda k: (k[0], str(k[1]), k[2])):
        SpendDay.apply(*key, days[key])
    return results


def _save_totals(sessions):
    """Write the conversations' totals: plain values, not F(), as the rows are locked (PostgreSQL) or the
    database is (SQLite); one statement sent for all of them (bulk_update's CASE costs more to build)."""
    from django.db import connection

    meta, quote = RealtimeSession._meta, connection.ops.quote_name
    fields = [meta.get_field(name) for name in TOTAL_FIELDS]
    sql = (f"UPDATE {quote(meta.db_table)} SET " + ", ".join(f"{quote(f.column)} = %s" for f in fields)
           + f" WHERE {quote(meta.pk.column)} = %s")
    rows = [[f.get_db_prep_save(getattr(session, f.attname), connection) for f in fields]
            + [meta.pk.get_db_prep_save(session.pk, connection)] for session in sessions]
    with connection.cursor() as cursor:
        cursor.executemany(sql, rows)


# What a usage record changes on its conversation.
TOTAL_FIELDS = (
    "reported_count", "cost_usd", "response_count", "input_tokens", "cached_tokens", "output_tokens",
    "verified_count", "verified_cost_usd", "verified_response_count", "verified_input_tokens",
    "verified_output_tokens", "paired_count", "disagreement_count", "billed_cost_usd", "billed_response_count",
    "billed_input_tokens", "billed_cached_tokens", "billed_output_tokens", "transcription_cost_usd",
    "first_billed_at",
)


class Call(models.Model):
    """One upstream WebRTC call of a conversation; the server created it and watches it."""

    ACTIVE = "active"
    ENDED = "ended"
    STATUS_CHOICES = [(ACTIVE, "Active"), (ENDED, "Ended")]
    API_KEY = "api_key"
    CALL_SECRET = "call_secret"
    CREDENTIAL_CHOICES = [(API_KEY, "API key"), (CALL_SECRET, "The call's own secret")]

    session = models.ForeignKey(RealtimeSession, models.CASCADE, related_name="calls")
    number = models.PositiveIntegerField(help_text="1 for the conversation's first call")
    call_id = models.CharField(max_length=128, unique=True)
    status = models.CharField(max_length=10, choices=STATUS_CHOICES, default=ACTIVE)
    created_at = models.DateTimeField(default=timezone.now)
    ended_at = models.DateTimeField(null=True, blank=True)
    end_reason = models.CharField(max_length=40, blank=True, choices=EndReason.choices)
    # The ephemeral secret that created the call, sealed: the sideband's and the hangup's
    # second credential where the API key is refused. Wiped when the call ends (end_all
    # hands it to the hangup).
    sealed_secret = models.TextField(blank=True)
    # Which sideband worker watches the call, and until when its claim holds.
    sideband_owner = models.CharField(max_length=64, blank=True)
    sideband_lease_until = models.DateTimeField(null=True, blank=True)
    sideband_credential = models.CharField(max_length=20, blank=True, choices=CREDENTIAL_CHOICES)
    sideband_attached_at = models.DateTimeField(null=True, blank=True)
    # When the documents (and, after the first call, the earlier turns) were in its context.
    context_ready_at = models.DateTimeField(null=True, blank=True)

    objects = CallQuerySet.as_manager()

    class Meta:
        ordering = ["session", "number"]
        constraints = [models.UniqueConstraint(fields=["session", "number"], name="one_call_number_per_session")]
        indexes = [models.Index(fields=["status", "sideband_lease_until"])]

    def __str__(self):
        return f"call {self.number} of {self.session_id} ({self.call_id})"

    @classmethod
    def end_all(cls, calls, reason):
        """End the given calls that are still running; returns {upstream id: sealed secret} for the hangup.

        The record forgets the secret as the call ends; the hangup may need it (FACTS section 7), so it is
        handed to the caller, in memory only.
        """
        ended = dict(calls.filter(status=cls.ACTIVE).values_list("call_id", "sealed_secret"))
        calls.filter(status=cls.ACTIVE).update(
            status=cls.ENDED, ended_at=timezone.now(), end_reason=reason, sealed_secret=""
        )
        return ended

    def end(self, reason):
        """End this call once; True if this ended it."""
        ended = bool(Call.end_all(Call.objects.filter(pk=self.pk), reason))
        self.refresh_from_db()
        return ended


class SessionEvent(models.Model):
    """Something the server did to police a conversation, kept for admins."""

    TAMPERED = "tampered"
    RESTORED = "restored"
    HUNG_UP = "hung_up"
    RESPONSE_CANCELLED = "response_cancelled"
    KIND_CHOICES = [
        (TAMPERED, "The page changed the session"),
        (RESTORED, "The server restored its values"),
        (HUNG_UP, "The server hung the call up"),
        (RESPONSE_CANCELLED, "An answer over the output limit was cancelled"),
    ]

    session = models.ForeignKey(RealtimeSession, models.CASCADE, related_name="events")
    call = models.ForeignKey(Call, models.SET_NULL, null=True, blank=True, related_name="events")
    kind = models.CharField(max_length=30, choices=KIND_CHOICES)
    detail = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "pk"]


class UsageQuerySet(models.QuerySet):
    def billable(self):
        """One record per answer or transcription: the server's own where it has one, else the page's."""
        verified = UsageRecord.objects.filter(
            session=models.OuterRef("session"), kind=models.OuterRef("kind"),
            response_id=models.OuterRef("response_id"), source=UsageRecord.SERVER,
        )
        return self.filter(
            models.Q(source=UsageRecord.SERVER) | (models.Q(source=UsageRecord.CLIENT) & ~models.Exists(verified))
        )


class UsageRecord(models.Model):
    """One answer's or one input transcription's usage, priced when recorded; stored once per source."""

    CLIENT = "client"
    SERVER = "server"
    SOURCE_CHOICES = [(CLIENT, "Reported by the browser"), (SERVER, "Verified by the server")]
    RESPONSE = "response"
    TRANSCRIPTION = "transcription"
    KIND_CHOICES = [(RESPONSE, "Answer"), (TRANSCRIPTION, "Input transcription")]

    session = models.ForeignKey(RealtimeSession, models.CASCADE, related_name="usage_records")
    call = models.ForeignKey(Call, models.SET_NULL, null=True, blank=True, related_name="usage_records")
    # The response id, or for a transcription the id of the transcribed item.
    response_id = models.CharField(max_length=128)
    kind = models.CharField(max_length=20, choices=KIND_CHOICES, default=RESPONSE)
    source = models.CharField(max_length=10, choices=SOURCE_CHOICES, default=CLIENT)
    # The realtime model, or for a transcription the transcription model.
    model = models.CharField(max_length=100)
    input_text_tokens = models.PositiveIntegerField(default=0)
    input_audio_tokens = models.PositiveIntegerField(default=0)
    input_image_tokens = models.PositiveIntegerField(default=0)
    cached_text_tokens = models.PositiveIntegerField(default=0)
    cached_audio_tokens = models.PositiveIntegerField(default=0)
    cached_image_tokens = models.PositiveIntegerField(default=0)
    output_text_tokens = models.PositiveIntegerField(default=0)
    output_audio_tokens = models.PositiveIntegerField(default=0)
    # Transcriptions billed by duration instead of tokens.
    audio_seconds = models.DecimalField(max_digits=10, decimal_places=3, null=True, blank=True)
    cost_usd = models.DecimalField(max_digits=14, decimal_places=8)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = UsageQuerySet.as_manager()

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(fields=["session", "kind", "response_id", "source"], name="one_usage_per_response")
        ]

    @property
    def input_tokens(self):
        return self.input_text_tokens + self.input_audio_tokens + self.input_image_tokens

    @property
    def cached_tokens(self):
        return self.cached_text_tokens + self.cached_audio_tokens + self.cached_image_tokens

    @property
    def output_tokens(self):
        return self.output_text_tokens + self.output_audio_tokens


class TranscriptEntry(models.Model):
    """One turn, in the conversation's order: by call, then by where the upstream placed the item."""

    USER = "user"
    ASSISTANT = "assistant"
    ROLE_CHOICES = [(USER, "User"), (ASSISTANT, "Assistant")]

    session = models.ForeignKey(RealtimeSession, models.CASCADE, related_name="transcript")
    item_id = models.CharField(max_length=128)
    role = models.CharField(max_length=10, choices=ROLE_CHOICES)
    text = models.TextField(blank=True)
    call_number = models.PositiveIntegerField(default=1)
    position = models.PositiveIntegerField(default=0)
    # For an answer: the response that spoke it (its cost is that response's usage).
    response_id = models.CharField(max_length=128, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["call_number", "position", "pk"]
        constraints = [models.UniqueConstraint(fields=["session", "item_id"], name="one_entry_per_item")]

    @classmethod
    def place(cls, session_id, call_number, item_id, role, position):
        """A turn, without its text yet, where the upstream put it in the conversation."""
        cls.objects.get_or_create(
            session_id=session_id, item_id=item_id,
            defaults={"role": role, "call_number": call_number, "position": position},
        )

    @classmethod
    def record_text(cls, session_id, item_id, role, text, source):
        """A turn's text: the server's version wins over the page's. A turn nobody placed goes last."""
        text = text[:MAX_TRANSCRIPT_CHARS]
        entries = cls.objects.filter(session_id=session_id, item_id=item_id)
        if source == "page":
            entries = entries.filter(text="")
        if entries.update(text=text) or cls.objects.filter(session_id=session_id, item_id=item_id).exists():
            return
        call_number = Call.objects.filter(session_id=session_id).aggregate(n=models.Max("number"))["n"] or 1
        last = cls.objects.filter(session_id=session_id, call_number=call_number).aggregate(p=models.Max("position"))
        cls.objects.get_or_create(
            session_id=session_id, item_id=item_id,
            defaults={"role": role, "text": text, "call_number": call_number, "position": (last["p"] or 0) + 1},
        )

    @classmethod
    def mark_cut(cls, session_id, item_id, audio_end_ms):
        """An answer the user cut off, whose heard part the upstream did not give back: its text stays, said
        to be cut off where its audio stopped."""
        stopped = audio_end_ms if isinstance(audio_end_ms, (int, float)) and not isinstance(audio_end_ms, bool) else None
        note = " [cut off]" if stopped is None or stopped < 0 else f" [cut off after {stopped / 1000:.1f} s]"
        cls.objects.filter(session_id=session_id, item_id=item_id).exclude(text="").exclude(
            text__endswith=note).update(text=Concat(F("text"), models.Value(note)))


class ToolCall(models.Model):
    """The model looked something up: its query, what the server answered, and the answer that followed."""

    session = models.ForeignKey(RealtimeSession, models.CASCADE, related_name="tool_calls")
    call = models.ForeignKey(Call, models.SET_NULL, null=True, blank=True, related_name="tool_calls")
    function_call_id = models.CharField(max_length=128, help_text="the upstream's call_id of the function call")
    name = models.CharField(max_length=64)
    query = models.TextField(blank=True)
    output = models.TextField(blank=True)
    response_id = models.CharField(max_length=128, blank=True, help_text="the response that asked")
    # The answer the passages were for: the next response, and its spoken item.
    answer_response_id = models.CharField(max_length=128, blank=True)
    answer_item_id = models.CharField(max_length=128, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["session", "function_call_id"], name="one_tool_call_per_function_call")
        ]


class Source(models.Model):
    """One passage a tool call returned, as it was returned: kept even if its document goes."""

    tool_call = models.ForeignKey(ToolCall, models.CASCADE, related_name="sources")
    position = models.PositiveIntegerField()
    document = models.ForeignKey("documents_app.Document", models.SET_NULL, null=True, blank=True, related_name="+")
    passage = models.ForeignKey("documents_app.Passage", models.SET_NULL, null=True, blank=True, related_name="+")
    title = models.CharField(max_length=200)
    page = models.PositiveIntegerField(null=True, blank=True)
    section = models.CharField(max_length=300, blank=True)
    text = models.TextField()

    class Meta:
        ordering = ["tool_call", "position"]

    def as_json(self):
        return {
            "document_id": str(self.document_id) if self.document_id else None,
            "passage_id": self.passage_id,
            "title": self.title,
            "page": self.page,
            "section": self.section or None,
            "text": self.text,
        }


class WorkerBeat(models.Model):
    """A sideband worker's sign of life, for /healthz: when it last looked at the calls."""

    name = models.CharField(max_length=64, primary_key=True)
    seen_at = models.DateTimeField()
    watching = models.PositiveIntegerField(default=0)

    @classmethod
    def alive(cls, within_seconds):
        return cls.objects.filter(seen_at__gte=timezone.now() - timezone.timedelta(seconds=within_seconds))


class TranscriptionPrice(models.Model):
    """USD for input transcription by one model: per million tokens, or per minute; editable in the admin."""

    model = models.CharField(max_length=100, unique=True)
    text_input = models.DecimalField(max_digits=10, decimal_places=4, default=0, validators=NOT_NEGATIVE,
                                     help_text="per million tokens")
    audio_input = models.DecimalField(max_digits=10, decimal_places=4, default=0, validators=NOT_NEGATIVE,
                                      help_text="per million tokens")
    text_output = models.DecimalField(max_digits=10, decimal_places=4, default=0, validators=NOT_NEGATIVE,
                                      help_text="per million tokens")
    per_minute = models.DecimalField(max_digits=10, decimal_places=6, default=0, validators=NOT_NEGATIVE,
                                     help_text="for usage reported as a duration")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model"]

    def __str__(self):
        return self.model


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
        if record.kind == UsageRecord.RESPONSE:
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
