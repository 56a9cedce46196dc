"""Shared setup for the page tests (test_pages.py, test_accessibility.py): a document in alice's team
library and a finished conversation of hers with a transcript, a verified bill and a source."""

import json

from tests.browser.conftest import sign_in

WIDTHS = (1280, 390)

# A conversation as the sideband leaves one: two turns, the answer billed from verified usage with
# five-digit token counts (so thousands separators show), and one source from the uploaded document.
MAKE_CONVERSATION = """
import json
from django.contrib.auth import get_user_model
from django.utils import timezone
from documents_app.models import Document
from sessions_app import usage
from sessions_app.models import EndReason, RealtimeSession, Source, ToolCall, TranscriptEntry, UsageRecord
alice = get_user_model().objects.get(username="alice")
doc = Document.objects.filter(owner=alice, title="Launch plan").latest("created_at")
session = RealtimeSession.objects.create(
    user=alice, team=alice.memberships.get().team, model="gpt-realtime", voice="marin",
    turn_detection="server_vad", status="active", connected_at=timezone.now(), instructions="Pages test.",
    documents=[{"id": str(doc.pk), "title": doc.title, "tokens": doc.tokens, "sha256": doc.sha256, "mode": "search"}],
    document_tokens=0)
TranscriptEntry.objects.create(session=session, item_id="item_u1", role="user", position=1,
                               text="When is the launch?")
TranscriptEntry.objects.create(session=session, item_id="item_a1", role="assistant", position=2,
                               text="The launch is on the ninth of March.", response_id="resp_pages_1")
details = {"text_tokens": 12000, "audio_tokens": 3500, "image_tokens": 0, "cached_tokens": 1024,
           "cached_tokens_details": {"text_tokens": 1024, "audio_tokens": 0, "image_tokens": 0}}
usage.record(session.pk, "resp_pages_1", {
    "total_tokens": 15500 + 1400, "input_tokens": 15500, "output_tokens": 1400,
    "input_token_details": details, "output_token_details": {"text_tokens": 200, "audio_tokens": 1200}},
    source=UsageRecord.SERVER)
passage = doc.passages.first()
call = ToolCall.objects.create(session=session, name="search_documents", query="launch", answer_item_id="item_a1",
                               function_call_id="call_pages_1", answer_response_id="resp_pages_1")
Source.objects.create(tool_call=call, position=1, document=doc, passage=passage, title=doc.title,
                      section=passage.section, text=passage.text)
session.end(EndReason.USER)
print(json.dumps({"session": str(session.pk), "document": str(doc.pk)}))
"""

DOCUMENT = b"""# Launch plan

The launch is on the ninth of March. The team meets every Monday to check the plan.

## Budget

The budget for the launch is fixed and reviewed each month by the team admin.
"""


def upload_document(page, name="launch-plan.md", body=DOCUMENT, title="Launch plan"):
    """Uploads a Markdown document as the signed-in user; returns its page's path."""
    page.goto("/documents/")
    page.locator("#id_file").set_input_files(files=[{"name": name, "mimeType": "text/markdown",
                                                                  "buffer": body}])
    if title:
        page.locator("#id_title").fill(title)
    page.get_by_role("button", name="Upload").click()
    page.wait_for_url("**/documents/*/")
    return page.url.split(page.url.split("/documents/")[0], 1)[1]


def make_conversation(browser, server, tag):
    """A document and a finished conversation of alice's; returns {"session", "document"} ids.
    `tag` makes the document's text unique (the library refuses a second copy)."""
    context = browser.new_context(base_url=server)
    page = context.new_page()
    page.set_default_timeout(15_000)
    sign_in(page, "alice")
    upload_document(page, name="launch-plan-pages.md", body=DOCUMENT + f"\nMade for {tag}.\n".encode())
    context.close()
    return json.loads(server.manage("shell", "-c", MAKE_CONVERSATION).strip().splitlines()[-1])
