"""The conversation as it was said: its turns in order, the searches the model made, and the
passages each answer drew on."""

from django.db import models
from django.db.models import F
from django.db.models.functions import Concat

from .conversations import Call, RealtimeSession

# A turn's text is kept up to this long.
MAX_TRANSCRIPT_CHARS = 20_000


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
