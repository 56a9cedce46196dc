"""Usage records, one per answer or transcription and source, and storing them: the bill per
answer (the server's record where there is one, else the page's) and every running total kept in the
record's transaction."""

import copy
import uuid
from decimal import ROUND_HALF_UP, Decimal

from django.db import models

from voiceproject.prepared import Prepared

from .conversations import Call, RealtimeSession
from .prices import COST_PLACES
from .spend import SpendDay, _usage_write_begins


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
