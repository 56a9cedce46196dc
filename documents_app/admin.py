from django.contrib import admin

from voiceproject.admin import ModelAdmin

from .models import Document


class BandFilter(admin.SimpleListFilter):
    """Filter on a numeric field by named [low, high) bands."""

    field = None
    bands = {}  # slug -> (label, low, high or None)

    def lookups(self, request, model_admin):
        return [(slug, label) for slug, (label, _, _) in self.bands.items()]

    def queryset(self, request, queryset):
        if self.value() not in self.bands:
            return queryset
        _, low, high = self.bands[self.value()]
        queryset = queryset.filter(**{f"{self.field}__gte": low})
        return queryset.filter(**{f"{self.field}__lt": high}) if high else queryset


class TokenBandFilter(BandFilter):
    title = parameter_name = field = "tokens"
    bands = {"small": ("under 2,000", 0, 2_000), "medium": ("2,000 to 20,000", 2_000, 20_000),
             "large": ("20,000 and more", 20_000, None)}


class SizeBandFilter(BandFilter):
    title, parameter_name, field = "file size", "size", "size_bytes"
    bands = {"small": ("under 100 KB", 0, 100_000), "medium": ("100 KB to 2 MB", 100_000, 2_000_000),
             "large": ("2 MB and more", 2_000_000, None)}


@admin.register(Document)
class DocumentAdmin(ModelAdmin):
    list_display = ["title", "team", "owner", "kind", "visibility", "tokens", "size_bytes", "created_at"]
    list_filter = ["team", "kind", "visibility", TokenBandFilter, SizeBandFilter]
    search_fields = ["title", "filename", "owner__username", "sha256"]
    date_hierarchy = "created_at"
    # A document's text, title, tokens, hash and passages (which repeat the title for search) are made
    # together from an upload on the library's page: here they are read, not written, so they cannot
    # disagree. Its team, owner and visibility may change.
    readonly_fields = ["title", "filename", "kind", "text", "outline", "sha256", "tokens", "size_bytes", "pages",
                       "encoding", "created_at"]

    def has_add_permission(self, request):
        return False
