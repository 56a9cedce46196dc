"""The transcript as Markdown and CSV: each turn in order, each answer's cost and sources; the session page too."""

import csv
import io
from decimal import Decimal

import pytest

from sessions_app.models import RealtimeSession, Source, ToolCall, TranscriptEntry
from sessions_app.pricing import TokenCounts
from tests.conftest import login

pytestmark = pytest.mark.django_db


@pytest.fixture
def talked(bob):
    session = RealtimeSession.objects.create(
        user=bob, team=bob.memberships.get().team, model="gpt-realtime", voice="marin", turn_detection="server_vad",
        instructions="x",
    )
    TranscriptEntry.objects.create(session=session, item_id="u1", role="user", text="What is the rollout code?",
                                   position=1)
    TranscriptEntry.objects.create(session=session, item_id="a1", role="assistant", text="It is TANGERINE-7.",
                                   position=2, response_id="resp_1")
    TranscriptEntry.objects.create(session=session, item_id="u2", role="user", text="=HYPERLINK(\"x\")", position=3)
    session.record_usage("resp_1", TokenCounts(input_text=1000, output_audio=100), Decimal("0.010400"))
    call = ToolCall.objects.create(session=session, function_call_id="call_1", name="search_documents",
                                   query="rollout code", output="...", answer_item_id="a1")
    Source.objects.create(tool_call=call, position=1, title="Annual report", page=12,
                          text="The rollout code for Tangerine is TANGERINE-7.")
    return session


def test_markdown_has_every_turn_the_answers_cost_and_sources(client, bob, talked):
    response = login(client, bob).get(f"/sessions/{talked.pk}/transcript.md")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/markdown")
    assert "attachment" in response["Content-Disposition"]
    body = response.content.decode()
    assert body.index("What is the rollout code?") < body.index("It is TANGERINE-7.")
    assert "($0.0104)" in body
    assert "1. Annual report, page 12" in body and "> The rollout code for Tangerine is TANGERINE-7." in body


def test_csv_has_time_speaker_text_cost_sources_and_no_formulas(client, bob, talked):
    response = login(client, bob).get(f"/sessions/{talked.pk}/transcript.csv")
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0] == ["time_utc", "speaker", "text", "answer_cost_usd", "sources"]
    assert [r[1] for r in rows[1:]] == ["User", "Assistant", "User"]
    assert rows[2][3] == "0.01040000" and rows[1][3] == ""
    assert rows[2][4] == "Annual report, page 12: The rollout code for Tangerine is TANGERINE-7."
    assert rows[3][2] == "'=HYPERLINK(\"x\")"


def test_the_session_page_shows_the_sources(client, bob, talked):
    body = login(client, bob).get(f"/sessions/{talked.pk}/").content.decode()
    assert "Sources" in body and "The rollout code for Tangerine is TANGERINE-7." in body
    assert f"/sessions/{talked.pk}/transcript.md" in body


@pytest.mark.parametrize("who, status", [("alice", 200), ("staff", 200), ("charlie", 404), ("erin", 404)])
def test_exports_for_owner_team_admins_and_staff_only(client, talked, who, status, request):
    login(client, request.getfixturevalue(who))
    for kind in ("md", "csv"):
        response = client.get(f"/sessions/{talked.pk}/transcript.{kind}")
        assert response.status_code == status
        if status == 404:
            assert b"TANGERINE" not in response.content


def test_exports_need_a_sign_in(client, talked):
    assert client.get(f"/sessions/{talked.pk}/transcript.md").status_code == 302


def test_the_api_gives_each_answer_its_sources(client, bob, talked):
    data = login(client, bob).get(f"/api/sessions/{talked.pk}").json()
    answer = [t for t in data["transcript"] if t["item_id"] == "a1"][0]
    assert answer["sources"] == [{"document_id": None, "passage_id": None, "title": "Annual report", "page": 12,
                                  "section": None, "text": "The rollout code for Tangerine is TANGERINE-7."}]
    assert [t for t in data["transcript"] if t["item_id"] == "u1"][0]["sources"] == []
    assert data["tool_calls"][0]["query"] == "rollout code"
