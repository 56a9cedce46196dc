"""The simulated model calls a function tool by itself, like a document search, and speaks its output."""

from __future__ import annotations

import asyncio
import json

import pytest

from realtime_sim import responder, tooluse
from realtime_sim.tooluse import NOT_FOUND_ANSWER, WAITING_ANSWER

from .conformance import check_server_events
from .rtc_client import RtcClient
from .sideband_client import SidebandClient, call_detail, mint_secret
from .test_conversation import Harness

SEARCH = {
    "type": "function", "name": "search_documents", "description": "Look things up in the user's documents.",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
}
INLINE = ('<document id="d1" title="Cafe">\nSoup is served on Fridays. The cafe opens at nine in the morning.\n'
          '</document>')
QUESTION = "Where do visitors park?"
# What a document-search tool returns: it repeats the query, labels each passage, then instructs.
PASSAGES = (
    "Passages for “Where do visitors park”, best first.\n\n"
    "[1] Handbook, page 3:\nStaff use the underground garage. Visitors park in the east lot after signing in.\n\n"
    "[2] Handbook, page 9:\nThe garden is closed in winter.\n\n"
    "Answer from these passages only, and say which document and page or section you used."
)
NOTHING = ("No passage of this conversation's documents matches “Where do visitors park”. "
           "Tell the user the documents do not say.")


@pytest.fixture(autouse=True)
def fast_speech(monkeypatch):
    monkeypatch.setattr(responder, "MS_PER_CHAR", 4)
    monkeypatch.setattr(responder, "MIN_SPEECH_MS", 100)


def _session(tools=(SEARCH,), **extra) -> dict:
    return {"type": "realtime", "tools": list(tools),
            "audio": {"input": {"transcription": {"model": "gpt-4o-mini-transcribe"}}}, **extra}


def _text_item(text: str) -> dict:
    return {"type": "conversation.item.create",
            "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}}


def _output(call_id: str, output: str) -> dict:
    return {"type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": call_id, "output": output}}


async def _voice_turn(h: Harness, transcript: str) -> None:
    """A scripted VAD turn, and the response it starts."""
    h.conv.set_script({"user_transcript": transcript})
    h.speak(600, 600)
    await h.finish()


async def _respond(h: Harness, params: dict | None = None) -> dict:
    h.send({"type": "response.create", **({"response": params} if params else {})})
    await h.finish()
    return h.of("response.done")[-1]["response"]


def _spoken(response: dict) -> str:
    return response["output"][0]["content"][0]["transcript"]


async def test_the_tool_is_called_when_the_inline_document_does_not_answer_then_its_output_is_spoken():
    h = Harness(_session())
    h.send(_text_item(INLINE))
    await _voice_turn(h, QUESTION)
    response = h.of("response.done")[0]["response"]
    call = response["output"][0]
    assert call["type"] == "function_call" and call["name"] == "search_documents"
    assert json.loads(call["arguments"]) == {"query": "Where do visitors park"}
    added = h.of("response.output_item.added")[0]["item"]
    assert added["type"] == "function_call" and added["call_id"] == call["call_id"]
    done_args = h.of("response.function_call_arguments.done")[0]
    assert done_args["call_id"] == call["call_id"] and done_args["arguments"] == call["arguments"]
    assert "".join(e["delta"] for e in h.of("response.function_call_arguments.delta")) == call["arguments"]
    assert response["usage"]["output_token_details"]["audio_tokens"] == 0
    assert response["usage"]["output_tokens"] > 0
    assert not h.of("output_audio_buffer.started")
    summary = h.conv.responses_summary()[0]
    assert summary["kind"] == "function_call" and summary["call_id"] == call["call_id"]
    assert summary["name"] == "search_documents" and summary["arguments"] == call["arguments"]
    assert summary["after_call_id"] is None

    # The model waits: nothing more happens on its own.
    await asyncio.sleep(0.2)
    assert len(h.of("response.created")) == 1

    h.send(_output(call["call_id"], PASSAGES))
    answer = await _respond(h)
    # The best-matching sentence, not the repeated query, the label or the instructions.
    assert _spoken(answer) == "From the documents: Visitors park in the east lot after signing in."
    summary = h.conv.responses_summary()[1]
    assert summary["kind"] == "message" and summary["after_call_id"] == call["call_id"]
    assert summary["call_id"] is None and summary["name"] is None

    # One call per turn: asked again, the same turn is answered without the tool.
    again = await _respond(h)
    assert again["output"][0]["type"] == "message"
    assert h.conv.responses_summary()[2]["after_call_id"] is None

    # A new turn may call the tool again.
    await _voice_turn(h, "Is the garden open in winter?")
    second = h.of("response.done")[-1]["response"]["output"][0]
    assert second["type"] == "function_call" and second["call_id"] != call["call_id"]
    assert json.loads(second["arguments"]) == {"query": "Is the garden open in winter"}
    h.send(_output(second["call_id"], PASSAGES))
    assert _spoken(await _respond(h)) == "From the documents: The garden is closed in winter."
    assert len(h.of("response.function_call_arguments.done")) == 2
    h.check()


async def test_the_tool_is_not_called_when_an_inline_document_answers():
    h = Harness(_session())
    h.send(_text_item(INLINE))
    await _voice_turn(h, "When is the soup served?")
    response = h.of("response.done")[0]["response"]
    assert response["output"][0]["type"] == "message"
    assert _spoken(response) == "From the document: Soup is served on Fridays."
    assert not h.of("response.function_call_arguments.done")
    # Half of the significant words is enough: cafe and nine, not open or holidays.
    await _voice_turn(h, "Does the cafe open at nine on holidays?")
    assert not h.of("response.function_call_arguments.done")
    assert _spoken(h.of("response.done")[-1]["response"]) == \
        "From the document: The cafe opens at nine in the morning."
    h.check()


async def test_the_tool_is_not_called_without_a_function_tool_or_a_transcript_or_with_tool_choice_none():
    mcp = {"type": "mcp", "server_label": "docs", "server_url": "https://example.invalid/mcp"}
    for session in (_session(tools=()), _session(tools=(mcp,)), _session(tool_choice="none")):
        h = Harness(session)
        h.send(_text_item(INLINE))
        await _voice_turn(h, QUESTION)
        assert h.of("response.done")[0]["response"]["output"][0]["type"] == "message"
        assert not h.of("response.function_call_arguments.delta")
        h.check()
    # A turn without a scripted transcript has no words the model can look up.
    h = Harness(_session())
    h.speak(600, 600)
    await h.finish()
    assert h.of("response.done")[0]["response"]["output"][0]["type"] == "message"
    # Tools given for one response only are used.
    h = Harness(_session(tools=(), audio={"input": {"turn_detection": None}}))
    h.send(_text_item("What is the refund window?"))
    response = await _respond(h, {"tools": [SEARCH]})
    assert json.loads(response["output"][0]["arguments"]) == {"query": "What is the refund window"}
    h.check()


async def test_the_arguments_use_the_first_tool_and_its_schema_property():
    first = {"type": "function", "name": "find_passages", "parameters": {
        "type": "object",
        "properties": {"limit": {"type": "integer"}, "lang": {"type": "string"}, "question": {"type": "string"}},
        "required": ["limit", "question"]}}
    # Push to talk, a typed question: the first tool, its first required string property.
    h = Harness(_session(tools=(first, SEARCH), audio={"input": {"turn_detection": None}}))
    h.send(_text_item("  How long is the warranty?! "))
    response = await _respond(h)
    call = response["output"][0]
    assert call["name"] == "find_passages"
    assert json.loads(call["arguments"]) == {"question": "How long is the warranty"}
    assert h.conv.responses_summary()[0]["name"] == "find_passages"
    h.check()
    # The rules on their own.
    assert tooluse.argument_name({"parameters": {"properties": {"a": {"type": "integer"}, "b": {"type": "string"},
                                                                "c": {"type": ["string", "null"]}},
                                                 "required": ["c"]}}) == "c"
    assert tooluse.argument_name({"parameters": {"properties": {"b": {"type": "string"}}}}) == "b"
    assert tooluse.argument_name({"parameters": {"type": "object"}}) == "query"
    assert tooluse.argument_name({"name": "x"}) == "query"
    assert tooluse.trim_punctuation("¿«Where is it?»…") == "Where is it"


async def test_a_push_to_talk_turn_calls_the_tool_and_the_answer_follows_the_output():
    h = Harness(_session(audio={"input": {"turn_detection": None}, "output": {"voice": "marin"}}))
    h.conv.set_script({"user_transcript": QUESTION})
    h.speak(700, 100)
    h.send({"type": "input_audio_buffer.commit"})
    assert not h.of("response.created")
    call = (await _respond(h))["output"][0]
    assert call["type"] == "function_call"
    # Asked before the output has come, the model says it is still waiting (and does not call again).
    waiting = await _respond(h, {"output_modalities": ["text"]})
    assert waiting["output"][0]["content"][0]["text"] == WAITING_ANSWER
    h.send(_output(call["call_id"], json.dumps(
        {"results": [{"title": "Handbook", "text": "Visitors park in the east lot after signing in."}]})))
    answer = await _respond(h)
    assert _spoken(answer) == "From the documents: Visitors park in the east lot after signing in."
    h.check()


@pytest.mark.parametrize("output", [
    NOTHING, "", "   ", "[]", '{"results": []}', "Nothing found.",
    "The garden is closed in winter. Staff use the underground garage.",  # no sentence shares a word
])
async def test_an_output_that_finds_nothing_is_said_plainly(output):
    h = Harness(_session())
    await _voice_turn(h, QUESTION)
    call = h.of("response.done")[0]["response"]["output"][0]
    h.send(_output(call["call_id"], output))
    assert _spoken(await _respond(h)) == NOT_FOUND_ANSWER
    h.check()


async def test_a_cut_short_answer_is_answered_again_and_a_cut_short_call_is_not_repeated(monkeypatch):
    monkeypatch.setattr(responder, "MIN_SPEECH_MS", 3000)
    h = Harness(_session())
    await _voice_turn(h, QUESTION)
    call = h.of("response.done")[0]["response"]["output"][0]
    h.send(_output(call["call_id"], PASSAGES))
    h.send({"type": "response.create"})
    h.send({"type": "response.cancel"})
    assert h.of("response.done")[-1]["response"]["status"] == "cancelled"
    monkeypatch.setattr(responder, "MIN_SPEECH_MS", 100)
    assert _spoken(await _respond(h)) == "From the documents: Visitors park in the east lot after signing in."
    # A call cancelled while its arguments stream is not made again for that turn.
    h2 = Harness(_session(audio={"input": {"turn_detection": None}}))
    h2.send(_text_item(QUESTION))
    h2.send({"type": "response.create"})
    h2.send({"type": "response.cancel"})
    cancelled = h2.of("response.done")[0]["response"]
    assert cancelled["status"] == "cancelled" and cancelled["output"][0]["type"] == "function_call"
    assert (await _respond(h2))["output"][0]["type"] == "message"
    h.check()
    h2.check()


async def test_a_script_still_wins_over_the_tool():
    h = Harness(_session())
    h.conv.set_script({"function_call": {"name": "search_documents", "arguments": {"query": "lot"}}})
    await _voice_turn(h, QUESTION)
    call = h.of("response.done")[0]["response"]["output"][0]
    assert json.loads(call["arguments"]) == {"query": "lot"}
    # A scripted call's output is spoken as before: JSON flattened.
    h.send(_output(call["call_id"], json.dumps({"lot": "east", "spaces": 40})))
    assert _spoken(await _respond(h)) == "Here is what I found: lot east, spaces 40"
    assert h.conv.responses_summary()[1]["after_call_id"] == call["call_id"]
    # A scripted text wins too, for a new turn the tool would otherwise look up.
    h.conv.set_script({"text": "Scripted."})
    await _voice_turn(h, "Is the garden open in winter?")
    assert _spoken(h.of("response.done")[-1]["response"]) == "Scripted."
    assert len(h.of("response.function_call_arguments.done")) == 1
    # A scripted usage alone does not stop the tool.
    h.conv.set_script({"usage": {"output_tokens": 7}})
    await _voice_turn(h, "Who empties the bins?")
    response = h.of("response.done")[-1]["response"]
    assert response["output"][0]["type"] == "function_call" and response["usage"]["output_tokens"] == 7
    h.check()


def test_the_matching_rules():
    assert tooluse.significant_words("What does the HANDBOOK say about the handbook's leave, please?") == [
        "handbook", "leave"]
    docs = ["<document>Leave is 25 days.</document>", "<document>The handbook covers parking.</document>"]
    assert tooluse.answering_document("How much leave do we get?", docs) == docs[0]
    assert tooluse.answering_document("Handbook rules for bicycles", docs) is None  # 1 of 3 words
    assert tooluse.answering_document("Handbook on bicycles?", docs) == docs[1]  # 1 of 2 words: half
    assert tooluse.answering_document("Is it so?", docs) is None  # no significant word
    assert tooluse.says_nothing_found("None of this conversation's documents can be searched any more.")
    assert not tooluse.says_nothing_found("No smoking is allowed anywhere in the building.")


async def test_over_webrtc_the_sideband_answers_the_call(sim, http):
    token = await mint_secret(sim.base_url, http, _session())
    client = RtcClient()
    try:
        await client.connect(sim.base_url, token)
        side = await SidebandClient.attach(sim.base_url, http, client.call_id)
        await side.wait_for("session.created")
        await side.send(_text_item(INLINE))
        await client.wait_for("conversation.item.done")
        resp = await http.post(f"{sim.base_url}/_sim/calls/{client.call_id}/script",
                               json={"user_transcript": QUESTION})
        assert resp.status == 200
        client.mic.speak(800)
        client.mic.pause(800)
        args = await side.wait_for("response.function_call_arguments.done", timeout=15)
        assert args["name"] == "search_documents" and json.loads(args["arguments"]) == {"query": QUESTION[:-1]}
        await side.wait_for("response.done")
        # The browser sees the same call; the server answers it from the sideband.
        await client.wait_for("response.function_call_arguments.done")
        await side.send(_output(args["call_id"], PASSAGES))
        await side.send({"type": "response.create"})
        done = await client.wait_for("response.done", lambda e: e["response"]["output"][0]["type"] == "message",
                                     timeout=15)
        assert _spoken(done["response"]) == "From the documents: Visitors park in the east lot after signing in."
        await client.wait_for("output_audio_buffer.stopped")
        detail = await call_detail(sim.base_url, http, client.call_id)
        call, answer = detail["responses"]
        assert (call["kind"], call["call_id"], call["name"]) == ("function_call", args["call_id"], "search_documents")
        assert json.loads(call["arguments"]) == {"query": "Where do visitors park"}
        assert (answer["kind"], answer["after_call_id"]) == ("message", args["call_id"])
        check_server_events(client.events)
        check_server_events(side.events)
    finally:
        await client.close()
