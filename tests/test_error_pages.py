"""The 403, 404 and CSRF-failure pages: the site's own layout, a plain message and a way home,
for signed-in people and for anonymous visitors alike (the settings' default is DEBUG off)."""

from django.contrib.auth.models import AnonymousUser
from django.test import RequestFactory
from django.views.defaults import permission_denied

from tests.conftest import login


def assert_site_page(response, status, message):
    body = response.content.decode()
    assert response.status_code == status
    assert 'class="topbar"' in body and 'href="/"' in body  # the site's layout, with the way home
    assert message in body


def test_debug_is_off_in_tests(settings):
    assert settings.DEBUG is False


def test_404_anonymous_and_signed_in(client, bob):
    assert_site_page(client.get("/no/such/page/"), 404, "Page not found")
    response = login(client, bob).get("/no/such/page/")
    assert_site_page(response, 404, "Page not found")
    assert 'href="/documents/"' in response.content.decode()  # a signed-in person keeps the navigation


def test_403_signed_in(client, bob):
    # Bob administers no team: the spend dashboard refuses him.
    assert_site_page(login(client, bob).get("/dashboard/"), 403, "You may not see this page")


def test_403_anonymous(db):
    request = RequestFactory().get("/somewhere/")
    request.user = AnonymousUser()
    assert_site_page(permission_denied(request, Exception("no")), 403, "You may not see this page")


def test_csrf_failure_anonymous_and_signed_in(csrf_client, bob):
    response = csrf_client.post("/accounts/login/", {"username": "bob", "password": "x"})
    assert_site_page(response, 403, "The form had expired")
    login(csrf_client, bob)
    del csrf_client.defaults["HTTP_X_CSRFTOKEN"]
    assert_site_page(csrf_client.post("/documents/upload"), 403, "The form had expired")


def test_api_csrf_failure_stays_json(csrf_client, bob):
    login(csrf_client, bob)
    del csrf_client.defaults["HTTP_X_CSRFTOKEN"]
    response = csrf_client.post("/api/sessions/", data="{}", content_type="application/json")
    assert response.status_code == 403 and response.json()["error"]["code"] == "csrf_failed"
