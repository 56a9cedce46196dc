from django.contrib import admin

from .models import Document


class TokenBandFilter(admin.SimpleListFilter):
    title = "tokens"
    parameter_name = "tokens"
    BANDS = {"small": (0, 2_000), "medium": (2_000, 20_000), "large": (20_000, None)}

    def lookups(self, request, model_admin):
        return [("small", "under 2,000"), ("medium", "2,000 to 20,000"), ("large", "20,000 and more")]

    def queryset(self, request, queryset):
        if self.value() not in self.BANDS:
            return queryset
        low, high = self.BANDS[self.value()]
        queryset = queryset.filter(tokens__gte=low)
        return queryset.filter(tokens__lt=high) if high else queryset


class SizeBandFilter(admin.SimpleListFilter):
    title = "file size"
    parameter_name = "size"
    BANDS = {"small": (0, 100_000), "medium": (100_000, 2_000_000), "large": (2_000_000, None)}

    def lookups(self, request, model_admin):
        return [("small", "under 100 KB"), ("medium", "100 KB to 2 MB"), ("large", "2 MB and more")]

    def queryset(self, request, queryset):
        if self.value() not in self.BANDS:
            return queryset
        low, high = self.BANDS[self.value()]
        queryset = queryset.filter(size_bytes__gte=low)
        return queryset.filter(size_bytes__lt=high) if high else queryset


@admin.register(Document)
class DocumentAdmin(admin.ModelAdmin):
    list_display = ["title", "team", "owner", "kind", "visibility", "tokens", "size_bytes", "created_at"]
    list_filter = ["team", "kind", "visibility", TokenBandFilter, SizeBandFilter]
    search_fields = ["title", "filename", "owner__username", "sha256"]
    readonly_fields = ["sha256", "tokens", "size_bytes", "pages", "encoding", "created_at"]
    date_hierarchy = "created_at"
