"""Keyboard use beyond what axe checks: the first Tab on any page reaches a link past the navigation."""

import pytest

from tests.browser.conftest import sign_in

pytestmark = pytest.mark.browser


def test_the_first_tab_offers_a_skip_to_the_content(page):
    sign_in(page)
    for path in ("/", "/documents/", "/sessions/"):
        page.goto(path)
        page.keyboard.press("Tab")
        focused = page.evaluate("document.activeElement.textContent")
        assert focused == "Skip to the content", (path, focused)
        assert page.evaluate("document.activeElement.getBoundingClientRect().top >= 0")  # shown once focused
        page.keyboard.press("Enter")
        assert page.evaluate("document.activeElement.id") == "main"
