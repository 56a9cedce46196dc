from django.urls import path

from . import consumers

websocket_urlpatterns = [
    path("ws/sessions/<uuid:session_id>/", consumers.SessionUsageConsumer.as_asgi()),
    path("ws/dashboard/", consumers.DashboardConsumer.as_asgi()),
]
