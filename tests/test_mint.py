"""POST /api/sessions/: every status in the contract, the upstream requests, the SDP policy, no key or secret leaks."""

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from django.core.cache import cache
from django_ratelimit.core import _get_window, _make_cache_key, _split_rate

from documents_app.models import Document
from django.db import DatabaseError

from sessions_app import upstream, views
from sessions_app.models import Call, RealtimeSession
from tests.conftest import login
from tests.upstream_fake import ANSWER, OFFER, SECRET, FakeUpstream

SHARED = Path(__file__).resolve().parents[2] / "shared" / "realtime-api"
FAKE_KEY = "sk-test-FAKE-key-never-shown-0123456789"


@pytest.fixture(autouse=True)
def fake_key(settings):
    settings.OPENAI_API_KEY = FAKE_KEY
    settings.MINT_RATE_LIMIT = "10/m"
    cache.clear()


@pytest.fixture
def fake(monkeypatch):
    fake = FakeUpstream()
    monkeypatch.setattr(upstream, "_send", fake.send)
    return fake


def mint(client, body=None, raw=None):
    """Start a session; the browser's offer goes with every body unless the test says otherwise."""
    if raw is None:
        body = {"sdp": OFFER, **body} if isinstance(body, dict) else ({"sdp": OFFER} if body is None else body)
        raw = json.dumps(body)
    return client.post("/api/sessions/", data=raw, content_type="application/json")


@pytest.fixture
def schema_doc():
    assert SHARED.is_dir(), f"the shared realtime-api schemas are missing at {SHARED}"
    return yaml.safe_load((SHARED / "client_secrets.yaml").read_text())


def _only_known_keys(instance, schema, doc, path="$"):
    """Every key we send must be a property the schema names (the spec rarely says additionalProperties)."""
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    if isinstance(instance, dict):
        options = schema.get("anyOf") or schema.get("oneOf")
        if options:
            errors = []
            for option in options:
                try:
                    _only_known_keys(instance, option, doc, path)
                    return
                except AssertionError as exc:
                    errors.append(str(exc))
            raise AssertionError(f"{path}: no variant fits: {errors}")
        props = schema.get("properties", {})
        for key, value in instance.items():
            assert key in props, f"{path}.{key} is not in the schema"
            _only_known_keys(value, props[key], doc, f"{path}.{key}")


def test_mint_creates_the_call_and_answers_with_its_sdp(csrf_client, alice, fake, schema_doc, settings):
    login(csrf_client, alice)
    response = mint(csrf_client, {"model": "gpt-realtime", "voice": "cedar", "turn_detection": "semantic_vad",
                                  "document_text": "The launch is on 3 March."})
    assert response.status_code == 201, response.content
    data = response.json()
    assert set(data) == {"id", "sdp", "call", "model", "voice", "turn_detection", "documents", "usage_ws"}
    assert data["sdp"] == ANSWER and data["call"] == 1
    assert data["usage_ws"] == f"/ws/sessions/{data['id']}/"
    assert data["documents"] == [{"id": "pasted", "title": "Pasted text", "tokens": data["documents"][0]["tokens"],
                                  "mode": "inline"}]
    # The secret never leaves the server: not in the answer, in any form.
    assert SECRET not in response.content.decode() and "ek_" not in response.content.decode()

    # First the secret, with the API key and the safety identifier...
    secret_request, call_request = fake.requests
    assert secret_request.url.path == "/v1/realtime/client_secrets"
    assert secret_request.headers["Authorization"] == f"Bearer {FAKE_KEY}"
    safety = secret_request.headers["OpenAI-Safety-Identifier"]
    # Stable per user, opaque: a keyed hash, not the id or the name.
    assert safety == upstream.safety_identifier(alice) and len(safety) == 32 and "alice" not in safety
    body = json.loads(secret_request.content)
    schema = dict(schema_doc, **{"$ref": "#/components/schemas/RealtimeCreateClientSecretRequest"})
    jsonschema.Draft202012Validator(schema).validate(body)
    _only_known_keys(body, schema_doc["components"]["schemas"]["RealtimeCreateClientSecretRequest"], schema_doc)
    assert body["expires_after"] == {"anchor": "created_at", "seconds": 3660}
    session = body["session"]
    assert session["type"] == "realtime" and session["model"] == "gpt-realtime"
    assert session["audio"]["output"]["voice"] == "cedar"
    assert session["audio"]["input"]["turn_detection"]["type"] == "semantic_vad"
    assert session["audio"]["input"]["transcription"]["model"]
    assert session["tools"] == [] and session["tool_choice"] == "auto" and session["max_output_tokens"] == 4096
    assert "Demo" in session["instructions"]
    # ...then the call, created by the server with that secret and the browser's offer, byte for byte.
    assert call_request.url.path == "/v1/realtime/calls"
    assert call_request.headers["Authorization"] == f"Bearer {SECRET}"
    assert call_request.headers["Content-Type"] == "application/sdp"
    assert call_request.content == OFFER.encode()

    record = RealtimeSession.objects.get(pk=data["id"])
    assert record.user == alice and record.team.name == "Demo" and record.model == "gpt-realtime"
    assert record.status == "active" and record.session_config == session
    assert record.documents == [{"id": "pasted", "title": "Pasted text", "tokens": record.document_tokens,
                                 "sha256": Document.hash_text("The launch is on 3 March."), "mode": "inline"}]
    assert record.pasted_text == "The launch is on 3 March." and record.document_tokens > 5
    # The call id from Location is on the record; the secret is kept sealed for the sideband only.
    call = Call.objects.get(session=record)
    assert call.number == 1 and call.call_id == "rtc_test1" and call.status == "active"
    assert SECRET not in call.sealed_secret and upstream.unseal(call.sealed_secret) == SECRET
    assert FAKE_KEY not in response.content.decode()
    # Both come from SECRET_KEY (derived once per key): another key reads nothing and names the user differently.
    safety = upstream.safety_identifier(alice)
    settings.SECRET_KEY = "another-secret-key-for-this-test-only-0123456789"
    assert upstream.unseal(call.sealed_secret) is None and upstream.safety_identifier(alice) != safety


def test_push_to_talk_turns_detection_off(csrf_client, bob, fake):
    login(csrf_client, bob)
    assert mint(csrf_client, {"turn_detection": "push_to_talk"}).status_code == 201
    assert fake.last_json["session"]["audio"]["input"]["turn_detection"] is None


def test_defaults_fill_every_field(csrf_client, bob, fake, settings):
    login(csrf_client, bob)
    data = mint(csrf_client, {}).json()
    assert data["model"] == settings.DEFAULT_MODEL and data["voice"] == settings.DEFAULT_VOICE
    assert data["documents"] == []


def test_anonymous_gets_json_401(csrf_client, fake):
    response = mint(csrf_client, {})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"
    assert fake.requests == []


def test_missing_csrf_token_is_403_json(alice, fake):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    response = mint(client, {})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "csrf_failed"
    assert RealtimeSession.objects.count() == 0


def test_get_is_405(csrf_client, alice):
    login(csrf_client, alice)
    assert csrf_client.get("/api/sessions/").status_code == 405


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({"model": "gpt-4o"}, "model must be one of"),
        ({"voice": "robot"}, "voice must be one of"),
        ({"turn_detection": "always"}, "turn_detection must be one of"),
        ({"model": 5}, "model must be a string"),
        ({"document_ids": "abc"}, "document_ids must be a list"),
        ({"document_ids": ["not-a-uuid"]}, "UUIDs"),
        ({"document_text": ["x"]}, "document_text must be a string"),
        ({"temperature": 0.7}, "unknown field: temperature"),
        ([1, 2], "JSON object"),
    ],
)
def test_bad_fields_are_400(csrf_client, alice, fake, body, fragment):
    login(csrf_client, alice)
    response = mint(csrf_client, body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"
    assert fragment in response.json()["error"]["message"]
    assert fake.requests == [] and RealtimeSession.objects.count() == 0


def test_not_json_is_400(csrf_client, alice, fake):
    login(csrf_client, alice)
    response = mint(csrf_client, raw=b"\xff{not json")
    assert response.status_code == 400
    assert RealtimeSession.objects.count() == 0


def test_unknown_document_id_is_404(csrf_client, alice, fake):
    login(csrf_client, alice)
    response = mint(csrf_client, {"document_ids": ["2f1b7a52-3c1e-4a0e-9d7e-0c7a4b1f9e10"]})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "document_not_found"
    # Which one, so that the page can take it off the list and name it.
    assert response.json()["error"]["document_ids"] == ["2f1b7a52-3c1e-4a0e-9d7e-0c7a4b1f9e10"]
    assert fake.requests == []


def test_pasted_text_over_the_model_budget_is_400(csrf_client, alice, fake):
    login(csrf_client, alice)
    # gpt-realtime: 32,000 context, so far under 100,000 words fit.
    response = mint(csrf_client, {"model": "gpt-realtime", "document_text": "word " * 100_000})
    assert response.status_code == 400
    assert "allows" in response.json()["error"]["message"] and "upload it to the library" in response.json()["error"]["message"]
    assert fake.requests == [] and RealtimeSession.objects.count() == 0


def test_rate_limit_preset_gives_429_with_retry_after(csrf_client, alice, fake, settings):
    settings.MINT_RATE_LIMIT = "3/m"
    login(csrf_client, alice)
    # Preset the counter at the limit instead of looping requests.
    limit, period = _split_rate(settings.MINT_RATE_LIMIT)
    value = str(alice.pk)
    key = _make_cache_key("sessions-mint", _get_window(value, period), settings.MINT_RATE_LIMIT, value, "")
    cache.set(key, limit, period)
    response = mint(csrf_client, {})
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(response["Retry-After"]) <= 60
    assert fake.requests == [] and RealtimeSession.objects.count() == 0


def test_rate_limit_is_per_user(csrf_client, alice, bob, fake, settings):
    settings.MINT_RATE_LIMIT = "1/m"
    login(csrf_client, alice)
    assert mint(csrf_client, {}).status_code == 201
    assert mint(csrf_client, {}).status_code == 429
    login(csrf_client, bob)
    assert mint(csrf_client, {}).status_code == 201


@pytest.mark.parametrize(
    "mode, status, code",
    [
        (500, 502, "upstream_error"),
        (401, 502, "upstream_error"),
        (429, 502, "upstream_error"),
        (400, 502, "upstream_error"),
        ("timeout", 504, "upstream_timeout"),
        ("connect_error", 502, "upstream_error"),
        ("bad_json", 502, "upstream_error"),
        ("wrong_shape", 502, "upstream_error"),
    ],
)
@pytest.mark.parametrize("step", ["secret", "call"])
def test_upstream_failures_map_to_502_504_and_write_nothing(csrf_client, alice, fake, caplog, mode, status, code,
                                                           step):
    if step == "secret":
        fake.mode = mode
    elif mode == "wrong_shape":
        fake.calls_mode = "no_location"
    else:
        fake.calls_mode = mode
    login(csrf_client, alice)
    response = mint(csrf_client, {})
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    # Neither the key nor the upstream's own words reach the user or the log.
    for text in (response.content.decode(), caplog.text):
        assert FAKE_KEY not in text and "sk-secret-detail" not in text and SECRET not in text
    assert RealtimeSession.objects.count() == 0 and Call.objects.count() == 0


def test_a_call_answer_without_sdp_is_hung_up(csrf_client, alice, fake):
    fake.calls_mode = "not_sdp"
    login(csrf_client, alice)
    response = mint(csrf_client, {})
    assert response.status_code == 502 and response.json()["error"]["code"] == "upstream_error"
    assert fake.requests[-1].url.path == "/v1/realtime/calls/rtc_badanswer/hangup"
    assert RealtimeSession.objects.count() == 0


def test_a_call_that_cannot_be_recorded_is_hung_up(csrf_client, alice, fake, monkeypatch):
    def broken(*args):
        raise DatabaseError("the database went away")

    monkeypatch.setattr(views, "_new_session", broken)
    login(csrf_client, alice)
    response = mint(csrf_client, {})
    assert response.status_code == 503 and response.json()["error"]["code"] == "unavailable"
    assert [r.url.path for r in fake.requests] == [
        "/v1/realtime/client_secrets", "/v1/realtime/calls", "/v1/realtime/calls/rtc_test1/hangup",
    ]
    assert RealtimeSession.objects.count() == 0 and Call.objects.count() == 0


def _offer_with(*media):
    head = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n" + WEBRTC
    return head + "".join(f"m={m}\r\nc=IN IP4 0.0.0.0\r\n" for m in media)


WEBRTC = "a=ice-ufrag:Fo1x\r\na=ice-pwd:0bN5Hd2h3Zyq8bH9Xc3lpQe1\r\na=fingerprint:sha-256 3A:2B:1C\r\n"


AUDIO = "audio 9 UDP/TLS/RTP/SAVPF 111"
DATA = "application 9 UDP/DTLS/SCTP webrtc-datachannel"


@pytest.mark.parametrize(
    "sdp, fragment",
    [
        (None, "sdp is required"),
        (5, "must be a string"),
        ("", "not an SDP offer"),
        ("hello", "not an SDP offer"),
        (OFFER.replace("v=0", "v=0\x00", 1), "not an SDP offer"),
        (OFFER + "a=x:" + "y" * 20_000 + "\r\n", "at most 20,000"),
        (_offer_with(DATA), "exactly one audio stream; it has 0"),
        (_offer_with(AUDIO, AUDIO, DATA), "exactly one audio stream; it has 2"),
        (_offer_with(AUDIO, DATA, DATA), "at most one data channel"),
        (_offer_with(AUDIO, "video 9 UDP/TLS/RTP/SAVPF 96", DATA), "not video"),
        (_offer_with(AUDIO, "application 9 RTP/AVP 0"), "must be a WebRTC data channel"),
        ("\ud800" + OFFER, "not text"),
        # Offers the upstream would refuse (a 502 once): media lines without port, protocol or formats,
        # a line break that SDP does not have, a line that is not type=value, no ICE or DTLS.
        ("v=0\r\n" + WEBRTC + "m=audio\r\n", "not <media> <port> <protocol> <formats>"),
        ("v=0\r\n" + WEBRTC + "m=audio nonsense\r\n", "not <media> <port> <protocol> <formats>"),
        ("v=0\r\n" + WEBRTC + "m=audio x UDP/TLS/RTP/SAVPF 111\r\n", "not <media> <port> <protocol> <formats>"),
        ("v=0\u2028m=audio 9 UDP 0", "exactly one audio stream; it has 0"),
        (_offer_with(AUDIO) + "hello\r\n", "every line is a letter"),
        (_offer_with(AUDIO).replace(WEBRTC, ""), "no ICE credentials or DTLS fingerprint"),
    ],
)
def test_offers_outside_the_policy_are_400_invalid_sdp(csrf_client, alice, fake, sdp, fragment):
    login(csrf_client, alice)
    body = {} if sdp is None else {"sdp": sdp}
    response = mint(csrf_client, raw=json.dumps(body))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_sdp"
    assert fragment in response.json()["error"]["message"]
    assert fake.requests == [] and RealtimeSession.objects.count() == 0


def test_an_offer_with_audio_only_is_accepted(csrf_client, alice, fake):
    login(csrf_client, alice)
    assert mint(csrf_client, {"sdp": _offer_with(AUDIO)}).status_code == 201


def test_page_never_contains_the_key(csrf_client, alice):
    login(csrf_client, alice)
    page = csrf_client.get("/")
    assert page.status_code == 200
    assert FAKE_KEY not in page.content.decode()
    assert b'id="start"' in page.content


def test_anonymous_page_redirects_to_login(client):
    response = client.get("/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


# ---- documents from the library ----

def _doc(owner, title, text, visibility="team"):
    return Document.objects.create(
        team=owner.memberships.get().team, owner=owner, title=title, filename=f"{title}.txt", kind="text",
        visibility=visibility, text=text, sha256=Document.hash_text(text), tokens=len(text.split()) + 2,
        size_bytes=len(text),
    )


def test_library_documents_go_in_the_chosen_order_labelled(csrf_client, bob, alice, fake):
    first = _doc(alice, "Launch plan", "Zephyr launches in March.")
    second = _doc(bob, 'Budget "draft"', "Twelve thousand euros.")
    login(csrf_client, bob)
    response = mint(csrf_client, {"document_ids": [str(second.pk), str(first.pk)]})
    assert response.status_code == 201, response.content
    assert [d["id"] for d in response.json()["documents"]] == [str(second.pk), str(first.pk)]
    assert {d["mode"] for d in response.json()["documents"]} == {"inline"}
    record = RealtimeSession.objects.get(pk=response.json()["id"])
    assert [d["id"] for d in record.documents] == [str(second.pk), str(first.pk)]
    assert record.documents[1]["sha256"] == first.sha256
    assert record.document_tokens == first.tokens + second.tokens


def test_read_only_member_may_use_documents(csrf_client, erin, alice, fake):
    doc = _doc(alice, "Launch plan", "Zephyr launches in March.")
    login(csrf_client, erin)
    assert mint(csrf_client, {"document_ids": [str(doc.pk)]}).status_code == 201


@pytest.mark.parametrize("case", ["other_team", "private", "deleted"])
def test_documents_the_user_may_not_see_are_404(csrf_client, bob, alice, charlie, fake, case):
    if case == "other_team":
        doc = _doc(charlie, "Other team plan", "Secret plans.")
    elif case == "private":
        doc = _doc(alice, "Alice private", "Only Alice.", visibility="private")
    else:
        doc = _doc(bob, "Gone", "Deleted.")
        pk = doc.pk
        doc.delete()
        doc.pk = pk
    login(csrf_client, bob)
    response = mint(csrf_client, {"document_ids": [str(doc.pk)]})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "document_not_found"
    assert "Secret" not in response.content.decode()
    assert fake.requests == [] and RealtimeSession.objects.count() == 0


def test_documents_over_the_budget_are_searched_instead(csrf_client, bob, fake):
    big = _doc(bob, "Huge", "word " * 10)
    big.tokens = 20_000  # over gpt-realtime's document budget, within gpt-realtime-2's
    big.save()
    small = _doc(bob, "Small", "Zephyr launches in March.")
    login(csrf_client, bob)
    response = mint(csrf_client, {"model": "gpt-realtime", "document_ids": [str(big.pk), str(small.pk)]})
    assert response.status_code == 201, response.content
    assert [(d["title"], d["mode"]) for d in response.json()["documents"]] == [("Huge", "search"), ("Small", "inline")]
    # The search tool is declared, and the model is told which documents to search.
    session = fake.last_json["session"]
    assert [t["name"] for t in session["tools"]] == ["search_documents"]
    assert "search them with search_documents" in session["instructions"] and "“Huge”" in session["instructions"]
    record = RealtimeSession.objects.get(pk=response.json()["id"])
    assert record.document_tokens == small.tokens  # only what is read whole is billed every answer
    response = mint(csrf_client, {"model": "gpt-realtime-2", "document_ids": [str(big.pk)]})
    assert [d["mode"] for d in response.json()["documents"]] == ["inline"]
    assert fake.last_json["session"]["tools"] == []


def test_search_only_searches_every_document(csrf_client, bob, fake):
    small = _doc(bob, "Small", "Zephyr launches in March.")
    login(csrf_client, bob)
    response = mint(csrf_client, {"document_ids": [str(small.pk)], "search_only": True})
    assert [d["mode"] for d in response.json()["documents"]] == ["search"]
    assert fake.last_json["session"]["tools"][0]["name"] == "search_documents"
    assert mint(csrf_client, {"search_only": "yes"}).status_code == 400


def test_a_second_conversation_while_one_is_running_is_409_naming_it(csrf_client, alice, bob, fake):
    """One running conversation per person: a page connected to an active conversation blocks a second one."""
    from django.utils import timezone

    login(csrf_client, alice)
    first = mint(csrf_client, {})
    assert first.status_code == 201
    running = RealtimeSession.objects.get(pk=first.json()["id"])
    # No page has connected yet (or it went away): that does not count as running.
    assert mint(csrf_client, {}).status_code == 201
    running.page_connected_at = timezone.now()
    running.save(update_fields=["page_connected_at"])
    refused = mint(csrf_client, {})
    assert refused.status_code == 409
    error = refused.json()["error"]
    assert error["code"] == "session_running" and "already have a conversation running" in error["message"]
    assert error["session"]["id"] == str(running.pk) and error["session"]["url"] == f"/sessions/{running.pk}/"
    assert error["session"]["created_at"] == running.created_at.isoformat()
    assert error["session"]["cost_usd"] == f"{running.billed_cost_usd:.4f}"
    assert RealtimeSession.objects.filter(user=alice).count() == 2  # nothing stored for the refused one
    # Someone else is not blocked by it.
    login(csrf_client, bob)
    assert mint(csrf_client, {}).status_code == 201
    # The page left, or the conversation ended: a new one may start.
    login(csrf_client, alice)
    running.page_left_at = timezone.now()
    running.save(update_fields=["page_left_at"])
    assert mint(csrf_client, {}).status_code == 201
    cache.clear()  # the starts above count against the rate limit; later modules' tests start fresh
