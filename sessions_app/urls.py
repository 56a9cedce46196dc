from django.urls import path

from . import dashboard, exports, views

urlpatterns = [
    path("", views.voice_page, name="sessions-page"),
    path("api/sessions/", views.mint_session, name="sessions-mint"),
    path("api/sessions/<uuid:session_id>", views.session_detail, name="sessions-detail"),
    path("api/sessions/<uuid:session_id>/calls", views.resume_session, name="sessions-calls"),
    path("api/sessions/<uuid:session_id>/end", views.end_session, name="sessions-end"),
    path("api/budget", views.budget_detail, name="sessions-budget"),
    path("sessions/", views.history, name="sessions-history"),
    path("sessions/<uuid:session_id>/", views.history_detail, name="sessions-history-detail"),
    path("sessions/<uuid:session_id>/transcript.md", exports.transcript_markdown, name="sessions-transcript-md"),
    path("sessions/<uuid:session_id>/transcript.csv", exports.transcript_csv, name="sessions-transcript-csv"),
    path("dashboard/", dashboard.dashboard, name="dashboard"),
    path("dashboard/spend.csv", exports.spend_csv, name="dashboard-csv"),
    path("dashboard/budgets/", views.budgets, name="sessions-budgets"),
]
