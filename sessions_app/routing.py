from django.urls import path, re_path

from . import consumers

websocket_urlpatterns = [
    path("ws/sessions/<uuid:session_id>/", consumers.SessionUsageConsumer.as_asgi()),
    path("ws/dashboard/", consumers.DashboardConsumer.as_asgi()),
    # Any other socket path is refused (403), not a routing error (500).
    re_path(r"", consumers.NoSuchSocket.as_asgi()),
]
