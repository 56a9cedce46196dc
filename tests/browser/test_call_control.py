"""The server owns every call, in real Chromium: no secret in the page, calls created by the server,
conversations that outlive calls, documents of any size, and interruptions that cut what is playing."""

import json
import re
import time

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import sign_in, wait_js
from tests.browser.test_voice_session import READY, api_session, current_call, hold_talk, start_session, wait_until

pytestmark = pytest.mark.browser
SECRET = re.compile(r"ek_[A-Za-z0-9]")
STATUS_LOG = """
    window.statusLog = [];
    document.addEventListener('DOMContentLoaded', () => {
      const status = document.getElementById('status');
      // Every text the status was given, even one replaced in the same task (one callback for both).
      new MutationObserver((records) => {
        for (const record of records) for (const node of record.addedNodes) window.statusLog.push(node.textContent);
      }).observe(status, { childList: true, characterData: true, subtree: true });
    });
"""


def test_the_page_never_receives_a_secret_and_the_server_creates_the_call(page, simulator, server):
    sign_in(page)
    # The data channel too: every message the upstream sent the page.
    page.add_init_script("""
        window.dataChannelMessages = [];
        const send = RTCDataChannel.prototype.send;
        RTCDataChannel.prototype.send = function (data) { window.dataChannelMessages.push(String(data)); return send.call(this, data); };
        const add = RTCDataChannel.prototype.addEventListener;
        RTCDataChannel.prototype.addEventListener = function (type, listener, ...rest) {
          if (type === 'message') {
            const wrapped = (event) => { window.dataChannelMessages.push(String(event.data)); return listener(event); };
            return add.call(this, type, wrapped, ...rest);
          }
          return add.call(this, type, listener, ...rest);
        };
    """)
    page.goto("/")
    page.wait_for_load_state("networkidle")
    seen = []  # every WebSocket frame the page got or sent
    responses = []
    page.on("response", lambda response: responses.append(response))
    page.on("websocket", lambda ws: (
        ws.on("framereceived", lambda f: seen.append(("ws in", ws.url, f if isinstance(f, str) else ""))),
        ws.on("framesent", lambda f: seen.append(("ws out", ws.url, f if isinstance(f, str) else ""))),
    ))
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    session_id, call_id = start_session(page, turn="push_to_talk", signed_in=True)
    hold_talk(page, 0.4)
    wait_js(page, "document.getElementById('session-cost').dataset.exact > 0", timeout=20_000)
    page.get_by_role("button", name="Stop").click()
    page.get_by_role("status").filter(has_text="Session ended").wait_for()

    bodies = [text for _, _, text in seen] + page.evaluate("window.dataChannelMessages") + [page.content()]
    # Pages navigated away from (sign-in) keep no body; the voice page's own HTML is page.content().
    for response in responses:
        if response.request.resource_type != "document":
            bodies.append(response.text())
    assert len(bodies) > 10 and any("session.created" in b for b in bodies)
    for body in bodies:
        assert not SECRET.search(body), body[:300]
        assert "sk-sim-browser-tests" not in body
    # The page talked to this server only: never to the upstream over HTTP.
    assert requests and all(url.startswith(server) for url in requests), requests
    # The upstream's call request came from the server, with the server's secret, not from a browser.
    created_by = simulator.call(call_id)["created_by"]
    assert created_by["auth"] == "ephemeral" and created_by["origin"] is None
    assert "aiohttp" in created_by["user_agent"] and "Chrome" not in created_by["user_agent"]


def test_the_call_id_is_on_the_record_before_the_page_has_the_answer(page, simulator, server):
    seen_before_answer = {}

    def hold_the_answer(route):
        response = route.fetch()
        body = response.json()
        # The page has not been answered yet: the server's record already has the call.
        rows = server.sql(
            "SELECT c.call_id FROM sessions_app_call c WHERE c.session_id = ?", (body["id"].replace("-", ""),)
        )
        seen_before_answer["calls"] = rows
        route.fulfill(response=response)

    sign_in(page)
    page.route("**/api/sessions/", hold_the_answer)
    page.get_by_role("button", name="Start").click()
    page.get_by_role("status").filter(has_text=READY).wait_for()
    session_id = page.evaluate("window.voiceSession.session.id")
    call_id = current_call(page, session_id)["call_id"]
    assert seen_before_answer["calls"] == [(call_id,)]
    assert simulator.call(call_id)["state"] == "active"
    page.get_by_role("button", name="Stop").click()
    page.get_by_role("status").filter(has_text="Session ended").wait_for()




def test_the_cap_resumes_the_conversation_with_its_turns_and_cost(page, simulator, sim_settings):
    sim_settings(call_max_seconds=14)
    page.add_init_script(STATUS_LOG)
    session_id, first_call = start_session(page, turn="push_to_talk", document="The launch is on the fourth of March.")
    hold_talk(page, 0.6)
    answer = page.locator('#transcript li[data-role="assistant"] .text').first
    wait_until(lambda: "March" in answer.text_content(), timeout=20, what="an answer in the first call")
    wait_js(page, "window.voiceSession.socket.unacknowledged === 0", timeout=20_000)
    turns = wait_until(lambda: len([t for t in api_session(page, session_id)["transcript"] if t["text"]]) >= 2
                       and api_session(page, session_id)["transcript"], what="the first call's turns stored")
    cost_before = float(page.locator("#session-cost").get_attribute("data-exact"))
    assert cost_before > 0

    # The upstream ends the call at its cap; the page says so and carries on in a new call by itself.
    wait_until(lambda: len(api_session(page, session_id)["calls"]) == 2, timeout=20, what="the second call")
    page.get_by_role("status").filter(has_text=READY).wait_for(timeout=20_000)
    assert any("60-minute limit" in line for line in page.evaluate("window.statusLog"))
    assert page.get_by_role("alert").is_hidden()
    calls = api_session(page, session_id)["calls"]
    assert [(c["number"], c["status"], c["end_reason"]) for c in calls] == [
        (1, "ended", "expired"), (2, "active", None)]
    second = simulator.call(calls[1]["call_id"])
    # The document and the earlier turns are in the new call: user turns as input_text, answers as output_text.
    items = [(i["role"], i["content"][0]["type"], i["content"][0]["text"]) for i in second["items"]]
    assert "fourth of March" in items[0][2]
    said = [(t["role"], t["text"]) for t in turns if t["text"]]
    assert [(role, text) for role, kind, text in items[2:]] == said
    assert {kind for role, kind, _ in items[2:] if role == "assistant"} == {"output_text"}
    assert {kind for role, kind, _ in items[2:] if role == "user"} == {"input_text"}

    # The cost carries on from where it was.
    assert float(page.locator("#session-cost").get_attribute("data-exact")) >= cost_before
    hold_talk(page, 0.6)
    wait_js(page, f"document.getElementById('session-cost').dataset.exact > {cost_before}", timeout=20_000)
    recorded = api_session(page, session_id)
    assert {u["response_id"] for u in recorded["usage"] if u["kind"] == "response"} >= {
        r["id"] for r in second["responses"] if r["status"] == "completed"}
    page.get_by_role("button", name="Stop").click()
    page.get_by_role("status").filter(has_text="Session ended").wait_for()


SHORTER_CAP = """
    // The page plans around the upstream's 60-minute cap; tell it of a 14-second one, to move 8 s before it.
    new MutationObserver((changes, observer) => {
      const config = document.getElementById('voice-config');
      if (!config) return;
      const values = JSON.parse(config.textContent);
      config.textContent = JSON.stringify({ ...values, call_max_seconds: 14, rollover_seconds: 8 });
      observer.disconnect();
    }).observe(document, { childList: true, subtree: true });
"""


def test_the_page_moves_to_the_next_call_before_the_cap(page, simulator):
    sign_in(page)
    page.add_init_script(SHORTER_CAP)
    page.add_init_script(STATUS_LOG)
    page.goto("/")
    assert page.evaluate("JSON.parse(document.getElementById('voice-config').textContent).call_max_seconds") == 14
    session_id, first_call = start_session(page, turn="push_to_talk", document="", signed_in=True)
    wait_until(lambda: len(api_session(page, session_id)["calls"]) == 2, timeout=20, what="the second call")
    page.get_by_role("status").filter(has_text=READY).wait_for()
    calls = api_session(page, session_id)["calls"]
    assert calls[0]["end_reason"] == "replaced" and calls[1]["status"] == "active"
    # No cap was hit: the page closed the old call itself once the new one was up.
    wait_until(lambda: simulator.call(first_call)["state"] == "closed", what="the old call closed")
    assert simulator.call(first_call)["end_reason"] != "session_expired"
    # Nothing dropped: the page says why it moved, not that it connected again.
    statuses = wait_until(lambda: (log := page.evaluate("window.statusLog"))
                          and any("new call" in line and "60 minutes" in line for line in log) and log,
                          timeout=10, what="the page saying why it moved")
    assert not any("Connected again" in line for line in statuses), statuses
    assert page.get_by_role("alert").is_hidden()
    page.get_by_role("button", name="Stop").click()
    page.get_by_role("status").filter(has_text="Session ended").wait_for()


def test_a_300_kb_document_arrives_whole_under_a_64_kib_channel(page, simulator):
    sentence = "The launch plan covers the team budget and the schedule for every region. "
    text = (sentence * 4100)[:300_000] + " The planted fact: the rollout code is TANGERINE-7."
    session_id, call_id = start_session(page, turn="push_to_talk", document=text)
    call = simulator.call(call_id)
    parts = [i["content"][0]["text"] for i in call["items"] if i["type"] == "message"]
    assert len(parts) >= 20 and all(p.startswith('<document id="pasted" title="Pasted text" part="') for p in parts)
    body = "".join(p.split(">\n", 1)[1].rsplit("\n</document>", 1)[0] for p in parts)
    assert body == text.strip()
    # Nothing over 16 KiB crossed the data channel either way, and nothing was refused or dropped.
    channel = call["datachannel"]
    assert channel["max_in_bytes"] <= 16 * 1024 and channel["max_out_bytes"] <= 16 * 1024, channel
    assert channel["refused_in"] == [] and channel["dropped_out"] == []
    page.get_by_role("button", name="Stop").click()
    page.get_by_role("status").filter(has_text="Session ended").wait_for()


def test_interrupting_a_playing_answer_cancels_clears_and_truncates(page, simulator, sim_settings):
    sim_settings(playback_after_done=True)
    long_answer = " ".join(["The launch has many steps that take a long time to explain."] * 6)
    session_id, call_id = start_session(page, turn="push_to_talk", document="")
    simulator.post(f"/_sim/calls/{call_id}/script", {"text": long_answer})
    hold_talk(page, 0.4)
    # Generation ends early; the audio plays on. Talk over it two seconds in.
    wait_until(lambda: simulator.call(call_id)["responses"] and simulator.call(call_id)["responses"][0]["status"]
               == "completed", timeout=20, what="the answer generated")
    time.sleep(1.0)
    assert simulator.call(call_id)["responses"][0]["playback"]["state"] == "playing"
    hold_talk(page, 0.4)
    call = wait_until(lambda: (c := simulator.call(call_id))["truncations"] and c, what="the truncation")
    page_events = [e["type"] for e, src in zip(call["client_events"], call["client_event_sources"])
                   if src == "datachannel"]
    second_press = len(page_events) - page_events[::-1].index("input_audio_buffer.clear") - 1
    assert page_events[second_press - 2:second_press] == ["output_audio_buffer.clear", "conversation.item.truncate"]
    first = call["responses"][0]
    assert first["playback"]["state"] == "cleared"
    cut = call["truncations"][0]
    assert cut["item_id"] and 0 < cut["audio_end_ms"] <= cut["played_ms"] < first["playback"]["total_ms"]
    # The transcript keeps what was heard: the stored answer is the truncated one.
    heard = wait_until(
        lambda: (t := [x for x in api_session(page, session_id)["transcript"] if x["item_id"] == cut["item_id"]])
        and t[0]["text"] and len(t[0]["text"]) < len(long_answer) and t[0]["text"], what="the cut answer stored")
    assert long_answer.startswith(heard.rstrip("."))
    page.get_by_role("button", name="Stop").click()
    page.get_by_role("status").filter(has_text="Session ended").wait_for()


def test_interrupting_an_answer_still_generating_cancels_it_first(page, simulator):
    session_id, call_id = start_session(page, turn="push_to_talk", document="")
    simulator.post(f"/_sim/calls/{call_id}/script", {"text": " ".join(["A long answer is being spoken now."] * 8)})
    hold_talk(page, 0.4)
    wait_until(lambda: (r := simulator.call(call_id)["responses"]) and r[0]["status"] == "in_progress"
               and r[0]["audio_ms"] == 0 and simulator.call(call_id)["audio_out"]["speaking"], what="speaking")
    time.sleep(1.0)
    hold_talk(page, 0.4)
    call = wait_until(lambda: (c := simulator.call(call_id))["truncations"] and c, what="the truncation")
    page_events = [e["type"] for e, src in zip(call["client_events"], call["client_event_sources"])
                   if src == "datachannel"]
    start = page_events.index("response.cancel")
    assert page_events[start:start + 3] == ["response.cancel", "output_audio_buffer.clear", "conversation.item.truncate"]
    assert call["responses"][0]["status"] == "cancelled"
    page.get_by_role("button", name="Stop").click()
    page.get_by_role("status").filter(has_text="Session ended").wait_for()


def test_json_of_a_call_has_no_secret(page):
    session_id, _ = start_session(page, document="")
    assert not SECRET.search(json.dumps(api_session(page, session_id)))
    page.get_by_role("button", name="Stop").click()


def test_a_page_that_keeps_changing_the_session_is_told_why_its_conversation_ended(page, simulator):
    """The server restores what a page changes, and the second time ends the conversation; the page stops
    and says so, instead of taking the hangup for a lost connection and offering to resume."""
    session_id, call_id = start_session(page, turn="push_to_talk", document="")
    for instructions in ("Ignore the team.", "Again."):
        page.evaluate("(text) => window.voiceSession.call.send({type: 'session.update', session: "
                      "{type: 'realtime', instructions: text}})", instructions)
        wait_until(lambda: simulator.call(call_id)["session"]["instructions"] != instructions
                   or api_session(page, session_id)["status"] == "ended", what="the server's answer")
    alert = page.get_by_role("alert")
    alert.filter(has_text="kept changing").wait_for()
    assert "lost" not in alert.text_content()
    assert page.get_by_role("button", name="Resume").is_hidden()
    assert page.get_by_role("button", name="Start").is_enabled()
    assert api_session(page, session_id)["end_reason"] == "tampering"


def test_a_move_before_the_cap_that_fails_keeps_the_call_and_is_tried_again(page, simulator):
    """A refused move to the next call closed the call in use (time left before the cap) and offered Resume,
    and the record kept that call running with nobody in it."""
    sign_in(page)
    page.add_init_script(SHORTER_CAP)
    page.goto("/")
    moves = []

    def refuse_first(route):
        moves.append(route.request.url)
        if len(moves) == 1:
            return route.fulfill(status=502, content_type="application/json",
                                 body=json.dumps({"error": {"code": "upstream_error", "message": "Refused."}}))
        return route.continue_()

    page.route("**/api/sessions/*/calls", refuse_first)
    session_id, first_call = start_session(page, turn="push_to_talk", document="", signed_in=True)
    # (the route's handler runs while Playwright is called: the waits below call it)
    wait_until(lambda: page.wait_for_timeout(100) or moves, timeout=15, what="the first move")
    page.wait_for_timeout(1000)
    assert simulator.call(first_call)["state"] != "closed" and page.get_by_role("button", name="Resume").is_hidden()
    assert [c["status"] for c in api_session(page, session_id)["calls"]] == ["active"]
    wait_until(lambda: len(api_session(page, session_id)["calls"]) == 2, timeout=15, what="the move tried again")
    page.get_by_role("status").filter(has_text=READY).wait_for()
    calls = api_session(page, session_id)["calls"]
    assert [(c["status"], c["end_reason"]) for c in calls] == [("ended", "replaced"), ("active", None)]
    assert len(moves) == 2 and page.get_by_role("alert").is_hidden()
    page.get_by_role("button", name="Stop").click()
    page.get_by_role("status").filter(has_text="Session ended").wait_for()


LATE_OPEN = """
    // The next data channel opens 3 s late (a slow network): the page waits in "Connecting the call".
    const realCreate = RTCPeerConnection.prototype.createDataChannel;
    RTCPeerConnection.prototype.createDataChannel = function (...args) {
      const channel = realCreate.apply(this, args);
      if (!window.lateOpen) return channel;
      window.lateOpen = false;
      const add = channel.addEventListener.bind(channel);
      channel.addEventListener = (type, listener, ...rest) => add(type, type !== 'open' ? listener
        : (event) => setTimeout(() => { if (channel.readyState === 'open') listener(event); }, 3000), ...rest);
      return channel;
    };
"""


def test_stopping_while_the_call_connects_leaves_the_next_conversation_alone(page, simulator):
    """Stop while the call was connecting left its start waiting out the 20 s open timeout, which then
    stopped whatever conversation was running: a new one started meanwhile was ended."""
    page.add_init_script(LATE_OPEN)
    page.add_init_script(STATUS_LOG)
    sign_in(page)
    page.get_by_label("Turn taking").select_option("push_to_talk")
    page.evaluate("window.lateOpen = true")
    began = time.monotonic()
    page.get_by_role("button", name="Start").click()
    # The server made the call and the page waits for its channel (events may already come through it).
    wait_until(lambda: "Connecting the call…" in page.evaluate("window.statusLog"), what="the call connecting")
    page.get_by_role("button", name="Stop").click()
    page.get_by_role("status").filter(has_text="Session ended").wait_for()
    page.get_by_role("button", name="Start").click()
    page.get_by_role("status").filter(has_text=READY).wait_for()
    session_id = page.evaluate("window.voiceSession.session.id")
    time.sleep(max(0.0, 22 - (time.monotonic() - began)))  # past the first start's open timeout
    assert page.evaluate("window.voiceSession && window.voiceSession.session.id") == session_id
    assert api_session(page, session_id)["status"] == "active" and page.get_by_role("alert").is_hidden()
    page.get_by_role("button", name="Stop").click()
    page.get_by_role("status").filter(has_text="Session ended").wait_for()


def test_a_conversation_the_server_ends_tells_the_page_why(page, server):
    """Ended by the server's sweep (here: its page looked gone), the page said only that this tab was no
    longer in the conversation, as if it had moved to another tab."""
    session_id, _ = start_session(page, turn="push_to_talk", document="")
    # Its totals cannot be read afterwards: the page says the session ended, and no empty figures.
    page.route(f"**/api/sessions/{session_id}", lambda route: route.fulfill(status=503))
    server.sql("UPDATE sessions_app_realtimesession SET page_connected_at = '2000-01-01 00:00:00', "
               "page_left_at = '2000-01-01 00:00:01' WHERE id = ?", (session_id.replace("-", ""),))
    page.get_by_role("alert").filter(has_text="lost touch with this page").wait_for(timeout=20_000)
    page.get_by_role("status").filter(has_text="Session ended").wait_for()
    expect(page.get_by_role("status")).to_have_text("Session ended.")
    assert api_session(page, session_id)["end_reason"] == "page_gone"
    assert page.get_by_role("button", name="Resume").is_hidden()
