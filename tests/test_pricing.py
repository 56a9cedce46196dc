"""Pricing from the database price table: cached input at the cached rate, per model."""

from decimal import Decimal

import pytest

from sessions_app.models import ModelPrice
from sessions_app.pricing import UsageError, cost_of, parse_transcription_usage, parse_usage

# The usage example from the API reference (response.done).
EXAMPLE = {
    "total_tokens": 253,
    "input_tokens": 132,
    "output_tokens": 121,
    "input_token_details": {
        "text_tokens": 119,
        "audio_tokens": 13,
        "image_tokens": 0,
        "cached_tokens": 64,
        "cached_tokens_details": {"text_tokens": 64, "audio_tokens": 0, "image_tokens": 0},
    },
    "output_token_details": {"text_tokens": 30, "audio_tokens": 91},
}


def price(model):
    return ModelPrice.objects.get(model=model)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "model, expected",
    [
        # (119-64)*4 + 64*0.40 + 13*32 + 30*16 + 91*64 per million
        ("gpt-realtime", Decimal("0.0069656")),
        ("gpt-realtime-1.5", Decimal("0.0069656")),
        # text output is $24 on gpt-realtime-2: +30*8
        ("gpt-realtime-2", Decimal("0.0072056")),
        ("gpt-realtime-2.1", Decimal("0.0072056")),
        # (55*0.60 + 64*0.06 + 13*10 + 30*2.40 + 91*20) per million
        ("gpt-realtime-mini", Decimal("0.00205884")),
        ("gpt-realtime-2.1-mini", Decimal("0.00205884")),
    ],
)
def test_example_usage_cost_per_model(model, expected):
    p = price(model)
    assert cost_of(parse_usage(EXAMPLE, p), p) == expected


@pytest.mark.django_db
def test_cached_audio_is_charged_at_the_cached_audio_rate():
    p = price("gpt-realtime")
    usage = {"input_tokens": 1000, "output_tokens": 0,
             "input_token_details": {"text_tokens": 0, "audio_tokens": 1000, "cached_tokens": 800,
                                     "cached_tokens_details": {"audio_tokens": 800}}}
    # 200 * $32 + 800 * $0.40 per million; the seed's formula would drop the 800 entirely.
    assert cost_of(parse_usage(usage, p), p) == Decimal("0.00672")


@pytest.mark.django_db
def test_missing_cache_details_count_as_uncached():
    p = price("gpt-realtime")
    usage = {"input_tokens": 100, "input_token_details": {"text_tokens": 100, "cached_tokens": 100}}
    assert cost_of(parse_usage(usage, p), p) == Decimal("0.0004")


@pytest.mark.django_db
def test_price_edits_take_effect():
    p = price("gpt-realtime")
    p.text_output = Decimal("20")
    p.save()
    counts = parse_usage({"output_tokens": 1000, "output_token_details": {"text_tokens": 1000}}, price("gpt-realtime"))
    assert cost_of(counts, price("gpt-realtime")) == Decimal("0.02")


@pytest.mark.django_db
@pytest.mark.parametrize(
    "usage, fragment",
    [
        ("lots", "must be an object"),
        ({"input_tokens": -1}, "must not be negative"),
        ({"input_tokens": 1.5}, "must be an integer"),
        ({"input_tokens": True}, "must be an integer"),
        ({"input_tokens": "10"}, "must be an integer"),
        ({"input_tokens": 10, "input_token_details": {"text_tokens": 5}}, "does not match"),
        ({"output_tokens": 5, "output_token_details": {"audio_tokens": 9}}, "does not match"),
        ({"total_tokens": 3, "input_tokens": 1, "input_token_details": {"text_tokens": 1}}, "total_tokens"),
        ({"input_token_details": {"text_tokens": 5, "cached_tokens_details": {"text_tokens": 6}}}, "exceed"),
        ({"input_token_details": {"text_tokens": 10_000_000}}, "context window"),
        ({"output_token_details": {"audio_tokens": 50_000}}, "output limit"),
        ({"input_token_details": []}, "must be an object"),
    ],
)
def test_bad_usage_is_refused(usage, fragment):
    with pytest.raises(UsageError, match=fragment):
        parse_usage(usage, price("gpt-realtime"))


@pytest.mark.django_db
def test_document_budget_is_per_model():
    assert price("gpt-realtime").document_budget < 20_000
    assert price("gpt-realtime-2").document_budget > 50_000


def test_a_duration_of_minus_zero_is_zero():
    """-0.0 is within 0..max, and was priced and acknowledged as a cost of "-0.000000"."""
    counts = parse_transcription_usage({"type": "duration", "seconds": -0.0})
    assert str(counts.seconds) == "0.000"
    with pytest.raises(UsageError):
        parse_transcription_usage({"type": "duration", "seconds": -0.001})


@pytest.mark.django_db
@pytest.mark.parametrize(
    "usage, expected",
    [
        # Totals without any split: input at the dearest input rate (audio $32), output at the dearest ($64).
        ({"input_tokens": 200, "output_tokens": 100, "total_tokens": 300}, Decimal("0.0128")),
        # A split that explains part of the totals: the rest at the dearest rate of its side.
        ({"input_tokens": 150, "output_tokens": 0, "input_token_details": {"text_tokens": 100}}, Decimal("0.002")),
        # More input than the price table's context window: the upstream's count is the bill.
        ({"input_tokens": 40_000, "input_token_details": {"text_tokens": 40_000}}, Decimal("0.16")),
        # More output than the table's limit, and a total that adds up to nothing.
        ({"output_tokens": 5_000, "total_tokens": 7, "output_token_details": {"text_tokens": 5_000}}, Decimal("0.08")),
        # Cached details with no input split: the cached 800 at the cached rate, the other 200 at the dearest.
        ({"input_tokens": 1000, "input_token_details": {"cached_tokens": 800,
                                                        "cached_tokens_details": {"text_tokens": 800}}},
         Decimal("0.00672")),
    ],
)
def test_the_upstreams_own_usage_is_billed_never_dropped(usage, expected):
    """The sideband's figures are what OpenAI bills: a usage the page's rules refuse is still priced, the
    unexplained tokens at the dearest rate, never less; the page's same report is refused."""
    p = price("gpt-realtime")
    assert cost_of(parse_usage(usage, p, upstream=True), p) == expected
    with pytest.raises(UsageError):
        parse_usage(usage, p)


@pytest.mark.django_db
def test_the_upstreams_usage_must_still_be_counts():
    with pytest.raises(UsageError, match="must be an integer"):
        parse_usage({"input_tokens": "200"}, price("gpt-realtime"), upstream=True)


def test_the_upstreams_transcription_tokens_beyond_their_split_are_billed_as_audio():
    usage = {"type": "tokens", "input_tokens": 50, "output_tokens": 10, "total_tokens": 3,
             "input_token_details": {"text_tokens": 20}}
    counts = parse_transcription_usage(usage, upstream=True)
    assert (counts.input_text, counts.input_audio, counts.output_text) == (20, 30, 10)
    with pytest.raises(UsageError):
        parse_transcription_usage(usage)


@pytest.mark.django_db
def test_the_sidebands_report_without_a_split_goes_on_the_bill_and_the_pages_does_not(bob):
    from sessions_app import usage
    from sessions_app.models import RealtimeSession

    session = RealtimeSession.objects.create(user=bob, model="gpt-realtime", voice="marin",
                                             turn_detection="server_vad", instructions="x")
    totals_only = {"input_tokens": 200, "output_tokens": 100, "total_tokens": 300}
    with pytest.raises(UsageError):
        usage.record(session.pk, "resp_1", totals_only, source="client")
    recorded = usage.record(session.pk, "resp_1", totals_only, source="server")
    assert recorded.created and recorded.record.cost_usd == Decimal("0.0128")
    session.refresh_from_db()
    assert session.billed_cost_usd == Decimal("0.0128")
