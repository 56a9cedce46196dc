"""What the service charges: the realtime models' prices per million tokens, the input
transcription models' prices, and the rules of money every bill follows."""

from decimal import Decimal

from django.core.validators import MinValueValidator
from django.db import models

from voiceproject.prepared import Prepared


MILLION = Decimal(1_000_000)
COST_PLACES = Decimal("0.00000001")
# Room kept for the conversation itself when documents fill the context.
DOCUMENT_SHARE_OF_INPUT = Decimal("0.6")
# A price below zero would take money off every bill it priced.
NOT_NEGATIVE = [MinValueValidator(Decimal(0))]


class ModelPrice(models.Model):
    """USD per million tokens for one realtime model; editable in the admin."""

    model = models.CharField(max_length=100, unique=True)
    text_input = models.DecimalField(max_digits=10, decimal_places=4, validators=NOT_NEGATIVE)
    text_cached_input = models.DecimalField(max_digits=10, decimal_places=4, validators=NOT_NEGATIVE)
    text_output = models.DecimalField(max_digits=10, decimal_places=4, validators=NOT_NEGATIVE)
    audio_input = models.DecimalField(max_digits=10, decimal_places=4, validators=NOT_NEGATIVE)
    audio_cached_input = models.DecimalField(max_digits=10, decimal_places=4, validators=NOT_NEGATIVE)
    audio_output = models.DecimalField(max_digits=10, decimal_places=4, validators=NOT_NEGATIVE)
    image_input = models.DecimalField(max_digits=10, decimal_places=4, default=0, validators=NOT_NEGATIVE)
    image_cached_input = models.DecimalField(max_digits=10, decimal_places=4, default=0, validators=NOT_NEGATIVE)
    context_window = models.PositiveIntegerField(help_text="tokens")
    max_output_tokens = models.PositiveIntegerField(help_text="tokens per response")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model"]

    def __str__(self):
        return self.model

    @classmethod
    def for_model(cls, model):
        """The model's price, None if it has none (read on every start and resume)."""
        return _price_of_model.first(model=model)

    @property
    def max_input_tokens(self):
        return self.context_window - min(self.max_output_tokens, 4096)

    @property
    def document_budget(self):
        """Tokens the chosen documents may take, leaving room for the talk."""
        return int(self.max_input_tokens * DOCUMENT_SHARE_OF_INPUT)


_price_of_model = Prepared(lambda model: ModelPrice.objects.filter(model=model)[:1], model=str)


class TranscriptionPrice(models.Model):
    """USD for input transcription by one model: per million tokens, or per minute; editable in the admin."""

    model = models.CharField(max_length=100, unique=True)
    text_input = models.DecimalField(max_digits=10, decimal_places=4, default=0, validators=NOT_NEGATIVE,
                                     help_text="per million tokens")
    audio_input = models.DecimalField(max_digits=10, decimal_places=4, default=0, validators=NOT_NEGATIVE,
                                      help_text="per million tokens")
    text_output = models.DecimalField(max_digits=10, decimal_places=4, default=0, validators=NOT_NEGATIVE,
                                      help_text="per million tokens")
    per_minute = models.DecimalField(max_digits=10, decimal_places=6, default=0, validators=NOT_NEGATIVE,
                                     help_text="for usage reported as a duration")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model"]

    def __str__(self):
        return self.model
