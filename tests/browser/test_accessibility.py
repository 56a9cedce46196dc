"""axe-core, in real Chromium, finds no serious or critical violation on any page.

axe-core is vendored under tests/browser/vendor/ (from the npm registry; never fetched from the
internet). The pages' Content Security Policy allows scripts from 'self' only, so the scan's
contexts bypass it (Playwright's bypass_csp) to inject the file; nothing else differs from what a
visitor gets. The voice page has its own test so that it can be fixed on its own.
"""

from pathlib import Path

import pytest

from tests.browser.conftest import sign_in
from tests.browser.pages_data import WIDTHS, make_conversation

pytestmark = pytest.mark.browser

AXE = Path(__file__).parent / "vendor" / "axe.min.js"
BLOCKING = ("serious", "critical")

RUN_AXE = """async () => {
  const result = await axe.run(document, { resultTypes: ['violations'] });
  return result.violations.map((v) => ({
    id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.slice(0, 5).map((n) => n.target.join(' ') + ' :: ' + (n.failureSummary || '').split('\\n')[1]),
  }));
}"""


def blocking_violations(page, path, width):
    page.set_viewport_size({"width": width, "height": 900})
    response = page.goto(path)
    assert response.status == 200, path
    page.wait_for_load_state("networkidle")
    page.add_script_tag(path=str(AXE))
    found = page.evaluate(RUN_AXE)
    return [f"{path} @{width}px {v['impact']} {v['id']}: {v['help']} {v['nodes']}"
            for v in found if v["impact"] in BLOCKING]


def scan(browser, server, user, paths):
    context = browser.new_context(base_url=server, bypass_csp=True)
    page = context.new_page()
    page.set_default_timeout(20_000)
    try:
        if user:
            sign_in(page, user)
        return [v for path in paths for width in WIDTHS for v in blocking_violations(page, path, width)]
    finally:
        context.close()


@pytest.fixture(scope="module")
def made(browser, server):
    return make_conversation(browser, server, "the accessibility scan")


def test_the_pages_have_no_serious_or_critical_violations(browser, server, made):
    paths = ["/documents/", f"/documents/{made['document']}/", "/sessions/", f"/sessions/{made['session']}/",
             "/dashboard/", "/dashboard/budgets/"]
    found = scan(browser, server, "alice", paths)
    # A read-only member's library (no upload form) and the empty states of a new member.
    found += scan(browser, server, "erin", ["/documents/", "/sessions/"])
    found += scan(browser, server, None, ["/accounts/login/"])
    assert not found, "\n".join(found)


def test_error_states_have_no_serious_or_critical_violations(browser, server):
    """A refused budget (the error beside its row) and a refused upload (the message the script inserts)."""
    context = browser.new_context(base_url=server, bypass_csp=True)
    page = context.new_page()
    page.set_default_timeout(20_000)
    found = []
    try:
        sign_in(page, "alice")
        for width in WIDTHS:
            page.set_viewport_size({"width": width, "height": 900})
            page.goto("/dashboard/budgets/")
            row = page.locator("tbody tr[data-target=bob]")
            row.get_by_role("textbox").fill("-5")
            row.get_by_role("button", name="Save").click()
            page.locator("tbody tr[data-target=bob] [role=alert]").wait_for()
            page.add_script_tag(path=str(AXE))
            found += [f"refused budget @{width}px {v['impact']} {v['id']}: {v['nodes']}"
                      for v in page.evaluate(RUN_AXE) if v["impact"] in BLOCKING]
            page.goto("/documents/")
            page.locator("#id_file").set_input_files(files=[{"name": "binary.txt", "mimeType": "text/plain",
                                                              "buffer": bytes(range(256)) * 8}])
            page.get_by_role("button", name="Upload").click()
            page.locator("[data-upload-messages] [role=alert]").wait_for()
            page.add_script_tag(path=str(AXE))
            found += [f"refused upload @{width}px {v['impact']} {v['id']}: {v['nodes']}"
                      for v in page.evaluate(RUN_AXE) if v["impact"] in BLOCKING]
    finally:
        context.close()
    assert not found, "\n".join(found)


def test_the_voice_page_has_no_serious_or_critical_violations(browser, server):
    found = scan(browser, server, "alice", ["/"])
    assert not found, "\n".join(found)
