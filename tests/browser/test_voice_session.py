"""The voice session, end to end, in real headless Chromium against the simulator."""

import re
import time
from decimal import Decimal

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import PASSWORD, sign_in, wait_js

pytestmark = pytest.mark.browser

DOCUMENT = (
    "Project Zephyr launches on the fourth of March. "
    "The launch budget is twelve thousand euros. "
    "Maria Lopez leads the launch team."
)


def wait_until(predicate, timeout=15.0, interval=0.1, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


READY = re.compile(r"Connected\. (Hold Talk|Speak whenever)")


def start_session(page, turn="server_vad", document=DOCUMENT, signed_in=False):
    """Start a conversation and wait until it is ready to talk (documents in); returns (session id, call id)."""
    if not signed_in:
        sign_in(page)
    page.get_by_label("Turn taking").select_option(turn)
    if document:
        page.get_by_label("Document (paste text, optional)").fill(document)
    page.get_by_role("button", name="Start").click()
    page.get_by_role("status").filter(has_text=READY).wait_for()
    session_id = page.evaluate("window.voiceSession.session.id")
    return session_id, current_call(page, session_id)["call_id"]


def current_call(page, session_id):
    """The page never learns the upstream's call id; the server's session record has it."""
    return [c for c in api_session(page, session_id)["calls"] if c["status"] == "active"][-1]


def start_until_alert(page):
    """Sign in, press Start, and return the error message the page shows."""
    sign_in(page)
    page.get_by_role("button", name="Start").click()
    alert = page.get_by_role("alert")
    alert.wait_for()
    return alert.text_content()


def hold_talk(page, seconds, keyboard=False):
    """Press and hold the Talk button like a person (mouse, or Space from the keyboard), then let go."""
    talk = page.get_by_role("button", name="Talk (hold)")
    if keyboard:
        talk.focus()
        page.keyboard.down("Space")
        time.sleep(seconds)
        page.keyboard.up("Space")
        return
    talk.hover()
    page.mouse.down()
    time.sleep(seconds)
    page.mouse.up()


def inbound_audio_energy(page):
    return page.evaluate(
        """async () => {
            let energy = 0;
            (await window.voiceSession.call.pc.getStats()).forEach((s) => {
                if (s.type === 'inbound-rtp' && s.kind === 'audio') energy += s.totalAudioEnergy || 0;
            });
            return energy;
        }"""
    )


def api_session(page, session_id):
    response = page.request.get(f"/api/sessions/{session_id}")
    assert response.ok, response.status
    return response.json()


def test_talk_about_a_pasted_document_then_mute_and_stop(page, simulator):
    session_id, call_id = start_session(page)

    # The document item reached the upstream, labelled, from the server's sideband (never from the page).
    call = simulator.call(call_id)
    created = [(e, src) for e, src in zip(call["client_events"], call["client_event_sources"])
               if e.get("type") == "conversation.item.create"]
    assert [src for _, src in created] == ["sideband"]
    text = created[0][0]["item"]["content"][0]["text"]
    assert 'title="Pasted text"' in text and 'id="pasted"' in text and "Project Zephyr" in text
    assert "session.update" not in [e.get("type") for e, src in zip(call["client_events"], call["client_event_sources"])
                                    if src == "datachannel"]

    # The fake microphone's speech is heard, answered from the document, and billed.
    answer = page.locator('#transcript li[data-role="assistant"] .text').first
    answer.wait_for(timeout=20_000)
    wait_until(lambda: re.search("Zephyr|budget|Maria", answer.text_content()), what="an answer from the document")
    wait_js(page, "document.getElementById('session-cost').dataset.exact > 0", timeout=20_000)
    assert page.locator('#transcript li[data-role="user"]').count() >= 1

    call = simulator.call(call_id)
    assert call["audio_in"]["voiced_frames"] > 10, call["audio_in"]
    assert call["audio_out"]["voiced_frames"] > 10, call["audio_out"]
    wait_until(lambda: inbound_audio_energy(page) > 0, what="audio energy received by the browser")

    # What the page shows is what the database recorded.
    wait_js(page, "window.voiceSession.socket.unacknowledged === 0")
    recorded = wait_until(
        lambda: (r := api_session(page, session_id))["totals"]["responses"] >= 1
        and r["totals"]["cost_usd"] == page.locator("#session-cost").get_attribute("data-exact") and r,
        what="the page showing the recorded totals",
    )
    shown = recorded["totals"]["cost_usd"]
    assert float(shown) > 0 and recorded["calls"][0]["call_id"] == call_id and recorded["status"] == "active"
    shown_input = int(page.locator("#input-tokens").text_content().replace(",", ""))
    assert shown_input == recorded["totals"]["input_tokens"] > 0
    simulated = sum(r["usage"]["input_tokens"] for r in simulator.call(call_id)["responses"] if r.get("usage"))
    assert recorded["totals"]["input_tokens"] <= simulated

    # Mute: the frames keep coming but carry digital silence.
    # One label, its state in aria-pressed (a screen reader says "Mute, pressed", not "Unmute, pressed").
    page.get_by_role("button", name="Mute").click()
    assert page.get_by_role("button", name="Mute", pressed=True).is_visible()
    time.sleep(1.5)
    assert max(simulator.call(call_id)["audio_in"]["recent_rms"]) < 0.001
    page.get_by_role("button", name="Mute", pressed=True).click()
    wait_until(
        lambda: max(simulator.call(call_id)["audio_in"]["recent_rms"]) > 0.02, timeout=15, what="speech after unmute"
    )

    # Stop ends the session on the server and closes the call upstream.
    page.get_by_role("button", name="Stop").click()
    page.get_by_role("status").filter(has_text="Session ended").wait_for()
    assert api_session(page, session_id)["status"] == "ended"
    wait_until(lambda: simulator.call(call_id)["state"] == "closed", what="call closed at the simulator")
    assert page.get_by_role("button", name="Start").is_enabled()


def test_push_to_talk_answers_only_when_asked(page, simulator):
    session_id, call_id = start_session(page, turn="push_to_talk")
    talk = page.get_by_role("button", name="Talk (hold)")
    assert talk.is_visible()

    # The microphone is speaking (the fake device loops), yet nothing is answered.
    time.sleep(3)
    call = simulator.call(call_id)
    assert call["session"]["audio"]["input"]["turn_detection"] is None
    assert call["responses"] == []
    assert "input_audio_buffer.speech_started" not in call["server_event_types"]

    # Hold Talk while speaking, release: exactly one answer.
    hold_talk(page, 2.5)
    answer = page.locator('#transcript li[data-role="assistant"] .text').first
    answer.wait_for()
    wait_until(lambda: len(simulator.call(call_id)["responses"]) == 1, what="one response")
    types = [e["type"] for e in simulator.call(call_id)["client_events"]]
    assert types.index("input_audio_buffer.clear") < types.index("input_audio_buffer.commit") < types.index(
        "response.create"
    )
    page.get_by_role("button", name="Stop").click()
    page.get_by_role("status").filter(has_text="Session ended").wait_for()


def test_microphone_denied_gets_a_clear_message(browser, server):
    context = browser.new_context(base_url=server)
    # What Chromium does when the person clicks "Block" on the microphone prompt.
    context.add_init_script(
        "navigator.mediaDevices.getUserMedia = () => Promise.reject(new DOMException('denied', 'NotAllowedError'));"
    )
    page = context.new_page()
    message = start_until_alert(page)
    assert re.search(r"Microphone access was denied", message)
    assert page.get_by_role("button", name="Start").is_enabled()
    context.close()


def test_upstream_refusal_gets_a_clear_message_and_no_session(page, simulator):
    simulator.post("/_sim/faults", {"endpoint": "client_secrets", "status": 500, "count": 1})
    message = start_until_alert(page)
    assert "refused" in message
    assert "sk-" not in page.content()


def test_a_refused_call_gets_a_clear_message_and_no_session(page, simulator, server):
    before = server.sql("SELECT count(*) FROM sessions_app_realtimesession")[0][0]
    simulator.post("/_sim/faults", {"endpoint": "calls", "status": 401, "count": 1})
    message = start_until_alert(page)
    assert "refused" in message
    # The call step failed after the secret was minted: nothing is left behind.
    assert server.sql("SELECT count(*) FROM sessions_app_realtimesession")[0][0] == before
    assert page.get_by_role("button", name="Start").is_enabled()


def assert_call_controls(page, enabled):
    """Talk, Mute and typing work only while a call is open."""
    for name in ("Talk (hold)", "Mute", "Send"):
        assert page.get_by_role("button", name=name).is_enabled() is enabled, name
    assert page.get_by_label("Type a message").is_enabled() is enabled


def space_talks(page):
    """Hold Space (from the page, nothing focused) and let go: whether the page said it heard anything."""
    page.evaluate("document.activeElement?.blur()")
    page.keyboard.down("Space")
    heard = page.locator("#vad-label").text_content()
    page.keyboard.up("Space")
    return heard == "You are speaking" or page.locator("#vad-label").text_content() == "Thinking"


def test_a_lost_connection_is_resumed_with_the_button(page, simulator):
    session_id, call_id = start_session(page, turn="push_to_talk", document="")
    # Talk is held as the call goes (and the disabled button never hears its release).
    page.get_by_role("button", name="Talk (hold)").hover()
    page.mouse.down()
    # The upstream ends the call (as a dead network would, from the page's side).
    import urllib.request

    request = urllib.request.Request(
        f"{simulator.base_url}/v1/realtime/calls/{call_id}/hangup", method="POST",
        headers={"Authorization": "Bearer sk-sim-browser-tests"},
    )
    urllib.request.urlopen(request, timeout=5).read()
    alert = page.get_by_role("alert")
    alert.wait_for()
    assert "connection" in alert.text_content() and "lost" in alert.text_content()
    # No call is open: nothing to talk, mute or type into, and Space does not pretend to be heard.
    assert_call_controls(page, False)
    assert not space_talks(page)
    # The conversation is not over: it waits for the person to resume it.
    wait_until(lambda: api_session(page, session_id)["calls"][0]["status"] == "ended", what="call 1 ended")
    assert api_session(page, session_id)["status"] == "active"
    page.get_by_role("button", name="Resume").click()
    page.get_by_role("status").filter(has_text="Connected").wait_for()
    calls = api_session(page, session_id)["calls"]
    assert [(c["number"], c["status"]) for c in calls] == [(1, "ended"), (2, "active")]
    assert calls[0]["end_reason"] == "call_closed"
    assert_call_controls(page, True)
    # Talk was let go of with the lost call: the new call's microphone stays closed until Talk is held.
    assert page.evaluate("window.voiceSession.micTrack.enabled") is False
    assert page.get_by_role("button", name="Talk (hold)").get_attribute("aria-pressed") == "false"
    page.mouse.up()
    hold_talk(page, 0.3)
    wait_js(page, "document.getElementById('session-cost').dataset.exact > 0", timeout=20_000)
    page.locator('#transcript li[data-role="assistant"]').first.wait_for()
    assert simulator.call(calls[1]["call_id"])["responses"]
    page.get_by_role("button", name="Stop").click()
    page.get_by_role("status").filter(has_text="Session ended").wait_for()

    # A second conversation on the same page starts clean, and has no call to talk into until its call opens.
    held = []
    page.route("**/api/sessions/", lambda route: held.append(route))
    page.get_by_role("button", name="Start").click()
    while not held:
        page.wait_for_timeout(50)
    assert page.locator("#transcript li").count() == 0
    assert page.locator("#session-cost").text_content() == "$0.0000" and page.locator("#cost-note").text_content() == ""
    assert [page.locator(f"#{n}").text_content() for n in ("input-tokens", "cached-tokens", "output-tokens")] == ["0"] * 3
    assert_call_controls(page, False)
    assert not space_talks(page)
    held[0].continue_()
    page.get_by_role("status").filter(has_text=READY).wait_for()
    page.unroute("**/api/sessions/")
    assert_call_controls(page, True)
    page.get_by_role("button", name="Stop").click()
    page.get_by_role("status").filter(has_text="Session ended").wait_for()


def test_autoplay_blocked_offers_a_play_button(browser, server, simulator):
    context = browser.new_context(base_url=server)
    context.add_init_script(
        "HTMLMediaElement.prototype.play = function () {"
        " return Promise.reject(new DOMException('blocked', 'NotAllowedError')); };"
    )
    page = context.new_page()
    message = start_until_alert(page)
    assert "blocked" in message
    assert page.get_by_role("button", name="Play the assistant's audio").is_visible()
    page.get_by_role("button", name="Stop").click()
    page.get_by_role("status").filter(has_text="Session ended").wait_for()
    context.close()


def test_reports_made_while_the_socket_is_down_are_resent(page, simulator):
    session_id, call_id = start_session(page, turn="push_to_talk", document="")
    # Cut the usage socket and hold it down while a response completes.
    page.evaluate(
        """() => { const s = window.voiceSession.socket; s.reopen = s._open; s._open = () => {}; s.ws.close(); }"""
    )
    # The figures stand still meanwhile, and the page says so.
    note = page.locator("#cost-note")
    expect(note).to_have_text("Live cost paused: reconnecting…")
    hold_talk(page, 0.5, keyboard=True)
    wait_js(page, 
        "[...window.voiceSession.socket.pending.keys()].some((k) => k.startsWith('usage:'))", timeout=20_000
    )
    assert api_session(page, session_id)["totals"]["reported_responses"] == 0
    # The socket comes back: the kept report is sent again and acknowledged.
    page.evaluate("() => { const s = window.voiceSession.socket; s._open = s.reopen; s._open(); }")
    expect(note).not_to_contain_text("paused")
    wait_js(page, "window.voiceSession.socket.unacknowledged === 0")
    wait_js(page, "document.getElementById('session-cost').dataset.exact > 0")
    recorded = wait_until(lambda: (r := api_session(page, session_id))["totals"]["verified"] and r,
                          what="the server's own record")
    totals = recorded["totals"]
    assert totals["reported_responses"] == 1 and totals["responses"] == 1 and not totals["usage_mismatch"]
    assert totals["cost_usd"] == page.locator("#session-cost").get_attribute("data-exact")
    # Money is rounded as the server's pages round it (Decimal, half to even), not as a float's toFixed.
    shown = page.locator("#session-cost")
    expect(shown).to_have_text(f"${Decimal(totals['cost_usd']):.4f}")
    for version, exact in enumerate(("0.00125000", "0.00135000", "0.00125001", "0.00004999"), start=10**6):
        frame = {"type": "session.totals", "session": {
            "version": version, "input_tokens": 1, "cached_tokens": 0, "output_tokens": 1, "cost_usd": exact,
            "verified": True, "unverified": 0}}
        page.evaluate("(frame) => window.voiceSession.socket._receive(JSON.stringify(frame))", frame)
        expect(shown).to_have_text(f"${Decimal(exact):.4f}")
    page.get_by_role("button", name="Stop").click()
    # Ended on the record before the page goes: the next test's start must not find it running.
    page.get_by_role("status").filter(has_text="Session ended").wait_for()
    assert api_session(page, session_id)["status"] == "ended"
    ended = api_session(page, session_id)["totals"]
    expect(page.get_by_role("status")).to_contain_text(f"${Decimal(ended['cost_usd']):.4f}.")


def upload(page, tmp_path, filename, text, title):
    path = tmp_path / filename
    path.write_text(text)
    page.goto("/documents/")
    page.get_by_label("File").set_input_files(str(path))
    page.get_by_label("Title (optional)").fill(title)
    page.get_by_role("button", name="Upload").click()
    page.wait_for_url("**/documents/*/")
    return page.url.rstrip("/").rsplit("/", 1)[1]


def test_two_library_documents_reach_the_model_labelled_in_order(page, simulator, tmp_path):
    sign_in(page)
    stamp = str(time.monotonic_ns())
    first = upload(page, tmp_path, "orbit.txt", f"Orbit {stamp}: the satellite reaches orbit in May.", f"Orbit {stamp}")
    second = upload(page, tmp_path, "menu.md", f"# Menu {stamp}\n\nThe canteen serves soup on Fridays.", f"Menu {stamp}")

    page.goto("/")
    search = page.get_by_label("Find documents")
    # Chosen in the opposite order to upload: the order chosen is what counts.
    for title in (f"Menu {stamp}", f"Orbit {stamp}"):
        search.fill(stamp)
        page.get_by_role("button", name=f"Add {title}").click()
    chosen = page.locator("#doc-chosen li")
    assert chosen.count() == 2 and "Menu" in chosen.nth(0).text_content()
    assert "tokens read whole" in page.locator("#context-budget").text_content()

    page.get_by_role("button", name="Start").click()
    page.get_by_role("status").filter(has_text=READY).wait_for()
    session_id = page.evaluate("window.voiceSession.session.id")
    call_id = current_call(page, session_id)["call_id"]
    texts = [i["content"][0]["text"] for i in simulator.call(call_id)["items"] if i["type"] == "message"]
    assert len(texts) == 2
    assert texts[0].startswith(f'<document id="{second}" title="Menu {stamp}">') and "soup on Fridays" in texts[0]
    assert texts[1].startswith(f'<document id="{first}" title="Orbit {stamp}">') and "orbit in May" in texts[1]
    assert [d["id"] for d in api_session(page, session_id)["documents"]] == [second, first]
    page.get_by_role("button", name="Stop").click()
    page.get_by_role("status").filter(has_text="Session ended").wait_for()


def test_crossing_the_budget_ends_the_running_session(page, simulator, server):
    # A member of Demo with no spend yet (the other tests' spend would eat into a $0.10 limit).
    server.manage("shell", "-c", (
        "from django.contrib.auth import get_user_model; from teams_app.models import Membership, Team; "
        "from sessions_app.models import Budget; "
        f"u = get_user_model().objects.create_user('frugal', password='{PASSWORD}'); "
        "Membership.objects.create(user=u, team=Team.objects.get(name='Demo'), role='member'); "
        "Budget.objects.create(user=u, monthly_limit_usd='0.10')"))
    sign_in(page, "frugal")
    assert "$0.1000" in page.locator("#budget-remaining").text_content()
    session_id, call_id = start_session(page, turn="push_to_talk", document="", signed_in=True)
    # The next answer is long: 3,000 audio tokens, $0.192 on gpt-realtime-2.
    big = {"total_tokens": 3100, "input_tokens": 100, "output_tokens": 3000,
           "input_token_details": {"text_tokens": 100, "audio_tokens": 0, "image_tokens": 0, "cached_tokens": 0,
                                   "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0}},
           "output_token_details": {"text_tokens": 0, "audio_tokens": 3000}}
    simulator.post(f"/_sim/calls/{call_id}/script", {"usage": big})
    hold_talk(page, 0.3)

    page.get_by_role("alert").filter(has_text="spending limit").wait_for(timeout=20_000)
    wait_until(lambda: simulator.call(call_id)["hungup"], what="the hangup at the simulator")
    recorded = api_session(page, session_id)
    assert recorded["status"] == "ended" and recorded["end_reason"] == "budget"
    overshoot = float(recorded["totals"]["cost_usd"]) - 0.10
    print(f"budget overshoot: ${overshoot:.4f} past a $0.10 limit (one response of ${recorded['totals']['cost_usd']})")
    biggest = max(float(u["cost_usd"]) for u in recorded["usage"] if u["kind"] == "response")
    assert 0 < overshoot <= biggest
    # No new session while over the limit: the statement catches up and Start says why it is off.
    wait_until(lambda: page.get_by_role("button", name="Start").is_disabled(), what="Start disabled")
    assert "$0.0000 left of $0.1000" in page.locator("#budget-remaining").text_content()
    assert "less than" in page.locator("#start-reason").text_content()


def test_verified_usage_matches_and_a_vanished_tab_is_ended(browser, server, simulator):
    context = browser.new_context(base_url=server)
    page = context.new_page()
    page.set_default_timeout(15_000)
    session_id, call_id = start_session(page, turn="push_to_talk", document="")
    hold_talk(page, 0.3)
    wait_js(page, "document.getElementById('session-cost').dataset.exact > 0", timeout=20_000)
    wait_js(page, "window.voiceSession.socket.unacknowledged === 0")
    totals = wait_until(lambda: (t := api_session(page, session_id)["totals"])["verified"] and t, what="verified usage")
    assert totals["verified_cost_usd"] == totals["cost_usd"] and not totals["usage_mismatch"]

    # The tab vanishes without saying goodbye, as a killed tab does: its last
    # "end" request never arrives and it does not close its peer connection.
    page.evaluate("RTCPeerConnection.prototype.close = function () {}")
    context.set_offline(True)
    page.close()

    def ended():
        status, reason = server.sql(
            "SELECT status, end_reason FROM sessions_app_realtimesession WHERE id = ?", (session_id.replace("-", ""),)
        )[0]
        return status == "ended" and reason

    # The server saw it on its own: the page's socket stayed away, or the call closed upstream.
    assert wait_until(ended, timeout=20, what="the server ending the session") in ("page_gone", "call_closed")
    context.close()


def test_the_spend_dashboard_updates_live(browser, server, simulator):
    watcher = browser.new_context(base_url=server)
    dashboard = watcher.new_page()
    sign_in(dashboard, "admin")
    dashboard.goto("/dashboard/")
    dashboard.get_by_role("status").filter(has_text="Live").wait_for()
    month = dashboard.locator('dd[data-figure="month"]')
    before = float(month.get_attribute("data-cost-usd"))

    talker = browser.new_context(base_url=server)
    page = talker.new_page()
    page.set_default_timeout(15_000)
    session_id, _ = start_session(page, turn="push_to_talk", document="")
    hold_talk(page, 0.3)
    wait_js(page, "document.getElementById('session-cost').dataset.exact > 0", timeout=20_000)
    spent = float(page.locator("#session-cost").get_attribute("data-exact"))

    # No reload: the figure moves by what the session spent, and the session is listed.
    wait_js(dashboard, 
        f"Math.abs(Number(document.querySelector('dd[data-figure=\"month\"]').dataset.costUsd) - {before + spent}) < 1e-6",
        timeout=15_000,
    )
    assert dashboard.locator(f'tr[data-session="{session_id}"]').count() == 1
    page.get_by_role("button", name="Stop").click()
    talker.close()
    watcher.close()


def test_a_tap_of_talk_asks_nothing_and_says_to_hold_it(page, simulator):
    """A tap committed too little audio (the upstream refuses under 100 ms) and still asked for a response,
    which answered the last turn again, while the page said "The model reported a problem"."""
    session_id, call_id = start_session(page, turn="push_to_talk", document="")
    hold_talk(page, 0.05)
    page.locator("#vad-label").filter(has_text="Too short to hear: hold Talk while you speak").wait_for()
    page.wait_for_timeout(500)
    sent = [e["type"] for e in simulator.call(call_id)["client_events"]]
    assert "response.create" not in sent and "input_audio_buffer.commit" not in sent
    assert "reported a problem" not in page.get_by_role("status").first.text_content()
    hold_talk(page, 0.4)  # a real press still asks
    wait_until(lambda: simulator.call(call_id)["responses"], what="the answer to a real press")
    page.get_by_role("button", name="Stop").click()
    page.get_by_role("status").filter(has_text="Session ended").wait_for()


def test_a_turn_that_met_the_servers_answer_running_is_answered_after_it(page, simulator):
    """Talk released while an answer of the server's own runs (its sideband answering a search): the
    upstream refuses the page's ask (conversation_already_has_active_response). The page asks again when
    that answer ends, so the person's turn is answered; before, it went unanswered."""
    session_id, call_id = start_session(page, turn="push_to_talk", document="")
    talk = page.get_by_role("button", name="Talk (hold)")
    talk.hover()
    page.mouse.down()
    simulator.post(f"/_sim/calls/{call_id}/script", {"text": "The server's own answer, which takes a while to say."})
    simulator.post(f"/_sim/calls/{call_id}/client_event", {"type": "response.create"})
    wait_until(lambda: (r := simulator.call(call_id)["responses"]) and r[0]["status"] == "in_progress",
               what="the server's answer running")
    time.sleep(0.4)
    page.mouse.up()
    call = wait_until(lambda: (c := simulator.call(call_id)) and len(c["responses"]) >= 2 and c, timeout=30,
                      what="the turn answered after the server's answer")
    asks = [e.get("event_id") for e in call["client_events"] if e.get("type") == "response.create"]
    assert asks == [None, "page-ask-1", "page-ask-2"]  # the server's, the page's refused, the page's again
    assert call["responses"][0]["status"] == "completed"
    assert "reported a problem" not in page.get_by_role("status").first.text_content()
    page.get_by_role("button", name="Stop").click()
    page.get_by_role("status").filter(has_text="Session ended").wait_for()
