import datetime
import uuid
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.db.models import F
from django.utils import timezone

from teams_app.models import Team

MILLION = Decimal(1_000_000)
COST_PLACES = Decimal("0.00000001")
MAX_TRANSCRIPT_CHARS = 20_000
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


class EndReason(models.TextChoices):
    """Why a conversation or one of its calls ended."""

    USER = "user", "Stopped by the user"
    BUDGET = "budget", "The spending limit was reached"
    PAGE_GONE = "page_gone", "The page went away"
    CALL_CLOSED = "call_closed", "The call closed upstream"
    EXPIRED = "expired", "The call reached the 60-minute cap"
    REPLACED = "replaced", "The conversation moved to a new call"
    TAMPERING = "tampering", "The page kept changing the session"
    NO_CALL = "no_call", "No call was resumed in time"
    NEVER_CONNECTED = "never_connected", "Never connected"


class SessionQuerySet(models.QuerySet):
    def readable_by(self, user):
        """What the user may read: their own conversations; a team admin's team's too; staff all."""
        if user.is_staff:
            return self
        return self.filter(models.Q(user=user) | models.Q(team__in=Team.objects.spend_visible_to(user)))


class RealtimeSession(models.Model):
    """One conversation: its choices, documents, transcript and totals, over one call or several."""

    ACTIVE = "active"
    ENDED = "ended"
    STATUS_CHOICES = [(ACTIVE, "Active"), (ENDED, "Ended")]
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

    def end(self, reason):
        """End the conversation once, and every call still running in it.

        Returns the upstream ids of the calls this ended, for the caller to hang up,
        or None if the conversation had already ended.
        """
        with transaction.atomic():
            changed = (
                RealtimeSession.objects.filter(pk=self.pk, status=self.ACTIVE)
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
        """Store one answer's (or one transcription's) usage once per source and keep the totals.

        A repeated report changes nothing, so a page may resend whatever it has not
        seen acknowledged. The session's running totals change in the same
        transaction: the bill counts, per answer, the server's record where there
        is one, else the page's.
        """
        kind = kind or UsageRecord.RESPONSE
        # Stored with 8 decimals; the running totals must add exactly what is stored.
        cost = Decimal(cost).quantize(COST_PLACES, ROUND_HALF_UP)
        try:
            with transaction.atomic():
                # The insert comes first: it takes SQLite's write lock before any read.
                record = UsageRecord.objects.create(
                    session=self, call=call, response_id=key, kind=kind, source=source,
                    model=model or self.model, cost_usd=cost, audio_seconds=audio_seconds,
                    **counts.as_record_fields(),
                )
                # One recorder per conversation at a time (PostgreSQL), so the other
                # source's record is either seen here or sees this one.
                first_billed = (RealtimeSession.objects.select_for_update().filter(pk=self.pk)
                                .values_list("first_billed_at", flat=True).get())
                other = (
                    UsageRecord.objects.filter(session=self, kind=kind, response_id=key).exclude(source=source).first()
                )
                changes = billing_changes(record, other)
                update = _totals_update(record, other, changes)
                # A conversation counts once, on the day of its earliest record.
                moved = None
                if first_billed is None or record.created_at < first_billed:
                    update["first_billed_at"] = record.created_at
                    moved = (first_billed, record.created_at)
                RealtimeSession.objects.filter(pk=self.pk).update(**update)
                record.billed_changes = SpendDay.add(self, changes, moved)
        except IntegrityError:
            record = UsageRecord.objects.get(session=self, kind=kind, response_id=key, source=source)
            created = False
        else:
            created = True
        self.refresh_from_db()
        return record, created

    def stop_if_over_budget(self):
        """End every running conversation under a budget this one has crossed.

        Returns [(session id, [call ids])] for the conversations this ended, so the
        caller can tell their pages and hang their calls up.
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
            "cost_usd": f"{self.billed_cost_usd:.6f}",
            "transcription_cost_usd": f"{self.transcription_cost_usd:.6f}",
            "responses": self.billed_response_count,
            "verified": self.verified,
            "verified_cost_usd": f"{self.verified_cost_usd:.6f}",
            "verified_responses": self.verified_response_count,
            "reported_cost_usd": f"{self.cost_usd:.6f}",
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


def _totals_update(record, other, changes):
    """F() updates for one new usage record, given the other source's record of the same usage (or None)."""
    response = record.kind == UsageRecord.RESPONSE
    server = record.source == UsageRecord.SERVER
    update = {}

    def add(field, amount):
        if amount:
            update[field] = (update.get(field) or F(field)) + amount

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
    # The ephemeral secret that created the call, sealed: the sideband's second
    # credential where the API key is refused. Wiped when the call ends.
    sealed_secret = models.TextField(blank=True)
    # Which sideband worker watches the call, and until when its claim holds.
    sideband_owner = models.CharField(max_length=64, blank=True)
    sideband_lease_until = models.DateTimeField(null=True, blank=True)
    sideband_credential = models.CharField(max_length=20, blank=True, choices=CREDENTIAL_CHOICES)
    sideband_attached_at = models.DateTimeField(null=True, blank=True)
    # When the documents (and, after the first call, the earlier turns) were in its context.
    context_ready_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["session", "number"]
        constraints = [models.UniqueConstraint(fields=["session", "number"], name="one_call_number_per_session")]
        indexes = [models.Index(fields=["status", "sideband_lease_until"])]

    def __str__(self):
        return f"call {self.number} of {self.session_id} ({self.call_id})"

    @classmethod
    def end_all(cls, calls, reason):
        """End the given calls that are still running; returns their upstream ids."""
        ids = list(calls.filter(status=cls.ACTIVE).values_list("call_id", flat=True))
        calls.filter(status=cls.ACTIVE).update(
            status=cls.ENDED, ended_at=timezone.now(), end_reason=reason, sealed_secret=""
        )
        return ids

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
    text_input = models.DecimalField(max_digits=10, decimal_places=4, default=0, help_text="per million tokens")
    audio_input = models.DecimalField(max_digits=10, decimal_places=4, default=0, help_text="per million tokens")
    text_output = models.DecimalField(max_digits=10, decimal_places=4, default=0, help_text="per million tokens")
    per_minute = models.DecimalField(max_digits=10, decimal_places=6, default=0,
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
                   models.Index(fields=["day"])]

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
    def add(cls, session, changes, first_billed=None):
        """Put a record's billing changes on their days, and move the conversation's count when its
        first billed moment changes (`first_billed`: (before or None, after)); returns the changes per
        day, JSON-ready, for the dashboards."""
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
        deltas = []
        for day, amounts in sorted(days.items()):
            updates = {name: F(name) + value for name, value in amounts.items() if value}
            if not updates:
                continue  # the conversation's count moved within one day
            key = {"day": day, "user_id": session.user_id, "team_key": session.team_id.hex if session.team_id else "",
                   "model": session.model}
            if not cls.objects.filter(**key).update(**updates):
                try:
                    with transaction.atomic():
                        cls.objects.create(team_id=session.team_id, **key, **amounts)
                except IntegrityError:  # another recorder made the row first
                    cls.objects.filter(**key).update(**updates)
            deltas.append({"day": day.isoformat(), **{k: (f"{v:.8f}" if isinstance(v, Decimal) else v)
                                                      for k, v in amounts.items()}})
        return deltas


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

    @classmethod
    def for_session(cls, user, team):
        """The budgets a session of this user, billed to this team, counts against."""
        query = models.Q(user=user)
        if team is not None:
            query |= models.Q(team=team)
        return list(cls.objects.filter(query).select_related("user", "team"))
