"""The sessions app's models, by meaning: what is charged (prices), the conversations and their calls,
the usage records and the running totals they keep, the transcripts, and spend by day with the budgets."""

from .prices import (  # noqa: F401
    COST_PLACES, DOCUMENT_SHARE_OF_INPUT, MILLION, NOT_NEGATIVE, ModelPrice, TranscriptionPrice,
)
from .conversations import (  # noqa: F401
    Call, CallQuerySet, EndReason, RealtimeSession, SessionEvent, SessionQuerySet, TurnMode, WorkerBeat,
)
from .spend import Budget, SpendDay, SpendDayQuerySet, month_start, usage_snapshot  # noqa: F401
from .records import TOTAL_FIELDS, UsageEntry, UsageQuerySet, UsageRecord, billing_changes  # noqa: F401
from .transcripts import MAX_TRANSCRIPT_CHARS, Source, ToolCall, TranscriptEntry  # noqa: F401
