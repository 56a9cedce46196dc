"""Every page works under its Content Security Policy: in real Chromium, no page reports a violation."""

import pytest

from tests.browser.conftest import sign_in

pytestmark = pytest.mark.browser

WATCH = """
    window.cspViolations = [];
    document.addEventListener('securitypolicyviolation',
        (e) => window.cspViolations.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`));
"""


def visit(page, path):
    response = page.goto(path)
    assert response.status == 200, path
    assert "script-src 'self'" in response.headers["content-security-policy"], path
    page.wait_for_load_state("networkidle")
    return page.evaluate("window.cspViolations")


def test_no_page_breaks_its_policy(browser, server):
    context = browser.new_context(base_url=server)
    page = context.new_page()
    page.add_init_script(WATCH)
    sign_in(page, "alice")
    page.goto("/documents/")
    page.get_by_label("File").set_input_files(files=[{"name": "csp.md", "mimeType": "text/markdown",
                                                       "buffer": b"# Policy\n\nNothing inline here."}])
    page.get_by_role("button", name="Upload").click()
    page.wait_for_url("**/documents/*/")
    document = page.url
    visited = {path: visit(page, path) for path in
               ("/", "/documents/", document, "/sessions/", "/dashboard/", "/dashboard/budgets/")}
    context.close()
    staff = browser.new_context(base_url=server).new_page()
    staff.add_init_script(WATCH)
    sign_in(staff, "admin")
    for path in ("/admin/", "/admin/sessions_app/realtimesession/", "/admin/documents_app/document/"):
        visited[path] = visit(staff, path)
    staff.context.close()
    login = browser.new_context(base_url=server).new_page()
    login.add_init_script(WATCH)
    login.goto("/accounts/login/")
    visited["/accounts/login/"] = login.evaluate("window.cspViolations")
    login.context.close()
    assert all(not found for found in visited.values()), visited
