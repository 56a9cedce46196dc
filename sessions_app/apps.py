from django.apps import AppConfig
from django.core.checks import Error, register


class SessionsAppConfig(AppConfig):
    name = "sessions_app"
    verbose_name = "Realtime sessions"

    def ready(self):
        register(check_default_turn_detection)


def check_default_turn_detection(app_configs, **kwargs):
    from django.conf import settings

    from .models import TurnMode

    if settings.DEFAULT_TURN_DETECTION not in TurnMode.values:
        return [Error(f"DEFAULT_TURN_DETECTION must be one of {', '.join(TurnMode.values)}",
                      id="sessions_app.E001")]
    return []
