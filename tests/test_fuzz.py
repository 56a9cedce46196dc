"""Property-based fuzzing of what a browser (or anyone) can send: the start body, the usage and transcript
frames, search queries and upload names. Whatever arrives, the answer is a 2xx, 3xx or 4xx (an error frame
on a socket, which stays up), never a 5xx, and nothing is half-written."""

import asyncio
import io
import json

import pytest
from django.core.cache import cache
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from documents_app import search
from documents_app.models import Document
from sessions_app import upstream
from sessions_app.models import Call, RealtimeSession
from tests.conftest import login
from tests.upstream_fake import OFFER, FakeUpstream

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                          HealthCheck.too_slow])
# Any text a keyboard, a paste or a hostile client can produce, surrogates and NUL included.
TEXT = st.text(alphabet=st.characters(codec=None), max_size=300)
SCALARS = st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70) | st.floats() | TEXT
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
                    max_leaves=12)
KEYS = st.sampled_from(["model", "voice", "turn_detection", "document_ids", "document_text", "search_only", "sdp",
                        "temperature", ""]) | TEXT


@pytest.fixture
def fake(monkeypatch, settings):
    settings.OPENAI_API_KEY = "sk-test-FAKE-fuzz"
    settings.MINT_RATE_LIMIT = "100000/m"
    fake = FakeUpstream()
    monkeypatch.setattr(upstream, "_send", fake.send)
    return fake


@pytest.mark.django_db
@FUZZ
@given(body=st.dictionaries(KEYS, JSON, max_size=6) | JSON, keep_sdp=st.booleans())
def test_any_start_body_gets_a_clear_answer(csrf_client, alice, fake, body, keep_sdp):
    login(csrf_client, alice)
    if keep_sdp and isinstance(body, dict):
        body["sdp"] = OFFER
    sessions_before = RealtimeSession.objects.count()
    calls_before = Call.objects.count()
    try:
        raw = json.dumps(body)
    except (ValueError, UnicodeEncodeError):
        raw = str(body)
    response = csrf_client.post("/api/sessions/", data=raw.encode("utf-8", "surrogatepass"),
                                content_type="application/json")
    assert response.status_code in (201, 400, 402, 404, 429), (response.status_code, response.content[:200])
    assert response["Content-Type"].startswith("application/json")
    created = RealtimeSession.objects.count() - sessions_before
    assert created == (1 if response.status_code == 201 else 0)
    assert Call.objects.count() - calls_before == created


FRAME = st.one_of(
    st.fixed_dictionaries({"type": st.just("usage.report"), "response_id": TEXT | JSON, "usage": JSON}),
    st.fixed_dictionaries({"type": st.just("usage.report"), "item_id": TEXT | JSON, "usage": JSON}),
    st.fixed_dictionaries({"type": st.just("transcript.report"), "item_id": TEXT | JSON,
                           "role": st.sampled_from(["user", "assistant", "system"]) | TEXT, "text": TEXT | JSON}),
    JSON,
)


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=st.lists(FRAME, min_size=25, max_size=25))
def test_any_frame_gets_an_ack_or_an_error_and_the_socket_stays_up(alice, frames):
    from tests.test_usage_consumer import connect, session_for

    async def run():
        session = await session_for(alice)
        comm, connected = await connect(session, alice)
        assert connected
        for frame in frames:
            text = json.dumps(frame).encode("utf-8", "surrogatepass").decode("utf-8", "replace")
            await comm.send_to(text_data=text)
            reply = await comm.receive_json_from(timeout=10)
            assert reply["type"] in ("usage.ack", "transcript.ack", "error"), reply
            while not await comm.receive_nothing(0.01):
                await comm.receive_json_from()  # a verified-totals push or two may follow an ack
        # Still up: a valid report after all that is stored and acknowledged.
        await comm.send_json_to({"type": "transcript.report", "item_id": "after_fuzz", "role": "user", "text": "ok"})
        assert (await comm.receive_json_from(timeout=10))["type"] == "transcript.ack"
        await comm.disconnect()

    asyncio.run(run())


@pytest.mark.django_db
@FUZZ
@given(query=TEXT | st.text(min_size=1000, max_size=5000))
def test_any_search_query_finds_something_or_nothing(csrf_client, bob, query):
    assert isinstance(search.search_documents(bob, query), list)
    assert isinstance(search.search_passages([], query), list)
    login(csrf_client, bob)
    response = csrf_client.get("/api/documents/", {"q": query.encode("utf-8", "replace").decode("utf-8")})
    assert response.status_code == 200 and isinstance(response.json()["documents"], list)


@pytest.mark.django_db
@FUZZ
@given(name=TEXT, body=st.binary(max_size=200) | st.just(b"Plain text about the launch."))
@example(name="/", body=b"Plain text about the launch.")
@example(name="../..", body=b"Plain text about the launch.")
def test_any_upload_name_gets_a_page_not_an_error(csrf_client, bob, name, body):
    cache.clear()
    login(csrf_client, bob)
    before = Document.objects.count()
    # A bare file object: SimpleUploadedFile refuses some names ("/") before the server sees them.
    upload = io.BytesIO(body)
    upload.name = name.encode("utf-8", "replace").decode("utf-8") or "x"
    response = csrf_client.post("/documents/upload", {"file": upload, "visibility": "team"})
    assert response.status_code in (302, 400, 409, 413), response.status_code
    assert Document.objects.count() - before == (1 if response.status_code == 302 else 0)
