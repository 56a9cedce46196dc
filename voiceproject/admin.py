"""The base of every model's admin page."""

from django.contrib import admin
from django.contrib.admin import helpers
from django.core.exceptions import ValidationError
from django.http import HttpResponseBadRequest

# What the stock admin raises on a value it took as it came: a selected or chosen row that is no id, an
# id too large for the database, a year outside 1-9999 (or a day after 9999-12-31) in a date filter.
CANNOT_EXIST = (ValidationError, OverflowError, ValueError)


def _cannot_exist():
    return HttpResponseBadRequest("The request names a row or a date that cannot exist.",
                                  content_type="text/plain; charset=utf-8")


class ModelAdmin(admin.ModelAdmin):
    """The stock admin, answering with a 400 the requests it took as they came and failed on with a 500:
    an action on a selected row that is no id, a date filter outside the calendar, and a form sent back
    with an id that cannot exist in a choice (the form's widget looks it up as the page renders)."""

    def changelist_view(self, request, extra_context=None):
        try:
            if request.method == "POST":
                for value in request.POST.getlist(helpers.ACTION_CHECKBOX_NAME):
                    self.model._meta.pk.to_python(value)
            return super().changelist_view(request, extra_context)
        except CANNOT_EXIST:
            return _cannot_exist()

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        try:
            response = super().changeform_view(request, object_id, form_url, extra_context)
            if hasattr(response, "render"):
                response.render()
            return response
        except CANNOT_EXIST:
            return _cannot_exist()
