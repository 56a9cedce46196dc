"""A document far too large for the conversation, asked about in real Chromium: the model searches it, the
server answers from its sideband, and the answer's sources show on the page and stay in the record."""

import re

import pytest

from documents_app.tokens import count_tokens
from tests.browser.conftest import sign_in
from tests.browser.test_voice_session import READY, api_session, current_call, hold_talk, wait_until

pytestmark = pytest.mark.browser
PLANTED = "The rollout code for the Tangerine project is TANGERINE-7, agreed by the steering group."


def big_report():
    """About 300,000 tokens of Markdown in 60 chapters, the planted fact deep in chapter 47."""
    chapters = []
    for n in range(1, 61):
        lines = [f"In chapter {n}, paragraph {i} records routine matters of the quarterly operations review."
                 for i in range(300)]
        if n == 47:
            lines[220] = PLANTED
        chapters.append(f"## Chapter {n}\n\n" + "\n\n".join(" ".join(lines[i:i + 6]) for i in range(0, 300, 6)))
    return "# Operations report\n\n" + "\n\n".join(chapters)


def test_a_planted_fact_deep_in_a_huge_document_is_found_and_sourced(page, simulator, tmp_path):
    text = big_report()
    tokens = count_tokens(text)
    assert 280_000 <= tokens <= 340_000, tokens
    path = tmp_path / "operations-report.md"
    path.write_text(text)
    sign_in(page)
    page.goto("/documents/")
    page.get_by_label("File").set_input_files(str(path))
    page.get_by_label("Title (optional)").fill("Operations report")
    page.get_by_role("button", name="Upload").click()
    page.wait_for_url("**/documents/*/", timeout=60_000)
    document_id = page.url.rstrip("/").rsplit("/", 1)[1]
    assert page.locator('#doc-fits li[data-model="gpt-realtime-2"]').get_attribute("data-mode") == "search"

    page.goto("/")
    page.get_by_label("Turn taking").select_option("push_to_talk")
    page.get_by_label("Find documents").fill("Operations report")
    page.get_by_role("button", name="Add Operations report").click()
    assert "Searched, not read whole: Operations report" in page.locator("#context-budget").text_content()
    page.get_by_role("button", name="Start").click()
    page.get_by_role("status").filter(has_text=READY).wait_for()
    session_id = page.evaluate("window.voiceSession.session.id")
    assert page.evaluate("window.voiceSession.session.documents[0].mode") == "search"
    call_id = current_call(page, session_id)["call_id"]
    # The person asks; the simulator's model searches because the answer is in no document it holds.
    simulator.post(f"/_sim/calls/{call_id}/script", {"user_transcript": "What is the rollout code for Tangerine?"})
    hold_talk(page, 0.8)

    answer = page.locator('#transcript li[data-role="assistant"]').filter(has_text="TANGERINE-7")
    answer.wait_for(timeout=30_000)
    sources = answer.locator(".sources")
    sources.wait_for()
    assert "Sources" in sources.text_content() and PLANTED in sources.text_content()
    link = sources.get_by_role("link", name="Operations report").first
    assert "section “Chapter 47”" in sources.locator("li").first.text_content()
    href = link.get_attribute("href")
    assert re.fullmatch(rf"/documents/{document_id}/#passage-\d+", href)

    # The record keeps them: the API's transcript and the Markdown export.
    recorded = wait_until(lambda: [t for t in api_session(page, session_id)["transcript"] if t["sources"]],
                          what="the answer's sources stored")
    assert PLANTED in recorded[0]["sources"][0]["text"] and "TANGERINE-7" in recorded[0]["text"]
    markdown = page.request.get(f"/sessions/{session_id}/transcript.md").text()
    assert "Operations report, section “Chapter 47”" in markdown and PLANTED in markdown
    calls = simulator.call(call_id)
    assert [r["kind"] for r in calls["responses"]][:2] == ["function_call", "message"]
    page.get_by_role("button", name="Stop").click()
    page.get_by_role("status").filter(has_text="Session ended").wait_for()

    # The source opens the document at its passage.
    page.goto(href)
    target = page.locator(".passage:target")
    assert PLANTED in target.text_content()


def test_the_picker_says_when_nothing_matches_and_when_the_library_cannot_be_searched(page):
    """The results list stayed empty, with no word, for no match, an error and a lost sign-in alike."""
    sign_in(page)
    page.goto("/")
    page.get_by_label("Find documents").fill("qqxzzy")
    results = page.locator("#doc-results")
    results.get_by_text("No document matches “qqxzzy”.").wait_for()
    assert page.locator("#picker-status").text_content() == "No document matches “qqxzzy”."
    page.route("**/api/documents/*", lambda route: route.fulfill(status=500, body="{}"))
    page.get_by_label("Find documents").fill("launch")
    results.get_by_text("The library could not be searched (HTTP 500). Try again.").wait_for()
    assert results.locator("button").count() == 0


def test_a_chosen_document_deleted_before_start_is_named_and_taken_off_the_list(page, server, tmp_path):
    path = tmp_path / "gone.md"
    path.write_text("# Soon gone\n\nThis document is deleted before the conversation starts.\n")
    sign_in(page)
    page.goto("/documents/")
    page.get_by_label("File").set_input_files(str(path))
    page.get_by_label("Title (optional)").fill("Soon gone")
    page.get_by_role("button", name="Upload").click()
    page.wait_for_url("**/documents/*/")
    page.goto("/")
    page.get_by_label("Find documents").fill("Soon gone")
    page.get_by_role("button", name="Add Soon gone").click()
    server.manage("shell", "-c", "from documents_app.models import Document; "
                                 "Document.objects.filter(title='Soon gone').delete()")
    page.get_by_role("button", name="Start").click()
    page.get_by_role("alert").filter(has_text="“Soon gone” was deleted or is no longer shared with you").wait_for()
    assert page.locator("#doc-chosen li").count() == 0
