"""Per-model prices (USD per million tokens) from the published price pages.

Prices are data: admins edit them in the admin when OpenAI changes them.
"""

from decimal import Decimal as D

from django.db import migrations

# model: (text in, cached, out), (audio in, cached, out), (image in, cached), context, max output
PRICES = {
    "gpt-realtime": (("4", "0.40", "16"), ("32", "0.40", "64"), ("5", "0.50"), 32_000, 4_096),
    "gpt-realtime-1.5": (("4", "0.40", "16"), ("32", "0.40", "64"), ("5", "0.50"), 32_000, 4_096),
    "gpt-realtime-mini": (("0.60", "0.06", "2.40"), ("10", "0.30", "20"), ("0.80", "0.08"), 32_000, 4_096),
    "gpt-realtime-2": (("4", "0.40", "24"), ("32", "0.40", "64"), ("5", "0.50"), 128_000, 32_000),
    "gpt-realtime-2.1": (("4", "0.40", "24"), ("32", "0.40", "64"), ("5", "0.50"), 128_000, 32_000),
    "gpt-realtime-2.1-mini": (("0.60", "0.06", "2.40"), ("10", "0.30", "20"), ("0.80", "0.08"), 128_000, 32_000),
}


def seed_prices(apps, schema_editor):
    ModelPrice = apps.get_model("sessions_app", "ModelPrice")
    for model, (text, audio, image, context, max_out) in PRICES.items():
        ModelPrice.objects.update_or_create(
            model=model,
            defaults={
                "text_input": D(text[0]),
                "text_cached_input": D(text[1]),
                "text_output": D(text[2]),
                "audio_input": D(audio[0]),
                "audio_cached_input": D(audio[1]),
                "audio_output": D(audio[2]),
                "image_input": D(image[0]),
                "image_cached_input": D(image[1]),
                "context_window": context,
                "max_output_tokens": max_out,
            },
        )


class Migration(migrations.Migration):
    dependencies = [("sessions_app", "0001_initial")]

    operations = [migrations.RunPython(seed_prices, migrations.RunPython.noop)]
