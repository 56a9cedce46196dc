import uuid
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.db.models import F
from django.utils import timezone

from teams_app.models import Team

MILLION = Decimal(1_000_000)
# Room kept for the conversation itself when documents fill the context.
DOCUMENT_SHARE_OF_INPUT = Decimal("0.6")


class ModelPrice(models.Model):
    """USD per million tokens for one realtime model; editable in the admin."""

    model = models.CharField(max_length=100, unique=True)
    text_input = models.DecimalField(max_digits=10, decimal_places=4)
    text_cached_input = models.DecimalField(max_digits=10, decimal_places=4)
    text_output = models.DecimalField(max_digits=10, decimal_places=4)
    audio_input = models.DecimalField(max_digits=10, decimal_places=4)
    audio_cached_input = models.DecimalField(max_digits=10, decimal_places=4)
    audio_output = models.DecimalField(max_digits=10, decimal_places=4)
    image_input = models.DecimalField(max_digits=10, decimal_places=4, default=0)
    image_cached_input = models.DecimalField(max_digits=10, decimal_places=4, default=0)
    context_window = models.PositiveIntegerField(help_text="tokens")
    max_output_tokens = models.PositiveIntegerField(help_text="tokens per response")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model"]

    def __str__(self):
        return self.model

    @property
    def max_input_tokens(self):
        return self.context_window - min(self.max_output_tokens, 4096)

    @property
    def document_budget(self):
        """Tokens the chosen documents may take, leaving room for the talk."""
        return int(self.max_input_tokens * DOCUMENT_SHARE_OF_INPUT)


class RealtimeSession(models.Model):
    CREATED = "created"
    ACTIVE = "active"
    ENDED = "ended"
    STATUS_CHOICES = [(CREATED, "Created"), (ACTIVE, "Active"), (ENDED, "Ended")]
    TURN_CHOICES = [
        ("server_vad", "Voice activity"),
        ("semantic_vad", "Semantic voice activity"),
        ("push_to_talk", "Push to talk"),
    ]

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.PROTECT, related_name="realtime_sessions")
    team = models.ForeignKey(Team, models.PROTECT, null=True, blank=True, related_name="realtime_sessions")
    model = models.CharField(max_length=100)
    voice = models.CharField(max_length=40)
    turn_detection = models.CharField(max_length=20, choices=TURN_CHOICES)
    status = models.CharField(max_length=10, choices=STATUS_CHOICES, default=CREATED)
    upstream_session_id = models.CharField(max_length=100, blank=True)
    call_id = models.CharField(max_length=100, blank=True)
    secret_expires_at = models.DateTimeField()
    instructions = models.TextField()
    # What went into the context: [{"id", "title", "tokens", "sha256"}].
    documents = models.JSONField(default=list)
    document_tokens = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    connected_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    end_reason = models.CharField(max_length=40, blank=True)
    # Totals from the usage records, kept here so reads stay cheap.
    input_tokens = models.PositiveBigIntegerField(default=0)
    cached_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=14, decimal_places=8, default=Decimal(0))
    response_count = models.PositiveIntegerField(default=0)
    # The same, as the server saw it on its own sideband connection to the call.
    verified_input_tokens = models.PositiveBigIntegerField(default=0)
    verified_output_tokens = models.PositiveBigIntegerField(default=0)
    verified_cost_usd = models.DecimalField(max_digits=14, decimal_places=8, default=Decimal(0))
    verified_response_count = models.PositiveIntegerField(default=0)
    # The page's usage socket: when it last connected and last went away.
    page_connected_at = models.DateTimeField(null=True, blank=True)
    page_left_at = models.DateTimeField(null=True, blank=True)
    # Which sideband worker watches the call, and until when its claim holds.
    sideband_owner = models.CharField(max_length=64, blank=True)
    sideband_lease_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["user", "-created_at"]), models.Index(fields=["status"])]

    def __str__(self):
        return f"{self.user} {self.model} {self.created_at:%Y-%m-%d %H:%M}"

    def end(self, reason):
        """Mark the session ended once; True if this call ended it."""
        changed = (
            RealtimeSession.objects.filter(pk=self.pk)
            .exclude(status=self.ENDED)
            .update(status=self.ENDED, ended_at=timezone.now(), end_reason=reason)
        )
        self.refresh_from_db()
        return bool(changed)

    def record_usage(self, response_id, counts, cost, source="client"):
        """Store one response's usage once; returns (record, created).

        A repeated report for the same response and source changes nothing, so
        a browser may resend whatever it has not seen acknowledged.
        """
        try:
            with transaction.atomic():
                record = UsageRecord.objects.create(
                    session=self,
                    response_id=response_id,
                    source=source,
                    model=self.model,
                    cost_usd=cost,
                    **counts.as_record_fields(),
                )
                if source == UsageRecord.CLIENT:
                    RealtimeSession.objects.filter(pk=self.pk).update(
                        input_tokens=F("input_tokens") + counts.input_total,
                        cached_tokens=F("cached_tokens") + counts.cached_total,
                        output_tokens=F("output_tokens") + counts.output_total,
                        cost_usd=F("cost_usd") + cost,
                        response_count=F("response_count") + 1,
                    )
                else:
                    RealtimeSession.objects.filter(pk=self.pk).update(
                        verified_input_tokens=F("verified_input_tokens") + counts.input_total,
                        verified_output_tokens=F("verified_output_tokens") + counts.output_total,
                        verified_cost_usd=F("verified_cost_usd") + cost,
                        verified_response_count=F("verified_response_count") + 1,
                    )
        except IntegrityError:
            record = UsageRecord.objects.get(session=self, response_id=response_id, source=source)
            created = False
        else:
            created = True
        self.refresh_from_db()
        return record, created

    def stop_if_over_budget(self):
        """End every running session under a budget this session has crossed.

        Returns [(session id, call id)] for the sessions this call ended, so the
        caller can tell their pages and hang their calls up.
        """
        stopped = []
        for budget in Budget.for_session(self.user, self.team):
            if budget.spent() > budget.monthly_limit_usd:
                for running in budget.running_sessions():
                    if running.end("budget"):
                        stopped.append((running.pk, running.call_id))
        return stopped

    @property
    def verified(self):
        return self.verified_response_count > 0

    @property
    def usage_mismatch(self):
        """The browser's reports disagree with, or miss, what the server saw itself."""
        return self.verified and (
            self.verified_cost_usd != self.cost_usd or self.verified_response_count != self.response_count
        )

    def totals(self):
        return {
            "input_tokens": self.input_tokens,
            "cached_tokens": self.cached_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": f"{self.cost_usd:.6f}",
            "responses": self.response_count,
            "verified": self.verified,
            "verified_cost_usd": f"{self.verified_cost_usd:.6f}",
            "verified_responses": self.verified_response_count,
            "usage_mismatch": self.usage_mismatch,
        }


class UsageQuerySet(models.QuerySet):
    def billable(self):
        """One record per response: the server's own where it has one, else the browser's."""
        verified = UsageRecord.objects.filter(
            session=models.OuterRef("session"), response_id=models.OuterRef("response_id"), source=UsageRecord.SERVER
        )
        return self.filter(
            models.Q(source=UsageRecord.SERVER) | (models.Q(source=UsageRecord.CLIENT) & ~models.Exists(verified))
        )


class UsageRecord(models.Model):
    """One response's usage, priced when it was recorded; stored once per source."""

    CLIENT = "client"
    SERVER = "server"
    SOURCE_CHOICES = [(CLIENT, "Reported by the browser"), (SERVER, "Verified by the server")]

    session = models.ForeignKey(RealtimeSession, models.CASCADE, related_name="usage_records")
    response_id = models.CharField(max_length=128)
    source = models.CharField(max_length=10, choices=SOURCE_CHOICES, default=CLIENT)
    model = models.CharField(max_length=100)
    input_text_tokens = models.PositiveIntegerField(default=0)
    input_audio_tokens = models.PositiveIntegerField(default=0)
    input_image_tokens = models.PositiveIntegerField(default=0)
    cached_text_tokens = models.PositiveIntegerField(default=0)
    cached_audio_tokens = models.PositiveIntegerField(default=0)
    cached_image_tokens = models.PositiveIntegerField(default=0)
    output_text_tokens = models.PositiveIntegerField(default=0)
    output_audio_tokens = models.PositiveIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=14, decimal_places=8)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = UsageQuerySet.as_manager()

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(fields=["session", "response_id", "source"], name="one_usage_per_response")
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
    USER = "user"
    ASSISTANT = "assistant"
    ROLE_CHOICES = [(USER, "User"), (ASSISTANT, "Assistant")]

    session = models.ForeignKey(RealtimeSession, models.CASCADE, related_name="transcript")
    item_id = models.CharField(max_length=128)
    role = models.CharField(max_length=10, choices=ROLE_CHOICES)
    text = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "pk"]
        constraints = [models.UniqueConstraint(fields=["session", "item_id"], name="one_entry_per_item")]


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
        """Spend this month under this budget, from the recorded usage."""
        records = UsageRecord.objects.billable().filter(created_at__gte=since or month_start())
        if self.user_id:
            records = records.filter(session__user_id=self.user_id)
        else:
            records = records.filter(session__team_id=self.team_id)
        return records.aggregate(total=models.Sum("cost_usd"))["total"] or Decimal(0)

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

    @classmethod
    def for_session(cls, user, team):
        """The budgets a session of this user, billed to this team, counts against."""
        query = models.Q(user=user)
        if team is not None:
            query |= models.Q(team=team)
        return list(cls.objects.filter(query).select_related("user", "team"))
