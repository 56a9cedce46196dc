"""Exact numbers for the accounting rules (usage.py is pure)."""

from __future__ import annotations

import bpe_openai

from realtime_sim import usage
from realtime_sim.usage import Segment

INSTRUCTIONS = "You are a terse assistant."  # 6 o200k tokens
DOC = "Paris is the capital of France."  # 7 tokens
ANSWER = "From the document: Paris is the capital of France."  # 11 tokens


def test_text_tokens_are_o200k_counts():
    assert usage.count_text_tokens("Hello world, this is a test.") == 8
    assert usage.count_text_tokens(INSTRUCTIONS) == 6
    assert usage.count_text_tokens(ANSWER) == 11
    assert usage.count_text_tokens("") == 0
    # Special-token text is plain text here, never an error.
    assert usage.count_text_tokens("<|endoftext|>") == 7


def test_long_text_is_counted_in_chunks_with_the_same_result():
    text = "word " * 3000  # 15,000 chars: counted in whitespace-split slices
    assert usage.count_text_tokens(text) == len(bpe_openai.get_encoding("o200k_base").encode(text)) == 3001
    assert usage.count_text_tokens("hello " * 10000) == 10001  # too long for one encode call


def test_audio_token_rates():
    assert usage.input_audio_tokens(0) == 0
    assert usage.input_audio_tokens(1000) == 10  # 1 per 100 ms
    assert usage.input_audio_tokens(1020) == 11  # a started 100 ms counts
    assert usage.input_audio_tokens(60000) == 600
    assert usage.output_audio_tokens(1000) == 20  # 1 per 50 ms
    assert usage.output_audio_tokens(3240) == 65
    assert usage.output_audio_tokens(60000) == 1200


def _user_audio(item_id, ms):
    item = {"id": item_id, "type": "message", "role": "user", "content": [{"type": "input_audio", "transcript": None}]}
    return item, {0: ms}


def _assistant_audio(item_id, ms, transcript=ANSWER):
    item = {"id": item_id, "type": "message", "role": "assistant",
            "content": [{"type": "output_audio", "transcript": transcript}]}
    return item, {0: ms}


def _doc(item_id):
    return {"id": item_id, "type": "message", "role": "user", "content": [{"type": "input_text", "text": DOC}]}, None


def test_item_segments_by_kind():
    assert usage.item_segments(*_user_audio("u1", 1600)) == [Segment("u1:0", "audio", 16)]
    # Earlier assistant speech is re-read as audio at the assistant rate.
    assert usage.item_segments(*_assistant_audio("a1", 3240)) == [Segment("a1:0", "audio", 65)]
    assert usage.item_segments(*_doc("d1")) == [Segment("d1:0", "text", 7)]
    call = {"id": "f1", "type": "function_call", "name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert usage.item_segments(call) == [Segment("f1:args", "text", 6)]
    output = {"id": "o1", "type": "function_call_output", "call_id": "c", "output": '{"temperature_c": 21}'}
    assert usage.item_segments(output) == [Segment("o1:output", "text", 7)]


def test_first_response_has_no_cache_and_exact_totals():
    current = usage.input_segments(INSTRUCTIONS, [_doc("d1"), _user_audio("u1", 1600)])
    result = usage.response_usage(current, [], output_text_tokens=11, output_audio_tokens_=65)
    assert result == {
        "total_tokens": 6 + 7 + 16 + 11 + 65,
        "input_tokens": 29,
        "output_tokens": 76,
        "input_token_details": {
            "text_tokens": 13, "audio_tokens": 16, "image_tokens": 0, "cached_tokens": 0,
            "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
        },
        "output_token_details": {"text_tokens": 11, "audio_tokens": 65},
    }


def test_second_response_rebills_everything_and_caches_the_previous_input():
    first = usage.input_segments(INSTRUCTIONS, [_doc("d1"), _user_audio("u1", 1600)])
    second = usage.input_segments(
        INSTRUCTIONS, [_doc("d1"), _user_audio("u1", 1600), _assistant_audio("a1", 3240), _user_audio("u2", 1000)]
    )
    result = usage.response_usage(second, first, output_text_tokens=5, output_audio_tokens_=24)
    details = result["input_token_details"]
    # instructions 6 + doc 7 text; audio 16 + 65 (assistant) + 10
    assert details["text_tokens"] == 13
    assert details["audio_tokens"] == 91
    assert result["input_tokens"] == 104
    # The previous input (instructions, doc, first user audio) is the cached prefix.
    assert details["cached_tokens"] == 29
    assert details["cached_tokens_details"] == {"text_tokens": 13, "audio_tokens": 16, "image_tokens": 0}
    assert result["output_tokens"] == 29
    assert result["total_tokens"] == 133


def test_changed_instructions_or_deleted_items_break_the_cache():
    first = usage.input_segments(INSTRUCTIONS, [_doc("d1"), _user_audio("u1", 1600)])
    changed = usage.input_segments("Be verbose.", [_doc("d1"), _user_audio("u1", 1600)])
    assert usage.response_usage(changed, first, 0, 0)["input_token_details"]["cached_tokens"] == 0
    without_doc = usage.input_segments(INSTRUCTIONS, [_user_audio("u1", 1600)])
    details = usage.response_usage(without_doc, first, 0, 0)["input_token_details"]
    assert details["cached_tokens"] == 6  # only the instructions still match
    assert details["cached_tokens_details"]["text_tokens"] == 6


def test_cancelled_output_and_usage_invariants():
    current = usage.input_segments(INSTRUCTIONS, [_user_audio("u1", 1200)])
    result = usage.response_usage(current, [], output_text_tokens=3, output_audio_tokens_=usage.output_audio_tokens(740))
    assert result["output_token_details"] == {"text_tokens": 3, "audio_tokens": 15}
    d = result["input_token_details"]
    assert result["input_tokens"] == d["text_tokens"] + d["audio_tokens"] + d["image_tokens"]
    assert result["total_tokens"] == result["input_tokens"] + result["output_tokens"]
    assert d["cached_tokens"] <= result["input_tokens"]


def test_transcription_usage_and_override_merge():
    assert usage.transcription_usage(1400, "(about 1.4 seconds of speech)") == {
        "type": "tokens", "total_tokens": 14 + usage.count_text_tokens("(about 1.4 seconds of speech)"),
        "input_tokens": 14, "input_token_details": {"text_tokens": 0, "audio_tokens": 14},
        "output_tokens": usage.count_text_tokens("(about 1.4 seconds of speech)"),
    }
    # Models billed by the minute report the audio's seconds instead (usage.yaml, FACTS section 7).
    for model in ("whisper-1", "gpt-transcribe"):
        assert usage.transcription_usage(1400, "(about 1.4 seconds of speech)", model) == {
            "type": "duration", "seconds": 1.4}
    assert usage.transcription_usage(1400, "x", "gpt-4o-transcribe")["type"] == "tokens"
    base = usage.response_usage([Segment("i", "text", 5)], [], 1, 2)
    merged = usage.merge_override(base, {"total_tokens": 999, "input_token_details": {"cached_tokens": 4}})
    assert merged["total_tokens"] == 999
    assert merged["input_token_details"]["cached_tokens"] == 4
    assert merged["input_token_details"]["text_tokens"] == 5
