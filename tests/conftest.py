"""Named personas and clients shared by the tests.

alice: admin of team A (Demo); bob: member of A; erin: read-only in A;
charlie: member of team B (Other), no access to A's things; staff: a superuser.
"""

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from teams_app.models import Membership, Team

PASSWORD = "correct-horse-battery"


@pytest.fixture(autouse=True)
def _fresh_local_caches(settings):
    """Each test starts with empty in-process caches: a rate-limit count left by an earlier test (users
    get the same ids again after a rollback) must not refuse this test's request within the minute."""
    from django.core.cache import caches

    for alias, config in settings.CACHES.items():
        if config["BACKEND"].endswith("LocMemCache"):
            caches[alias].clear()


@pytest.fixture
def team_a(db):
    return Team.objects.create(name="Demo")


@pytest.fixture
def team_b(db):
    return Team.objects.create(name="Other")


def _user(username, team=None, role=None, **extra):
    user = get_user_model().objects.create_user(username, f"{username}@example.test", PASSWORD, **extra)
    if team:
        Membership.objects.create(team=team, user=user, role=role)
    return user


@pytest.fixture
def alice(team_a):
    return _user("alice", team_a, Membership.ADMIN)


@pytest.fixture
def bob(team_a):
    return _user("bob", team_a, Membership.MEMBER)


@pytest.fixture
def erin(team_a):
    return _user("erin", team_a, Membership.READ_ONLY)


@pytest.fixture
def charlie(team_b):
    return _user("charlie", team_b, Membership.MEMBER)


@pytest.fixture
def staff(db):
    return _user("staff", is_staff=True, is_superuser=True)


@pytest.fixture
def csrf_client():
    """A client that enforces CSRF like a browser session would."""
    return Client(enforce_csrf_checks=True)


def login(client, user):
    client.force_login(user)
    # Fetch a page so the CSRF cookie is set, then send it back as the header.
    client.get("/accounts/login/")
    client.defaults["HTTP_X_CSRFTOKEN"] = client.cookies["csrftoken"].value
    return client
