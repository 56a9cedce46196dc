"""The pages as a new user meets them (issue 11, defects 4, 5, 6, 7 and 10), in real Chromium, at a
desktop width and a phone width where layout matters. The voice page's own content is tested in
test_voice_session.py; here it appears only for the navigation, the phone layout and the turn select."""

import re
import urllib.request

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import sign_in
from tests.browser.pages_data import WIDTHS, make_conversation, upload_document

pytestmark = pytest.mark.browser

WHEN = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC$")

# Whether an element's whole box is inside the viewport (after scrolling it into view vertically).
INSIDE = """(el) => {
  el.scrollIntoView({ block: 'center', inline: 'nearest' });
  const r = el.getBoundingClientRect();
  return r.width > 0 && r.left >= 0 && r.right <= window.innerWidth && r.top >= 0 && r.bottom <= window.innerHeight;
}"""
FITS = "document.documentElement.scrollWidth <= window.innerWidth"


@pytest.fixture(scope="module")
def made(browser, server):
    return make_conversation(browser, server, "the page tests")


def signed_in(browser, server, user, width=1280, **options):
    context = browser.new_context(base_url=server, viewport={"width": width, "height": 900}, **options)
    page = context.new_page()
    page.set_default_timeout(15_000)
    sign_in(page, user)
    return page


def assert_inside(page, locator, what):
    assert locator.evaluate(INSIDE), f"{what} is not within the {page.viewport_size['width']} px viewport"


def assert_fits(page, path):
    width = page.viewport_size["width"]
    assert page.evaluate(FITS), (f"{path} is wider than {width} px: "
                                 f"{page.evaluate('document.documentElement.scrollWidth')}")


# ---- defect 4: every page fits a phone; the nav (with Sign out), Upload and the filters reachable ----

@pytest.mark.parametrize("width", WIDTHS)
def test_every_page_fits_the_width_with_its_controls_in_view(browser, server, made, width):
    page = signed_in(browser, server, "alice", width)
    pages = ["/", "/documents/", f"/documents/{made['document']}/", "/sessions/", f"/sessions/{made['session']}/",
             "/dashboard/", "/dashboard/budgets/"]
    for path in pages:
        page.goto(path)
        page.wait_for_load_state("networkidle")
        assert_fits(page, path)
        nav = page.get_by_role("navigation", name="Main")
        for name in ("Talk", "Library", "My sessions", "Spend", "Budgets"):
            assert_inside(page, nav.get_by_role("link", name=name, exact=True), f"{path}: nav link {name}")
        assert_inside(page, page.get_by_role("button", name="Sign out"), f"{path}: Sign out")
    page.goto("/documents/")
    assert_inside(page, page.get_by_role("button", name="Upload"), "the library's Upload")
    assert_inside(page, page.locator("#id_file"), "the library's file field")
    page.goto("/dashboard/")
    for label in ("From (UTC)", "To (UTC)", "Team", "User", "Model"):
        assert_inside(page, page.get_by_label(label, exact=True), f"the dashboard's {label} filter")
    assert_inside(page, page.get_by_role("button", name="Show"), "the dashboard's Show")
    page.context.close()
    login = browser.new_context(base_url=server, viewport={"width": width, "height": 900}).new_page()
    login.goto("/accounts/login/")
    assert_fits(login, "/accounts/login/")
    assert_inside(login, login.get_by_role("button", name="Sign in"), "Sign in")
    login.context.close()


# ---- defect 5: budgets by name, edited on their rows, confirmed, readable errors, spend for all ----

def budget_row(page, name):
    return page.locator("tbody tr").filter(has=page.locator(".row-name", has_text=re.compile(f"^{name}$")))


def save_limit(page, name, amount):
    row = budget_row(page, name)
    row.get_by_role("textbox").fill(amount)
    row.get_by_role("button", name="Save").click()
    page.wait_for_load_state()
    return budget_row(page, name)


@pytest.mark.parametrize("width", WIDTHS)
def test_budgets_are_set_by_name_on_their_rows(browser, server, made, width):
    # Staff: a team admin has every row here but their own (a limit set on them is not theirs to lift).
    page = signed_in(browser, server, "admin", width)
    try:
        page.goto("/dashboard/budgets/")
        assert page.locator("input[name=target]:not([type=hidden])").count() == 0  # no id to type
        assert "Id for the form" not in page.content()
        # Spend for everyone listed, limit or not: alice's conversation is on her row and her team's.
        for name in ("Demo", "alice"):
            expect(budget_row(page, name).locator("td[data-spent]")).to_have_text(re.compile(r"^\$0\.[1-9]\d{3}$"))
        expect(budget_row(page, "bob").locator("td[data-spent]")).to_have_text("$0.00")
        expect(budget_row(page, "bob").locator("td").last).to_have_text("no limit")
        assert_fits(page, "/dashboard/budgets/")
        assert_inside(page, budget_row(page, "erin").get_by_role("button", name="Save"), "erin's Save")

        # Readable errors beside the row, what was typed kept, nothing saved.
        for typed, said in (("-1", "A limit cannot be negative."), ("lots", "Write the limit in dollars")):
            row = save_limit(page, "bob", typed)
            expect(row.get_by_role("alert")).to_contain_text(said)
            expect(row.get_by_role("alert")).to_contain_text("Nothing was saved.")
            expect(row.get_by_role("textbox")).to_have_value(typed)
            expect(row.get_by_role("textbox")).to_have_attribute("aria-invalid", "true")
            assert "errorlist" not in page.content() and "__all__" not in page.content()

        # A save is confirmed, and the row shows the new limit.
        row = save_limit(page, "bob", "$1,200.5")
        expect(page.get_by_role("status").filter(has_text="Saved")).to_have_text("Saved: bob may spend $1,200.50 a month.")
        expect(row.get_by_role("textbox")).to_have_value("$1,200.50")
        expect(row.locator("td").last).to_have_text("$1,200.50")

        # Over the limit, the amount left is written with a real minus sign before the dollar sign.
        row = save_limit(page, "alice", "0.1")
        expect(row.locator("td").last).to_have_text(re.compile(r"^\u2212\$0\.\d{4}$"))
        assert "$-" not in page.inner_text("main")

        row = save_limit(page, "bob", "")
        expect(page.get_by_role("status").filter(has_text="Removed")).to_have_text(
            "Removed the monthly limit of bob.")
        expect(row.locator("td").last).to_have_text("no limit")
    finally:
        page.context.close()
        server.manage("shell", "-c", "from sessions_app.models import Budget; Budget.objects.all().delete()")


# ---- defect 6: the dashboard ----

@pytest.mark.parametrize("width", WIDTHS)
def test_the_dashboard_fits_and_its_sessions_open_their_pages(browser, server, made, width):
    page = signed_in(browser, server, "admin", width)
    page.goto("/dashboard/")
    page.get_by_role("status").filter(has_text="figures as of").wait_for()  # the live renderer has drawn
    assert_fits(page, "/dashboard/")

    # The sessions table stays inside its card; scrolled, Verified and Documents come into view.
    card = page.locator("section[aria-labelledby=sessions-heading]")
    scroller = card.locator(".table-scroll")
    card_box, scroller_box = card.bounding_box(), scroller.bounding_box()
    assert scroller_box["x"] + scroller_box["width"] <= card_box["x"] + card_box["width"] + 0.5
    assert card_box["x"] + card_box["width"] <= width
    scroller.evaluate("(el) => { el.scrollLeft = el.scrollWidth; }")
    for heading in ("Verified", "Documents"):
        assert_inside(page, page.locator("#sessions-table thead th", has_text=heading), f"the {heading} column")

    # The hint says what is counted; thousands separators; quiet days left out of the by-day table.
    hint = page.locator("section[aria-labelledby=totals-heading] .hint").first
    expect(hint).to_contain_text("the usage the server verified itself")
    assert "browser-reported" not in page.inner_text("main")
    row = page.locator(f"#sessions-table tr[data-session='{made['session']}']")
    expect(row.locator("td").nth(6)).to_have_text("15,500")
    expect(page.locator("table[data-breakdown=user] tr[data-key=alice] td").nth(1)).to_have_text(
        re.compile(r"^\d{1,3}(,\d{3})+$"))
    days = page.locator("table[data-breakdown=day] tbody tr")
    assert 1 <= days.count() < 30
    for day in days.all():
        assert day.get_attribute("data-cost-usd") != "0.00000000" or int(day.get_attribute("data-sessions")) > 0
    assert page.locator("#spend-chart rect").count() == 30  # the chart keeps every day
    expect(row.locator("td a")).to_have_text(WHEN)

    # A session's link opens its HTML page: cost, transcript, sources.
    row.get_by_role("link").click()
    page.wait_for_url(f"**/sessions/{made['session']}/")
    expect(page.get_by_role("heading", level=1)).to_contain_text("Session of")
    expect(page.locator("#session-cost")).to_have_text("$0.2363")
    expect(page.locator(".transcript")).to_contain_text("The launch is on the ninth of March.")
    expect(page.locator(".sources")).to_contain_text("Launch plan")
    assert_fits(page, "the session's page")
    page.context.close()


# ---- defect 7: uploads and deletes ----

@pytest.mark.parametrize("width", WIDTHS)
def test_an_upload_shows_progress_and_states_the_limits(browser, server, width):
    page = signed_in(browser, server, "bob", width)
    page.goto("/documents/")
    limits = page.locator("#upload-limits")
    expect(limits).to_contain_text("20 MB")
    expect(limits).to_contain_text("2,000,000 characters")
    held = []
    page.route("**/documents/upload", lambda route: held.append(route))
    page.locator("#id_file").set_input_files(files=[{"name": f"progress-{width}.md", "mimeType": "text/markdown",
                                                      "buffer": f"# Progress {width}\n\nShown while it uploads.".encode()}])
    button = page.locator("#upload-button")
    button.click()
    expect(button).to_be_disabled()
    expect(button).to_have_text("Uploading…")
    expect(page.locator("#upload-progress")).to_be_visible()
    expect(page.get_by_role("status").filter(has_text="Uploading")).to_contain_text(f"progress-{width}.md")
    for _ in range(100):  # the held request reaches the handler while Playwright is waiting
        if held:
            break
        page.wait_for_timeout(100)
    assert len(held) == 1
    held[0].continue_()
    page.wait_for_url("**/documents/*/")
    expect(page.get_by_role("heading", level=1)).to_have_text(f"progress-{width}.md")
    page.context.close()


def test_a_refused_upload_keeps_the_typed_title(browser, server):
    page = signed_in(browser, server, "bob")
    page.goto("/documents/")
    page.locator("#id_file").set_input_files(files=[{"name": "notes.txt", "mimeType": "text/plain",
                                                      "buffer": bytes(range(256)) * 40}])
    page.locator("#id_title").fill("My meeting notes")
    page.get_by_role("button", name="Upload").click()
    alert = page.locator("[data-upload-messages] [role=alert]")
    expect(alert).to_be_visible()
    assert page.url.endswith("/documents/")  # the page stayed, with the form as it was
    expect(page.locator("#id_title")).to_have_value("My meeting notes")
    expect(page.locator("#upload-button")).to_be_enabled()
    expect(page.locator("#upload-button")).to_have_text("Upload")
    assert page.locator("#id_file").evaluate("(el) => el.files.length") == 1
    page.context.close()


def test_a_delete_asks_first_and_says_what_happened(browser, server):
    page = signed_in(browser, server, "bob")
    path = upload_document(page, name="to-delete.md", body=b"# Short lived\n\nThis one goes.", title="Short lived")
    answers = iter([False, True])
    seen = []

    def decide(dialog):
        seen.append(dialog.message)
        dialog.accept() if next(answers) else dialog.dismiss()

    page.on("dialog", decide)
    page.get_by_role("button", name="Delete this document").click()
    page.wait_for_timeout(300)
    assert page.url.endswith(path) and "Short lived" in seen[0] and "cannot be undone" in seen[0]
    page.get_by_role("button", name="Delete this document").click()
    page.wait_for_url("**/documents/")
    expect(page.get_by_role("status").filter(has_text="Deleted")).to_have_text(
        "Deleted “Short lived” and its passages. Past conversations keep their transcripts.")
    expect(page.get_by_role("link", name="Short lived", exact=True)).to_have_count(0)
    assert page.goto(path).status == 404
    page.context.close()


@pytest.mark.parametrize("width", WIDTHS)
def test_empty_states_say_what_to_do(browser, server, width):
    erin = signed_in(browser, server, "erin", width)  # read-only in Demo
    erin.goto("/documents/")
    expect(erin.locator("#read-only-note")).to_contain_text("read-only member of Demo")
    expect(erin.get_by_role("button", name="Upload")).to_have_count(0)
    assert_inside(erin, erin.locator("#read-only-note"), "the read-only note")
    erin.context.close()
    dave = signed_in(browser, server, "dave", width)  # team Other: no documents, no conversations
    dave.goto("/documents/")
    empty = dave.locator(".empty-state")
    expect(empty).to_contain_text("No documents yet")
    assert_inside(dave, empty, "the library's empty state")
    sample = empty.get_by_role("link", name="demo document").get_attribute("href")
    with urllib.request.urlopen(server + sample, timeout=5) as response:
        assert response.status == 200 and b"launch" in response.read()
    dave.goto("/sessions/")
    expect(dave.locator(".empty-state")).to_contain_text("You have no conversations yet")
    assert_inside(dave, dave.locator(".empty-state"), "the history's empty state")
    assert_fits(dave, "/sessions/")
    dave.context.close()


# ---- defect 10: the small things ----

def test_favicon_current_page_dates_and_plurals(browser, server, made):
    page = signed_in(browser, server, "alice")
    missing = []
    page.on("response", lambda r: missing.append(r.url) if r.status == 404 else None)
    for path, current in (("/", "Talk"), ("/documents/", "Library"), ("/sessions/", "My sessions"),
                          ("/dashboard/", "Spend"), ("/dashboard/budgets/", "Budgets")):
        page.goto(path)
        page.wait_for_load_state("networkidle")
        marked = page.get_by_role("navigation", name="Main").locator("[aria-current=page]")
        expect(marked).to_have_count(1)
        expect(marked).to_have_text(current)
    assert not missing, missing
    icon = page.locator("link[rel=icon]").get_attribute("href")
    for url in (server + icon, server + "/favicon.ico"):
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200 and "svg" in response.headers["Content-Type"]

    # One date-and-time format on every page that shows one.
    page.goto("/documents/")
    expect(page.locator(".library-table tbody tr td").nth(5)).to_have_text(WHEN)
    page.goto("/sessions/")
    expect(page.locator(f"tr[data-session='{made['session']}'] td a")).to_have_text(WHEN)
    page.goto(f"/sessions/{made['session']}/")
    expect(page.get_by_role("heading", level=1)).to_have_text(re.compile(r"^Session of \d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC$"))
    expect(page.locator("#session-answers")).to_have_text("1 answer")
    page.goto(f"/documents/{made['document']}/")
    expect(page.locator(".facts")).to_contain_text(re.compile(r"alice, \d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC"))
    page.context.close()


TEXT_WIDTH = """(select) => {
  const probe = document.createElement('span');
  probe.style.font = getComputedStyle(select).font;
  probe.style.position = 'absolute';
  probe.style.whiteSpace = 'nowrap';
  probe.textContent = select.options[select.selectedIndex].text;
  document.body.append(probe);
  const width = probe.getBoundingClientRect().width;
  probe.remove();
  return [width, select.clientWidth];
}"""


@pytest.mark.parametrize("width", WIDTHS)
def test_the_turn_taking_choice_is_not_cut_off(browser, server, width):
    page = signed_in(browser, server, "alice", width)
    page.goto("/")
    select = page.get_by_label("Turn taking")
    for option in select.locator("option").all():
        select.select_option(option.get_attribute("value"))
        text, box = select.evaluate(TEXT_WIDTH)
        assert text + 24 <= box, f"“{option.text_content()}” needs {text:.0f} px in a {box} px select"
    page.context.close()
