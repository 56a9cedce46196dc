"""The base of every model's admin page."""

from django.contrib import admin
from django.contrib.admin import helpers
from django.core.exceptions import ValidationError
from django.http import HttpResponseBadRequest


class ModelAdmin(admin.ModelAdmin):
    """The stock admin, answering with a 400 two requests it took as they came and failed on with a 500:
    an action on a selected row that is no id, and the date drill-down's last day of year 9999 (the day
    after it does not exist)."""

    def changelist_view(self, request, extra_context=None):
        try:
            if request.method == "POST":
                for value in request.POST.getlist(helpers.ACTION_CHECKBOX_NAME):
                    self.model._meta.pk.to_python(value)
            return super().changelist_view(request, extra_context)
        except (ValidationError, OverflowError):
            return HttpResponseBadRequest("The request names a row or a date that cannot exist.",
                                          content_type="text/plain; charset=utf-8")
