from django import forms

from .models import Document


class UploadForm(forms.Form):
    file = forms.FileField(error_messages={"required": "Choose a file to upload.",
                                           "empty": "The file is empty: choose one with some text in it."})
    title = forms.CharField(max_length=200, required=False, help_text="Defaults to the file name.")
    visibility = forms.ChoiceField(choices=Document.VISIBILITY_CHOICES, initial=Document.TEAM)

    def clean_title(self):
        return " ".join(self.cleaned_data["title"].split())
