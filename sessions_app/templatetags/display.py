"""How the pages write money, counts, dates and plurals: one definition each, used by every template."""

import datetime
from decimal import Decimal, InvalidOperation

from django import template

register = template.Library()

UTC = datetime.timezone.utc
MINUS = "\u2212"
# The one date-and-time format of the pages (the dashboard's script writes the same).
WHEN_FORMAT = "%Y-%m-%d %H:%M UTC"


@register.filter
def usd(value, places=None):
    """$1,234.50, $0.0047; a negative amount as −$1.20 (a real minus sign before the dollar sign).

    Without `places`: cents, or up to four decimals where cents would hide a small amount."""
    if value is None or value == "":
        return ""
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return ""
    if places is None:
        cents = abs(amount).quantize(Decimal("0.0001"))
        places = max(2, -cents.normalize().as_tuple().exponent) if cents else 2
    text = f"{abs(amount):,.{int(places)}f}"
    return f"{MINUS}${text}" if amount < 0 and Decimal(text.replace(",", "")) else f"${text}"


@register.filter
def grouped(value):
    """A count or a decimal with thousands separators: 12,345 or 1,234.5678; anything else unchanged."""
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return value
    places = max(0, -number.as_tuple().exponent) if number.is_finite() else 0
    text = f"{abs(number):,.{places}f}"
    return f"{MINUS}{text}" if number < 0 else text


@register.filter
def when(value):
    """2026-03-09 14:05 UTC."""
    if not value:
        return ""
    return value.astimezone(UTC).strftime(WHEN_FORMAT)


@register.filter
def counted(number, words):
    """1 answer, 2 answers: `{{ n|counted:"answer,answers" }}`, the number grouped."""
    singular, _, plural = words.partition(",")
    return f"{grouped(number)} {singular if number == 1 else plural or singular + 's'}"
