"""The live spend dashboard in real Chromium: deltas applied in the page equal a reload.

While the dashboard is open, spend arrives from several users, teams and models:
usage reports over the page sockets of conversations made for the purpose, and
a real voice conversation whose answers the server verifies (its records replace
the page's on the bill, a change of minus one record and plus another). The page
reads the figures once and applies every update itself; afterwards what it shows
must equal what a reload renders from the server.
"""

import json
import random

import pytest

from bench.ingest import usage_object
from tests.browser.conftest import sign_in, wait_js
from tests.browser.test_voice_session import hold_talk, start_session

pytestmark = pytest.mark.browser

SNAPSHOT = """() => {
  const data = (node) => Object.fromEntries(
    [...node.attributes].filter((a) => a.name.startsWith('data-')).map((a) => [a.name, a.value]));
  const rows = (selector) => [...document.querySelectorAll(selector)].map(
    (node) => ({ data: data(node), cells: (node.children.length ? [...node.children] : [node]).map(
      (cell) => cell.textContent.replace(/\\s+/g, ' ').trim()) }));
  return {
    totals: rows('[data-figure], [data-figure-label], [data-figure-sessions]'),
    breakdowns: rows('table[data-breakdown] tr[data-key]'),
    sessions: rows('#sessions-table tbody tr'),
    note: document.getElementById('sessions-note').textContent.trim(),
    bars: [...document.querySelectorAll('#spend-chart rect')].map((r) => [
      r.textContent, Math.round(Number(r.getAttribute('height')) * 10) / 10]),
    peak: document.querySelector('[data-chart="peak"]').textContent,
  };
}"""

MAKE_SESSIONS = """
import json
from django.contrib.auth import get_user_model
from django.utils import timezone
from sessions_app.models import RealtimeSession
made = {}
for name, model in (("bob", "gpt-realtime-mini"), ("alice", "gpt-realtime"), ("dave", "gpt-realtime")):
    user = get_user_model().objects.get(username=name)
    made[name] = [str(RealtimeSession.objects.create(
        user=user, team=user.memberships.get().team, model=model, voice="marin", turn_detection="server_vad",
        status="active", connected_at=timezone.now(), instructions="Dashboard test.").pk) for _ in range(2)]
print(json.dumps(made))
"""

# Reports usage over a conversation's page socket the way the page does, each after the previous ack.
REPORT = """async ([sessionId, reports]) => {
  const ws = new WebSocket(`ws://${location.host}/ws/sessions/${sessionId}/`);
  await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
  for (const [responseId, usage] of reports) {
    const acked = new Promise((resolve) => {
      ws.onmessage = (event) => {
        const message = JSON.parse(event.data);
        if (message.type === 'usage.ack' && message.response_id === responseId) resolve();
      };
    });
    ws.send(JSON.stringify({ type: 'usage.report', response_id: responseId, usage }));
    await acked;
  }
  ws.close();
}"""


# The dashboard's figure for its date range, exact (data-cost-usd).
RANGE_SHOWN = "document.querySelector('dd[data-figure=\"range\"]').dataset.costUsd"


def open_dashboard(context):
    """An admin's dashboard, live, with the figures read once: (page, range start, range end)."""
    dashboard = context.new_page()
    dashboard.set_default_timeout(20_000)
    sign_in(dashboard, "admin")
    dashboard.goto("/dashboard/")
    dashboard.get_by_role("status").filter(has_text="Live").wait_for()
    wait_js(dashboard, "window.spendDashboard.reads === 1")
    start, end = dashboard.evaluate("[document.getElementById('start').value, document.getElementById('end').value]")
    return dashboard, start, end


def billed_in_range(server, start, end):
    (total,) = server.sql("SELECT coalesce(sum(cost_usd), 0) FROM sessions_app_spendday WHERE day BETWEEN ? AND ?",
                          (start, end))[0]
    return f"{total:.8f}"


def test_deltas_applied_in_the_page_equal_a_reload(browser, server, simulator):
    made = json.loads(server.manage("shell", "-c", MAKE_SESSIONS).strip().splitlines()[-1])
    watcher = browser.new_context(base_url=server)
    dashboard, start, end = open_dashboard(watcher)

    # A real conversation: its answers are reported by the page and verified by the server.
    talker = browser.new_context(base_url=server)
    page = talker.new_page()
    page.set_default_timeout(15_000)
    start_session(page, turn="push_to_talk", document="")
    hold_talk(page, 0.3)
    wait_js(page, "document.getElementById('session-cost').dataset.exact > 0", timeout=20_000)

    # Reports from three users of two teams on two models, over their conversations' sockets.
    rng = random.Random(7)
    for name, sessions in made.items():
        context = browser.new_context(base_url=server)
        reporter = context.new_page()
        sign_in(reporter, name)
        for n, session_id in enumerate(sessions):
            reports = [[f"resp_dash_{name}_{n}_{i}", usage_object(rng)] for i in range(rng.randint(2, 5))]
            reporter.evaluate(REPORT, [session_id, reports])
        context.close()

    wait_js(page, "document.getElementById('session-cost').dataset.verified === 'true'", timeout=20_000)
    talked = page.evaluate("window.voiceSession.session.id")
    page.get_by_role("button", name="Stop").click()
    # Closed before the stop reaches the server, the conversation would end only when the sweep finds
    # its page gone, later than this test waits.
    page.get_by_role("status").filter(has_text="Session ended").wait_for()
    talker.close()

    # The page has caught up when its range figure is what the database holds.
    expected = billed_in_range(server, start, end)
    wait_js(dashboard, f"{RANGE_SHOWN} === '{expected}'", timeout=20_000)
    # The conversation's end reaches the dashboard after its last record: its row (when on the first page)
    # shows a duration.
    wait_js(dashboard, f"(() => {{ const row = document.querySelector('tr[data-session=\"{talked}\"]'); "
                       "return row === null || row.cells[4].textContent.trim() !== 'not ended'; })()", timeout=20_000)
    dashboard.wait_for_timeout(500)  # any update still on its way lands before the snapshot
    assert billed_in_range(server, start, end) == expected
    counters = dashboard.evaluate("window.spendDashboard")
    assert counters["reads"] == 1 and counters["applied"] >= 15, counters  # no read per update
    live = dashboard.evaluate(SNAPSHOT)

    dashboard.reload()
    dashboard.get_by_role("status").filter(has_text="Live").wait_for()
    wait_js(dashboard, "window.spendDashboard.reads === 1")
    reloaded = dashboard.evaluate(SNAPSHOT)
    assert live["totals"] == reloaded["totals"]
    assert live["breakdowns"] == reloaded["breakdowns"]
    assert live["sessions"] == reloaded["sessions"]
    assert live["note"] == reloaded["note"] and live["peak"] == reloaded["peak"]
    assert live["bars"] == reloaded["bars"]
    # And the updates did arrive: every conversation made here is listed.
    listed = {row["data"]["data-session"] for row in reloaded["sessions"]}
    assert all(session_id in listed for sessions in made.values() for session_id in sessions)
    watcher.close()


def test_the_page_reads_the_figures_again_when_its_live_pushes_were_interrupted(browser, server, simulator):
    """While Redis is away the dashboard's socket stays up but hears nothing; when Redis is back the
    server sends dashboard.resync and the page reads the figures again, so what it missed shows."""
    made = json.loads(server.manage("shell", "-c", MAKE_SESSIONS).strip().splitlines()[-1])
    watcher = browser.new_context(base_url=server)
    outage = {"on": False, "socket": None}

    def through(ws):  # the dashboard's socket, passed through to the server unless the "outage" is on
        to_server = ws.connect_to_server()
        outage["socket"] = ws
        to_server.on_message(lambda message: None if outage["on"] else ws.send(message))

    watcher.route_web_socket("**/ws/dashboard/", through)
    dashboard, start, end = open_dashboard(watcher)
    shown = dashboard.evaluate(RANGE_SHOWN)

    outage["on"] = True
    context = browser.new_context(base_url=server)
    reporter = context.new_page()
    sign_in(reporter, "bob")
    rng = random.Random(11)
    reporter.evaluate(REPORT, [made["bob"][0], [[f"resp_resync_{i}", usage_object(rng)] for i in range(3)]])
    context.close()
    expected = billed_in_range(server, start, end)
    assert expected != shown
    dashboard.wait_for_timeout(500)
    assert dashboard.evaluate(RANGE_SHOWN) == shown

    outage["on"] = False
    outage["socket"].send(json.dumps({"type": "dashboard.resync"}))
    wait_js(dashboard, "window.spendDashboard.reads === 2")
    wait_js(dashboard, f"{RANGE_SHOWN} === '{expected}'")
    watcher.close()


def test_a_range_that_ends_today_moves_on_at_midnight(browser, server, simulator):
    """A dashboard left open past UTC midnight kept yesterday's range: new spend was left out of the range,
    the tables and the chart. The first update of the new day has the page read its figures again, for
    the range that now ends today (its live reads name no dates, so the server's today ends it)."""
    import datetime

    made = json.loads(server.manage("shell", "-c", MAKE_SESSIONS).strip().splitlines()[-1])
    watcher = browser.new_context(base_url=server)
    reads = []

    def as_read_yesterday(route):
        response = route.fetch()
        reads.append(route.request.url)
        figures = response.json()
        if len(reads) == 1:  # the page's first read, made (so to speak) the day before
            day = datetime.timedelta(days=1)
            for key in ("start", "end", "today_date"):
                figures[key] = (datetime.date.fromisoformat(figures[key]) - day).isoformat()
        route.fulfill(response=response, json=figures)

    watcher.route("**/dashboard/?*format=json*", as_read_yesterday)
    dashboard, start, end = open_dashboard(watcher)
    assert "start=" not in reads[0] and "end=" not in reads[0]

    context = browser.new_context(base_url=server)
    reporter = context.new_page()
    sign_in(reporter, "bob")
    reporter.evaluate(REPORT, [made["bob"][0], [["resp_midnight", usage_object(random.Random(3))]]])
    context.close()
    wait_js(dashboard, "window.spendDashboard.reads === 2")
    wait_js(dashboard, f"{RANGE_SHOWN} === '{billed_in_range(server, start, end)}'")
    watcher.close()
