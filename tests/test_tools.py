"""The document-search tool as the sideband answers it: this conversation's documents only, what the user may
still read, labelled passages kept as sources. Runs on SQLite, and again on PostgreSQL in `make test`."""

import json

import pytest

from documents_app.models import Document
from sessions_app import tools
from sessions_app.models import RealtimeSession, Source, ToolCall, TranscriptEntry
from sessions_app.tools import sources_by_item

pytestmark = pytest.mark.django_db

REPORT = "\n\n".join(
    [f"# Chapter {n}\n\n" + " ".join(f"Chapter {n} paragraph {i} covers routine matters of the project." for i in range(30))
     for n in range(1, 6)]
).replace("Chapter 4 paragraph 7 covers", "The rollout code for Tangerine is TANGERINE-7; Chapter 4 paragraph 7 covers")


def make(owner, title, text, visibility="team"):
    return Document.objects.create(
        team=owner.memberships.get().team, owner=owner, title=title, filename=f"{title}.md", kind="markdown",
        visibility=visibility, text=text, sha256=Document.hash_text(text), tokens=len(text.split()) * 2,
        size_bytes=len(text),
    )


def conversation(user, *documents):
    return RealtimeSession.objects.create(
        user=user, team=user.memberships.get().team, model="gpt-realtime", voice="marin", turn_detection="server_vad",
        instructions="x", documents=[{"id": str(d.pk), "title": d.title, "tokens": d.tokens, "sha256": d.sha256,
                                      "mode": "search"} for d in documents],
    )


def ask(session, query, call_id="call_1"):
    return tools.answer(session.pk, call_id, tools.NAME, json.dumps({"query": query}), "resp_1")


def test_the_planted_passage_comes_back_labelled_and_kept(alice):
    report = make(alice, "Annual report", REPORT)
    session = conversation(alice, report)
    answer = ask(session, "What is the rollout code for Tangerine?")
    assert "TANGERINE-7" in answer.output
    assert answer.output.count("[1] Annual report, section “Chapter 4”") == 1
    first = answer.sources[0]
    assert "TANGERINE-7" in first.text and first.section == "Chapter 4" and first.document_id == report.pk
    call = ToolCall.objects.get(session=session)
    assert call.query == "What is the rollout code for Tangerine?" and call.output == answer.output
    assert [s.text for s in Source.objects.filter(tool_call=call)] == [s.text for s in answer.sources]
    # The answer that follows gets them as its sources.
    TranscriptEntry.objects.create(session=session, item_id="item_answer", role="assistant", text="It is TANGERINE-7.")
    ToolCall.objects.filter(pk=call.pk).update(answer_item_id="item_answer")
    assert "TANGERINE-7" in sources_by_item(session)["item_answer"][0]["text"]


def test_only_this_conversations_documents_are_searched(alice, bob, charlie):
    mine = make(alice, "Annual report", REPORT)
    elsewhere = make(charlie, "Other team report", REPORT.replace("TANGERINE-7", "MANGO-9"))
    unchosen = make(alice, "Unchosen", REPORT.replace("TANGERINE-7", "PEAR-3"))
    answer = ask(conversation(alice, mine), "rollout code Tangerine")
    assert "TANGERINE-7" in answer.output and "MANGO-9" not in answer.output and "PEAR-3" not in answer.output
    assert {s.document_id for s in answer.sources} == {mine.pk}
    # Another team's document named in a conversation is never reached: access is checked at call time.
    sneaky = conversation(bob, elsewhere)
    blocked = ask(sneaky, "rollout code Mango")
    assert "MANGO-9" not in blocked.output and "no longer available" in blocked.output and not blocked.sources
    assert unchosen.pk


def test_a_document_removed_mid_conversation_is_not_available(alice):
    report, notes = make(alice, "Annual report", REPORT), make(alice, "Notes", "Tangerine notes: nothing planned.")
    session = conversation(alice, report, notes)
    report.delete()
    answer = ask(session, "rollout code Tangerine")
    assert "“Annual report” is no longer available" in answer.output and "TANGERINE-7" not in answer.output
    notes.delete()
    gone = ask(session, "rollout code", call_id="call_2")
    assert "None of this conversation's documents can be searched any more" in gone.output
    assert "“Notes” is no longer available" in gone.output


def test_a_private_document_made_private_by_its_owner_is_dropped(alice, bob):
    report = make(alice, "Annual report", REPORT)
    session = conversation(bob, report)
    assert "TANGERINE-7" in ask(session, "rollout code").output
    Document.objects.filter(pk=report.pk).update(visibility="private")
    assert "no longer available" in ask(session, "rollout code", call_id="call_2").output


def test_nothing_found_is_said_plainly(alice):
    session = conversation(alice, make(alice, "Annual report", REPORT))
    answer = ask(session, "zebra giraffe")
    assert answer.output.startswith("No passage of this conversation's documents matches “zebra giraffe”")
    assert answer.sources == []


@pytest.mark.parametrize("arguments", ["not json", "{}", '{"query": 5}', '{"query": ""}', "[1]", "{" * 2000])
def test_bad_arguments_get_a_clear_output(alice, arguments):
    session = conversation(alice, make(alice, "Annual report", REPORT))
    answer = tools.answer(session.pk, "call_bad", tools.NAME, arguments)
    assert "needs a query" in answer.output


def test_an_unknown_tool_and_the_same_call_twice(alice):
    session = conversation(alice, make(alice, "Annual report", REPORT))
    assert tools.answer(session.pk, "call_x", "delete_everything", "{}").output == "There is no tool called delete_everything."
    first = ask(session, "rollout code", call_id="call_same")
    again = ask(session, "something else entirely", call_id="call_same")
    assert again.output == first.output and ToolCall.objects.filter(function_call_id="call_same").count() == 1


def test_a_database_error_between_the_call_and_its_sources_keeps_neither(alice, monkeypatch):
    """The call and its passages are kept together or not at all: the retry after a failure answers afresh,
    with its sources (it once found the call kept without them and returned it so for ever)."""
    from django.db import OperationalError

    session = conversation(alice, make(alice, "Annual report", REPORT))
    real = Source.objects.bulk_create

    def fails(*args, **kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(Source.objects, "bulk_create", fails)
    with pytest.raises(OperationalError):
        ask(session, "rollout code Tangerine")
    assert not ToolCall.objects.filter(session=session).exists()
    monkeypatch.setattr(Source.objects, "bulk_create", real)
    again = ask(session, "rollout code Tangerine")
    assert "TANGERINE-7" in again.output and len(again.sources) == Source.objects.filter(tool_call__session=session).count() > 0


# A real commit, where the foreign keys are checked; serialized like test_sideband's, which restore the database.
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_document_deleted_between_the_search_and_the_keeping_is_answered_as_gone(alice, monkeypatch):
    """Its passages cannot be kept as sources (they went with it): the call is answered again, and says so."""
    report = make(alice, "Annual report", REPORT)
    session = conversation(alice, report)
    real = tools.search_passages

    def search_then_delete(*args):
        hits = real(*args)
        Document.objects.filter(pk=report.pk).delete()
        return hits

    monkeypatch.setattr(tools, "search_passages", search_then_delete)
    answer = ask(session, "rollout code Tangerine")
    assert "TANGERINE-7" not in answer.output and "“Annual report” is no longer available" in answer.output
    call = ToolCall.objects.get(session=session)
    assert call.output == answer.output and answer.sources == [] and not call.sources.exists()


def test_unencodable_characters_in_the_arguments_are_replaced_before_they_are_kept(alice):
    """A lone surrogate escaped in the model's JSON cannot be encoded, and PostgreSQL refuses a NUL."""
    session = conversation(alice, make(alice, "Annual report", REPORT))
    answer = tools.answer(session.pk, "call_odd", tools.NAME, '{"query": "Tangerine \\ud83d code\\u0000 7"}')
    call = ToolCall.objects.get(session=session)
    assert call.query == "Tangerine ? code 7" and call.output == answer.output and "\x00" not in call.output
    odd = tools.answer(session.pk, "call_\x00name", "lookup\ud800\x00", "{}")
    assert odd.output == "There is no tool called lookup?." == ToolCall.objects.get(function_call_id="call_name").output
