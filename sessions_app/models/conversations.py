"""A conversation (RealtimeSession), its upstream calls, what the server did to police it, and
the sideband workers' heartbeats: the lifecycle (attach, end, sweep, end reasons) lives here."""

import datetime
import uuid
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, connections, models, router, transaction
from django.db.models import F
from django.utils import timezone

from teams_app.models import Team


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
        from .records import TOTAL_FIELDS, UsageEntry, UsageRecord  # records build on conversations

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
        from .records import _store_usages

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
        from .spend import Budget  # budgets build on conversations

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


class WorkerBeat(models.Model):
    """A sideband worker's sign of life, for /healthz: when it last looked at the calls."""

    name = models.CharField(max_length=64, primary_key=True)
    seen_at = models.DateTimeField()
    watching = models.PositiveIntegerField(default=0)

    @classmethod
    def alive(cls, within_seconds):
        return cls.objects.filter(seen_at__gte=timezone.now() - timezone.timedelta(seconds=within_seconds))
