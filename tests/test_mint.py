"""POST /api/sessions/: every status in the contract, the upstream body, no key leaks."""

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from django.core.cache import cache
from django_ratelimit.core import _get_window, _make_cache_key, _split_rate

from documents_app.models import Document
from sessions_app import upstream
from sessions_app.models import RealtimeSession
from tests.conftest import login
from tests.upstream_fake import FakeUpstream

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
    monkeypatch.setattr(upstream, "_client", fake.client)
    return fake


def mint(client, body=None, raw=None):
    data = raw if raw is not None else json.dumps(body or {})
    return client.post("/api/sessions/", data=data, content_type="application/json")


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


def test_mint_works_and_sends_a_ga_body(csrf_client, alice, fake, schema_doc):
    login(csrf_client, alice)
    response = mint(csrf_client, {"model": "gpt-realtime", "voice": "cedar", "turn_detection": "semantic_vad",
                                  "document_text": "The launch is on 3 March."})
    assert response.status_code == 201, response.content
    data = response.json()
    assert set(data) >= {"id", "client_secret", "expires_at", "calls_url", "model", "voice", "context_items", "usage_ws"}
    assert data["client_secret"] == "ek_test_0123456789abcdef"
    assert data["calls_url"].endswith("/v1/realtime/calls")
    assert data["usage_ws"] == f"/ws/sessions/{data['id']}/"
    item = data["context_items"][0]
    assert item["type"] == "conversation.item.create"
    text = item["item"]["content"][0]["text"]
    assert 'title="Pasted text"' in text and "The launch is on 3 March." in text

    request = fake.requests[-1]
    assert request.url.path == "/v1/realtime/client_secrets"
    assert request.headers["Authorization"] == f"Bearer {FAKE_KEY}"
    safety = request.headers["OpenAI-Safety-Identifier"]
    # Stable per user, opaque: a keyed hash, not the id or the name.
    assert safety == upstream.safety_identifier(alice) and len(safety) == 32 and "alice" not in safety
    body = json.loads(request.content)
    schema = dict(schema_doc, **{"$ref": "#/components/schemas/RealtimeCreateClientSecretRequest"})
    jsonschema.Draft202012Validator(schema).validate(body)
    _only_known_keys(body, schema_doc["components"]["schemas"]["RealtimeCreateClientSecretRequest"], schema_doc)
    assert body["expires_after"] == {"anchor": "created_at", "seconds": 60}
    session = body["session"]
    assert session["type"] == "realtime" and session["model"] == "gpt-realtime"
    assert session["audio"]["output"]["voice"] == "cedar"
    assert session["audio"]["input"]["turn_detection"]["type"] == "semantic_vad"
    assert session["audio"]["input"]["transcription"]["model"]
    assert "Demo" in session["instructions"]

    record = RealtimeSession.objects.get(pk=data["id"])
    assert record.user == alice and record.team.name == "Demo" and record.model == "gpt-realtime"
    assert record.documents == [{"id": "pasted", "title": "Pasted text", "tokens": record.document_tokens,
                                 "sha256": Document.hash_text("The launch is on 3 March.")}]
    assert record.document_tokens > 5
    assert FAKE_KEY not in response.content.decode()


def test_push_to_talk_turns_detection_off(csrf_client, bob, fake):
    login(csrf_client, bob)
    assert mint(csrf_client, {"turn_detection": "push_to_talk"}).status_code == 201
    assert fake.last_json["session"]["audio"]["input"]["turn_detection"] is None


def test_defaults_fill_every_field(csrf_client, bob, fake, settings):
    login(csrf_client, bob)
    data = mint(csrf_client, {}).json()
    assert data["model"] == settings.DEFAULT_MODEL and data["voice"] == settings.DEFAULT_VOICE
    assert data["context_items"] == []


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
    assert fake.requests == []


def test_document_over_the_model_budget_is_400(csrf_client, alice, fake):
    login(csrf_client, alice)
    # gpt-realtime: 32,000 context, so far under 100,000 words fit.
    response = mint(csrf_client, {"model": "gpt-realtime", "document_text": "word " * 100_000})
    assert response.status_code == 400
    assert "allows" in response.json()["error"]["message"]
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
def test_upstream_failures_map_to_502_504_and_write_nothing(csrf_client, alice, fake, caplog, mode, status, code):
    fake.mode = mode
    login(csrf_client, alice)
    response = mint(csrf_client, {})
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    # Neither the key nor the upstream's own words reach the user or the log.
    for text in (response.content.decode(), caplog.text):
        assert FAKE_KEY not in text and "sk-secret-detail" not in text
    assert RealtimeSession.objects.count() == 0


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
    texts = [i["item"]["content"][0]["text"] for i in response.json()["context_items"]]
    assert texts[0].startswith(f'<document id="{second.pk}" title="Budget \'draft\'">') and "Twelve" in texts[0]
    assert texts[1].startswith(f'<document id="{first.pk}" title="Launch plan">') and "Zephyr" in texts[1]
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


def test_documents_over_the_budget_are_refused(csrf_client, bob, fake):
    big = _doc(bob, "Huge", "word " * 10)
    big.tokens = 20_000  # over gpt-realtime's document budget
    big.save()
    login(csrf_client, bob)
    response = mint(csrf_client, {"model": "gpt-realtime", "document_ids": [str(big.pk)]})
    assert response.status_code == 400 and "allows" in response.json()["error"]["message"]
    assert mint(csrf_client, {"model": "gpt-realtime-2", "document_ids": [str(big.pk)]}).status_code == 201
