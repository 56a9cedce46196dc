"""seed_demo, the health probe and the settings helpers."""

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command

from teams_app.models import Membership, Team
from voiceproject import settings as project_settings


@pytest.mark.django_db
def test_seed_demo_creates_the_contracted_teams_once():
    call_command("seed_demo", "--password", "first-pass-123")
    call_command("seed_demo", "--password", "second-pass-456")
    User = get_user_model()
    assert User.objects.count() == 5 and Team.objects.count() == 2
    roles = {(m.user.username, m.team.name, m.role) for m in Membership.objects.select_related("user", "team")}
    assert roles == {
        ("alice", "Demo", "admin"), ("bob", "Demo", "member"), ("erin", "Demo", "read_only"),
        ("dave", "Other", "admin"),
    }
    admin = User.objects.get(username="admin")
    assert admin.is_staff and admin.is_superuser and not admin.memberships.exists()
    for name in ("alice", "bob", "erin", "dave", "admin"):
        assert authenticate(username=name, password="second-pass-456"), name
        assert not authenticate(username=name, password="first-pass-123")


@pytest.mark.django_db
def test_seed_demo_takes_any_password_the_contract_names_and_warns_of_a_short_one(capsys):
    with pytest.raises(CommandError):
        call_command("seed_demo", "--password", "")
    call_command("seed_demo", "--password", "pw")
    assert "easy to guess" in capsys.readouterr().err
    assert authenticate(username="alice", password="pw") and authenticate(username="admin", password="pw")


@pytest.mark.django_db
def test_healthz_says_which_part_is_missing(client):
    from django.utils import timezone

    from sessions_app.models import WorkerBeat

    data = client.get("/healthz").json()
    # No sideband worker has said it is alive: still answering (200), but degraded.
    assert data["status"] == "degraded" and data["database"] == "ok" and data["sideband_workers"] == 0
    assert data["redis"] == "not used" and data["channel_layer"] == "LocalChannelLayer"
    assert data["upstream"] == "simulator"
    WorkerBeat.objects.create(name="worker-1", seen_at=timezone.now())
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json()["status"] == "ok"
    assert response.json()["sideband_workers"] == 1


@pytest.mark.parametrize("value", ["maybe", "2"])
def test_envbool_refuses_nonsense(monkeypatch, value):
    monkeypatch.setenv("X_FLAG", value)
    with pytest.raises(ImproperlyConfigured):
        project_settings.envbool("X_FLAG", False)


def test_envint_refuses_nonsense(monkeypatch):
    monkeypatch.setenv("X_NUM", "ten")
    with pytest.raises(ImproperlyConfigured):
        project_settings.envint("X_NUM", 1)
    monkeypatch.setenv("X_NUM", "0")
    with pytest.raises(ImproperlyConfigured):
        project_settings.envint("X_NUM", 1, minimum=1)


@pytest.mark.parametrize("value", ["lots", "10", "10/", "0/m", "10/x", "-1/m", "10/0m", "10/m "])
def test_envrate_refuses_what_the_rate_limit_cannot_read(monkeypatch, value):
    monkeypatch.setenv("X_RATE", value)
    with pytest.raises(ImproperlyConfigured):
        project_settings.envrate("X_RATE", "10/m")


@pytest.mark.parametrize("value", ["10/m", "5/5m", "100/h", "1/s", "30/2d"])
def test_envrate_takes_the_rates_people_write(monkeypatch, value):
    monkeypatch.setenv("X_RATE", value)
    assert project_settings.envrate("X_RATE", "10/m") == value


@pytest.mark.parametrize("name, value", [("MINT_RATE_LIMIT", "lots"), ("LOGIN_FAILURES_PER_USER", "5 per minute"),
                                         ("TRANSCRIPTION_MODEL", "whisper-2"),
                                         ("TRANSCRIPTION_MODEL", "gpt-live-transcribe")])
def test_a_bad_setting_stops_the_start_instead_of_failing_every_request(tmp_path, name, value):
    """A rate the limiter cannot read made every start a 500; a transcription model the API does not take
    would have made every call's input transcription fail, and one with no price left each unbilled."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "VAR_DIR": str(tmp_path), name: value}
    result = subprocess.run([sys.executable, "-c", "import voiceproject.settings"], env=env, capture_output=True,
                            text=True, cwd=project_settings.BASE_DIR)
    assert result.returncode != 0 and "ImproperlyConfigured" in result.stderr and name in result.stderr


def test_a_default_turn_mode_that_does_not_exist_stops_the_checks(settings):
    from sessions_app.apps import check_default_turn_detection
    from sessions_app.forms import TURN_MODES
    from sessions_app.models import RealtimeSession, TurnMode

    assert check_default_turn_detection(None) == []
    settings.DEFAULT_TURN_DETECTION = "always_listening"
    assert [error.id for error in check_default_turn_detection(None)] == ["sessions_app.E001"]
    # One definition: the form accepts and the model stores the same modes.
    assert TURN_MODES == tuple(value for value, _ in RealtimeSession.TURN_CHOICES) == tuple(TurnMode.values)
