from django.contrib import admin

from voiceproject.admin import ModelAdmin

from .models import Budget, Call, ModelPrice, RealtimeSession, SessionEvent, TranscriptEntry, TranscriptionPrice, UsageRecord


@admin.register(ModelPrice)
class ModelPriceAdmin(ModelAdmin):
    list_display = ["model", "text_input", "text_cached_input", "text_output", "audio_input", "audio_output",
                    "context_window", "updated_at"]
    search_fields = ["model"]


@admin.register(TranscriptionPrice)
class TranscriptionPriceAdmin(ModelAdmin):
    list_display = ["model", "text_input", "audio_input", "text_output", "per_minute", "updated_at"]
    search_fields = ["model"]


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class CallInline(ReadOnlyInline):
    model = Call
    fields = ["number", "call_id", "status", "created_at", "ended_at", "end_reason", "sideband_credential",
              "sideband_attached_at", "context_ready_at"]
    readonly_fields = fields


class EventInline(ReadOnlyInline):
    model = SessionEvent
    fields = ["created_at", "kind", "call", "detail"]
    readonly_fields = fields


class UsageInline(ReadOnlyInline):
    model = UsageRecord
    fields = ["response_id", "kind", "source", "input_text_tokens", "input_audio_tokens", "cached_text_tokens",
              "cached_audio_tokens", "output_text_tokens", "output_audio_tokens", "cost_usd", "created_at"]
    readonly_fields = fields


class TranscriptInline(ReadOnlyInline):
    model = TranscriptEntry
    fields = ["call_number", "position", "role", "text", "created_at"]
    readonly_fields = fields


@admin.register(RealtimeSession)
class RealtimeSessionAdmin(ModelAdmin):
    list_display = ["created_at", "user", "team", "model", "status", "billed_response_count", "billed_cost_usd"]
    list_filter = ["status", "model", "team"]
    search_fields = ["user__username", "calls__call_id", "id"]
    date_hierarchy = "created_at"
    # The policing events first: what an admin reviewing a session most needs to see.
    inlines = [EventInline, CallInline, UsageInline, TranscriptInline]

    # Spend records are evidence: readable in the admin, never edited or deleted there (the running totals
    # would keep what the records no longer show, and a person's last conversation gone, the person and
    # their totals could go too).
    def has_change_permission(self, request, obj=None):
        return False

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(UsageRecord)
class UsageRecordAdmin(ModelAdmin):
    list_display = ["created_at", "session", "response_id", "kind", "source", "model", "cost_usd"]
    list_filter = ["kind", "source", "model"]
    search_fields = ["response_id", "session__id"]

    def has_change_permission(self, request, obj=None):
        return False

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Budget)
class BudgetAdmin(ModelAdmin):
    list_display = ["__str__", "user", "team", "monthly_limit_usd", "updated_at"]
    list_filter = ["team"]
    search_fields = ["user__username", "team__name"]
    autocomplete_fields = ["user", "team"]
